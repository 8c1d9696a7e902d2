"""Buffers: the activations one forward pass saves for its backward, the gradients the backward
passes between layers, the key/value cache of one generation, and a pool that lends them out.

Nothing here computes; model.py writes into these arrays. Every buffer is allocated once per batch
shape and reused, as llm.c allocates its activations once.

B = batch, T = positions in this pass, C = n_embd, NH = n_head, V = vocab_size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .config import GPTConfig


class LayerActivations:
    """One block's activations for a batch of (B, Tq) positions, saved by forward for backward."""

    def __init__(self, cfg: GPTConfig, B: int, Tq: int, T_max: int, dtype, dropout: bool):
        C, NH = cfg.n_embd, cfg.n_head
        self.shape = (B, NH, Tq)
        self.ln1 = np.empty((B, Tq, C), dtype)  # ln_1(x)
        self.ln1_mean = np.empty(B * Tq, dtype)
        self.ln1_rstd = np.empty(B * Tq, dtype)
        self.qkv = np.empty((B, Tq, 3 * C), dtype)  # c_attn(ln1): q, k, v side by side
        self._att = np.empty(B * NH * Tq * T_max, dtype)  # softmax weights, viewed by att(T)
        self.atty = np.empty((B, Tq, C), dtype)  # attention output, heads side by side
        self.resid2 = np.empty((B, Tq, C), dtype)  # x + attn(ln_1(x))
        self.ln2 = np.empty((B, Tq, C), dtype)  # ln_2(resid2)
        self.ln2_mean = np.empty(B * Tq, dtype)
        self.ln2_rstd = np.empty(B * Tq, dtype)
        self.fch = np.empty((B, Tq, 4 * C), dtype)  # c_fc(ln2)
        self.fch_tanh = np.empty((B, Tq, 4 * C), dtype)  # the tanh inside gelu, saved for its backward
        self.fch_gelu = np.empty((B, Tq, 4 * C), dtype)  # gelu(fch)
        # dropout: the attention weights after their keep-mask, and the masks (views into
        # DropoutMasks, set for each step); None when off
        self.att_dropped = np.empty((B, NH, Tq, Tq), dtype) if dropout else None
        self.att_mask: np.ndarray | None = None
        self.attn_drop: np.ndarray | None = None
        self.mlp_drop: np.ndarray | None = None

    def att(self, T: int) -> np.ndarray:
        """The attention weights (B, NH, Tq, T) of queries over T keys, a contiguous view."""
        B, NH, Tq = self.shape
        return self._att[: B * NH * Tq * T].reshape(B, NH, Tq, T)


class Activations:
    """Every buffer of one forward pass over (B, T) positions.

    With per_layer (training, tracing) each block keeps its own LayerActivations, as the backward
    needs; otherwise (inference) the blocks share one and each writes its output over its input.
    T_max is the most keys a query sees (n_ctx when the keys come from a cache).
    """

    def __init__(
        self, cfg: GPTConfig, B: int, T: int, dtype, per_layer: bool, dropout: bool = False, T_max: int | None = None
    ):
        C, V = cfg.n_embd, cfg.vocab_size
        make = lambda: LayerActivations(cfg, B, T, T_max or T, dtype, dropout)  # noqa: E731
        if per_layer:
            self.layers = [make() for _ in range(cfg.n_layer)]
            self.resid = [np.empty((B, T, C), dtype) for _ in range(cfg.n_layer + 1)]
        else:
            shared = make()
            self.layers = [shared] * cfg.n_layer
            self.resid = [np.empty((B, T, C), dtype)] * (cfg.n_layer + 1)
        # resid[0] = wte[idx] + wpe (the embedding), resid[l + 1] = output of block l
        self.emb_drop: np.ndarray | None = None  # dropout's mask on the embedding (training)
        self.lnf = np.empty((B, T, C), dtype)  # ln_f(resid[L])
        self.lnf_mean = np.empty(B * T, dtype)
        self.lnf_rstd = np.empty(B * T, dtype)
        self.logits = np.empty((B, T, V), dtype) if per_layer else None  # training: becomes dlogits
        self.losses = np.empty(B * T, dtype)
        self.lse = np.empty(B * T, dtype)  # log-sum-exp of each row of logits


