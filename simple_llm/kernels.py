"""The kernels, compiled or NumPy, behind one checked interface.

The backend is chosen once, at import time, as msgpack does it: the compiled ``simple_llm._kernels``
when it imports, the NumPy ``simple_llm.fallback`` otherwise or when ``SIMPLE_LLM_PURE_PYTHON=1``.
``SIMPLE_LLM_REQUIRE_COMPILED=1`` turns a missing extension into an ImportError (CI and wheel tests).

Every function here checks its arguments (dtype, shape, contiguity, index ranges) and raises a
ValueError that names the offending argument, then calls the chosen backend. The backends themselves
check nothing, so a wrong shape can never reach a compiled loop that would write out of bounds.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

from . import fallback


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def _choose() -> ModuleType:
    if _env_flag("SIMPLE_LLM_PURE_PYTHON"):
        return fallback
    # OpenMP threads that spin after a parallel loop starve NumPy's BLAS threads, which run between
    # our loops on the same cores (2.5x slower training here); sleeping threads wake in microseconds.
    # Read once, when the OpenMP runtime loads with the extension; a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        from . import _kernels  # type: ignore[attr-defined]
    except ImportError as exc:
        if _env_flag("SIMPLE_LLM_REQUIRE_COMPILED"):
            raise ImportError(
                f"SIMPLE_LLM_REQUIRE_COMPILED is set but the compiled kernels do not import: {exc}"
            ) from exc
        return fallback
    return _kernels


impl: ModuleType = _choose()
BACKEND = "numpy" if impl is fallback else "cython"
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INDEX_DTYPE = np.dtype(np.int64)


def openmp_threads() -> int:
    """Threads that the chosen backend's parallel loops use."""
    return int(impl.openmp_threads())


# argument checks ---------------------------------------------------------------------------------


def _check(fn: str, dtype: Any, inner_only: tuple[str, ...] = (), **arrays: tuple[Any, tuple]) -> None:
    """Check ``name=(array, shape)`` pairs: an ndarray of ``dtype`` and that shape, C-contiguous.

    A ``None`` in a shape accepts any size there (but not an empty array). Names in ``inner_only``
    need only a contiguous last axis (a slice of a key/value cache along time, for instance). Only
    ``mask`` may be None.
    """
    for name, (a, shape) in arrays.items():
        if a is None and name == "mask":  # dropout off
            continue
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
        if name in inner_only:
            if a.strides[-1] != a.itemsize:
                raise ValueError(f"{fn}: {name} must be contiguous along its last axis")
        elif not a.flags.c_contiguous:
            raise ValueError(f"{fn}: {name} must be C-contiguous")


def _number(fn: str, name: str, x: Any) -> float:
    """A finite real number argument (eps, scale, a learning rate...), as a float."""
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)) or not np.isfinite(x):
        raise ValueError(f"{fn}: {name} must be a finite number, not {x!r}")
    return float(x)


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


def _heads(fn: str, C: int, n_head: int) -> None:
    if not isinstance(n_head, (int, np.integer)) or n_head <= 0 or C % n_head:
        raise ValueError(f"{fn}: n_head {n_head!r} does not divide the {C} channels")


# token + position embedding ----------------------------------------------------------------------


def encoder_forward(out: np.ndarray, idx: np.ndarray, wte: np.ndarray, wpe: np.ndarray) -> None:
    """out (B, T, C) = wte[idx] + wpe[:T]; idx (B, T) int64; wte (V, C); wpe (n_ctx, C)."""
    fn = "encoder_forward"
    dt = _float_dtype(fn, "wte", wte)
    V, C = _shape(fn, "wte", wte, 2)
    _check(fn, INDEX_DTYPE, idx=(idx, (None, None)))
    B, T = idx.shape
    _check(fn, dt, out=(out, (B, T, C)), wte=(wte, (V, C)), wpe=(wpe, (None, C)))
    if wpe.shape[0] < T:
        raise ValueError(f"{fn}: idx has {T} positions but wpe only {wpe.shape[0]}")
    _index_range(fn, "idx", idx, 0, V)
    _writable(fn, out=out)
    impl.encoder_forward(out, idx, wte, wpe)


def encoder_backward(dwte: np.ndarray, dwpe: np.ndarray, dout: np.ndarray, idx: np.ndarray) -> None:
    """dwte[idx] += dout; dwpe[:T] += dout summed over the batch."""
    fn = "encoder_backward"
    dt = _float_dtype(fn, "dwte", dwte)
    V, C = _shape(fn, "dwte", dwte, 2)
    _check(fn, INDEX_DTYPE, idx=(idx, (None, None)))
    B, T = idx.shape
    _check(fn, dt, dwte=(dwte, (V, C)), dwpe=(dwpe, (None, C)), dout=(dout, (B, T, C)))
    if dwpe.shape[0] < T:
        raise ValueError(f"{fn}: idx has {T} positions but dwpe only {dwpe.shape[0]}")
    _index_range(fn, "idx", idx, 0, V)
    _writable(fn, dwte=dwte, dwpe=dwpe)
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
    """out (N, C) = (inp - mean) * rstd * weight + bias; mean, rstd (N,) saved."""
    fn = "layernorm_forward"
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
    impl.layernorm_forward(out, mean, rstd, inp, weight, bias, _number(fn, "eps", eps))


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
    impl.layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd)


