"""Checks on the token ids a model is given: each ValueError says in one line what is wrong."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def token_ids(idx: ArrayLike, vocab_size: int, n_ctx: int | None = None, name: str = "idx") -> np.ndarray:
    """idx as a C-contiguous int64 array (B, T) of ids in [0, vocab_size) (targets: or -1, not
    scored), at most n_ctx positions long unless n_ctx is None."""
    idx = np.asarray(idx)
    if idx.ndim != 2 or idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (B, T) of token ids, not shape {idx.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, not {idx.dtype}")
    if n_ctx is not None and idx.shape[1] > n_ctx:
        raise ValueError(f"{name} has {idx.shape[1]} positions; this model's context is {n_ctx}")
    low = -1 if name == "targets" else 0
    if idx.min() < low or idx.max() >= vocab_size:
        scored = " or -1 (not scored)" if low < 0 else ""
        raise ValueError(f"{name} must be token ids in [0, {vocab_size}){scored}")
    return np.ascontiguousarray(idx, dtype=np.int64)


def inputs_and_targets(
    idx: ArrayLike, targets: ArrayLike, vocab_size: int, n_ctx: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """idx and targets checked as token_ids, of one shape, and the number of scored targets."""
    x, y = token_ids(idx, vocab_size, n_ctx), token_ids(targets, vocab_size, n_ctx, "targets")
    if x.shape != y.shape:
        raise ValueError(f"targets has shape {y.shape} but idx has {x.shape}")
    n = int(np.count_nonzero(y >= 0))
    if n == 0:
        raise ValueError("targets holds no scored position (every target is -1)")
    return x, y, n
