"""GPT-2 with every layer's forward and backward pass written out.

Read it in order, as nanoGPT's model.py: LayerNorm -> Linear -> CausalSelfAttention -> MLP -> Block ->
GPTConfig -> GPT. Each layer has a ``forward`` and a ``backward`` (llm.c's pairs); the elementwise and
attention loops are the kernels of ``simple_llm.kernels`` (compiled or NumPy), the matrix products are
NumPy's ``matmul`` (BLAS) writing into buffers that are allocated once per batch shape and reused.

B = batch, T = sequence length, C = n_embd, NH = n_head, hs = C / NH, V = vocab_size, L = n_layer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import kernels as K
from .params import Parameters, gpt2_shapes
from .sampling import GenerationStep, Sampler


class LayerNorm:
    """y = (x - mean(x)) / std(x) * weight + bias over the channels of each position."""

    def __init__(self, p: Parameters, g: Parameters, name: str, eps: float):
        self.w, self.b = p[name + ".weight"], p[name + ".bias"]  # (C,)
        self.dw, self.db = g[name + ".weight"], g[name + ".bias"]  # (C,)
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
        self.dw, self.db = g[name + ".weight"], g[name + ".bias"]

    def forward(self, out, x):
        """out (B, T, out) = x (B, T, in) @ w + b, as one (B*T, in) @ (in, out) product: NumPy would
        otherwise make one small BLAS call per batch row (twice as slow here)."""
        n_in, n_out = self.w.shape
        y = out.reshape(-1, n_out)
        np.matmul(x.reshape(-1, n_in), self.w, out=y)
        y += self.b

    def backward(self, dx, dout, x):
        """Writes dx (B, T, in), dw and db: each weight is used once per pass, so no accumulation."""
        n_in, n_out = self.w.shape
        x2, dout2 = x.reshape(-1, n_in), dout.reshape(-1, n_out)  # (B*T, in), (B*T, out)
        np.matmul(dout2, self.w.T, out=dx.reshape(-1, n_in))  # forward was: out = x @ w, so dx = dout @ w^T
        np.matmul(x2.T, dout2, out=self.dw)  # dw = x^T @ dout
        np.sum(dout2, axis=0, out=self.db)  # the bias was added to every row


def dropout_mask(mask, p, rng):
    """Fill mask with dropout's keep-mask: 0 with probability p, else 1 / (1 - p)."""
    rng.random(out=mask, dtype=mask.dtype)  # u ~ U[0, 1)
    mask += 1.0 - p  # u + 1 - p >= 1 exactly when u >= p, the kept positions
    np.floor(mask, out=mask)
    mask *= 1.0 / (1.0 - p)


class CausalSelfAttention:
    """qkv = c_attn(x); y = softmax(q k^T / sqrt(hs), causal) v per head; out = c_proj(y)."""

    def __init__(self, p: Parameters, g: Parameters, name: str, n_head: int):
        self.c_attn = Linear(p, g, name + ".c_attn")
        self.c_proj = Linear(p, g, name + ".c_proj")
        self.n_head = n_head

    def forward(self, out, a: LayerActivations, x, cache=None, pos=0):
        """out (B, Tq, C) from x (B, Tq, C). With a key/value cache (B, n_ctx, 3C), the new q, k, v
        go into cache[:, pos:pos+Tq] and the queries see every cached position before them."""
        Tq = x.shape[1]
        self.c_attn.forward(a.qkv, x)  # (B, Tq, 3C)
        if cache is not None:
            cache[:, pos : pos + Tq] = a.qkv  # keep this step's keys and values
        context = a.qkv if cache is None else cache[:, : pos + Tq]  # (B, T, 3C)
        K.attention_forward(a.atty, a.att(context.shape[1]), context, self.n_head, a.att_mask)
        self.c_proj.forward(out, a.atty)  # (B, Tq, C)

    def backward(self, dx, dout, a: LayerActivations, x, s: Scratch):
        """Writes dx (B, T, C) from dout (B, T, C)."""
        self.c_proj.backward(s.datty, dout, a.atty)
        K.attention_backward(s.dqkv, s.datt, s.datty, a.qkv, a.att(a.qkv.shape[1]), self.n_head, a.att_mask)
        self.c_attn.backward(dx, s.dqkv, x)


