"""GPT-2's parameter names and shapes, and the one flat buffer that holds them.

The names and the (in, out) layout of the linear weights are those of OpenAI's GPT-2 checkpoints, so a
Hugging Face ``model.safetensors`` maps onto ``Parameters`` name for name.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def gpt2_shapes(vocab_size: int, n_ctx: int, n_embd: int, n_layer: int) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in checkpoint order.

    >>> list(gpt2_shapes(10, 4, 8, 1))[:3]
    ['wte.weight', 'wpe.weight', 'h.0.ln_1.weight']
    """
    C = n_embd
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (vocab_size, C), "wpe.weight": (n_ctx, C)}
    for i in range(n_layer):
        h = f"h.{i}."
        shapes[h + "ln_1.weight"] = (C,)
        shapes[h + "ln_1.bias"] = (C,)
        shapes[h + "attn.c_attn.weight"] = (C, 3 * C)
        shapes[h + "attn.c_attn.bias"] = (3 * C,)
        shapes[h + "attn.c_proj.weight"] = (C, C)
        shapes[h + "attn.c_proj.bias"] = (C,)
        shapes[h + "ln_2.weight"] = (C,)
        shapes[h + "ln_2.bias"] = (C,)
        shapes[h + "mlp.c_fc.weight"] = (C, 4 * C)
        shapes[h + "mlp.c_fc.bias"] = (4 * C,)
        shapes[h + "mlp.c_proj.weight"] = (4 * C, C)
        shapes[h + "mlp.c_proj.bias"] = (C,)
    shapes["ln_f.weight"] = (C,)
    shapes["ln_f.bias"] = (C,)
    return shapes


class Parameters(dict):
    """name -> array, every array a view into one flat buffer ``flat``.

    The 2-D tensors (the ones AdamW decays) come first, ``flat[:n_decay]``, then the 1-D ones, so the
    optimizer step and gradient clipping are each one pass over one or two flat arrays (llm.c's
    layout). Assigning ``params[name] = array`` copies into the existing view, so the model and its
    optimizer keep seeing one buffer.
    """

    flat: np.ndarray
    n_decay: int

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], dtype: np.dtype | type = np.float32):
        order = [n for n, s in shapes.items() if len(s) >= 2] + [n for n, s in shapes.items() if len(s) < 2]
        sizes = {n: int(np.prod(shapes[n], dtype=np.int64)) for n in order}
        self.flat = np.zeros(sum(sizes.values()), dtype=dtype)
        self.n_decay = sum(sizes[n] for n in order if len(shapes[n]) >= 2)
        views, offset = {}, 0
        for n in order:
            views[n] = self.flat[offset : offset + sizes[n]].reshape(shapes[n])
            offset += sizes[n]
        super().__init__((n, views[n]) for n in shapes)  # checkpoint order for readers

    def __setitem__(self, name: str, value: object) -> None:
        if name not in self:
            raise KeyError(f"no parameter named {name!r}")
        target = self[name]
        value = np.asarray(value)
        if value.shape != target.shape:
            raise ValueError(f"{name} has shape {target.shape}; cannot assign {value.shape}")
        target[...] = value

    def like(self) -> Parameters:
        """A zero-filled Parameters of the same names, shapes, dtype and layout (for gradients)."""
        return Parameters({n: a.shape for n, a in self.items()}, self.flat.dtype)

    def gather(self, tensors: Mapping[str, np.ndarray], out: np.ndarray) -> np.ndarray:
        """Copy a name -> array mapping into ``out`` laid out as ``self.flat`` is."""
        for name, view in self.items():
            offset = _offset(self.flat, view)
            out[offset : offset + view.size] = np.asarray(tensors[name]).reshape(-1)
        return out


def _offset(base: np.ndarray, view: np.ndarray) -> int:
    return (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize
