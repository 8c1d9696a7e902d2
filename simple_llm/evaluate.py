"""``python -m simple_llm eval``: the loss of a model on a text file, every token predicted once.

The file is tokenized with the model directory's tokenizer (no end-of-text token added) into a stream
t[0..N-1] and cut into windows of block + 1 tokens that overlap by one: window k is
t[k*block : k*block + block + 1], the last, shorter one included. Each window's first block tokens
predict their next ones, so every token after the first is a target exactly once; the loss is the
mean cross-entropy over all of them (nats), perplexity its exp, bits per byte its total over the
file's UTF-8 bytes, in bits.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from .cli_args import CLIError, Parser, add_model_flag, add_quantize_flag, command_parser, positive_int
from .fileio import read_text_file
from .model import GPT
from .modeldir import load_model


def windows(n_tokens: int, block: int) -> list[tuple[int, int]]:
    """(start, length) of each window of at most block + 1 tokens, overlapping by one token.

    >>> windows(10, 4)
    [(0, 5), (4, 5), (8, 2)]
    """
    return [(start, min(block + 1, n_tokens - start)) for start in range(0, n_tokens - 1, block)]


def loss_sum(model: GPT, tokens: np.ndarray, block: int, batch: int, progress=None) -> tuple[float, int]:
    """(summed cross-entropy, targets scored) over every window; full windows go batch at a time,
    the shorter last one alone."""
    spans = windows(len(tokens), block)
    total, scored = 0.0, 0
    full = [s for s, n in spans if n == block + 1]
    for i in range(0, len(full), batch):
        rows = np.stack([tokens[s : s + block + 1] for s in full[i : i + batch]])
        total += model.loss(rows[:, :-1], rows[:, 1:]) * rows[:, 1:].size
        scored += rows[:, 1:].size
        if progress is not None:
            progress.update(len(rows))
    for s, n in spans[len(full) :]:
        row = tokens[s : s + n][None, :]
        total += model.loss(row[:, :-1], row[:, 1:]) * (n - 1)
        scored += n - 1
        if progress is not None:
            progress.update(1)
    return total, scored


def parser(name: str) -> Parser:
    p = command_parser(name, __doc__)
    add_model_flag(p)
    p.add_argument("--data", required=True, metavar="FILE", help="the UTF-8 text to score")
    p.add_argument("--block-size", type=positive_int, help="tokens each window predicts (default: the model's n_ctx)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="windows per forward pass (default 8)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the line")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for a pipe or a log file)")
    add_quantize_flag(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    model, tok = load_model(args.model, args.quantize)
    text = read_text_file(args.data, "data file")
    block = args.block_size or model.config.n_ctx
    if block > model.config.n_ctx:
        raise CLIError(f"--block-size {block} is above this model's context ({model.config.n_ctx})")
    try:
        tokens = np.asarray(tok.encode(text), dtype=np.int64)
    except ValueError as exc:
        raise CLIError(f"cannot tokenize --data with this model's tokenizer: {exc}") from None
    if len(tokens) < 2:
        raise CLIError(f"{args.data} is {len(tokens)} token long; scoring needs at least 2")
    n_windows = len(windows(len(tokens), block))
    with tqdm(
        total=n_windows, unit="window", disable=args.no_progress or n_windows < 20, file=sys.stderr, leave=False
    ) as bar:
        total, scored = loss_sum(model, tokens, block, args.batch_size, bar)
    loss, n_bytes = total / scored, len(text.encode("utf-8"))
    result = {
        "loss": loss,
        "perplexity": math.exp(loss),
        "tokens": scored,
        "bytes": n_bytes,
        "bits_per_byte": total / math.log(2) / n_bytes,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"loss {loss:.4f} perplexity {result['perplexity']:.2f} tokens {scored}")
    return 0