# softmax -----------------------------------------------------------------------------------------


def softmax_forward(probs: np.ndarray, logits: np.ndarray) -> None:
    """probs (N, V) = softmax of each row of logits (N, V); probs may be logits."""
    fn = "softmax_forward"
    dt = _float_dtype(fn, "logits", logits)
    N, V = _shape(fn, "logits", logits, 2)
    _check(fn, dt, probs=(probs, (N, V)), logits=(logits, (N, V)))
    _writable(fn, probs=probs)
    impl.softmax_forward(probs, logits)


# attention -------------------------------------------------------------------------------------
# The matrix products go to BLAS (batched np.matmul over every head, into the caller's buffers); the
# backend does the elementwise chain between them in one pass.


def _split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    """(B, T, C) -> (B, NH, T, hs), a view: head h is channels h*hs .. (h+1)*hs."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def attention_softmax_forward(att: np.ndarray, scale: float) -> None:
    """In place over att (B, NH, Tq, T): scale, causal mask, softmax; zero after each query."""
    fn = "attention_softmax_forward"
    dt = _float_dtype(fn, "att", att)
    _check(fn, dt, att=(att, (None, None, None, None)))
    _writable(fn, att=att)
    impl.attention_softmax_forward(att, _number(fn, "scale", scale))


def attention_softmax_backward(datt: np.ndarray, att: np.ndarray, scale: float) -> None:
    """In place over datt (B, NH, T, T): the gradient of the scores from that of the weights."""
    fn = "attention_softmax_backward"
    dt = _float_dtype(fn, "att", att)
    _check(fn, dt, datt=(datt, att.shape), att=(att, (None, None, None, None)))
    _writable(fn, datt=datt)
    impl.attention_softmax_backward(datt, att, _number(fn, "scale", scale))


def attention_forward(
    out: np.ndarray, att: np.ndarray, inp: np.ndarray, n_head: int, mask: np.ndarray | None = None
) -> None:
    """Causal attention of the last Tq of T positions: out (B, Tq, C), att (B, NH, Tq, T) saved.

    inp (B, T, 3C) holds q, k, v (it may be a slice of a key/value cache along time); mask is
    dropout's scaled keep-mask (B, NH, Tq, T) or None. Query i is position T - Tq + i and sees the
    keys at or before it.
    """
    fn = "attention_forward"
    dt = _float_dtype(fn, "inp", inp)
    B, T, C3 = _shape(fn, "inp", inp, 3)
    C = C3 // 3
    if C3 % 3:
        raise ValueError(f"{fn}: inp's last axis ({C3}) must hold q, k and v (a multiple of 3)")
    _heads(fn, C, n_head)
    Tq = _shape(fn, "out", _checked_array(fn, "out", out), 3)[1]
    if Tq > T:
        raise ValueError(f"{fn}: out has {Tq} positions but inp only {T}")
    _check(
        fn,
        dt,
        inner_only=("inp",),
        out=(out, (B, Tq, C)),
        att=(att, (B, n_head, Tq, T)),
        inp=(inp, (B, T, C3)),
        mask=(mask, (B, n_head, Tq, T)),
    )
    _writable(fn, out=out, att=att)
    q = _split_heads(inp[:, T - Tq :, :C], n_head)  # (B, NH, Tq, hs)
    k = _split_heads(inp[:, :, C : 2 * C], n_head)  # (B, NH, T, hs)
    v = _split_heads(inp[:, :, 2 * C :], n_head)  # (B, NH, T, hs)
    np.matmul(q, k.swapaxes(-1, -2), out=att)  # the scores q . k
    impl.attention_softmax_forward(att, 1.0 / np.sqrt(C // n_head))  # att = softmax(scores / sqrt(hs))
    weights = att if mask is None else att * mask  # dropout on the weights (a temporary)
    np.matmul(weights, v, out=_split_heads(out, n_head))  # y = att @ v, heads side by side


def attention_backward(
    dinp: np.ndarray,
    datt: np.ndarray,
    dout: np.ndarray,
    inp: np.ndarray,
    att: np.ndarray,
    n_head: int,
    mask: np.ndarray | None = None,
) -> None:
    """Writes dinp (B, T, 3C) = (dq, dk, dv); datt (B, NH, T, T) is scratch; dout (B, T, C)."""
    fn = "attention_backward"
    dt = _float_dtype(fn, "inp", inp)
    B, T, C3 = _shape(fn, "inp", inp, 3)
    C = C3 // 3
    if C3 % 3:
        raise ValueError(f"{fn}: inp's last axis ({C3}) must hold q, k and v (a multiple of 3)")
    _heads(fn, C, n_head)
    _check(
        fn,
        dt,
        dinp=(dinp, (B, T, C3)),
        datt=(datt, (B, n_head, T, T)),
        dout=(dout, (B, T, C)),
        inp=(inp, (B, T, C3)),
        att=(att, (B, n_head, T, T)),
        mask=(mask, (B, n_head, T, T)),
    )
    _writable(fn, dinp=dinp, datt=datt)
    q, k, v = (_split_heads(inp[:, :, i * C : (i + 1) * C], n_head) for i in range(3))
    dq, dk, dv = (_split_heads(dinp[:, :, i * C : (i + 1) * C], n_head) for i in range(3))
    dy = _split_heads(dout, n_head)  # (B, NH, T, hs)
    # forward was: y = w @ v with w = att * keep, so dv = w^T @ dy and dw = dy @ v^T
    weights = att if mask is None else att * mask
    np.matmul(weights.swapaxes(-1, -2), dy, out=dv)
    np.matmul(dy, v.swapaxes(-1, -2), out=datt)
    if mask is not None:
        datt *= mask  # d att = d w * keep
    # forward was: att = softmax(scale * s), s = q @ k^T: datt becomes ds in place
    impl.attention_softmax_backward(datt, att, 1.0 / np.sqrt(C // n_head))
    np.matmul(datt, k, out=dq)  # ds @ k
    np.matmul(datt.swapaxes(-1, -2), q, out=dk)  # ds^T @ q


def _checked_array(fn: str, name: str, a: Any) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{fn}: {name} must be a numpy array, not {type(a).__name__}")
    return a


# GELU --------------------------------------------------------------------------------------------


def gelu_forward(out: np.ndarray, tanh_u: np.ndarray, inp: np.ndarray) -> None:
    """out = GELU(inp), tanh approximation, elementwise, any shape; tanh_u (same shape) saves the tanh
    for the backward. out may be inp."""
    fn = "gelu_forward"
    dt = _float_dtype(fn, "inp", inp)
    _check(fn, dt, out=(out, inp.shape), tanh_u=(tanh_u, inp.shape), inp=(inp, inp.shape))
    _writable(fn, out=out, tanh_u=tanh_u)
    impl.gelu_forward(out.reshape(-1), tanh_u.reshape(-1), inp.reshape(-1))


def gelu_backward(dinp: np.ndarray, inp: np.ndarray, tanh_u: np.ndarray, dout: np.ndarray) -> None:
    """dinp = GELU'(inp) * dout, elementwise, with the forward's tanh_u; dinp may be dout."""
    fn = "gelu_backward"
    dt = _float_dtype(fn, "inp", inp)
    _check(fn, dt, dinp=(dinp, inp.shape), inp=(inp, inp.shape), tanh_u=(tanh_u, inp.shape), dout=(dout, inp.shape))
    _writable(fn, dinp=dinp)
    impl.gelu_backward(dinp.reshape(-1), inp.reshape(-1), tanh_u.reshape(-1), dout.reshape(-1))


# cross-entropy -----------------------------------------------------------------------------------


def crossentropy_forward(losses: np.ndarray, lse: np.ndarray, logits: np.ndarray, targets: np.ndarray) -> None:
    """losses (N,) = logsumexp(logits) - logits[target] (0 where target is -1); lse (N,) saved."""
    fn = "crossentropy_forward"
    dt = _float_dtype(fn, "logits", logits)
    N, V = _shape(fn, "logits", logits, 2)
    _check(fn, INDEX_DTYPE, targets=(targets, (N,)))
    _check(fn, dt, losses=(losses, (N,)), lse=(lse, (N,)), logits=(logits, (N, V)))
    _index_range(fn, "targets", targets, -1, V)
    _writable(fn, losses=losses, lse=lse)
    impl.crossentropy_forward(losses, lse, logits, targets)


def crossentropy_backward(
    dlogits: np.ndarray, logits: np.ndarray, lse: np.ndarray, targets: np.ndarray, dloss: float
) -> None:
    """dlogits (N, V) = (softmax(logits) - onehot(target)) * dloss; may be logits itself."""
    fn = "crossentropy_backward"
    dt = _float_dtype(fn, "logits", logits)
    N, V = _shape(fn, "logits", logits, 2)
    _check(fn, INDEX_DTYPE, targets=(targets, (N,)))
    _check(fn, dt, dlogits=(dlogits, (N, V)), logits=(logits, (N, V)), lse=(lse, (N,)))
    _index_range(fn, "targets", targets, -1, V)
    _writable(fn, dlogits=dlogits)
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
    """One torch.optim.AdamW step over flat arrays (n,); step counts from 1."""
    fn = "adamw_update"
    dt = _float_dtype(fn, "params", params)
    (n,) = _shape(fn, "params", params, 1)
    _check(fn, dt, params=(params, (n,)), grads=(grads, (n,)), m=(m, (n,)), v=(v, (n,)))
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 1:
        raise ValueError(f"{fn}: step must be an integer counting from 1, not {step!r}")
    hyper = {
        n: _number(fn, n, x)
        for n, x in dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay).items()
    }
    _writable(fn, params=params, m=m, v=v)
    impl.adamw_update(params, grads, m, v, *hyper.values(), int(step))
