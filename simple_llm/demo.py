"""The seed demo: a small GPT-2 memorises a few dozen sentences, then completes prompts.

Each line of the data file is one training sequence: its words followed by ``<eos>``. Generation stops
at ``<eos>``, so a prompt of a sentence's first words gives back the rest of that sentence.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import __version__
from .cli_args import Parser, add_sampling_flags, positive_int
from .config import GPTConfig
from .fileio import read_text_file
from .kernels import BACKEND, SIMD
from .model import GPT
from .optim import AdamW
from .parallel import cores
from .session import Session, settings_from
from .tokenizers import EOS, CharTokenizer, Tokenizer, WordTokenizer

DATA_FILES = {"en": "data_en.txt", "ja": "data.txt"}
EPOCH_LINES = {"en": "Epoch {epoch}: average loss = {loss:.4f}", "ja": "Epoch {epoch}: 平均損失 = {loss:.4f}"}


def data_file(name: str) -> Path:
    """A file shipped in data/: inside the installed package, or beside it in a source checkout."""
    here = Path(__file__).resolve().parent
    for folder in (here / "data", here.parent / "data"):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"the demo's data file {name} is missing from this installation")


def load_sentences(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file; a ValueError says in one line what is wrong with it."""
    return [line.strip() for line in read_text_file(path, "data file").splitlines() if line.strip()]


def batches(seqs: list[list[int]], batch_size: int, rng: np.random.Generator):
    """Shuffled (inputs, targets) pairs (B, T); short sequences are padded, padding is not scored."""
    order = rng.permutation(len(seqs))
    for start in range(0, len(seqs), batch_size):
        chunk = [seqs[i] for i in order[start : start + batch_size]]
        T = max(len(s) for s in chunk) - 1
        x = np.zeros((len(chunk), T), dtype=np.int64)
        y = np.full((len(chunk), T), -1, dtype=np.int64)
        for row, s in enumerate(chunk):
            x[row, : len(s) - 1] = s[:-1]  # predict each next token ...
            y[row, : len(s) - 1] = s[1:]  # ... from the ones before it
        yield x, y


def train_demo(
    sentences: list[str],
    epochs: int = 100,
    seed: int = 0,
    batch_size: int = 8,
    on_epoch: Callable[[int, float], None] | None = None,
    tokenizer: str = "word",
) -> tuple[GPT, Tokenizer]:
    """Train a 2-layer GPT-2 on the sentences; on_epoch(epoch, average loss) after each epoch.

    tokenizer "word" learns whitespace-separated words; "char" learns characters of the sentences
    with their spaces removed, as Japanese is written (so 猫が, unspaced, is two known tokens)."""
    if tokenizer == "char":
        sentences = ["".join(s.split()) for s in sentences]
        tok: Tokenizer = CharTokenizer.train("".join(sentences), specials=(EOS,))
    else:
        tok = WordTokenizer.train("\n".join(sentences))
    eos = tok.eos_id
    assert eos is not None  # both tokenizers above have <eos>
    seqs = [tok.encode(s) + [eos] for s in sentences]
    seqs = [s for s in seqs if len(s) >= 2]
    if not seqs:
        raise ValueError("the data file has no sentence to learn from")
    n_ctx = max(16, max(len(s) for s in seqs))
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_ctx=n_ctx, n_embd=64, n_head=4, n_layer=2), seed=seed)
    opt = AdamW(model.params, lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    rng = np.random.default_rng(seed)
    for epoch in range(1, epochs + 1):
        losses = []
        for x, y in batches(seqs, batch_size, rng):
            loss, grads = model.loss_and_grads(x, y)
            opt.step(grads)
            losses.append(loss)
        if on_epoch:
            on_epoch(epoch, float(np.mean(losses)))
    return model, tok


def parser(name: str) -> Parser:
    p = Parser(
        prog="simple_llm",
        description="Train a small GPT-2 on a few sentences, then complete your prompts. "
        "Other commands: train, generate, chat, eval, explore, inspect, plot, bench (python -m simple_llm CMD --help).",
    )
    p.add_argument(
        "lang", nargs="?", default="ja", choices=["en", "ja"], help="en: data/data_en.txt; ja (default): data/data.txt"
    )
    p.add_argument("--epochs", type=positive_int, default=100, help="passes over the data (default 100)")
    p.add_argument("--data", metavar="FILE", help="train on this UTF-8 file instead, one sentence per line")
    p.add_argument(
        "--tokenizer",
        choices=["word", "char"],
        help="word: whitespace-separated words (default for en); char: characters, spaces removed, so "
        "prompts need no spaces (default for ja)",
    )
    add_sampling_flags(p, max_new_tokens=20)
    p.add_argument("--version", action="version", version=f"simple_llm {__version__} ({BACKEND} kernels)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    path = args.data or data_file(DATA_FILES[args.lang])
    sentences = load_sentences(path)
    n = cores()
    print(
        f"Training a small GPT-2 on {len(sentences)} sentences from {path} "
        f"({BACKEND} kernels{', ' + SIMD if SIMD else ''}, {n} core{'s' if n != 1 else ''})",
        flush=True,
    )

    def report(epoch: int, loss: float) -> None:
        print(EPOCH_LINES[args.lang].format(epoch=epoch, loss=loss), flush=True)

    kind = args.tokenizer or ("char" if args.lang == "ja" else "word")
    model, tok = train_demo(sentences, epochs=args.epochs, seed=args.seed, on_epoch=report, tokenizer=kind)
    return Session(model, tok, settings_from(args)).interact()
