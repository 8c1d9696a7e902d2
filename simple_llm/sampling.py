"""Choosing the next token from the logits: greedy, temperature, top-k and top-p (nucleus)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels as K


@dataclass
class GenerationStep:
    """One generated position: the chosen tokens (B,) and the distribution they came from (B, V).

    For sampling, probs is the distribution after temperature, top-k and top-p; for greedy decoding
    (temperature 0) it is the model's plain softmax.
    """

    tokens: np.ndarray
    probs: np.ndarray


def tempered(logits: np.ndarray, temperature: float) -> np.ndarray:
    """(logits - their row maximum) / temperature, in place (float64): the same softmax as
    logits / temperature, but finite for any temperature > 0 (1e-310 included, where logits /
    temperature overflow to inf and the softmax to NaN); the limit is greedy."""
    logits -= logits.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):  # to -inf: a probability of exactly 0
        logits /= temperature
    return logits


class Sampler:
    """Turns logits (B, V) into (probs (B, V), tokens (B,)), seeded and reproducible.

    seed is an int, or a Generator to draw from (a session's one random stream)."""

    def __init__(
        self,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | np.random.Generator = 0,
        vocab_size: int | None = None,
    ):
        if not np.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {temperature}")
        if top_k is not None and (int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be a positive integer, not {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], not {top_p}")
        self.temperature = float(temperature)
        self.top_k = None if top_k is None else min(int(top_k), vocab_size or int(top_k))
        self.top_p = top_p
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.array(logits, dtype=np.float64)  # (B, V), a copy we may change
        if self.temperature == 0.0:
            K.softmax_forward(z, z)
            return z, np.argmax(logits, axis=-1)  # the first of equal maxima, as torch.argmax
        z = tempered(z, self.temperature)
        if self.top_k is not None and self.top_k < z.shape[-1]:
            kth = np.partition(z, -self.top_k, axis=-1)[:, -self.top_k, None]
            z[z < kth] = -np.inf
        K.softmax_forward(z, z)
        if self.top_p is not None and self.top_p < 1.0:
            order = np.argsort(-z, axis=-1, kind="stable")
            sorted_p = np.take_along_axis(z, order, axis=-1)
            # keep the most likely tokens up to and including the one that reaches top_p
            drop = np.cumsum(sorted_p, axis=-1) - sorted_p >= self.top_p
            np.put_along_axis(z, order, np.where(drop, 0.0, sorted_p), axis=-1)
            z /= z.sum(axis=-1, keepdims=True)
        # inverse transform: the first token whose cumulative probability exceeds u ~ U[0, total)
        cdf = np.cumsum(z, axis=-1)
        u = self.rng.random((z.shape[0], 1)) * cdf[:, -1:]
        return z, (cdf <= u).sum(axis=-1)
