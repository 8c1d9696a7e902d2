"""``python -m simple_llm inspect``: look inside a model while it reads a prompt.

    inspect --model DIR --prompt "Hello world" --out attention.png [--layer L] [--head H]
    inspect --model DIR --prompt "Hello world" --trace
    inspect --model DIR --embeddings --out embeddings.png [--data FILE]

Attention heatmaps (query token x key token) for every layer and head, or one of them; the path of
the prompt through the forward pass with a few statistics per step; a 2-D PCA of the token
embeddings.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from . import plotting
from .cli_args import CLIError, Parser, add_model_flag, command_parser, nonnegative_int, positive_int
from .model import GPT
from .modeldir import load_model
from .session import probability_lines, token_label
from .tokenizers import Tokenizer

PANEL_INCHES, DPI = 3.0, 100  # each heatmap is 300 x 300 pixels, so a grid's size is predictable
GRID_COLUMNS = 4  # heads across, at most
MAX_PANELS = 16  # more than this (GPT-2 has 144 heads) and only one layer is drawn unless --layer says
HEATMAP_NOTE = (
    "each panel: rows are queries (the token reading), columns are keys (the tokens it reads); the colour "
    "is the attention weight, 0 to 1 (colour bar); grey cells are future positions, masked out "
    "(a causal model cannot look ahead); each row sums to 1"
)


def parser(name: str) -> Parser:
    p = command_parser(name, __doc__, 2)
    add_model_flag(p)
    p.add_argument("--prompt", help="the text to read (heatmaps and --trace)")
    p.add_argument("--out", metavar="FILE.png", help="where to draw (default attention.png or embeddings.png)")
    p.add_argument("--layer", type=nonnegative_int, help="only this layer (from 0)")
    p.add_argument("--head", type=nonnegative_int, help="only this head (from 0)")
    p.add_argument("--trace", action="store_true", help="print every step of the forward pass instead")
    p.add_argument("--top", type=positive_int, default=5, help="next tokens listed at the end of --trace")
    p.add_argument("--embeddings", action="store_true", help="draw a 2-D PCA of the token embeddings")
    p.add_argument("--data", metavar="FILE", help="with --embeddings: label the tokens most frequent in FILE")
    p.add_argument("--labels", type=positive_int, default=40, help="with --embeddings: how many to label")
    p.set_defaults(run=run)
    return p


def figure(**kwargs):
    try:
        return plotting.figure(**kwargs)
    except ImportError as exc:
        raise CLIError(str(exc)) from None


def prompt_ids(model: GPT, tok: Tokenizer, prompt: str | None) -> np.ndarray:
    if not prompt:
        raise CLIError("--prompt is needed for attention heatmaps and --trace")
    ids = tok.encode(prompt)
    if not ids:
        raise CLIError("the prompt has no tokens")
    if len(ids) > model.config.n_ctx:
        raise CLIError(f"the prompt is {len(ids)} tokens long; this model's context holds {model.config.n_ctx}")
    return np.array([ids])


def pick(value: int | None, count: int, flag: str) -> list[int]:
    if value is None:
        return list(range(count))
    if value >= count:
        raise CLIError(f"{flag} {value}: this model has {count} (0 to {count - 1})")
    return [value]


def print_trace(model: GPT, tok: Tokenizer, ids: np.ndarray, top: int) -> None:
    """One line per step: name, shape, mean, std, min, max; then the most likely next tokens."""
    steps = model.trace(ids)
    width = max(len(name) for name, _ in steps)
    print(f"{'step':<{width}}  {'shape':<18} {'mean':>9} {'std':>9} {'min':>9} {'max':>9}")
    for name, t in steps:
        print(f"{name:<{width}}  {t.shape!s:<18} {t.mean():9.4f} {t.std():9.4f} {t.min():9.4f} {t.max():9.4f}")
    logits = steps[-1][1][0, -1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    print(f"most likely next tokens after {tok.decode(ids[0].tolist())!r}:")
    print("\n".join(probability_lines(tok, probs, min(top, len(probs)), int(np.argmax(probs)))))


def draw_attention(model: GPT, tok: Tokenizer, ids: np.ndarray, layers: list[int], heads: list[int], path: str) -> None:
    """A grid of heatmaps, each PANEL_INCHES square: a row per layer, and its heads across, wrapped
    after GRID_COLUMNS (12 heads: 4 x 3, not a 12-wide strip); one colour bar for the figure."""
    weights = {name: t for name, t in model.trace(ids) if name.endswith("attn.softmax")}
    labels = [token_label(tok, int(i)) for i in ids[0]]
    T = len(labels)
    cols = min(len(heads), GRID_COLUMNS)
    rows_per_layer = -(-len(heads) // cols)
    fig = figure(dpi=DPI, figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows_per_layer * len(layers)))
    import matplotlib  # present: figure() needed it

    axes = fig.subplots(rows_per_layer * len(layers), cols, squeeze=False)
    font = max(4.0, min(9.0, 120.0 / T))
    every = -(-T // 40)  # at most 40 token labels an axis: more would overlap
    ticks = list(range(0, T, every))
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")  # masked cells: the future
    for ax in axes.flat:
        ax.set_axis_off()  # the grid's empty places stay blank
    image = None
    for r, layer in enumerate(layers):
        att = weights[f"h.{layer}.attn.softmax"][0]  # (NH, T, T)
        for k, head in enumerate(heads):
            row, col = r * rows_per_layer + k // cols, k % cols
            ax = axes[row][col]
            ax.set_axis_on()
            image = ax.imshow(np.ma.masked_array(att[head], future), vmin=0.0, vmax=1.0, cmap=cmap)
            ax.set_title(f"layer {layer}, head {head}", fontsize=9)
            ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=font)
            ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=font)
            if row == len(axes) - 1 or k + cols >= len(heads):
                ax.set_xlabel("key (attended to)", fontsize=8)
            if col == 0:
                ax.set_ylabel("query", fontsize=8)
    fig.subplots_adjust(left=0.12, right=0.86, bottom=0.15, top=0.92, wspace=0.5, hspace=0.6)
    bar = fig.colorbar(image, cax=fig.add_axes((0.9, 0.15, 0.02, 0.77)))
    bar.set_label("attention weight", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    fig.savefig(path, dpi=DPI)  # no tight bbox: the pixel size stays the grid's


def embedding_pca(wte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V, C) token embeddings -> (V, 2), the two directions along which they vary most, and the
    share of the variance (2,) that each explains."""
    centred = wte.astype(np.float64) - wte.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :2] * s[:2], s[:2] ** 2 / max(float(np.sum(s**2)), 1e-300)


