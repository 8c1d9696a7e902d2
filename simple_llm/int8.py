"""int8 weights for inference, llama.cpp's q8_0 way: blocks of 32 weights, each stored as 32 int8
values and one float32 scale.

    scale = max |w| over the block / 127          q = round(w / scale)  (in -127 .. 127)
    w ~ scale * q                                 |w - scale * q| <= scale / 2 = max |w| / 254

A weight costs 8 + 32 / 32 = 9 bits instead of 32: generating a token reads every weight once, so it
reads 3.6x fewer bytes (docs/QUANTIZATION.md has the figures). The blocks run along each row of a
weight as it is stored, (in, out) for Linear; a row whose length is not a multiple of 32 ends in a
shorter block, with its own scale (as if padded with zeros). The tied output layer is stored as
wte^T (C, V), so that it is a product like the others and the embedding reads a token's column.

The layers here are model.py's Linear, Embedding and LMHead with int8 weights, forward only: an
int8 model is for inference (GPT.quantize makes one).
"""

from __future__ import annotations

import numpy as np

from . import kernels as K

__all__ = ["KINDS", "QuantizedEmbedding", "QuantizedLinear", "dequantize", "quantize", "quantize_transposed"]

KINDS = ("int8",)  # what GPT.quantize and --quantize accept
LINEAR_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BLOCK = K.QBLOCK  # 32
ROWS_AT_ONCE = 64  # rows quantised together: the temporaries stay small for GPT-2's 50257-wide wte^T
KERNEL_ROWS = 16  # up to this many input rows, the int8 kernel; more, BLAS on dequantised slices


def quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q, scales) of a 2-D weight w (rows, cols): q (rows, cols) int8, scales (rows, ceil(cols / 32))
    float32, one per block of 32 along each row."""
    rows, cols = w.shape
    nblk = -(-cols // BLOCK)
    q = np.empty((rows, cols), np.int8)
    scales = np.empty((rows, nblk), np.float32)
    chunk = np.zeros((min(ROWS_AT_ONCE, rows), nblk * BLOCK), np.float32)  # padded with zeros
    for r0 in range(0, rows, ROWS_AT_ONCE):
        n = min(ROWS_AT_ONCE, rows - r0)
        chunk[:n, :cols] = w[r0 : r0 + n]
        blocks = chunk[:n].reshape(n, nblk, BLOCK)
        s = scales[r0 : r0 + n]
        np.abs(blocks).max(axis=2, out=s)
        s /= np.float32(127)
        inv = np.divide(1, s, out=np.zeros_like(s), where=s > 0)  # an all-zero block: q = 0
        blocks *= inv[..., None]  # in place: the chunk is ours (and this loop's one temporary is abs's)
        np.rint(blocks, out=blocks)
        np.clip(blocks, -127, 127, out=blocks)  # (w / scale is within +-127 up to rounding)
        q[r0 : r0 + n] = chunk[:n, :cols]  # float to int8: the values are whole numbers in range
    return q, scales


def quantize_transposed(w: np.ndarray, step: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """quantize(w.T), made from `step` rows of w at a time (a multiple of 32, so the blocks are the
    same): reading w.T's rows in place would stride through all of w for every few of them, which
    made GPT-2's wte^T half of the time to quantise the whole model."""
    rows, cols = w.shape
    q = np.empty((cols, rows), np.int8)
    scales = np.empty((cols, -(-rows // BLOCK)), np.float32)
    for r0 in range(0, rows, step):
        tq, ts = quantize(np.ascontiguousarray(w[r0 : r0 + step].T))
        q[:, r0 : r0 + step], scales[:, r0 // BLOCK : r0 // BLOCK + ts.shape[1]] = tq, ts
    return q, scales


def dequantize(q: np.ndarray, scales: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """The float32 weights (rows of) that (q, scales) stand for: W[i, j] = scales[i, j // 32] * q[i, j]."""
    q, scales = q[rows], scales[rows]
    return q.astype(np.float32) * np.repeat(scales, BLOCK, axis=1)[:, : q.shape[1]]


class QuantizedLinear:
    """y = x @ W + bias with W int8 (in, out), as quantize() makes it: Linear.forward's int8 twin."""

    def __init__(self, weight: tuple[np.ndarray, np.ndarray], bias: np.ndarray | None):
        self.q, self.scales = weight  # (in, out) int8, (in, ceil(out / 32)) float32
        self.b = bias  # (out,) or None

    def forward(self, out, x):
        """out (B, T, out) = x (B, T, in) @ W + b. A few rows (a generation step): the int8 kernel,
        which reads each weight once as a byte. Many (a prompt, an evaluation): W dequantised a slice
        of rows at a time into float32, each slice's product by BLAS, as Linear.forward does."""
        n_in, n_out = self.q.shape
        x2, y = x.reshape(-1, n_in), out.reshape(-1, n_out)
        if len(x2) <= KERNEL_ROWS:
            K.q8_matmul(y, np.ascontiguousarray(x2), self.q, self.scales, self.b)
            return
        step = max(1, (1 << 22) // n_out)  # about 16 MB of float32 weights at a time
        y[...] = 0.0 if self.b is None else self.b
        for i0 in range(0, n_in, step):
            rows = slice(i0, i0 + step)
            y += x2[:, rows] @ dequantize(self.q, self.scales, rows)


class QuantizedEmbedding:
    """x = W[:, idx]^T + wpe[pos : pos + T], W the int8 wte^T (C, V): Embedding.forward's int8 twin."""

    def __init__(self, wte_t: tuple[np.ndarray, np.ndarray], wpe: np.ndarray):
        self.q, self.scales = wte_t  # (C, V) int8, (C, ceil(V / 32)) float32
        self.wpe = wpe  # (n_ctx, C)

    def forward(self, out, idx, pos: int = 0):
        """out (B, T, C) from token ids idx (B, T) at positions pos .. pos + T - 1."""
        T = idx.shape[1]
        columns = self.q[:, idx] * self.scales[:, idx // BLOCK]  # (C, B, T)
        np.add(columns.transpose(1, 2, 0), self.wpe[pos : pos + T], out=out)
