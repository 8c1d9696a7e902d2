"""The memory a training run needs, worked out before anything is allocated, and the memory the
machine has: a model too big for the machine is refused in one line instead of failing half-way.

The estimate counts the arrays that model.py, activations.py, optim.py and parallel.py allocate for
one step (tests/test_train.py holds it against a measured peak).
"""

from __future__ import annotations

import math

import numpy as np

from .config import GPTConfig

BASELINE = 90 * 2**20  # Python, NumPy, the BLAS and this package, before the first array (measured: 80-85)


def training_bytes(
    cfg: GPTConfig, batch: int, block: int, grad_accum: int, shards: int, trained: int | None = None, dtype=np.float32
) -> int:
    """Peak bytes of a run at batch x block tokens per micro-batch over `shards` threads; `trained`
    is the number of LoRA adapters' weights in a LoRA run (the model's own weights are then frozen)."""
    P = sum(math.prod(shape) for shape in cfg.shapes().values())
    B, T, C, NH, L, V = batch, block, cfg.n_embd, cfg.n_head, cfg.n_layer, cfg.vocab_size
    # what trains: its gradients, AdamW's two moments, each other shard's gradients, the accumulated gradient
    per_trained = 3 + (shards - 1) + (grad_accum > 1)
    if trained is None:
        weights = P * (1 + per_trained)
    else:  # frozen weights, the adapters, and each shard's Workspace for LoRALinear's products: one
        # (B*T, width) array per width its layers give out (3C, C, 4C) or take in (C, 4C), 13C at most
        weights = P + trained * (1 + per_trained) + shards * B * T * 13 * C
    att = B * NH * T * T
    dropout = cfg.dropout > 0
    # a block's LayerActivations: ln1, atty, resid2, ln2 (C each), qkv (3C), fch, tanh, gelu (4C each)
    layer = B * T * (19 * C + 4) + att * (1 + dropout)
    masks = (B * T * C * (1 + 2 * L) + att * L) if dropout else 0  # DropoutMasks
    activations = L * layer + (L + 1) * B * T * C + B * T * (C + V + 4) + masks  # + resid, ln_f, logits
    scratch = B * T * 11 * C + att  # Scratch: dres, dln, dbranch, datty, dqkv, dfch, datt
    evaluation = B * T * (19 * C + V + 2 * C + 4) + att  # loss(): one shared block, its own logits
    return BASELINE + np.dtype(dtype).itemsize * (weights + activations + scratch + evaluation)


def available_bytes() -> int | None:
    """Memory this process can still take: the kernel's MemAvailable, within a cgroup's limit (None
    where neither can be read)."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            limit = f.read().strip()
            if limit != "max":
                found.append(int(limit) - int(g.read()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def gigabytes(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n < 100 * 2**30 else f"{n / 2**30:,.0f} GB"
