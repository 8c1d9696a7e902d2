"""GPT-2 with every layer's forward and backward pass written out.

Read it in order, as nanoGPT's model.py: LayerNorm -> Linear -> LoRALinear -> Embedding ->
CausalSelfAttention -> MLP -> Block -> LMHead -> GPT. Each layer has a ``forward`` and a ``backward``
(llm.c's pairs); the elementwise loops are the kernels of ``simple_llm.kernels`` (compiled or NumPy),
the matrix products are NumPy's ``matmul`` (BLAS) writing into the buffers of activations.py, which
are allocated once per batch shape and reused. A weight that has no gradient buffer in ``grads`` is frozen (a LoRA
fine-tune's): its layer skips the products that would compute its gradient.

B = batch, T = sequence length, C = n_embd, NH = n_head, hs = C / NH, V = vocab_size, L = n_layer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import checkpoint, hub, int8, lora, parallel
from . import kernels as K
from .activations import (
    Activations,
    BufferPool,
    DropoutMasks,
    KVCache,
    LayerActivations,
    Scratch,
    Workspace,
    trace_steps,
)
from .config import GPTConfig
from .generation import GenerationStep, generate_tokens
from .inputs import inputs_and_targets, token_ids
from .lora import LoRAConfig
from .params import Parameters

__all__ = ["GPT", "GPTConfig"]

DECODE_THREADS_FROM = 4 << 20  # bytes of weights from which a decode step runs on two threads
# training FLOPs per block that a shard of a batch needs for its thread to pay: below that, the
# shards' Python, taking turns on the GIL, costs more than the second core gives (measured on 2
# cores: seed-tiny trains 2x faster in one shard, shakespeare-cpu 1.25x faster in two; break-even
# between 170 and 250 MFLOP a block)
SHARD_FLOPS = 250e6


def flops_per_token(cfg: GPTConfig, T: int) -> float:
    """Training FLOPs per token at T tokens a row: 6 per parameter (forward 2, backward 4) plus
    attention's 12 L C T (PaLM's estimate, as nanoGPT's estimate_mfu)."""
    n_params = sum(math.prod(shape) for shape in cfg.shapes().values())
    return 6.0 * n_params + 12.0 * cfg.n_layer * cfg.n_embd * T


def block_flops(cfg: GPTConfig, B: int, T: int) -> float:
    """Training FLOPs of a batch of B x T tokens, per block."""
    return B * T * flops_per_token(cfg, T) / cfg.n_layer


def shard_count(cfg: GPTConfig, B: int, T: int) -> int:
    """How many shards (threads) a training batch of B x T tokens runs in: one per core, but no more
    than its work pays for (SHARD_FLOPS a block each), nor than its B rows."""
    return _shards_for(block_flops(cfg, B, T), B)


def _shards_for(work: float, B: int) -> int:
    return max(1, min(parallel.cores(), B, int(work / SHARD_FLOPS)))


@lru_cache(maxsize=32)  # one per shard row count and dtype in use
def ones(n: int, dtype: np.dtype) -> np.ndarray:
    """n ones, read-only: a bias's gradient, the sum of dout's rows, is ones @ dout, a BLAS product
    (at seed-tiny's 128 rows 1.7 us where np.sum(axis=0) took 4.8)."""
    v = np.ones(n, dtype)
    v.flags.writeable = False
    return v


class LayerNorm:
    """y = (x - mean(x)) / std(x) * weight + bias over the channels of each position."""

    def __init__(self, p: Parameters, g: Parameters, name: str, eps: float):
        self.w, self.b = p[name + ".weight"], p[name + ".bias"]  # (C,)
        # (C,); frozen (no buffer in g): the kernel computes dw and db in the pass that gives dx, into
        # arrays of the layer's own that nothing reads
        self.dw = g[name + ".weight"] if name + ".weight" in g else np.zeros_like(self.w)
        self.db = g[name + ".bias"] if name + ".bias" in g else np.zeros_like(self.b)
        self.eps = eps

    def forward(self, out, mean, rstd, x):
        """out (B, T, C); mean, rstd (B*T,) saved; x (B, T, C)."""
        C = x.shape[-1]
        K.layernorm_forward(out.reshape(-1, C), mean, rstd, x.reshape(-1, C), self.w, self.b, self.eps)

    def backward(self, dx, dout, x, mean, rstd):
        """Adds into dx (B, T, C): x is the residual stream. Accumulates dw, db."""
        C = x.shape[-1]
        K.layernorm_backward(
            dx.reshape(-1, C), self.dw, self.db, dout.reshape(-1, C), x.reshape(-1, C), self.w, mean, rstd
        )


class Linear:
    """y = x @ weight + bias, weight stored (in, out) as GPT-2's Conv1D stores it."""

    def __init__(self, p: Parameters, g: Parameters, name: str):
        self.w, self.b = p[name + ".weight"], p[name + ".bias"]  # (in, out), (out,)
        self.dw, self.db = g.get(name + ".weight"), g.get(name + ".bias")  # None: frozen

    def forward(self, out, x):
        """out (B, T, out) = x (B, T, in) @ w + b, as one (B*T, in) @ (in, out) product: NumPy would
        otherwise make one small BLAS call per batch row (twice as slow here)."""
        n_in, n_out = self.w.shape
        y = out.reshape(-1, n_out)
        np.matmul(x.reshape(-1, n_in), self.w, out=y)
        y += self.b

    def backward(self, dx, dout, x):
        """Writes dx (B, T, in), dw and db (not for a frozen layer): each weight is used once per pass,
        so no accumulation."""
        n_in, n_out = self.w.shape
        x2, dout2 = x.reshape(-1, n_in), dout.reshape(-1, n_out)  # (B*T, in), (B*T, out)
        np.matmul(dout2, self.w.T, out=dx.reshape(-1, n_in))  # forward was: out = x @ w, so dx = dout @ w^T
        if self.dw is not None:
            np.matmul(x2.T, dout2, out=self.dw)  # dw = x^T @ dout
            np.matmul(ones(len(dout2), dout2.dtype), dout2, out=self.db)  # the bias was added to every row


