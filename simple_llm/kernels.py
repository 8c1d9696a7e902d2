"""The kernels, compiled or NumPy, behind one checked interface.

The backend is chosen once, at import time, as msgpack does it: the compiled kernels when they import,
the NumPy ``simple_llm.fallback`` otherwise or when ``SIMPLE_LLM_PURE_PYTHON=1``. Of the compiled
builds, the widest the CPU runs: ``simple_llm._kernels_avx512``, ``simple_llm._kernels_avx2`` (AVX2 +
FMA) or ``simple_llm._kernels`` (the baseline instruction set); ``SIMD`` names it ("avx512", "avx2",
"baseline", "neon" for aarch64's baseline; None on the fallback) and ``SIMPLE_LLM_SIMD=baseline``
(or ``avx2``) caps it. ``SIMPLE_LLM_REQUIRE_COMPILED=1`` turns a missing extension into
an ImportError (CI and wheel tests).

Every function here checks its arguments (dtype, shape, contiguity, index ranges, that outputs do
not overlap other arguments except where a kernel works in place, the numbers' ranges) and raises a
ValueError that names the offending argument, then calls the chosen backend. The backends themselves
check nothing, so a wrong shape can never reach a compiled loop that would write out of bounds, and
whatever passes the checks gives the same result on both backends.
"""

from __future__ import annotations

import importlib
import os
import platform
from types import ModuleType
from typing import Any

import numpy as np

from . import fallback


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


FORCED_FALLBACK = _env_flag("SIMPLE_LLM_PURE_PYTHON")  # the user asked for the NumPy kernels
# the compiled builds of the same kernels, by instruction level, narrowest first (setup.py)
LEVELS = {"baseline": "_kernels", "avx2": "_kernels_avx2", "avx512": "_kernels_avx512"}


def _cpu_levels() -> set[str]:
    """The levels this CPU runs, as NumPy detected them at its own import."""
    features: dict[str, bool] = {}
    for where in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # NumPy 2, NumPy 1
        try:
            features = importlib.import_module(where).__cpu_features__
            break
        except (ImportError, AttributeError):
            continue
    avx2 = bool(features.get("AVX2") and features.get("FMA3"))
    avx512 = avx2 and all(features.get(f) for f in ("AVX512F", "AVX512VL", "AVX512BW", "AVX512DQ"))
    return {"baseline"} | ({"avx2"} if avx2 else set()) | ({"avx512"} if avx512 else set())


def _choose() -> tuple[ModuleType, str | None]:
    """The backend and its instruction level: the widest compiled level that the CPU runs and
    SIMPLE_LLM_SIMD allows (it caps the level: baseline, avx2 or avx512), else the fallback."""
    if FORCED_FALLBACK:
        return fallback, None
    asked = os.environ.get("SIMPLE_LLM_SIMD", "").strip().lower() or list(LEVELS)[-1]
    if asked not in LEVELS:
        raise ImportError(f"SIMPLE_LLM_SIMD must be one of {', '.join(LEVELS)}, not {asked!r}")
    runs = _cpu_levels()
    failure: ImportError | None = None
    for level in reversed(list(LEVELS)[: list(LEVELS).index(asked) + 1]):
        if level not in runs:
            continue
        try:
            return importlib.import_module(f"simple_llm.{LEVELS[level]}"), level
        except ImportError as exc:  # not built (an aarch64 wheel has no avx2 module), or broken
            failure = failure or exc
    if _env_flag("SIMPLE_LLM_REQUIRE_COMPILED"):
        raise ImportError(f"SIMPLE_LLM_REQUIRE_COMPILED is set but the compiled kernels do not import: {failure}")
    return fallback, None


impl, SIMD = _choose()
if SIMD == "baseline" and platform.machine().lower() in ("aarch64", "arm64"):
    SIMD = "neon"  # the baseline of 64-bit Arm has NEON's four float32 lanes
BACKEND = "numpy" if impl is fallback else "cython"
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INDEX_DTYPE = np.dtype(np.int64)


