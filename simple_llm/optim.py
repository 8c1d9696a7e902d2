"""Optimizers (AdamW, SGD), the learning-rate schedule and gradient-norm clipping.

Over a model's ``Parameters`` each is one pass over the flat buffer (two for AdamW: the 2-D tensors
are decayed, the 1-D ones are not). Any other name -> array mapping is updated tensor by tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from . import kernels as K
from .params import Parameters


def _split(p: Parameters, flat: np.ndarray) -> list[tuple[np.ndarray, bool]]:
    """flat (laid out as p.flat) cut into its 2-D part (decayed) and its 1-D part, leaving out an
    empty one (LoRA's adapters are all 2-D)."""
    return [(part, decay) for part, decay in ((flat[: p.n_decay], True), (flat[p.n_decay :], False)) if part.size]


def _segments(params: Mapping[str, np.ndarray]) -> list[tuple[np.ndarray, bool]]:
    """Flat views to update and whether weight decay applies to each (2-D tensors only)."""
    if isinstance(params, Parameters):
        return _split(params, params.flat)
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or not p.flags.c_contiguous or not p.flags.writeable:
            raise ValueError(f"parameter {name!r} must be a writable C-contiguous numpy array")
    return [(p.reshape(-1), p.ndim == 2) for p in params.values()]


class _Optimizer:
    def __init__(self, params: Mapping[str, np.ndarray], lr: float):
        self.params = params
        self.lr = float(lr)
        self._segments = _segments(params)
        self._scratch: np.ndarray | None = None

    def _grad_segments(self, grads: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """grads laid out as the parameters' segments (copied once into scratch if need be)."""
        if set(grads) != set(self.params):
            missing = sorted(set(self.params) - set(grads)) or sorted(set(grads) - set(self.params))
            raise ValueError(f"grads and params differ in names, e.g. {missing[0]!r}")
        p = self.params
        if isinstance(p, Parameters):
            if isinstance(grads, Parameters) and grads.flat.dtype == p.flat.dtype and grads.n_decay == p.n_decay:
                flat = grads.flat
            else:
                if self._scratch is None:
                    self._scratch = np.empty_like(p.flat)
                flat = p.gather(grads, self._scratch)
            return [part for part, _ in _split(p, flat)]
        return [np.ascontiguousarray(grads[n], dtype=p[n].dtype).reshape(-1) for n in p]


class AdamW(_Optimizer):
    """torch.optim.AdamW: bias-corrected moments, decoupled weight decay on 2-D tensors only.

    ``opt.lr`` may be changed between steps (the training loop's schedule sets it); there is no
    clipping here (see clip_grad_norm).
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float = 1e-3,
        betas=(0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        super().__init__(params, lr)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        self.t = 0  # steps taken; the bias correction of step t uses beta ** t
        self.m = [np.zeros_like(p) for p, _ in self._segments]
        self.v = [np.zeros_like(p) for p, _ in self._segments]

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        self.t += 1
        for (p, decay), g, m, v in zip(self._segments, self._grad_segments(grads), self.m, self.v):
            K.adamw_update(
                p, g, m, v, self.lr, self.beta1, self.beta2, self.eps, self.weight_decay if decay else 0.0, self.t
            )


class SGD(_Optimizer):
    """Plain stochastic gradient descent, p -= lr * g, kept to compare against AdamW."""

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        for (p, _), g in zip(self._segments, self._grad_segments(grads)):
            p -= self.lr * g


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """The learning rate of a 0-based step: warmup, then cosine decay to min_lr (nanoGPT's get_lr)."""
    # 1) linear warmup for warmup_steps steps
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    # 2) after decay_steps: min_lr
    if step > decay_steps:
        return min_lr
    # 3) in between: cosine decay down to min_lr
    ratio = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def clip_grad_norm(grads: Mapping[str, np.ndarray], max_norm: float) -> float:
    """Scale grads in place so their global L2 norm is at most max_norm (as torch's
    clip_grad_norm_, including its 1e-6); returns the norm before clipping."""
    tensors = [grads.flat] if isinstance(grads, Parameters) else list(grads.values())
    norm = math.sqrt(sum(float(np.vdot(t, t)) for t in tensors))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for t in tensors:
            t *= coef
    return norm