class MLP:
    """out = c_proj(gelu(c_fc(x))), 4C wide inside."""

    def __init__(self, p: Parameters, g: Parameters, name: str):
        self.c_fc = Linear(p, g, name + ".c_fc")
        self.c_proj = Linear(p, g, name + ".c_proj")

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

    def __init__(self, p: Parameters, g: Parameters, i: int, cfg: GPTConfig):
        h = f"h.{i}."
        self.ln_1 = LayerNorm(p, g, h + "ln_1", cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(p, g, h + "attn", cfg.n_head)
        self.ln_2 = LayerNorm(p, g, h + "ln_2", cfg.layer_norm_epsilon)
        self.mlp = MLP(p, g, h + "mlp")

    def forward(self, out, a: LayerActivations, x, cache=None, pos=0):
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


@dataclass
class GPTConfig:
    vocab_size: int = 50257  # GPT-2's byte-level BPE vocabulary
    n_ctx: int = 1024  # longest sequence: rows of the position table wpe
    n_embd: int = 768  # channels C of the residual stream
    n_head: int = 12  # attention heads; each sees n_embd / n_head channels
    n_layer: int = 12  # transformer blocks
    layer_norm_epsilon: float = 1e-5  # GPT-2's value, added to the variance
    dropout: float = 0.0  # on embeddings, attention weights and residual branches while training

    def __post_init__(self):
        for name in ("vocab_size", "n_ctx", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"GPTConfig: {name} must be a positive integer, not {value!r}")
            setattr(self, name, int(value))
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), not {self.dropout!r}")
        if not float(self.layer_norm_epsilon) > 0.0:
            raise ValueError(f"GPTConfig: layer_norm_epsilon must be positive, not {self.layer_norm_epsilon!r}")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return gpt2_shapes(self.vocab_size, self.n_ctx, self.n_embd, self.n_layer)


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
        # dropout keep-masks, scaled by 1 / (1 - p); None when dropout is off
        self.att_mask = np.empty((B, NH, Tq, Tq), dtype) if dropout else None
        self.attn_drop = np.empty((B, Tq, C), dtype) if dropout else None
        self.mlp_drop = np.empty((B, Tq, C), dtype) if dropout else None

    def att(self, T: int) -> np.ndarray:
        """The attention weights (B, NH, Tq, T) of queries over T keys, a contiguous view."""
        B, NH, Tq = self.shape
        return self._att[: B * NH * Tq * T].reshape(B, NH, Tq, T)