# argument checks ---------------------------------------------------------------------------------


def _check(fn: str, dtype: Any, **arrays: tuple[Any, tuple]) -> None:
    """Check ``name=(array, shape)`` pairs: an ndarray of ``dtype`` and that shape, C-contiguous.

    A ``None`` in a shape accepts any size there (but not an empty array).
    """
    for name, (a, shape) in arrays.items():
        if type(a) is not np.ndarray:
            raise ValueError(f"{fn}: {name} must be a numpy array, not {type(a).__name__}")
        if a.dtype != dtype:
            raise ValueError(f"{fn}: {name} has dtype {a.dtype}, expected {np.dtype(dtype)}")
        if a.shape != shape and (
            len(a.shape) != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape))
        ):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise ValueError(f"{fn}: {name} has shape {a.shape}, expected {want}")
        if a.size == 0:  # the compiled loops start from &a[0]: there must be one
            raise ValueError(f"{fn}: {name} is empty (shape {a.shape})")
        if not a.flags.c_contiguous:
            raise ValueError(f"{fn}: {name} must be C-contiguous")


def _number(fn: str, name: str, x: Any, low: float = -np.inf, high: float = np.inf, low_open: bool = False) -> float:
    """A finite real number argument (eps, scale, a learning rate...) in [low, high) (or (low, high)
    with low_open), as a float."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not np.isfinite(x):
        raise ValueError(f"{fn}: {name} must be a finite number, not {x!r}")
    if not (x > low if low_open else x >= low) or not x < high:
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g})"
        raise ValueError(f"{fn}: {name} must be in {bounds}, not {x!r}")
    return float(x)


def _py_layout(fn: str, *arrays: Any) -> tuple | None:
    """What the layout checks of a call depend on: each array's address, shape, strides, dtype and
    writability (None when an argument is not exactly an ndarray). The compiled modules' _layout is
    the same, 15x faster; this one serves the NumPy backend."""
    key: list[Any] = [fn]
    for a in arrays:
        if type(a) is not np.ndarray:
            return None
        key.append((a.__array_interface__["data"][0], a.shape, a.strides, a.dtype.num, a.flags.writeable))
    return tuple(key)


_layout = getattr(impl, "_layout", _py_layout)
# Layouts whose checks passed: a training step passes the same buffers at every step, and checking
# them was 0.3 ms of seed-tiny's 1.7 ms step. Whether a call's arrays have the right dtypes, shapes,
# contiguity and writability and are apart depends only on what _layout reads, so a layout that
# passed once passes again; the values (token ids, numbers) are still checked at every call.
_CHECKED: dict[tuple, None] = {}


def _checked(key: tuple | None) -> None:
    if key is not None:
        if len(_CHECKED) >= 100_000:  # (a bound: buffers of ever new batch shapes)
            _CHECKED.clear()
        _CHECKED[key] = None


def _separate(fn: str, outputs: tuple[str, ...], in_place: tuple[tuple[str, str], ...], **arrays: Any) -> None:
    """Each output shares no memory with any other argument, except an in-place pair (out, inp)
    that is the very same array: a partial overlap would make each backend read what it (or another
    thread) had already written, in its own order."""
    for out in outputs:
        a = arrays[out]
        for name, b in arrays.items():
            if name == out or not np.may_share_memory(a, b):
                continue
            same = a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.shape == b.shape
            if not (same and ((out, name) in in_place or (name, out) in in_place)):
                raise ValueError(f"{fn}: {out} overlaps {name} in memory")


def _writable(fn: str, **arrays: np.ndarray) -> None:
    for name, a in arrays.items():
        if not a.flags.writeable:
            raise ValueError(f"{fn}: {name} is read-only")


def _float_dtype(fn: str, name: str, a: Any) -> np.dtype:
    if not isinstance(a, np.ndarray) or a.dtype not in FLOAT_DTYPES:
        got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{fn}: {name} must be a float32 or float64 array, not {got}")
    return a.dtype


def _shape(fn: str, name: str, a: np.ndarray, ndim: int) -> tuple[int, ...]:
    if a.ndim != ndim:
        raise ValueError(f"{fn}: {name} must have {ndim} dimensions, not {a.ndim}")
    return a.shape


def _index_range(fn: str, name: str, ids: np.ndarray, low: int, high: int) -> None:
    if ids.size and (int(ids.min()) < low or int(ids.max()) >= high):
        raise ValueError(f"{fn}: {name} holds values outside [{low}, {high})")


# token + position embedding ----------------------------------------------------------------------


def encoder_forward(out: np.ndarray, idx: np.ndarray, wte: np.ndarray, wpe: np.ndarray) -> None:
    """out (B, T, C) = wte[idx] + wpe[:T]; idx (B, T) int64; wte (V, C); wpe (n_ctx, C)."""
    fn = "encoder_forward"
    key = _layout(fn, out, idx, wte, wpe)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "wte", wte)
        V, C = _shape(fn, "wte", wte, 2)
        _check(fn, INDEX_DTYPE, idx=(idx, (None, None)))
        B, T = idx.shape
        _check(fn, dt, out=(out, (B, T, C)), wte=(wte, (V, C)), wpe=(wpe, (None, C)))
        if wpe.shape[0] < T:
            raise ValueError(f"{fn}: idx has {T} positions but wpe only {wpe.shape[0]}")
        _writable(fn, out=out)
        _separate(fn, ("out",), (), out=out, idx=idx, wte=wte, wpe=wpe)
        _checked(key)
    _index_range(fn, "idx", idx, 0, wte.shape[0])  # the values: checked at every call
    impl.encoder_forward(out, idx, wte, wpe)


def encoder_backward(dwte: np.ndarray, dwpe: np.ndarray, dout: np.ndarray, idx: np.ndarray) -> None:
    """dwte[idx] += dout; dwpe[:T] += dout summed over the batch."""
    fn = "encoder_backward"
    key = _layout(fn, dwte, dwpe, dout, idx)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "dwte", dwte)
        V, C = _shape(fn, "dwte", dwte, 2)
        _check(fn, INDEX_DTYPE, idx=(idx, (None, None)))
        B, T = idx.shape
        _check(fn, dt, dwte=(dwte, (V, C)), dwpe=(dwpe, (None, C)), dout=(dout, (B, T, C)))
        if dwpe.shape[0] < T:
            raise ValueError(f"{fn}: idx has {T} positions but dwpe only {dwpe.shape[0]}")
        _writable(fn, dwte=dwte, dwpe=dwpe)
        _separate(fn, ("dwte", "dwpe"), (), dwte=dwte, dwpe=dwpe, dout=dout, idx=idx)
        _checked(key)
    _index_range(fn, "idx", idx, 0, dwte.shape[0])
    impl.encoder_backward(dwte, dwpe, dout, idx)


# layer norm --------------------------------------------------------------------------------------


def layernorm_forward(
    out: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    inp: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    eps: float,
) -> None:
    """out (N, C) = (inp - mean) * rstd * weight + bias; mean, rstd (N,) saved; eps > 0."""
    fn = "layernorm_forward"
    key = _layout(fn, out, mean, rstd, inp, weight, bias)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "inp", inp)
        N, C = _shape(fn, "inp", inp, 2)
        _check(
            fn,
            dt,
            out=(out, (N, C)),
            mean=(mean, (N,)),
            rstd=(rstd, (N,)),
            inp=(inp, (N, C)),
            weight=(weight, (C,)),
            bias=(bias, (C,)),
        )
        _writable(fn, out=out, mean=mean, rstd=rstd)
        _separate(fn, ("out", "mean", "rstd"), (), out=out, mean=mean, rstd=rstd, inp=inp, weight=weight, bias=bias)
        _checked(key)
    impl.layernorm_forward(out, mean, rstd, inp, weight, bias, _number(fn, "eps", eps, 0.0, low_open=True))


def layernorm_backward(
    dinp: np.ndarray,
    dweight: np.ndarray,
    dbias: np.ndarray,
    dout: np.ndarray,
    inp: np.ndarray,
    weight: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
) -> None:
    """Adds into dinp (N, C), dweight and dbias (C,)."""
    fn = "layernorm_backward"
    key = _layout(fn, dinp, dweight, dbias, dout, inp, weight, mean, rstd)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "inp", inp)
        N, C = _shape(fn, "inp", inp, 2)
        _check(
            fn,
            dt,
            dinp=(dinp, (N, C)),
            dweight=(dweight, (C,)),
            dbias=(dbias, (C,)),
            dout=(dout, (N, C)),
            inp=(inp, (N, C)),
            weight=(weight, (C,)),
            mean=(mean, (N,)),
            rstd=(rstd, (N,)),
        )
        _writable(fn, dinp=dinp, dweight=dweight, dbias=dbias)
        grads = dict(dinp=dinp, dweight=dweight, dbias=dbias)
        _separate(fn, tuple(grads), (), **grads, dout=dout, inp=inp, weight=weight, mean=mean, rstd=rstd)
        _checked(key)
    impl.layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd)


# softmax -----------------------------------------------------------------------------------------


def softmax_forward(probs: np.ndarray, logits: np.ndarray) -> None:
    """probs (N, V) = softmax of each row of logits (N, V); probs may be logits."""
    fn = "softmax_forward"
    key = _layout(fn, probs, logits)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "logits", logits)
        N, V = _shape(fn, "logits", logits, 2)
        _check(fn, dt, probs=(probs, (N, V)), logits=(logits, (N, V)))
        _writable(fn, probs=probs)
        _separate(fn, ("probs",), (("probs", "logits"),), probs=probs, logits=logits)
        _checked(key)
    impl.softmax_forward(probs, logits)


# attention ---------------------------------------------------------------------------------------
# The elementwise chain between attention's two matrix products (CausalSelfAttention in model.py
# does the products, batched over every head, with BLAS).


def _attention_rows(fn: str, att: np.ndarray) -> None:
    _check(fn, att.dtype, att=(att, (None, None, None, None)))
    Tq, T = att.shape[2:]
    if Tq > T:  # query i is position T - Tq + i: there must be one
        raise ValueError(f"{fn}: att has {Tq} queries but only {T} keys")


def attention_softmax_forward(att: np.ndarray, scale: float) -> None:
    """In place over att (B, NH, Tq, T), Tq <= T: softmax(scale * scores) over the keys at or
    before each query (query i is position T - Tq + i), 0 after it; scale > 0."""
    fn = "attention_softmax_forward"
    key = _layout(fn, att)
    if key not in _CHECKED:  # a layout that passed once passes again
        _float_dtype(fn, "att", att)
        _attention_rows(fn, att)
        _writable(fn, att=att)
        _checked(key)
    impl.attention_softmax_forward(att, _number(fn, "scale", scale, 0.0, low_open=True))


def attention_softmax_backward(datt: np.ndarray, att: np.ndarray, scale: float) -> None:
    """In place over datt (B, NH, Tq, T): the gradient of the scores from that of the weights att."""
    fn = "attention_softmax_backward"
    key = _layout(fn, datt, att)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "att", att)
        _attention_rows(fn, att)
        _check(fn, dt, datt=(datt, att.shape))
        _writable(fn, datt=datt)
        _separate(fn, ("datt",), (), datt=datt, att=att)
        _checked(key)
    impl.attention_softmax_backward(datt, att, _number(fn, "scale", scale, 0.0, low_open=True))


# GELU --------------------------------------------------------------------------------------------


def gelu_forward(out: np.ndarray, tanh_u: np.ndarray, inp: np.ndarray) -> None:
    """out = GELU(inp), tanh approximation, elementwise, any shape; tanh_u (same shape) saves the tanh
    for the backward. out may be inp."""
    fn = "gelu_forward"
    key = _layout(fn, out, tanh_u, inp)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "inp", inp)
        _check(fn, dt, out=(out, inp.shape), tanh_u=(tanh_u, inp.shape), inp=(inp, inp.shape))
        _writable(fn, out=out, tanh_u=tanh_u)
        _separate(fn, ("out", "tanh_u"), (("out", "inp"),), out=out, tanh_u=tanh_u, inp=inp)
        _checked(key)
    impl.gelu_forward(out.reshape(-1), tanh_u.reshape(-1), inp.reshape(-1))


def gelu_backward(dinp: np.ndarray, inp: np.ndarray, tanh_u: np.ndarray, dout: np.ndarray) -> None:
    """dinp = GELU'(inp) * dout, elementwise, with the forward's tanh_u; dinp may be dout."""
    fn = "gelu_backward"
    key = _layout(fn, dinp, inp, tanh_u, dout)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "inp", inp)
        _check(fn, dt, dinp=(dinp, inp.shape), inp=(inp, inp.shape), tanh_u=(tanh_u, inp.shape), dout=(dout, inp.shape))
        _writable(fn, dinp=dinp)
        _separate(fn, ("dinp",), (("dinp", "dout"),), dinp=dinp, inp=inp, tanh_u=tanh_u, dout=dout)
        _checked(key)
    impl.gelu_backward(dinp.reshape(-1), inp.reshape(-1), tanh_u.reshape(-1), dout.reshape(-1))


# cross-entropy -----------------------------------------------------------------------------------


def crossentropy_forward(losses: np.ndarray, lse: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> None:
    """losses (N,) = logsumexp(logits) - logits[target] (0 where target is -1); lse (N,) saved."""
    fn = "crossentropy_forward"
    key = _layout(fn, losses, lse, logits, targets)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "logits", logits)
        N, V = _shape(fn, "logits", logits, 2)
        _check(fn, INDEX_DTYPE, targets=(targets, (N,)))
        _check(fn, dt, losses=(losses, (N,)), lse=(lse, (N,)), logits=(logits, (N, V)))
        _writable(fn, losses=losses, lse=lse)
        _separate(fn, ("losses", "lse"), (), losses=losses, lse=lse, logits=logits, targets=targets)
        _checked(key)
    _index_range(fn, "targets", targets, -1, logits.shape[1])
    impl.crossentropy_forward(losses, lse, logits, targets)


def crossentropy_backward(
    dlogits: np.ndarray, logits: np.ndarray, lse: np.ndarray, targets: np.ndarray, dloss: float
) -> None:
    """dlogits (N, V) = (softmax(logits) - onehot(target)) * dloss; may be logits itself."""
    fn = "crossentropy_backward"
    key = _layout(fn, dlogits, logits, lse, targets)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "logits", logits)
        N, V = _shape(fn, "logits", logits, 2)
        _check(fn, INDEX_DTYPE, targets=(targets, (N,)))
        _check(fn, dt, dlogits=(dlogits, (N, V)), logits=(logits, (N, V)), lse=(lse, (N,)))
        _writable(fn, dlogits=dlogits)
        _separate(fn, ("dlogits",), (("dlogits", "logits"),), dlogits=dlogits, logits=logits, lse=lse, targets=targets)
        _checked(key)
    _index_range(fn, "targets", targets, -1, logits.shape[1])
    impl.crossentropy_backward(dlogits, logits, lse, targets, _number(fn, "dloss", dloss))


# AdamW -------------------------------------------------------------------------------------------


def adamw_update(
    params: np.ndarray,
    grads: np.ndarray,
    m: np.ndarray,
    v: np.ndarray,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    step: int,
) -> None:
    """One torch.optim.AdamW step over flat arrays (n,); step counts from 1; betas in [0, 1)."""
    fn = "adamw_update"
    key = _layout(fn, params, grads, m, v)
    if key not in _CHECKED:  # a layout that passed once passes again
        dt = _float_dtype(fn, "params", params)
        (n,) = _shape(fn, "params", params, 1)
        _check(fn, dt, params=(params, (n,)), grads=(grads, (n,)), m=(m, (n,)), v=(v, (n,)))
        _writable(fn, params=params, m=m, v=v)
        _separate(fn, ("params", "m", "v"), (), params=params, grads=grads, m=m, v=v)
        _checked(key)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{fn}: step must be an integer counting from 1, not {step!r}")
    hyper = dict(
        lr=_number(fn, "lr", lr),
        beta1=_number(fn, "beta1", beta1, 0.0, 1.0),
        beta2=_number(fn, "beta2", beta2, 0.0, 1.0),
        eps=_number(fn, "eps", eps, 0.0),
        weight_decay=_number(fn, "weight_decay", weight_decay),
    )
    impl.adamw_update(params, grads, m, v, *hyper.values(), int(step))


# byte-level BPE ----------------------------------------------------------------------------------


def merge_piece(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """The token ids of one piece under BPE: ranks maps each token's bytes to its rank (its id); the
    lowest-ranked adjacent pair merges first. Every single byte of piece must have a rank."""
    fn = "merge_piece"
    if type(piece) is not bytes:
        raise ValueError(f"{fn}: piece must be bytes, not {type(piece).__name__}")
    if type(ranks) is not dict:
        raise ValueError(f"{fn}: ranks must be a dict, not {type(ranks).__name__}")
    return impl.merge_piece(piece, ranks)


# int8 weights ------------------------------------------------------------------------------------

QBLOCK = 32  # int8 weights per scale (llama.cpp's q8_0 block)


def _q8(fn: str, name: str, w: Any, shape: tuple[int | None, int | None]) -> tuple[int, int]:
    """Check an int8 weight, a pair (q (n_in, n_out) int8, scales (n_in, ceil(n_out / 32)) float32)."""
    if not (isinstance(w, tuple) and len(w) == 2):
        raise ValueError(f"{fn}: {name} must be a pair (q, scales), not {type(w).__name__}")
    q, scales = w
    _check(fn, np.int8, **{f"{name} q": (q, shape)})
    n_in, n_out = q.shape
    _check(fn, np.float32, **{f"{name} scales": (scales, (n_in, -(-n_out // QBLOCK)))})
    return n_in, n_out


def q8_matmul(out: np.ndarray, x: np.ndarray, q: np.ndarray, scales: np.ndarray, bias: np.ndarray | None) -> None:
    """out (N, n_out) = x (N, n_in) @ W + bias, float32, with int8 weights dequantised inside the loop:
    W[i, j] = scales[i, j // 32] * q[i, j], q (n_in, n_out) int8 in blocks of 32 along each row (the
    last block of a row is shorter when n_out is not a multiple of 32), scales (n_in, ceil(n_out / 32));
    bias (n_out,) or None."""
    fn = "q8_matmul"
    key = _layout(fn, out, x, q, scales, *(() if bias is None else (bias,)))
    if key not in _CHECKED:  # a layout that passed once passes again
        n_in, n_out = _q8(fn, "weight", (q, scales), (None, None))
        _check(fn, np.float32, x=(x, (None, n_in)))
        _check(fn, np.float32, out=(out, (x.shape[0], n_out)))
        if bias is not None:
            _check(fn, np.float32, bias=(bias, (n_out,)))
        _writable(fn, out=out)
        inputs = dict(x=x, q=q, scales=scales) | ({} if bias is None else {"bias": bias})
        _separate(fn, ("out",), (), out=out, **inputs)
        _checked(key)
    impl.q8_matmul(out, x, q, scales, bias)


# the decode step ---------------------------------------------------------------------------------


def _linear_weight(fn: str, name: str, w: Any, n_in: int, n_out: int) -> None:
    if isinstance(w, tuple):
        _q8(fn, name, w, (n_in, n_out))
    else:
        _check(fn, np.float32, **{name: (w, (n_in, n_out))})


def decoder(n_head: int, eps: float, wte: Any, wpe: np.ndarray, lnf_w: np.ndarray, lnf_b: np.ndarray, blocks: list):
    """A compiled decode step over a float32 GPT-2's weights (no copies), or None on the NumPy backend,
    whose decode step is the model's own layers. wte is (V, C) float32, or the int8 pair of wte^T
    (C, V); wpe (n_ctx, C); blocks holds, per layer, (ln_1 w, b, c_attn w, b, attn c_proj w, b, ln_2 w,
    b, c_fc w, b, mlp c_proj w, b), each linear weight float32 (in, out) or an int8 pair (q8_matmul's).
    Its ``step(logits, tokens, caches, pos, threads)`` runs one position through every layer."""
    fn = "decoder"
    _check(fn, np.float32, wpe=(wpe, (None, None)))
    n_ctx, C = wpe.shape
    if isinstance(wte, tuple):
        _, V = _q8(fn, "wte", wte, (C, None))
    else:
        _check(fn, np.float32, wte=(wte, (None, C)))
        V = wte.shape[0]
    if isinstance(n_head, bool) or not isinstance(n_head, int) or n_head < 1 or C % n_head:
        raise ValueError(f"{fn}: n_head must be a positive integer dividing {C}, not {n_head!r}")
    _check(fn, np.float32, lnf_w=(lnf_w, (C,)), lnf_b=(lnf_b, (C,)))
    shapes = [(C,), (C,), (C, 3 * C), (3 * C,), (C, C), (C,), (C,), (C,), (C, 4 * C), (4 * C,), (4 * C, C), (C,)]
    for l, block in enumerate(blocks):
        if len(block) != len(shapes):
            raise ValueError(f"{fn}: block {l} must hold {len(shapes)} arrays, not {len(block)}")
        for k, (a, shape) in enumerate(zip(block, shapes)):
            if len(shape) == 2:
                _linear_weight(fn, f"block {l} weight {k}", a, *shape)
            else:
                _check(fn, np.float32, **{f"block {l} vector {k}": (a, shape)})
    compiled = impl.decoder(n_head, _number(fn, "eps", eps, 0.0, low_open=True), wte, wpe, lnf_w, lnf_b, blocks)
    return None if compiled is None else _Decoder(compiled, len(blocks), C, V, n_ctx)


class _Decoder:
    """The compiled step with its arguments checked (decoder() checked the weights once)."""

    def __init__(self, compiled: Any, n_layer: int, C: int, V: int, n_ctx: int):
        self._compiled, self.n_layer, self.C, self.V, self.n_ctx = compiled, n_layer, C, V, n_ctx

    def step(self, logits: np.ndarray, tokens: np.ndarray, caches: list, pos: int, threads: int = 1) -> None:
        """logits (B, V) for the position after pos, given tokens (B,) at pos; their keys and values go
        into caches[l][:, pos], each (B, cap, 3C) float32 with positions 0 .. pos - 1 filled (pos < cap,
        pos < n_ctx). threads 1 or 2: how many threads share the products."""
        fn = "decode step"
        _check(fn, INDEX_DTYPE, tokens=(tokens, (None,)))
        B = tokens.shape[0]
        _index_range(fn, "tokens", tokens, 0, self.V)
        _check(fn, np.float32, logits=(logits, (B, self.V)))
        if not isinstance(caches, list) or len(caches) != self.n_layer:
            raise ValueError(f"{fn}: caches must be a list of {self.n_layer} arrays")
        _check(fn, np.float32, **{f"caches[{l}]": (c, (B, None, 3 * self.C)) for l, c in enumerate(caches)})
        cap = caches[0].shape[1]
        if any(c.shape[1] != cap for c in caches):
            raise ValueError(f"{fn}: the caches differ in length")
        if isinstance(pos, bool) or not isinstance(pos, (int, np.integer)) or not 0 <= pos < min(cap, self.n_ctx):
            raise ValueError(f"{fn}: pos must be in [0, {min(cap, self.n_ctx)}), not {pos!r}")
        named = {f"caches[{l}]": c for l, c in enumerate(caches)}
        _writable(fn, logits=logits, **named)
        _separate(fn, ("logits",), (), logits=logits, tokens=tokens, **named)
        self._compiled.step(logits, tokens, caches, int(pos), 2 if threads > 1 else 1)
