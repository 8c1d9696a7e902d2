"""Learning quality: nanoGPT's CPU recipe on the shared corpora, run through `python -m simple_llm train`.

    python benchmarks/learning.py [char|bpe|ja ...]     (default: all three)

The recipe (nanoGPT's README, shakespeare_char on CPU): n_layer 4, n_head 4, n_embd 128, block 64,
batch 12, 2000 iterations, lr 1e-3 decaying to 1e-4 after 100 warmup steps, AdamW betas (0.9, 0.99),
weight decay 0.1, grad clip 1.0, dropout 0, evaluation every 250 steps on 20 batches. nanoGPT reports
a validation loss of 1.88 after about 3 minutes for tiny Shakespeare. Prints the final validation loss,
the wall time and the training throughput of each run. Needs ../shared/corpus/.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
RECIPE = [
    "--n-layer",
    "4",
    "--n-head",
    "4",
    "--n-embd",
    "128",
    "--block-size",
    "64",
    "--batch-size",
    "12",
    "--max-steps",
    "2000",
    "--lr",
    "1e-3",
    "--min-lr",
    "1e-4",
    "--warmup-steps",
    "100",
    "--beta1",
    "0.9",
    "--beta2",
    "0.99",
    "--weight-decay",
    "0.1",
    "--grad-clip",
    "1.0",
    "--dropout",
    "0",
    "--eval-interval",
    "250",
    "--eval-steps",
    "20",
    "--no-progress",
]
RUNS = {
    "char": ("shakespeare.txt", ["--tokenizer", "char"]),
    "bpe": ("shakespeare.txt", ["--tokenizer", "bpe", "--vocab-size", "1024"]),
    "ja": ("ja_manpages.txt", ["--tokenizer", "char"]),
}


def main(names: list[str]) -> None:
    for name in names or list(RUNS):
        corpus, flags = RUNS[name]
        with tempfile.TemporaryDirectory() as out:
            cmd = [
                sys.executable,
                "-m",
                "simple_llm",
                "train",
                "--data",
                str(CORPUS / corpus),
                "--out",
                out,
                *RECIPE,
                *flags,
            ]
            start = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - start
            if proc.returncode:
                sys.exit(proc.stderr)
            with open(Path(out) / "log.csv") as f:
                log = list(csv.DictReader(f))
            last = log[-1]
            first_line = proc.stdout.splitlines()[0]
            print(
                f"{name:5} {corpus:16} val loss {float(last['val_loss']):.4f} (train {float(last['train_loss']):.4f}) "
                f"after {last['step']} steps; wall {wall:.0f} s; {float(last['tokens_per_s']):,.0f} tokens/s "
                f"while training; {first_line}",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
