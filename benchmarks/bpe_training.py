"""Byte-level BPE on the shared corpora: training time and compression (bytes per token).

python benchmarks/bpe_training.py [VOCAB_SIZE ...]     (default: 1024)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from simple_llm import BPETokenizer

CORPUS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"


def main(sizes: list[int]) -> None:
    for path in sorted(CORPUS.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        n_bytes = len(text.encode("utf-8"))
        for size in sizes:
            start = time.perf_counter()
            tok = BPETokenizer.train(text, size)
            trained = time.perf_counter() - start
            start = time.perf_counter()
            ids = tok.encode(text)
            encoded = time.perf_counter() - start
            assert tok.decode(ids) == text
            print(
                f"{path.name:16} {n_bytes / 1e6:.2f} MB  vocab {tok.vocab_size:5}: trained in {trained:5.1f} s, "
                f"{n_bytes / len(ids):.2f} bytes/token ({len(text) / len(ids):.2f} characters/token), "
                f"encoded in {encoded:.1f} s",
                flush=True,
            )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1024])