def draw_embeddings(model: GPT, tok: Tokenizer, counts: Counter, n_labels: int, path: str) -> tuple[int, int]:
    """The PCA scatter with the n_labels tokens that come first in counts labelled, skipping a label
    that would overlap one already placed; returns (labelled, skipped)."""
    xy, share = embedding_pca(model.params["wte.weight"])
    fig = figure(figsize=(8, 8), dpi=DPI)
    ax = fig.subplots()
    ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.4)
    span = np.ptp(xy, axis=0) + 1e-12
    placed: list[np.ndarray] = []
    skipped = 0
    for token, _ in counts.most_common(n_labels):
        if token >= len(xy):
            continue
        where = xy[token] / span  # in units of the plot's extent
        if any(abs(where[0] - p[0]) < 0.06 and abs(where[1] - p[1]) < 0.025 for p in placed):
            skipped += 1
            continue
        placed.append(where)
        ax.annotate(token_label(tok, token), xy[token], fontsize=8)
    ax.set_xlabel(f"first principal component ({share[0]:.0%} of the variance)")
    ax.set_ylabel(f"second principal component ({share[1]:.0%} of the variance)")
    ax.set_title("token embeddings (wte): tokens the model treats alike lie close together")
    fig.savefig(path, dpi=DPI)
    return len(placed), skipped


def run(args: argparse.Namespace) -> int:
    from .fileio import read_text_file

    model, tok = load_model(args.model)
    if args.embeddings:
        text = read_text_file(args.data, "data file") if args.data else (args.prompt or "")
        if text:
            counts = Counter(tok.encode(text))
            which = f"the {min(args.labels, len(counts))} most frequent tokens of {args.data or 'the prompt'}"
        else:  # nothing to count: the first ids, in order
            counts = Counter({i: tok.vocab_size - i for i in range(tok.vocab_size)})
            which = f"token ids 0 to {min(args.labels, tok.vocab_size) - 1} (--data FILE labels its most frequent)"
        out = args.out or "embeddings.png"
        labelled, skipped = draw_embeddings(model, tok, counts, args.labels, out)
        overlap = f"; {skipped} left unlabelled where they would overlap another label" if skipped else ""
        print(
            f"wrote {out}: every token's embedding projected onto the two directions of largest spread "
            f"(close points: tokens used alike); {labelled} labelled, of {which}{overlap}"
        )
        return 0
    ids = prompt_ids(model, tok, args.prompt)
    if args.trace:
        print_trace(model, tok, ids, args.top)
        return 0
    cfg = model.config
    if args.layer is None and cfg.n_layer * cfg.n_head > MAX_PANELS:
        layers = [cfg.n_layer - 1]  # too many panels to read: the last layer, unless asked
        print(f"note: {cfg.n_layer} layers x {cfg.n_head} heads; drawing layer {layers[0]} (choose with --layer)")
    else:
        layers = pick(args.layer, cfg.n_layer, "--layer")
    heads = pick(args.head, cfg.n_head, "--head")
    out = args.out or "attention.png"
    draw_attention(model, tok, ids, layers, heads, out)
    print(f"wrote {out}: {len(layers)} layer(s) x {len(heads)} head(s); {HEATMAP_NOTE}")
    return 0