class LoRALinear(Linear):
    """y = x @ W + b + (alpha / R) * (x @ A) @ B: a frozen Linear beside LoRA's two trained adapters,
    A (in, R) and B (R, out). B starts at zero, so a LoRA run starts from the frozen model exactly;
    (alpha / R) * A @ B is the change to W that training learns, of rank R at most (lora.py).
    The products in between go into the replica's Workspace, the same arrays at every step."""

    def __init__(self, p: Parameters, g: Parameters, name: str, adapters: Parameters, scale: float, work: Workspace):
        super().__init__(p, g, name)  # W, b: frozen, as g holds only the adapters' gradients
        self.A, self.B = adapters[name + ".lora_A"], adapters[name + ".lora_B"]  # (in, R), (R, out)
        self.dA, self.dB = g[name + ".lora_A"], g[name + ".lora_B"]
        self.scale = scale  # alpha / R
        self.work = work

    def _xa(self, x2):
        """xa = scale * x @ A (B*T, R): R is small, so this product is cheap."""
        xa = np.matmul(x2, self.A, out=self.work.get("xa", (len(x2), self.A.shape[1]), x2.dtype))
        xa *= self.scale
        return xa

    def forward(self, out, x):
        """out (B, T, out) = x @ W + b + scale * (x @ A) @ B."""
        super().forward(out, x)
        n_in, n_out = self.w.shape
        xa = self._xa(x.reshape(-1, n_in))
        y = out.reshape(-1, n_out)  # a view: out is contiguous
        y += np.matmul(xa, self.B, out=self.work.get("out", y.shape, y.dtype))

    def backward(self, dx, dout, x):
        """Writes dx (B, T, in), dA and dB."""
        super().backward(dx, dout, x)  # dx = dout @ W^T; W and b are frozen
        n_in, n_out = self.w.shape
        x2, dout2 = x.reshape(-1, n_in), dout.reshape(-1, n_out)  # (B*T, in), (B*T, out)
        # forward was: out += xa @ B with xa = s * x @ A, s = scale (B*T, R), so:
        xa = self._xa(x2)  # recomputed: R / out of the cost of x @ W, less than 1% at rank 8
        np.matmul(xa.T, dout2, out=self.dB)  # dB = xa^T @ dout
        dxa = np.matmul(dout2, self.B.T, out=self.work.get("dxa", xa.shape, xa.dtype))  # d xa = dout @ B^T
        dxa *= self.scale  # and xa = s * (x @ A): d (x @ A) = s * d xa
        np.matmul(x2.T, dxa, out=self.dA)  # dA = x^T @ d (x @ A)
        dx2 = dx.reshape(-1, n_in)
        dx2 += np.matmul(dxa, self.A.T, out=self.work.get("in", dx2.shape, dx2.dtype))  # dx += d (x @ A) @ A^T


def dropout_mask(mask, p, rng):
    """Fill mask with dropout's keep-mask: 0 with probability p, else 1 / (1 - p)."""
    rng.random(out=mask, dtype=mask.dtype)  # u ~ U[0, 1)
    mask += 1.0 - p  # u + 1 - p >= 1 exactly when u >= p, the kept positions
    np.floor(mask, out=mask)
    mask *= 1.0 / (1.0 - p)


class Embedding:
    """x = wte[idx] + wpe[pos : pos + T]: each token's vector plus its position's."""

    def __init__(self, p: Parameters, g: Parameters):
        self.wte, self.wpe = p["wte.weight"], p["wpe.weight"]  # (V, C), (n_ctx, C)
        self.dwte, self.dwpe = g.get("wte.weight"), g.get("wpe.weight")  # None: frozen

    def forward(self, out, idx, pos: int = 0):
        """out (B, T, C) from token ids idx (B, T) at positions pos .. pos + T - 1."""
        K.encoder_forward(out, idx, self.wte, self.wpe[pos:])

    def backward(self, dout, idx):
        """Scatter-adds dout (B, T, C) into the rows of dwte that idx used, and into dwpe."""
        if self.dwte is not None and self.dwpe is not None:  # else frozen
            K.encoder_backward(self.dwte, self.dwpe, dout, idx)


