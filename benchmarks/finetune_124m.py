"""Fine-tuning GPT-2 124M here, beside PyTorch: batch 1, block 256, float32, tokens/s and peak memory.

    python benchmarks/finetune_124m.py [--model DIR] [--steps N]

DIR is a GPT-2 checkpoint directory (config.json, model.safetensors, vocab.json, merges.txt); without
one, a 124M model with random weights (GPT-2's shapes) is written to a temporary directory. Ours is
`python -m simple_llm train --init-from DIR --batch-size 1 --block-size 256` on the shakespeare
corpus (or its excerpt in tests/data); PyTorch's is transformers' GPT2LMHeadModel with
torch.optim.AdamW(fused=True) on the same windows, at its own default threads. Each runs in its own
process; each prints tokens/s over all its training steps (simple_llm's `train` line counts every
step, the first included; PyTorch's is given both ways), and its peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gpt2_124m import make_checkpoint

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
ids = np.load(sys.argv[2])  # the corpus's GPT-2 token ids (tiktoken's, written by the parent)
opt = torch.optim.AdamW(model.parameters(), lr=3e-5, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
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


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("--model", type=Path, help="a GPT-2 checkpoint directory (default: random weights)")
    cli.add_argument("--steps", type=int, default=6)
    args = cli.parse_args()
    steps = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or Path(tmp) / "gpt2"
        if args.model is None:
            model.mkdir()
            make_checkpoint(model)
        flags = ["--batch-size", "1", "--block-size", "256", "--max-steps", str(steps), "--eval-steps", "1",
                 "--eval-interval", "100000", "--lr", "3e-5", "--min-lr", "3e-5", "--warmup-steps", "0",
                 "--no-progress"]  # fmt: skip
        ours = subprocess.run(
            [sys.executable, "-c", OURS, "train", "--data", str(corpus()), "--out", str(Path(tmp) / "run"),
             "--init-from", str(model), *flags], capture_output=True, text=True)  # fmt: skip
        done = re.search(r"([\d,]+) tokens/s while training", ours.stdout)
        last = ours.stdout.strip().splitlines()[-1:]
        print(f"simple_llm: {done.group(1) if done else ours.stderr[-300:]} tokens/s; {last}")
        from simple_llm import load_tokenizer

        ids = Path(tmp) / "ids.npy"
        np.save(ids, np.array(load_tokenizer(model).encode(corpus().read_text(encoding="utf-8")), dtype=np.int64))
        theirs = subprocess.run(
            [sys.executable, "-c", TORCH, str(model), str(ids), str(steps)], capture_output=True, text=True
        )
        print("PyTorch:", " ; ".join(theirs.stdout.strip().splitlines()) or theirs.stderr[-300:])


if __name__ == "__main__":
    main()
