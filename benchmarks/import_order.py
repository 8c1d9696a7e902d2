"""Does the order of imports change anyone's speed? Each figure in a fresh process, rounds interleaved.

    python benchmarks/import_order.py [CONFIG] [ROUNDS]

Four contenders, training at a `simple_llm bench` configuration (default shakespeare-cpu):
simple_llm alone; simple_llm after `import torch`; PyTorch alone; PyTorch after `import simple_llm`.
Prints each one's tokens/s and the median over rounds of after/alone, for both libraries. The
target (issue "Speed, measured fairly"): within 5% either way.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from simple_llm.bench import Bench, run_contender

OURS_AFTER = (  # the other library first, then simple_llm's contender as `python -m simple_llm.bench` runs it
    "import {first}, runpy, sys; sys.argv = ['bench', *sys.argv[1:]]; "
    "runpy.run_module('simple_llm.bench', run_name='__main__')"
)
TORCH = str(Path(__file__).resolve().parent / "torch_contenders.py")


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "shakespeare-cpu"
    n_rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    b = Bench.named(name)
    ours = ["train", name, "5", "0"]
    commands = {
        "simple_llm alone": [sys.executable, "-m", "simple_llm.bench", *ours],
        "simple_llm after torch": [sys.executable, "-c", OURS_AFTER.format(first="torch"), *ours],
        "torch alone": [sys.executable, TORCH, "train", b.shape, "5", "0"],
        "torch after simple_llm": [sys.executable, TORCH, "train", b.shape, "5", "0", "--import-first", "simple_llm"],
    }
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(n_rounds):
        for label, command in commands.items():
            times[label].append(run_contender(command))
    tokens = b.batch * b.cfg.n_ctx
    for label, ts in times.items():
        print(f"{label:<24} {tokens / statistics.median(ts):9.0f} tokens/s")
    for lib in ("simple_llm", "torch"):
        alone, after = times[f"{lib} alone"], times[next(k for k in times if k.startswith(f"{lib} after"))]
        change = statistics.median(a / b for a, b in zip(alone, after))
        print(f"{lib}: speed after the other import / alone = {change:.3f} (median of {n_rounds} rounds)")


if __name__ == "__main__":
    main()