def trace_steps(a: Activations, logits: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """The buffers of a per-layer forward pass, in the order the model fills them, each named by
    the step that made it (what GPT.trace returns)."""
    T = a.resid[0].shape[1]
    steps = [("wte[idx] + wpe", a.resid[0])]
    for l, la in enumerate(a.layers):
        h = f"h.{l}."
        steps += [
            (h + "ln_1", la.ln1),
            (h + "attn.c_attn (q, k, v)", la.qkv),
            (h + "attn.softmax", la.att(T)),
            (h + "attn (heads side by side)", la.atty),
            (h + "x + attn.c_proj", la.resid2),
            (h + "ln_2", la.ln2),
            (h + "mlp.c_fc", la.fch),
            (h + "mlp.gelu", la.fch_gelu),
            (h + "x + mlp.c_proj", a.resid[l + 1]),
        ]
    return steps + [("ln_f", a.lnf), ("logits = ln_f @ wte^T", logits)]


class DropoutMasks:
    """Dropout's keep-masks for one training step over a whole (B, T) batch: 0 with probability p,
    else 1 / (1 - p). Drawn for the whole batch in one order, so every shard of the batch sees the
    same masks however many shards there are."""

    def __init__(self, cfg: GPTConfig, B: int, T: int, dtype):
        C, NH = cfg.n_embd, cfg.n_head
        self.emb = np.empty((B, T, C), dtype)
        self.layers = [
            (np.empty((B, NH, T, T), dtype), np.empty((B, T, C), dtype), np.empty((B, T, C), dtype))
            for _ in range(cfg.n_layer)
        ]  # per block: on the attention weights, on the attention branch, on the MLP branch

    def all(self) -> list[np.ndarray]:
        return [self.emb, *(m for masks in self.layers for m in masks)]

    def lend(self, a: Activations, rows: slice) -> None:
        """Point a's mask fields at these rows of the masks."""
        a.emb_drop = self.emb[rows]
        for la, (att, attn, mlp) in zip(a.layers, self.layers):
            la.att_mask, la.attn_drop, la.mlp_drop = att[rows], attn[rows], mlp[rows]


class Scratch:
    """Gradients of one block's activations; reused by every block in turn during backward."""

    def __init__(self, cfg: GPTConfig, B: int, T: int, dtype):
        C, NH = cfg.n_embd, cfg.n_head
        self.dres = np.empty((B, T, C), dtype)  # gradient of the residual stream
        self.dln = np.empty((B, T, C), dtype)  # of a layer norm's output
        self.dbranch = np.empty((B, T, C), dtype)  # of a branch's output, through dropout
        self.datty = np.empty((B, T, C), dtype)
        self.dqkv = np.empty((B, T, 3 * C), dtype)
        self.datt = np.empty((B, NH, T, T), dtype)
        self.dfch = np.empty((B, T, 4 * C), dtype)


class KVCache:
    """The keys and values of one generation's positions, per layer.

    layers[l] is (B, capacity, 3C), capacity <= n_ctx: c_attn's whole output, q beside k and v, so
    that one product fills it; the first ``length`` positions are filled. Each generation makes its
    own, so no other call can change it.
    """

    def __init__(self, cfg: GPTConfig, B: int, dtype, capacity: int | None = None):
        self.capacity = min(cfg.n_ctx, capacity or cfg.n_ctx)
        self.layers = [np.empty((B, self.capacity, 3 * cfg.n_embd), dtype) for _ in range(cfg.n_layer)]
        self.length = 0


class Workspace:
    """Arrays for the passing products of a layer (LoRA's), by name, shape and dtype, reused from call
    to call: one per model replica, shared by its layers, which run one after another. Each thread
    has its own (two threads may run one model's forward at once); at most `keep` are kept a thread."""

    def __init__(self, keep: int = 16):
        self.keep = keep
        self._local = threading.local()

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        arrays = self._local.__dict__.setdefault("arrays", {})
        key = (name, shape, np.dtype(dtype))
        if key not in arrays:
            if len(arrays) >= self.keep:  # (a bound: ever new batch shapes)
                arrays.clear()
            arrays[key] = np.empty(shape, dtype)
        return arrays[key]


class BufferPool:
    """Buffers lent to one call at a time, by key (a batch shape).

    A call borrows a set for as long as it runs (a generation, for its whole life), so calls in
    several threads never share one, and a set in use is never evicted; of the sets returned, the
    `keep` most recent are kept for the next call.
    """

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._idle: list[tuple[Any, Any]] = []  # (key, buffers), oldest first
        self._lock = threading.Lock()

    @contextmanager
    def lease(self, key: Any, make: Callable[[], Any]) -> Iterator[Any]:
        with self._lock:
            found = next((i for i in reversed(range(len(self._idle))) if self._idle[i][0] == key), None)
            buffers = self._idle.pop(found)[1] if found is not None else None
        if buffers is None:
            buffers = make()
        try:
            yield buffers
        finally:
            with self._lock:
                self._idle.append((key, buffers))
                del self._idle[: -self.keep]