class CausalSelfAttention:
    """qkv = c_attn(x); y = softmax(q k^T / sqrt(hs), causal) v per head; out = c_proj(y)."""

    def __init__(self, p: Parameters, g: Parameters, name: str, n_head: int, linear=Linear):
        self.c_attn = linear(p, g, name + ".c_attn")
        self.c_proj = linear(p, g, name + ".c_proj")
        self.n_head = n_head

    def heads(self, x):
        """(B, T, C) -> (B, NH, T, hs), a view: head h is channels h*hs .. (h+1)*hs."""
        B, T, C = x.shape
        return x.reshape(B, T, self.n_head, C // self.n_head).transpose(0, 2, 1, 3)

    def forward(self, out, a: LayerActivations, x, cache=None, pos: int = 0):
        """out (B, Tq, C) from x (B, Tq, C). With a key/value cache (B, n_ctx, 3C), the new q, k, v
        go into cache[:, pos:pos+Tq] and the queries see every cached position before them."""
        Tq = x.shape[1]
        self.c_attn.forward(a.qkv, x)  # (B, Tq, 3C)
        if cache is not None:
            cache[:, pos : pos + Tq] = a.qkv  # keep this step's keys and values
        qkv = a.qkv if cache is None else cache[:, : pos + Tq]  # (B, T, 3C)
        self.attend(a.atty, a.att(qkv.shape[1]), qkv, a.att_mask, a.att_dropped)
        self.c_proj.forward(out, a.atty)  # (B, Tq, C)

    def attend(self, y, att, qkv, mask=None, dropped=None):
        """y (B, Tq, C) = att @ v, att (B, NH, Tq, T) = softmax(q k^T / sqrt(hs)) saved, for the last
        Tq of the T positions in qkv (B, T, 3C): query i is position T - Tq + i and sees the keys at
        or before it. With dropout, mask is the scaled keep-mask and dropped receives att * mask."""
        T, Tq, C = qkv.shape[1], y.shape[1], y.shape[2]
        q = self.heads(qkv[:, T - Tq :, :C])  # (B, NH, Tq, hs)
        k = self.heads(qkv[:, :, C : 2 * C])  # (B, NH, T, hs)
        v = self.heads(qkv[:, :, 2 * C :])  # (B, NH, T, hs)
        np.matmul(q, k.swapaxes(-1, -2), out=att)  # the scores q . k, (B, NH, Tq, T)
        K.attention_softmax_forward(att, 1.0 / math.sqrt(C // self.n_head))  # softmax(scores / sqrt(hs))
        weights = att if mask is None else np.multiply(att, mask, out=dropped)  # dropout on the weights
        np.matmul(weights, v, out=self.heads(y))  # y = weights @ v, heads side by side

    def backward(self, dx, dout, a: LayerActivations, x, s: Scratch):
        """Writes dx (B, T, C) from dout (B, T, C)."""
        self.c_proj.backward(s.datty, dout, a.atty)
        self.attend_backward(s.dqkv, s.datt, s.datty, a.qkv, a.att(a.qkv.shape[1]), a.att_mask, a.att_dropped)
        self.c_attn.backward(dx, s.dqkv, x)

    def attend_backward(self, dqkv, datt, dy, qkv, att, mask=None, dropped=None):
        """Writes dqkv (B, T, 3C) = (dq, dk, dv) from dy (B, T, C); datt (B, NH, T, T) is scratch."""
        C = dy.shape[2]
        q, k, v = (self.heads(qkv[:, :, i * C : (i + 1) * C]) for i in range(3))
        dq, dk, dv = (self.heads(dqkv[:, :, i * C : (i + 1) * C]) for i in range(3))
        dy = self.heads(dy)  # (B, NH, T, hs)
        # forward was: y = w @ v with w = att * mask, so dv = w^T @ dy and dw = dy @ v^T
        np.matmul((att if mask is None else dropped).swapaxes(-1, -2), dy, out=dv)
        np.matmul(dy, v.swapaxes(-1, -2), out=datt)
        if mask is not None:
            datt *= mask  # d att = d w * mask
        # forward was: att = softmax(scale * s), s = q @ k^T: datt becomes ds in place
        K.attention_softmax_backward(datt, att, 1.0 / math.sqrt(C // self.n_head))
        np.matmul(datt, k, out=dq)  # dq = ds @ k
        np.matmul(datt.swapaxes(-1, -2), q, out=dk)  # dk = ds^T @ q


class MLP:
    """out = c_proj(gelu(c_fc(x))), 4C wide inside."""

    def __init__(self, p: Parameters, g: Parameters, name: str, linear=Linear):
        self.c_fc = linear(p, g, name + ".c_fc")
        self.c_proj = linear(p, g, name + ".c_proj")

    def forward(self, out, a: LayerActivations, x):
        self.c_fc.forward(a.fch, x)  # (B, T, 4C)
        K.gelu_forward(a.fch_gelu, a.fch_tanh, a.fch)  # (B, T, 4C), saving tanh for the backward
        self.c_proj.forward(out, a.fch_gelu)  # (B, T, C)

    def backward(self, dx, dout, a: LayerActivations, x, s: Scratch):
        self.c_proj.backward(s.dfch, dout, a.fch_gelu)  # d fch_gelu (B, T, 4C)
        K.gelu_backward(s.dfch, a.fch, a.fch_tanh, s.dfch)  # in place: now d fch
        self.c_fc.backward(dx, s.dfch, x)


class Block:
    """x + attn(ln_1(x)), then + mlp(ln_2(.)): GPT-2's pre-norm transformer block."""

    def __init__(self, p: Parameters, g: Parameters, i: int, cfg: GPTConfig, linear=Linear):
        h = f"h.{i}."
        self.ln_1 = LayerNorm(p, g, h + "ln_1", cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(p, g, h + "attn", cfg.n_head, linear)
        self.ln_2 = LayerNorm(p, g, h + "ln_2", cfg.layer_norm_epsilon)
        self.mlp = MLP(p, g, h + "mlp", linear)

    def forward(self, out, a: LayerActivations, x, cache=None, pos: int = 0):
        """out (B, T, C) from the residual stream x (B, T, C); out may be x itself."""
        self.ln_1.forward(a.ln1, a.ln1_mean, a.ln1_rstd, x)
        self.attn.forward(a.resid2, a, a.ln1, cache, pos)
        if a.attn_drop is not None:
            a.resid2 *= a.attn_drop
        a.resid2 += x  # x + attn(ln_1(x))
        self.ln_2.forward(a.ln2, a.ln2_mean, a.ln2_rstd, a.resid2)
        self.mlp.forward(out, a, a.ln2)
        if a.mlp_drop is not None:
            out *= a.mlp_drop
        out += a.resid2  # ... + mlp(ln_2(...))

    def backward(self, dres, a: LayerActivations, x, s: Scratch):
        """dres (B, T, C): the gradient of the block's output on entry, of its input x on return.

        The skip connections pass dres through unchanged; each branch adds its own part to it
        (LayerNorm.backward adds into its input's gradient).
        """
        dbranch = dres if a.mlp_drop is None else np.multiply(dres, a.mlp_drop, out=s.dbranch)
        self.mlp.backward(s.dln, dbranch, a, a.ln2, s)
        self.ln_2.backward(dres, s.dln, a.resid2, a.ln2_mean, a.ln2_rstd)  # dres: now d resid2
        dbranch = dres if a.attn_drop is None else np.multiply(dres, a.attn_drop, out=s.dbranch)
        self.attn.backward(s.dln, dbranch, a, a.ln1, s)
        self.ln_1.backward(dres, s.dln, x, a.ln1_mean, a.ln1_rstd)  # dres: now d x


class LMHead:
    """logits = ln_f(x) @ wte^T: the output layer is the token embedding, tied (GPT-2 has no lm_head)."""

    def __init__(self, p: Parameters, g: Parameters, eps: float):
        self.ln_f = LayerNorm(p, g, "ln_f", eps)
        self.wte, self.dwte = p["wte.weight"], g.get("wte.weight")  # (V, C); dwte None: frozen

    def forward(self, out, a: Activations, x, last_only: bool = False):
        """out (B, T, V), or (B, 1, V) for the last position only, from the residual stream x."""
        self.ln_f.forward(a.lnf, a.lnf_mean, a.lnf_rstd, x)
        C, V = self.wte.shape[1], self.wte.shape[0]
        h = a.lnf[:, -1] if last_only else a.lnf.reshape(-1, C)  # one (rows, C) @ (C, V) product
        np.matmul(h, self.wte.T, out=out.reshape(-1, V))

    def backward(self, dx, dlogits, a: Activations, x, s: Scratch):
        """Adds into dx (B, T, C) from dlogits (B*T, V); *writes* dwte: the backward reaches the
        output layer first, and the embedding adds its own part to dwte later."""
        C = self.wte.shape[1]
        # forward was: logits = lnf @ wte^T, so dlnf = dlogits @ wte and dwte = dlogits^T @ lnf
        np.matmul(dlogits, self.wte, out=s.dln.reshape(-1, C))
        if self.dwte is not None:
            np.matmul(dlogits.T, a.lnf.reshape(-1, C), out=self.dwte)
        self.ln_f.backward(dx, s.dln, x, a.lnf_mean, a.lnf_rstd)


class QuantizedLMHead(LMHead):
    """LMHead of an int8 model: logits = ln_f(x) @ W, W the int8 wte^T (C, V) (int8.py), forward only."""

    def __init__(self, p: Parameters, g: Parameters, eps: float, wte_t: tuple[np.ndarray, np.ndarray]):
        self.ln_f = LayerNorm(p, g, "ln_f", eps)
        self.out = int8.QuantizedLinear(wte_t, None)

    def forward(self, out, a: Activations, x, last_only: bool = False):
        self.ln_f.forward(a.lnf, a.lnf_mean, a.lnf_rstd, x)
        h = a.lnf[:, -1] if last_only else a.lnf  # (rows, C) @ (C, V), as LMHead.forward
        self.out.forward(out, h)


class GPT:
    """GPT-2: token + position embedding, n_layer blocks, ln_f and the output layer tied to wte.

    ``params`` holds the weights under GPT-2's checkpoint names; ``loss_and_grads`` returns gradients
    under the same names. ``forward``, ``loss``, ``generate`` and ``stream`` may run in several
    threads at once: each call borrows its own buffers, and each generation has its own cache.
    ``quantize("int8")`` makes an int8 copy for inference (``quantized`` names its kind).
    ``add_lora`` freezes the weights and adds LoRA's adapters, which are then all that trains:
    ``trainable`` is what an optimizer updates (``params``, or ``adapters``), and ``grads`` matches it.
    """

    quantized: str | None = None  # "int8" for a model that quantize() made
    lora: LoRAConfig | None = None  # set by add_lora
    adapters: Parameters | None = None  # a LoRA model's A and B of every targeted layer

    def __init__(self, config: GPTConfig, seed: int = 0, dtype: DTypeLike = np.float32, _init: bool = True):
        """_init=False leaves the weights at zero, for a caller that writes them all (from_pretrained:
        drawing GPT-2 124M's initial weights takes longer than reading its checkpoint)."""
        if np.dtype(dtype) not in K.FLOAT_DTYPES:
            raise ValueError(f"GPT: dtype must be float32 or float64, not {np.dtype(dtype)}")
        self.config = config
        self.dtype = np.dtype(dtype)
        self.params = Parameters(config.shapes(), self.dtype)
        self.grads = self.params.like()
        self.int8_weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # quantize()'s (q, scales)
        self.rng = np.random.default_rng(seed)  # dropout masks
        if _init:
            self._init_weights(np.random.default_rng(seed))
        self._build_layers()
        self._replicas: list[GPT] = []  # one per shard of a training batch (loss_and_grads)

    def _build_layers(self) -> None:
        """The layers, bound to views of params (their weights) and grads (their gradients); an int8
        model's linear layers, embedding and output layer hold int8_weights instead."""
        p, g, cfg = self.params, self.grads, self.config
        linear: Callable[[Parameters, Parameters, str], Any] = Linear
        if self.quantized:
            w = self.int8_weights
            linear = lambda p, g, name: int8.QuantizedLinear(w[name + ".weight"], p[name + ".bias"])  # noqa: E731
            self.embedding: Embedding | int8.QuantizedEmbedding = int8.QuantizedEmbedding(
                w["wte.weight"], p["wpe.weight"]
            )
            self.h = [Block(p, g, i, cfg, linear) for i in range(cfg.n_layer)]
            self.head: LMHead = QuantizedLMHead(p, g, cfg.layer_norm_epsilon, w["wte.weight"])
        else:
            if self.lora and self.adapters is not None:  # g holds the adapters' gradients only: the rest is frozen
                adapters, scale, targets = self.adapters, self.lora.scale, set(self.lora.layers(cfg.n_layer))
                work = Workspace()
                linear = lambda p, g, name: (  # noqa: E731
                    LoRALinear(p, g, name, adapters, scale, work) if name in targets else Linear(p, g, name)
                )
            self.embedding = Embedding(p, g)
            self.h = [Block(p, g, i, cfg, linear) for i in range(cfg.n_layer)]
            self.head = LMHead(p, g, cfg.layer_norm_epsilon)
        self.buffers = BufferPool()
        self._decoder: Any = False  # the compiled decode step, made on first use (None: there is none)

    def _init_weights(self, rng: np.random.Generator) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit layer-norm gains, and the
        projections into the residual stream scaled by 1/sqrt(2 * n_layer) (two per block)."""
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, w in self.params.items():
            if name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight":
                w[...] = 1.0
            elif w.ndim == 1:
                w[...] = 0.0
            else:  # drawn in float64 so float32 and float64 models of one seed agree
                std = proj_std if name.endswith("c_proj.weight") else 0.02
                w[...] = rng.normal(0.0, std, size=w.shape)

    @property
    def n_params(self) -> int:
        """Every weight, adapters included."""
        adapters = 0 if self.adapters is None else self.adapters.flat.size
        return self.params.flat.size + adapters + sum(q.size for q, _ in self.int8_weights.values())

    @property
    def trainable(self) -> Parameters:
        """What training updates: every weight, or a LoRA model's adapters alone."""
        return self.params if self.adapters is None else self.adapters

    def add_lora(self, config: LoRAConfig, seed: int = 0) -> GPT:
        """Freeze every weight and add LoRA's adapters to the layers that config targets (in place;
        returns the model). A is drawn as PEFT draws it, uniform in +-1/sqrt(in) (torch's default for
        a Linear), and B is zero: the model computes what it computed before, until it trains."""
        self._not_quantized("add_lora")
        if self.lora:
            raise ValueError("add_lora: this model has LoRA adapters already; merge_lora() first")
        shapes = config.shapes(self.config)  # a ValueError for a target the model does not have
        self.adapters = Parameters(shapes, self.dtype)
        rng = np.random.default_rng(seed)
        for name, a in self.adapters.items():
            if name.endswith(".lora_A"):  # drawn in float64, as _init_weights draws
                bound = 1.0 / math.sqrt(a.shape[0])
                a[...] = rng.uniform(-bound, bound, size=a.shape)
        self.lora, self.grads = config, self.adapters.like()
        return self._rebuilt()

    def merge_lora(self) -> GPT:
        """Fold the adapters into the weights, W += (alpha / R) * A @ B, and drop them (in place;
        returns the model, now a plain one with every weight trainable)."""
        if self.lora is None or self.adapters is None:
            raise ValueError("merge_lora: this model has no LoRA adapters")
        for layer in self.lora.layers(self.config.n_layer):
            A, B = self.adapters[layer + ".lora_A"], self.adapters[layer + ".lora_B"]
            self.params[layer + ".weight"] += self.lora.scale * (A @ B)
        self.lora = self.adapters = None
        self.grads = self.params.like()
        return self._rebuilt()

    def _rebuilt(self) -> GPT:
        """After the weights changed kind: layers, replicas and the decode step made anew."""
        self._build_layers()
        self._replicas = []
        self.__dict__.pop("decode_threads", None)
        return self

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: DTypeLike = np.float32, quantize: str | None = None
    ) -> GPT:
        """Load a Hugging Face GPT-2 checkpoint directory (config.json + model.safetensors).

        quantize="int8" returns what ``from_pretrained(path).quantize("int8")`` would, quantising
        each tensor as it is read: the float32 model is never whole in memory. A directory of LoRA
        adapters (lora.py) gives its base model with the adapters added (the weights frozen)."""
        if lora.is_adapter_directory(path):
            return cls._with_adapters(Path(path), dtype, quantize)
        cfg, tensors = checkpoint.open_checkpoint(path)
        if quantize is not None:
            return cls._int8(cfg, tensors(np.dtype(np.float32)), quantize)
        model = cls(cfg, dtype=dtype, _init=False)  # only now, with every tensor's name, shape and dtype checked
        for name, tensor in tensors(model.dtype):
            model.params[name] = tensor
        return model

    @classmethod
    def _with_adapters(cls, path: Path, dtype: DTypeLike, quantize: str | None) -> GPT:
        config = lora.read_config(path)
        base = hub.model_directory(config.base)
        if lora.is_adapter_directory(base):
            raise checkpoint.CheckpointError(
                f"{path}: its base model {config.base} holds LoRA adapters itself; merge them into a model first"
            )
        model = cls.from_pretrained(base, dtype)
        adapters = lora.read_adapters(path, config, model.config)
        model.add_lora(config)
        for name, a in adapters.items():
            model.adapters[name] = a  # type: ignore[index]
        return model if quantize is None else model.merge_lora().quantize(quantize)

    def quantize(self, kind: str = "int8") -> GPT:
        """A new model for inference (forward, loss, generate, stream, trace, walk) whose linear
        layers and tied output layer hold int8 weights, blocks of 32 with one scale each (int8.py);
        layer norms, biases and the position embedding stay float32. This model is unchanged."""
        if self.dtype != np.float32:
            raise ValueError(f"quantize: the model must be float32, not {self.dtype}")
        if self.lora:  # its weights alone would leave the adapters out
            raise ValueError("quantize: this model has LoRA adapters; merge_lora() first")
        return GPT._int8(self.config, self.params.items(), kind)

    @classmethod
    def _int8(cls, config: GPTConfig, tensors: Iterable[tuple[str, np.ndarray]], kind: str) -> GPT:
        """The int8 model of the named float tensors, which arrive one at a time."""
        if kind not in int8.KINDS:
            raise ValueError(f"quantize: kind must be one of {', '.join(int8.KINDS)}, not {kind!r}")
        shapes = config.shapes()
        quantized = {name for name in shapes if name == "wte.weight" or name.endswith(int8.LINEAR_WEIGHTS)}
        model = object.__new__(cls)
        model.config, model.dtype, model.quantized = config, np.dtype(np.float32), kind
        model.params = Parameters({n: s for n, s in shapes.items() if n not in quantized}, np.float32)
        model.grads = model.params.like()  # (never written: an int8 model does not train)
        model.int8_weights, model._replicas, model.rng = {}, [], np.random.default_rng(0)
        for name, tensor in tensors:
            if name == "wte.weight":  # stored transposed: the output layer's (C, V) product
                model.int8_weights[name] = int8.quantize_transposed(tensor)
            elif name in quantized:
                model.int8_weights[name] = int8.quantize(tensor)
            else:
                model.params[name] = tensor
        model._build_layers()
        return model

    def save_pretrained(self, path: str | os.PathLike, eos_token_id: int | None = None) -> Path:
        """Write config.json + model.safetensors that transformers' GPT2LMHeadModel loads; for a LoRA
        model, adapter_config.json + adapter_model.safetensors that PEFT loads onto its base."""
        self._not_quantized("save_pretrained")
        if self.lora is not None and self.adapters is not None:
            return lora.save(path, self.lora, self.adapters)
        return checkpoint.save(self.config, self.params, path, eos_token_id)

    # forward ---------------------------------------------------------------------------------

    def _blocks(self, a: Activations, idx, cache: KVCache | None = None) -> None:
        """resid[0] = embedding(idx), then every block: fills a.resid[L]. With a cache, idx are the
        positions after the cache.length already in it. Dropout applies where a holds masks."""
        pos = 0 if cache is None else cache.length
        self.embedding.forward(a.resid[0], idx, pos)
        if a.emb_drop is not None:
            a.resid[0] *= a.emb_drop
        for l, block in enumerate(self.h):
            block.forward(a.resid[l + 1], a.layers[l], a.resid[l], None if cache is None else cache.layers[l], pos)

    def forward(self, idx: ArrayLike) -> np.ndarray:
        """Logits (B, T, vocab_size) for token ids idx (B, T); a new array, no dropout."""
        x = token_ids(idx, self.config.vocab_size, self.config.n_ctx)
        B, T = x.shape
        logits = np.empty((B, T, self.config.vocab_size), self.dtype)
        make = lambda: Activations(self.config, B, T, self.dtype, per_layer=False)  # noqa: E731
        with self.buffers.lease(("eval", B, T), make) as a:
            self._blocks(a, x)
            self.head.forward(logits, a, a.resid[-1])
        return logits

    def loss(self, idx: ArrayLike, targets: ArrayLike) -> float:
        """Mean cross-entropy of predicting targets (B, T) from idx (B, T), no dropout (evaluation).

        A target of -1 is not scored."""
        x, y, n = inputs_and_targets(idx, targets, self.config.vocab_size, self.config.n_ctx)
        logits = self.forward(x).reshape(-1, self.config.vocab_size)  # (B*T, V)
        losses, lse = np.empty(len(logits), self.dtype), np.empty(len(logits), self.dtype)
        K.crossentropy_forward(losses, lse, logits, y.reshape(-1))
        return float(losses.sum(dtype=np.float64) / n)

    def next_logits(self, idx: ArrayLike, cache: KVCache) -> np.ndarray:
        """Logits (B, V) for the token after idx (B, Tq), which continues the cache.length positions
        already in cache: only the Tq new positions are computed, and they join the cache."""
        x = token_ids(idx, self.config.vocab_size, self.config.n_ctx)
        B, Tq = x.shape
        if cache.length + Tq > cache.capacity:
            raise ValueError(f"{cache.length} cached + {Tq} new positions exceed the cache's {cache.capacity}")
        cfg = self.config
        step = self._decode_step() if Tq == 1 else None
        if step is not None:  # one position: every layer in one compiled call, the same computation
            out = np.empty((B, cfg.vocab_size), np.float32)
            step.step(out, np.ascontiguousarray(x[:, 0]), cache.layers, cache.length, self.decode_threads)
            cache.length += 1
            return out
        logits = np.empty((B, 1, cfg.vocab_size), self.dtype)
        make = lambda: Activations(cfg, B, Tq, self.dtype, per_layer=False, T_max=cfg.n_ctx)  # noqa: E731
        with self.buffers.lease(("cached", B, Tq), make) as a:
            self._blocks(a, x, cache=cache)
            self.head.forward(logits, a, a.resid[-1], last_only=True)
        cache.length += Tq
        return logits[:, 0]

    @cached_property
    def decode_threads(self) -> int:
        """Threads that share the compiled decode step's products: two where there are two cores and
        the weights are large enough that a second thread pays for its start (about 30 us). Worked
        out once: the step asks at every token."""
        weight_bytes = self.params.flat.nbytes + sum(q.nbytes + s.nbytes for q, s in self.int8_weights.values())
        return 2 if weight_bytes >= DECODE_THREADS_FROM and parallel.cores() > 1 else 1

    def _decode_step(self) -> Any:
        """The compiled decode step over this model's own weights (kernels.decoder), or None: a
        float64 model, a LoRA model (merge_lora makes it one step) or the NumPy backend runs its layers."""
        if self._decoder is False:
            plain = self.dtype == np.float32 and self.lora is None
            self._decoder = K.decoder(*self._decoder_weights()) if plain else None
        return self._decoder

    def _decoder_weights(self) -> tuple:
        p, cfg = self.params, self.config
        w = lambda name: self.int8_weights.get(name, p.get(name))  # noqa: E731
        blocks = []
        for l in range(cfg.n_layer):
            names = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                     "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                     "mlp.c_proj.weight", "mlp.c_proj.bias")  # fmt: skip
            blocks.append(tuple(w(f"h.{l}.{name}") for name in names))
        eps = cfg.layer_norm_epsilon
        return cfg.n_head, eps, w("wte.weight"), p["wpe.weight"], p["ln_f.weight"], p["ln_f.bias"], blocks

    # forward + backward ----------------------------------------------------------------------

    def loss_and_grads(self, idx: ArrayLike, targets: ArrayLike) -> tuple[float, Parameters]:
        """Mean cross-entropy and its gradient for every trainable parameter (training: dropout is on).

        idx, targets (B, T); a target of -1 is not scored. The gradients have the names, shapes and
        dtype of ``trainable`` (``params``, or a LoRA model's ``adapters``); they are the model's own
        buffers (views into ``grads.flat``), which the next call overwrites: copy them to keep them.
        The batch runs in shards on threads, one per core where its work pays for the thread
        (shard_count; parallel.py); the result is the same as in one piece up to the order of float
        sums. Not thread-safe: one training loop per model.
        """
        self._not_quantized("loss_and_grads")
        x, y, n = inputs_and_targets(idx, targets, self.config.vocab_size, self.config.n_ctx)
        cfg, (B, T) = self.config, x.shape
        work = block_flops(cfg, B, T)
        rows = parallel.shards(B, _shards_for(work, B))
        while len(self._replicas) < len(rows):  # layers over the same weights, gradients of their own
            self._replicas.append(self._replica())
        make_masks = lambda: DropoutMasks(cfg, B, T, self.dtype)  # noqa: E731
        with self.buffers.lease(("dropout", B, T), make_masks) if cfg.dropout > 0 else nullcontext() as masks:
            for mask in masks.all() if masks else []:
                dropout_mask(mask, cfg.dropout, self.rng)
            shard = lambda k: self._replicas[k]._shard_backward(x[rows[k]], y[rows[k]], n, masks, rows[k])  # noqa: E731
            # work too small for two shards is too small for BLAS's own threads too (8% of seed-tiny's
            # step); one large row (a GPT-2 fine-tune at batch 1) keeps them
            losses = parallel.run(shard, len(rows), one_blas_thread=work < SHARD_FLOPS)
        for replica in self._replicas[1 : len(rows)]:
            self.grads.flat += replica.grads.flat  # the shards' gradients add up to the batch's
        return float(sum(losses) / n), self.grads

    def _not_quantized(self, fn: str) -> None:
        if self.quantized:
            raise ValueError(
                f"{fn}: an {self.quantized} model is for inference; use the float32 model it was made from"
            )

    def _replica(self) -> GPT:
        """A GPT over this model's very weights, with gradients and buffers of its own (a shard's);
        the first replica is the model itself."""
        if not self._replicas:
            return self
        replica = object.__new__(GPT)
        replica.config, replica.dtype, replica.params, replica.rng = self.config, self.dtype, self.params, self.rng
        replica.lora, replica.adapters = self.lora, self.adapters
        replica.grads = self.grads.like()
        replica._build_layers()
        return replica

    def _shard_backward(self, x, y, n: int, masks: DropoutMasks | None, rows: slice) -> float:
        """Forward and backward of rows of the batch: writes self.grads as the gradient of the batch's
        mean loss (n scored targets in all) that these rows contribute; returns their summed loss."""
        cfg, (B, T) = self.config, x.shape
        make_a = lambda: Activations(cfg, B, T, self.dtype, per_layer=True, dropout=masks is not None)  # noqa: E731
        with (
            self.buffers.lease(("train", B, T), make_a) as a,
            self.buffers.lease(("scratch", B, T), lambda: Scratch(cfg, B, T, self.dtype)) as s,
        ):
            if masks is not None:
                masks.lend(a, rows)
            logits, y = a.logits.reshape(-1, cfg.vocab_size), y.reshape(-1)  # (B*T, V), (B*T,)
            # forward
            self._blocks(a, x)
            self.head.forward(a.logits, a, a.resid[-1])
            K.crossentropy_forward(a.losses, a.lse, logits, y)
            loss = float(a.losses.sum(dtype=np.float64))
            # backward, in the reverse order of the forward
            # zero only what the backward adds into: the 1-D tensors (layer norm's kernel adds its dw,
            # db) and wpe (the embedding scatter-adds). Every product's dW is written whole (out=), and
            # dwte by the output layer before the embedding adds to it: a memset fewer, 3% of
            # seed-tiny's step
            self.grads.flat[self.grads.n_decay :].fill(0.0)
            if "wpe.weight" in self.grads:
                self.grads["wpe.weight"].fill(0.0)
            K.crossentropy_backward(logits, logits, a.lse, y, 1.0 / n)  # logits now hold dlogits
            s.dres.fill(0.0)
            self.head.backward(s.dres, logits, a, a.resid[-1], s)
            for l in reversed(range(cfg.n_layer)):
                self.h[l].backward(s.dres, a.layers[l], a.resid[l], s)
            if a.emb_drop is not None:
                s.dres *= a.emb_drop
            assert isinstance(self.embedding, Embedding)  # loss_and_grads refused an int8 model
            self.embedding.backward(s.dres, x)
        return loss

    # looking inside ------------------------------------------------------------------------

    def trace(self, idx: ArrayLike) -> list[tuple[str, np.ndarray]]:
        """Every intermediate tensor of an evaluation forward pass over idx (B, T), in order, each
        with the name of the step that made it (copies; the shapes are those of
        docs/PROCESSING_FLOW.md). The attention weights are '...attn.softmax', (B, NH, T, T)."""
        idx = token_ids(idx, self.config.vocab_size, self.config.n_ctx)
        B, T = idx.shape
        a = Activations(self.config, B, T, self.dtype, per_layer=True)
        self._blocks(a, idx)
        logits = np.empty((B, T, self.config.vocab_size), self.dtype)
        self.head.forward(logits, a, a.resid[-1])
        return [(name, np.array(t)) for name, t in trace_steps(a, logits)]

    def walk(self, idx: ArrayLike) -> Iterator[np.ndarray]:
        """The residual stream (B, T, C) after the embedding, then after each block, for idx (B, T):
        one evaluation forward pass holding the buffers of one block, whatever n_layer (trace keeps
        every block's: gigabytes for GPT-2 at 1024 tokens). Each step overwrites the array the
        last one yielded: copy what you keep."""
        x = token_ids(idx, self.config.vocab_size, self.config.n_ctx)
        B, T = x.shape
        a = Activations(self.config, B, T, self.dtype, per_layer=False)  # the blocks share one set
        self.embedding.forward(a.resid[0], x)
        yield a.resid[0]
        for l, block in enumerate(self.h):
            block.forward(a.resid[l + 1], a.layers[l], a.resid[l])  # resid[l + 1] is resid[l]: in place
            yield a.resid[l + 1]

    def attention_of(self, layer: int, x: np.ndarray) -> np.ndarray:
        """Block `layer`'s attention weights (B, NH, T, T) when its input, the residual stream, is
        x (B, T, C) (one of walk's): ln_1, c_attn and the softmax of the scores, nothing after."""
        B, T, _ = x.shape
        a = LayerActivations(self.config, B, T, T, self.dtype, dropout=False)
        block = self.h[layer]
        block.ln_1.forward(a.ln1, a.ln1_mean, a.ln1_rstd, np.ascontiguousarray(x, self.dtype))
        block.attn.c_attn.forward(a.qkv, a.ln1)
        block.attn.attend(a.atty, a.att(T), a.qkv)
        return a.att(T)

    def read_off(self, x: np.ndarray) -> np.ndarray:
        """Logits (B, T, V) that ln_f and the tied output layer give for a residual stream x
        (B, T, C): applied to the stream after the embedding or after any block (trace's steps), this
        is the logit lens; after the last block, the model's own logits."""
        B, T = x.shape[:2]
        a = Activations(self.config, B, T, self.dtype, per_layer=False)
        logits = np.empty((B, T, self.config.vocab_size), self.dtype)
        self.head.forward(logits, a, np.ascontiguousarray(x, self.dtype))
        return logits

    # generation ------------------------------------------------------------------------------

    def generate(self, idx: ArrayLike, max_new_tokens: int = 20, **options: Any) -> np.ndarray:
        """The prompt idx (B, T) followed by up to max_new_tokens new tokens: (B, T + new).

        options are stream's (temperature, top_k, seed, top_p, stop_token, use_cache), and so is
        the whole behaviour; rows that reached stop_token first are padded with it.
        """
        idx = token_ids(idx, self.config.vocab_size)
        steps = [step.tokens[:, None] for step in self.stream(idx, max_new_tokens, **options)]
        return np.concatenate([idx, *steps], axis=1)

    def stream(
        self,
        idx: ArrayLike,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | np.random.Generator = 0,
        top_p: float | None = None,
        stop_token: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[GenerationStep]:
        """Yield one GenerationStep (tokens (B,), probs (B, V)) per new token after the prompt idx (B, T).

        temperature 0 is greedy; otherwise tokens are sampled from softmax(logits / temperature),
        restricted to the top_k most likely and to the smallest set whose probability reaches top_p,
        with random numbers from seed (an int, or a Generator that a session keeps drawing from).
        It ends early once every row has produced stop_token. A key/value cache of its own makes each
        new token cost one position's work; past n_ctx the context slides (the last n_ctx tokens are
        kept and the cache is rebuilt from them).
        """
        idx = token_ids(idx, self.config.vocab_size)
        return generate_tokens(self, idx, max_new_tokens, temperature, top_k, seed, top_p, stop_token, use_cache)
