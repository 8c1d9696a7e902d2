"""The generation loop: prompt -> logits -> sampled token -> logits of the next position -> ...

Each generation owns its key/value cache (activations.KVCache), so generations in several threads,
or interleaved in one, never disturb each other, and calls to the model between their steps change
nothing in them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from .activations import KVCache
from .sampling import GenerationStep, Sampler

if TYPE_CHECKING:
    from .model import GPT

__all__ = ["GenerationStep", "generate_tokens"]


def generate_tokens(
    model: GPT,
    idx: np.ndarray,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int | np.random.Generator,
    top_p: float | None,
    stop_token: int | None,
    use_cache: bool,
) -> Iterator[GenerationStep]:
    """The steps of one generation after the prompt idx (B, T) (see GPT.generate); arguments are
    checked here, before the first step."""
    sampler = Sampler(temperature, top_k, top_p, seed, model.config.vocab_size)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, not {max_new_tokens!r}")
    return _steps(model, idx, int(max_new_tokens), sampler, stop_token, use_cache)


def _steps(
    model: GPT, idx: np.ndarray, max_new_tokens: int, sampler: Sampler, stop_token: int | None, use_cache: bool
) -> Iterator[GenerationStep]:
    n_ctx = model.config.n_ctx
    context = idx[:, -n_ctx:]  # a prompt longer than the context: its last n_ctx tokens
    cache = KVCache(model.config, len(idx), model.dtype, context.shape[1] + max_new_tokens) if use_cache else None

    def logits_after(new: np.ndarray) -> np.ndarray:
        """Logits (B, V) of the token after context, whose last positions `new` are not cached yet."""
        return model.next_logits(new, cache) if cache is not None else model.forward(context)[:, -1]

    logits = logits_after(context)
    done = np.zeros(len(idx), dtype=bool)
    for i in range(max_new_tokens):
        probs, tokens = sampler(logits)
        if stop_token is not None:
            tokens = np.where(done, stop_token, tokens)
            done |= tokens == stop_token
        yield GenerationStep(tokens, probs)
        if i == max_new_tokens - 1 or (stop_token is not None and done.all()):
            return
        context = np.concatenate([context, tokens[:, None]], axis=1)
        if context.shape[1] > n_ctx:  # the context slides: keep the last n_ctx tokens, rebuild the cache
            context = context[:, -n_ctx:]
            if cache is not None:
                cache.length = 0
            logits = logits_after(context)
        else:
            logits = logits_after(context[:, -1:])