class Activations:
    """Every buffer of one forward pass over (B, T) positions, allocated once and reused.

    With per_layer (training, tracing) each block keeps its own LayerActivations, as the backward
    needs; otherwise (inference) the blocks share one and each writes its output over its input.
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
        self.emb_drop = np.empty((B, T, C), dtype) if dropout else None
        self.lnf = np.empty((B, T, C), dtype)  # ln_f(resid[L])
        self.lnf_mean = np.empty(B * T, dtype)
        self.lnf_rstd = np.empty(B * T, dtype)
        self.logits = np.empty((B, T, V), dtype) if per_layer else None  # training: becomes dlogits
        self.losses = np.empty(B * T, dtype)
        self.lse = np.empty(B * T, dtype)  # log-sum-exp of each row of logits


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


class GPT:
    """GPT-2: token + position embedding, n_layer blocks, ln_f, output layer tied to wte.

    ``params`` holds the weights under GPT-2's checkpoint names; ``loss_and_grads`` returns gradients
    under the same names. Buffers are allocated once per batch shape and reused.
    """

    def __init__(self, config: GPTConfig, seed: int = 0, dtype: DTypeLike = np.float32):
        if np.dtype(dtype) not in K.FLOAT_DTYPES:
            raise ValueError(f"GPT: dtype must be float32 or float64, not {np.dtype(dtype)}")
        self.config = config
        self.dtype = np.dtype(dtype)
        self.params = Parameters(config.shapes(), self.dtype)
        self.grads = self.params.like()
        self.rng = np.random.default_rng(seed)  # dropout masks
        self._init_weights(np.random.default_rng(seed))
        p, g = self.params, self.grads
        self.h = [Block(p, g, i, config) for i in range(config.n_layer)]
        self.ln_f = LayerNorm(p, g, "ln_f", config.layer_norm_epsilon)
        self._buffers: dict[tuple, object] = {}

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
        return self.params.flat.size

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: DTypeLike = np.float32) -> GPT:
        """Load a Hugging Face GPT-2 checkpoint directory (config.json + model.safetensors)."""
        from .checkpoint import load

        return load(path, dtype)

    def save_pretrained(self, path: str | os.PathLike, eos_token_id: int | None = None) -> Path:
        """Write config.json + model.safetensors that transformers' GPT2LMHeadModel loads."""
        from .checkpoint import save

        return save(self, path, eos_token_id)

    # buffers ---------------------------------------------------------------------------------

    def _buffer(self, key: tuple, make):
        """The buffers for one batch shape, made on first use; the last few shapes are kept."""
        if key not in self._buffers:
            if len(self._buffers) >= 4:
                del self._buffers[next(iter(self._buffers))]
            self._buffers[key] = make()
        return self._buffers[key]

    def _check_idx(self, idx, name: str = "idx", any_length: bool = False) -> np.ndarray:
        idx = np.asarray(idx)
        if idx.ndim != 2 or idx.shape[0] == 0 or idx.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D array (B, T) of token ids, not shape {idx.shape}")
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{name} must hold integer token ids, not {idx.dtype}")
        if idx.shape[1] > self.config.n_ctx and not any_length:
            raise ValueError(f"{name} has {idx.shape[1]} positions; this model's context is {self.config.n_ctx}")
        V = self.config.vocab_size
        if name == "targets":
            if idx.min() < -1 or idx.max() >= V:
                raise ValueError(f"targets must be token ids in [0, {V}) or -1 (not scored)")
        elif idx.min() < 0 or idx.max() >= V:
            raise ValueError(f"{name} must be token ids in [0, {V})")
        return np.ascontiguousarray(idx, dtype=np.int64)

    # forward ---------------------------------------------------------------------------------

    def _embed_and_blocks(self, a: Activations, idx, training: bool, cache=None, pos: int = 0):
        """resid[0] = wte[idx] + wpe[pos:pos+T], then every block: fills a.resid[L]."""
        p, T = self.params, idx.shape[1]
        K.encoder_forward(a.resid[0], idx, p["wte.weight"], p["wpe.weight"][pos : pos + T])
        if training and a.emb_drop is not None:
            dropout_mask(a.emb_drop, self.config.dropout, self.rng)
            a.resid[0] *= a.emb_drop
            for la in a.layers:
                for mask in (la.att_mask, la.attn_drop, la.mlp_drop):
                    dropout_mask(mask, self.config.dropout, self.rng)
        for l, block in enumerate(self.h):
            block.forward(a.resid[l + 1], a.layers[l], a.resid[l], None if cache is None else cache[l], pos)

    def _logits(self, out, a: Activations, last_only: bool = False):
        """out = ln_f(resid[L]) @ wte^T, for every position or only the last: the output layer is
        the token embedding, tied. Returns ln_f's output (B, T, C)."""
        self.ln_f.forward(a.lnf, a.lnf_mean, a.lnf_rstd, a.resid[-1])
        C, V = self.config.n_embd, self.config.vocab_size
        x = a.lnf[:, -1] if last_only else a.lnf.reshape(-1, C)  # one (rows, C) @ (C, V) product
        np.matmul(x, self.params["wte.weight"].T, out=out.reshape(-1, V))
        return a.lnf

    def forward(self, idx: ArrayLike) -> np.ndarray:
        """Logits (B, T, vocab_size) for token ids idx (B, T); a new array, no dropout."""
        x = self._check_idx(idx)
        B, T = x.shape
        a = self._buffer(("eval", B, T), lambda: Activations(self.config, B, T, self.dtype, per_layer=False))
        self._embed_and_blocks(a, x, training=False)
        logits = np.empty((B, T, self.config.vocab_size), self.dtype)
        self._logits(logits, a)
        return logits

    def loss(self, idx: ArrayLike, targets: ArrayLike) -> float:
        """Mean cross-entropy of predicting targets (B, T) from idx (B, T), no dropout (evaluation).

        A target of -1 is not scored."""
        x, y = self._check_pair(idx, targets)
        logits = self.forward(x).reshape(-1, self.config.vocab_size)  # (B*T, V)
        losses, lse = np.empty(len(logits), self.dtype), np.empty(len(logits), self.dtype)
        K.crossentropy_forward(losses, lse, logits, y.reshape(-1))
        return float(losses.sum(dtype=np.float64) / _n_scored(y))

    def _check_pair(self, idx: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        x, y = self._check_idx(idx), self._check_idx(targets, "targets")
        if x.shape != y.shape:
            raise ValueError(f"targets has shape {y.shape} but idx has {x.shape}")
        _n_scored(y)
        return x, y

    # forward + backward ----------------------------------------------------------------------

    def loss_and_grads(self, idx: ArrayLike, targets: ArrayLike) -> tuple[float, Parameters]:
        """Mean cross-entropy and its gradient for every parameter (training: dropout is on).

        idx, targets (B, T); a target of -1 is not scored. The gradients have the names, shapes and
        dtype of ``params``; they are the model's own buffers (views into ``grads.flat``), which the
        next call overwrites: copy them if you need to keep them.
        """
        x, y = self._check_pair(idx, targets)
        cfg, p, g = self.config, self.params, self.grads
        B, T = x.shape
        a = self._buffer(
            ("train", B, T), lambda: Activations(cfg, B, T, self.dtype, per_layer=True, dropout=cfg.dropout > 0)
        )
        s = self._buffer(("scratch", B, T), lambda: Scratch(cfg, B, T, self.dtype))
        V, C = cfg.vocab_size, cfg.n_embd
        logits = a.logits.reshape(-1, V)  # (B*T, V)
        y = y.reshape(-1)  # (B*T,)

        # forward
        self._embed_and_blocks(a, x, training=True)
        lnf = self._logits(a.logits, a)  # (B, T, C), (B, T, V)
        K.crossentropy_forward(a.losses, a.lse, logits, y)
        n = _n_scored(y)
        loss = float(a.losses.sum(dtype=np.float64) / n)

        # backward, in the reverse order of the forward
        g.flat.fill(0.0)
        K.crossentropy_backward(logits, logits, a.lse, y, 1.0 / n)  # logits now hold dlogits
        # forward was: logits = lnf @ wte^T, so dlnf = dlogits @ wte and dwte = dlogits^T @ lnf
        np.matmul(logits, p["wte.weight"], out=s.dln.reshape(-1, C))
        np.matmul(logits.T, lnf.reshape(-1, C), out=g["wte.weight"])
        s.dres.fill(0.0)
        self.ln_f.backward(s.dres, s.dln, a.resid[-1], a.lnf_mean, a.lnf_rstd)
        for l in reversed(range(cfg.n_layer)):
            self.h[l].backward(s.dres, a.layers[l], a.resid[l], s)
        if a.emb_drop is not None:
            s.dres *= a.emb_drop
        # forward was: resid[0] = wte[idx] + wpe: scatter-add (wte's gradient also has the output layer's)
        K.encoder_backward(g["wte.weight"], g["wpe.weight"], s.dres, x)
        return loss, g

    # looking inside ------------------------------------------------------------------------

    def trace(self, idx: ArrayLike) -> list[tuple[str, np.ndarray]]:
        """Every intermediate tensor of an evaluation forward pass over idx (B, T), in order, each
        with the name of the step that made it (copies; the shapes are those of
        docs/PROCESSING_FLOW.md). The attention weights are '...attn.softmax', (B, NH, T, T)."""
        idx = self._check_idx(idx)
        B, T = idx.shape
        a = Activations(self.config, B, T, self.dtype, per_layer=True)
        self._embed_and_blocks(a, idx, training=False)
        logits = np.empty((B, T, self.config.vocab_size), self.dtype)
        self._logits(logits, a)
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
        steps += [("ln_f", a.lnf), ("logits = ln_f @ wte^T", logits)]
        return [(name, np.array(t)) for name, t in steps]

    # generation ------------------------------------------------------------------------------

    def generate(
        self,
        idx: ArrayLike,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 0,
        top_p: float | None = None,
        stop_token: int | None = None,
        use_cache: bool = True,
    ) -> np.ndarray:
        """The prompt idx (B, T) followed by up to max_new_tokens new tokens: (B, T + new).

        temperature 0 is greedy; otherwise tokens are sampled from softmax(logits / temperature),
        restricted to the top_k most likely and to the smallest set whose probability reaches top_p.
        Generation ends early once every row has produced stop_token (rows that finished first are
        padded with it). A key/value cache makes each new token cost one position's work; past n_ctx
        the context slides (the last n_ctx tokens are kept).
        """
        idx = self._check_idx(idx, any_length=True)
        out = [idx]
        for step in self.stream(idx, max_new_tokens, temperature, top_k, seed, top_p, stop_token, use_cache):
            out.append(step.tokens[:, None])
        return np.concatenate(out, axis=1)

    def stream(
        self,
        idx: ArrayLike,
        max_new_tokens: int = 20,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int = 0,
        top_p: float | None = None,
        stop_token: int | None = None,
        use_cache: bool = True,
    ) -> Iterator[GenerationStep]:
        """Yield one GenerationStep (tokens (B,), probs (B, V)) per new token; see generate."""
        idx = self._check_idx(idx, any_length=True)
        sampler = Sampler(temperature, top_k, top_p, seed, self.config.vocab_size)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, not {max_new_tokens}")
        n_ctx = self.config.n_ctx
        context = idx[:, -n_ctx:]
        logits = self._logits_after(context, use_cache, pos=0)
        done = np.zeros(idx.shape[0], dtype=bool)
        for _ in range(max_new_tokens):
            probs, tokens = sampler(logits)
            if stop_token is not None:
                tokens = np.where(done, stop_token, tokens)
                done |= tokens == stop_token
            yield GenerationStep(tokens, probs)
            if stop_token is not None and done.all():
                return
            context = np.concatenate([context, tokens[:, None]], axis=1)
            if context.shape[1] > n_ctx:  # the context slides: keep the last n_ctx tokens, rebuild the cache
                context = context[:, -n_ctx:]
                logits = self._logits_after(context, use_cache, pos=0)
            else:
                logits = self._logits_after(context, use_cache, pos=context.shape[1] - 1)

    def _cache(self, B: int):
        cfg = self.config
        return self._buffer(
            ("cache", B), lambda: [np.empty((B, cfg.n_ctx, 3 * cfg.n_embd), self.dtype) for _ in range(cfg.n_layer)]
        )

    def _logits_after(self, context, use_cache: bool, pos: int):
        """Logits (B, V) for the token after context (B, T). With the cache, positions before pos are
        in it already and only context[:, pos:] is computed; without, everything is (nanoGPT's way)."""
        if not use_cache:
            return self.forward(context)[:, -1]
        new = np.ascontiguousarray(context[:, pos:])
        B, Tq = new.shape
        cfg = self.config
        a = self._buffer(("gen", B, Tq), lambda: Activations(cfg, B, Tq, self.dtype, per_layer=False, T_max=cfg.n_ctx))
        self._embed_and_blocks(a, new, training=False, cache=self._cache(B), pos=pos)
        logits = np.empty((B, 1, cfg.vocab_size), self.dtype)
        self._logits(logits, a, last_only=True)
        return logits[:, 0]


def _n_scored(targets) -> int:
    n = int(np.count_nonzero(np.asarray(targets) >= 0))
    if n == 0:
        raise ValueError("targets holds no scored position (every target is -1)")
    return n
