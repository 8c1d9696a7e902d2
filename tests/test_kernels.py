"""Every kernel: the NumPy fallback against a direct formula written here, the compiled kernels against
the fallback (float32 and float64), each backward against central finite differences, and the argument
checks of simple_llm.kernels."""

from __future__ import annotations

import numpy as np
import pytest
from support import TOL, compiled_kernels, numgrad, rel_err

from simple_llm import GPT, GPTConfig, fallback, kernels

B, T, C, NH, V = 2, 5, 12, 3, 7


def rand(*shape, dtype=np.float64, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


# direct formulas, written independently of the fallback ------------------------------------------


def ref_layernorm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * w + b


def ref_attention(qkv, n_head, Tq=None):
    Bq, Tk, C3 = qkv.shape
    c = C3 // 3
    hs = c // n_head
    Tq = Tk if Tq is None else Tq
    out = np.zeros((Bq, Tq, c))
    for b in range(Bq):
        for h in range(n_head):
            sl = slice(h * hs, (h + 1) * hs)
            q, k, v = qkv[b, :, sl], qkv[b, :, c:][:, sl], qkv[b, :, 2 * c :][:, sl]
            for i in range(Tq):
                t = Tk - Tq + i
                s = q[t] @ k[: t + 1].T / np.sqrt(hs)
                p = np.exp(s - s.max())
                out[b, i, sl] = (p / p.sum()) @ v[: t + 1]
    return out


def ref_gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def ref_crossentropy(logits, targets):
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    return np.array([-logp[i, t] if t >= 0 else 0.0 for i, t in enumerate(targets)])


def attention(n_head=NH):
    """A CausalSelfAttention layer: its attend / attend_backward compose the softmax kernels with
    the batched matrix products."""
    return GPT(GPTConfig(vocab_size=V, n_ctx=T + 4, n_embd=C, n_head=n_head, n_layer=1)).h[0].attn


# forward kernels against the formulas (fallback) --------------------------------------------------


def test_encoder_forward_formula(backend, dtype):
    wte, wpe = rand(V, C, dtype=dtype), rand(T + 3, C, dtype=dtype, seed=1)
    idx = np.random.default_rng(2).integers(0, V, (B, T))
    out = np.zeros((B, T, C), dtype)
    kernels.encoder_forward(out, idx, wte, wpe)
    np.testing.assert_allclose(out, wte[idx] + wpe[:T], **TOL[dtype])


def test_layernorm_forward_formula(backend, dtype):
    x, w, b = rand(B * T, C, dtype=dtype, scale=3), rand(C, dtype=dtype, seed=1), rand(C, dtype=dtype, seed=2)
    out, mean, rstd = np.zeros_like(x), np.zeros(B * T, dtype), np.zeros(B * T, dtype)
    kernels.layernorm_forward(out, mean, rstd, x, w, b, 1e-5)
    np.testing.assert_allclose(out, ref_layernorm(x, w, b), **TOL[dtype])
    np.testing.assert_allclose(mean, x.mean(-1), **TOL[dtype])
    np.testing.assert_allclose(rstd, 1 / np.sqrt(x.var(-1) + 1e-5), **TOL[dtype])


@pytest.mark.parametrize("Tq", [T, 2, 1])
def test_attention_forward_formula(backend, dtype, Tq):
    qkv = rand(B, T, 3 * C, dtype=dtype)
    out, att = np.zeros((B, Tq, C), dtype), np.full((B, NH, Tq, T), np.nan, dtype)
    attention().attend(out, att, qkv)
    np.testing.assert_allclose(out, ref_attention(qkv.astype(np.float64), NH, Tq), **TOL[dtype])
    np.testing.assert_allclose(att.sum(-1), 1.0, **TOL[dtype])  # each row is a distribution
    future = np.triu(np.ones((Tq, T), bool), k=T - Tq + 1)
    assert np.all(att[..., future] == 0.0)  # causal: nothing from later positions


def test_attention_forward_on_a_cache_slice(backend, dtype):
    """A key/value cache slice is strided along batch; the result must equal a contiguous copy's."""
    cache = rand(B, T + 4, 3 * C, dtype=dtype)
    view = cache[:, :T]
    out1, att1 = np.zeros((B, 2, C), dtype), np.zeros((B, NH, 2, T), dtype)
    out2, att2 = np.zeros_like(out1), np.zeros_like(att1)
    attention().attend(out1, att1, view)
    attention().attend(out2, att2, np.ascontiguousarray(view))
    np.testing.assert_array_equal(out1, out2)


def test_softmax_forward_formula(backend, dtype):
    x = rand(B * T, V, dtype=dtype, scale=5)
    p = np.zeros_like(x)
    kernels.softmax_forward(p, x)
    e = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(1, keepdims=True), **TOL[dtype])


def test_softmax_forward_in_place_and_extreme(backend, dtype):
    x = np.array([[1000.0, 0.0, -1000.0], [-5.0, -5.0, -5.0]], dtype)
    kernels.softmax_forward(x, x)
    np.testing.assert_allclose(x, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], **TOL[dtype])


def test_gelu_forward_formula(backend, dtype):
    x = rand(B, T, 4 * C, dtype=dtype, scale=4)
    out, th = np.zeros_like(x), np.zeros_like(x)
    kernels.gelu_forward(out, th, x)
    np.testing.assert_allclose(out, ref_gelu(x.astype(np.float64)), **TOL[dtype])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(th, np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)), **TOL[dtype])


def test_crossentropy_forward_formula(backend, dtype):
    logits = rand(B * T, V, dtype=dtype, scale=3)
    targets = np.random.default_rng(1).integers(0, V, B * T)
    targets[3] = -1
    losses, lse = np.zeros(B * T, dtype), np.zeros(B * T, dtype)
    kernels.crossentropy_forward(losses, lse, logits, targets)
    np.testing.assert_allclose(losses, ref_crossentropy(logits.astype(np.float64), targets), **TOL[dtype])
    assert losses[3] == 0.0


def test_adamw_update_formula(backend, dtype):
    """Two steps of the update as torch documents it, written out element by element."""
    p, m, v = rand(50, dtype=dtype), np.zeros(50, dtype), np.zeros(50, dtype)
    ref_p, ref_m, ref_v = p.astype(np.float64), np.zeros(50), np.zeros(50)
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.95, 1e-8, 0.1
    for step in (1, 2):
        g = rand(50, dtype=dtype, seed=step)
        kernels.adamw_update(p, g, m, v, lr, b1, b2, eps, wd, step)
        ref_p = ref_p - lr * wd * ref_p
        ref_m = b1 * ref_m + (1 - b1) * g
        ref_v = b2 * ref_v + (1 - b2) * g.astype(np.float64) ** 2
        m_hat, v_hat = ref_m / (1 - b1**step), ref_v / (1 - b2**step)
        ref_p = ref_p - lr * m_hat / (np.sqrt(v_hat) + eps)  # torch: eps outside the square root
    np.testing.assert_allclose(p, ref_p, **TOL[dtype])
    np.testing.assert_allclose(m, ref_m, **TOL[dtype])
    np.testing.assert_allclose(v, ref_v, **TOL[dtype])


# backward kernels against finite differences (float64) ------------------------------------------


def test_encoder_backward_numeric(backend):
    wte, wpe = rand(V, C), rand(T, C, seed=1)
    idx = np.array([[1, 3, 1, 0, 6], [3, 3, 2, 5, 1]])  # repeated tokens must add up
    R = rand(B, T, C, seed=3)
    out = np.zeros((B, T, C))

    def loss():
        kernels.encoder_forward(out, idx, wte, wpe)
        return float((out * R).sum())

    dwte, dwpe = np.zeros_like(wte), np.zeros_like(wpe)
    kernels.encoder_backward(dwte, dwpe, R, idx)
    assert rel_err(dwte, numgrad(loss, wte)) < 1e-8
    assert rel_err(dwpe, numgrad(loss, wpe)) < 1e-8


def test_layernorm_backward_numeric(backend):
    x, w, b = rand(B * T, C, scale=2), rand(C, seed=1), rand(C, seed=2)
    R = rand(B * T, C, seed=3)
    out, mean, rstd = np.zeros_like(x), np.zeros(B * T), np.zeros(B * T)

    def loss():
        kernels.layernorm_forward(out, mean, rstd, x, w, b, 1e-5)
        return float((out * R).sum())

    loss()
    base = rand(B * T, C, seed=4)  # dinp is added to: start from something that is not zero
    dx, dw, db = base.copy(), np.zeros(C), np.zeros(C)
    kernels.layernorm_backward(dx, dw, db, R, x, w, mean, rstd)
    assert rel_err(dx - base, numgrad(loss, x)) < 1e-7
    assert rel_err(dw, numgrad(loss, w)) < 1e-7
    assert rel_err(db, numgrad(loss, b)) < 1e-7


@pytest.mark.parametrize("dropout", [False, True])
def test_attention_backward_numeric(backend, dropout):
    qkv = rand(B, T, 3 * C)
    R = rand(B, T, C, seed=3)
    mask = dropped = None
    if dropout:
        mask = (np.random.default_rng(5).random((B, NH, T, T)) > 0.3) / 0.7
        dropped = np.zeros_like(mask)
    out, att = np.zeros((B, T, C)), np.zeros((B, NH, T, T))
    layer = attention()

    def loss():
        layer.attend(out, att, qkv, mask, dropped)
        return float((out * R).sum())

    loss()
    dqkv, datt = np.full_like(qkv, np.nan), np.zeros_like(att)  # dqkv is written, not added to
    layer.attend_backward(dqkv, datt, R, qkv, att, mask, dropped)
    assert rel_err(dqkv, numgrad(loss, qkv)) < 1e-7


def test_gelu_backward_numeric(backend):
    x = rand(3, 40, scale=3)
    R = rand(3, 40, seed=1)
    out, th = np.zeros_like(x), np.zeros_like(x)

    def loss():
        kernels.gelu_forward(out, th, x)
        return float((out * R).sum())

    loss()
    saved = th.copy()
    dx = np.zeros_like(x)
    kernels.gelu_backward(dx, x, saved, R)
    assert rel_err(dx, numgrad(loss, x)) < 1e-8
    kernels.gelu_backward(R, x, saved, R)  # in place: dinp is dout
    np.testing.assert_allclose(R, dx, rtol=1e-14)


def test_crossentropy_backward_numeric(backend):
    logits = rand(B * T, V, scale=2)
    targets = np.random.default_rng(1).integers(0, V, B * T)
    targets[2] = -1
    losses, lse = np.zeros(B * T), np.zeros(B * T)

    def loss():
        kernels.crossentropy_forward(losses, lse, logits, targets)
        return float(losses.mean())

    loss()
    dlogits = np.zeros_like(logits)
    kernels.crossentropy_backward(dlogits, logits, lse, targets, 1.0 / (B * T))
    assert rel_err(dlogits, numgrad(loss, logits)) < 1e-8
    assert np.all(dlogits[2] == 0.0)
    loss()  # numgrad left lse from a perturbed logit
    kernels.crossentropy_backward(logits, logits, lse, targets, 1.0 / (B * T))  # in place
    np.testing.assert_allclose(logits, dlogits, rtol=1e-14, atol=1e-17)


# compiled against fallback -------------------------------------------------------------------------


def _both(name, dtype, *make_args):
    """Run kernel `name` from both backends on copies of the same arguments; return both arg lists."""
    compiled = compiled_kernels()
    results = []
    for module in (fallback, compiled):
        args = [a.copy() if isinstance(a, np.ndarray) else a for a in make_args]
        getattr(module, name)(*args)
        results.append(args)
    for a, b in zip(*results):
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            # float32: an entry that is a sum of much larger terms (a parameter gradient over many
            # rows) carries their rounding, and fused multiply-adds (the AVX2 build) round them
            # otherwise: its absolute tolerance scales with the array's largest entry
            tol = dict(TOL[dtype])
            if dtype == np.float32:
                tol["atol"] *= max(1.0, float(np.abs(a).max()))
            np.testing.assert_allclose(b, a, **tol, err_msg=name)
    return results


# (B, T, C, NH, V, parameters): tiny; large; and ragged: C = 2 x 32 + 5 and B*T = 2 x 64 + 6, so that
# layer norm's parameter gradients (32 columns, 64 rows at a time) end on a partial block of each
SIZES = {"small": (2, 5, 12, 3, 7, 300), "threaded": (4, 64, 256, 4, 512, 100_000), "ragged": (2, 67, 69, 3, 11, 1001)}


@pytest.mark.parametrize("size", SIZES)
def test_compiled_matches_fallback(dtype, size):
    Bb, Tt, Cc, nh, Vv, n = SIZES[size]
    N = Bb * Tt
    rng = np.random.default_rng(0)
    idx, targets = rng.integers(0, Vv, (Bb, Tt)), rng.integers(-1, Vv, N)
    _both(
        "encoder_forward",
        dtype,
        np.zeros((Bb, Tt, Cc), dtype),
        idx,
        rand(Vv, Cc, dtype=dtype),
        rand(Tt, Cc, dtype=dtype),
    )
    _both(
        "encoder_backward",
        dtype,
        rand(Vv, Cc, dtype=dtype),
        rand(Tt, Cc, dtype=dtype),
        rand(Bb, Tt, Cc, dtype=dtype),
        idx,
    )
    x, w, b = rand(N, Cc, dtype=dtype), rand(Cc, dtype=dtype, seed=1), rand(Cc, dtype=dtype, seed=2)
    _, (_, mean, rstd, *_r) = _both(
        "layernorm_forward", dtype, np.zeros_like(x), np.zeros(N, dtype), np.zeros(N, dtype), x, w, b, 1e-5
    )
    dout = rand(N, Cc, dtype=dtype, seed=9)
    _both("layernorm_backward", dtype, rand(N, Cc, dtype=dtype), rand(Cc, dtype=dtype), rand(Cc, dtype=dtype),
          dout, x, w, mean, rstd)  # fmt: skip
    _both("softmax_forward", dtype, np.zeros((N, Vv), dtype), rand(N, Vv, dtype=dtype))
    _, (att, _) = _both("attention_softmax_forward", dtype, rand(Bb, nh, Tt, Tt, dtype=dtype, scale=3), 0.3)
    _both("attention_softmax_forward", dtype, rand(Bb, nh, 2, Tt, dtype=dtype), 0.5)  # 2 queries of T
    _both("attention_softmax_backward", dtype, rand(Bb, nh, Tt, Tt, dtype=dtype), att, 0.3)
    g = rand(N * 4 * Cc, dtype=dtype, scale=4)
    _, (_, th, _) = _both("gelu_forward", dtype, np.zeros_like(g), np.zeros_like(g), g)
    _both("gelu_backward", dtype, np.zeros_like(g), g, th, rand(N * 4 * Cc, dtype=dtype, seed=5))
    logits = rand(N, Vv, dtype=dtype, scale=3)
    _, (_, lse, *_r) = _both("crossentropy_forward", dtype, np.zeros(N, dtype), np.zeros(N, dtype), logits, targets)
    _both("crossentropy_backward", dtype, np.zeros_like(logits), logits, lse, targets, 1.0 / N)
    moments = rand(n, dtype=dtype, seed=2), np.abs(rand(n, dtype=dtype, seed=3))
    _both("adamw_update", dtype, rand(n, dtype=dtype), rand(n, dtype=dtype, seed=1), *moments,
          1e-3, 0.9, 0.95, 1e-8, 0.1, 3)  # fmt: skip


# the checked interface -----------------------------------------------------------------------------


def test_wrong_shape_names_the_argument(backend):
    x = rand(4, C)
    with pytest.raises(ValueError, match="rstd has shape"):
        kernels.layernorm_forward(np.zeros_like(x), np.zeros(4), np.zeros(3), x, np.ones(C), np.zeros(C), 1e-5)


def test_wrong_dtype_names_the_argument(backend):
    x = rand(4, C)
    with pytest.raises(ValueError, match="weight has dtype float32"):
        kernels.layernorm_forward(
            np.zeros_like(x), np.zeros(4), np.zeros(4), x, np.ones(C, np.float32), np.zeros(C), 1e-5
        )


def test_out_of_range_token_is_refused(backend):
    with pytest.raises(ValueError, match="idx holds values outside"):
        kernels.encoder_forward(np.zeros((1, 2, C)), np.array([[0, V]]), rand(V, C), rand(4, C))


def test_non_contiguous_output_is_refused(backend):
    x = rand(4, C)
    out = np.zeros((C, 4)).T
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        kernels.layernorm_forward(out, np.zeros(4), np.zeros(4), x, np.ones(C), np.zeros(C), 1e-5)


def test_more_queries_than_keys_is_refused_before_any_write(backend):
    """Tq > T would put query 0 before position 0: the compiled loop wrote before the array."""
    big = np.full((2, 1, 5, 2), 7.0)
    with pytest.raises(ValueError, match="5 queries but only 2 keys"):
        kernels.attention_softmax_forward(big[1:], 1.0)
    assert np.all(big == 7.0)
    with pytest.raises(ValueError, match="5 queries but only 2 keys"):
        kernels.attention_softmax_backward(big[1:].copy(), big[1:], 1.0)


@pytest.mark.parametrize("scale", [-1.0, 0.0, np.inf, np.nan])
def test_attention_scale_must_be_positive(backend, scale):
    att = rand(1, 1, 3, 3)
    with pytest.raises(ValueError, match="scale must be"):
        kernels.attention_softmax_forward(att, scale)
    with pytest.raises(ValueError, match="scale must be"):
        kernels.attention_softmax_backward(att.copy(), att, scale)


def test_overlapping_outputs_are_refused(backend):
    """An output may be its input exactly (in place) but must not overlap another argument."""
    x = rand(8, C)
    with pytest.raises(ValueError, match="probs overlaps logits"):
        kernels.softmax_forward(x[:4], x[1:5])
    buf = np.zeros(2 * 4)
    with pytest.raises(ValueError, match="mean overlaps rstd"):
        kernels.layernorm_forward(np.zeros((4, C)), buf[:4], buf[2:6], rand(4, C), np.ones(C), np.zeros(C), 1e-5)
    kernels.softmax_forward(x, x)  # in place is allowed
    np.testing.assert_allclose(x.sum(1), 1.0)


def test_an_overlap_is_refused_after_the_same_buffers_passed_apart(backend):
    """The overlap check remembers layouts found apart (a training step repeats its buffers): the
    same buffers pass again, and views of them that overlap are still refused, each time."""
    x, probs = rand(8, C), np.empty((8, C))
    for _ in range(2):
        kernels.softmax_forward(probs, x)
    for _ in range(2):
        with pytest.raises(ValueError, match="probs overlaps logits"):
            kernels.softmax_forward(x[:4], x[1:5])
        with pytest.raises(ValueError, match="probs overlaps logits"):
            kernels.softmax_forward(probs.reshape(-1)[C : 5 * C].reshape(4, C), probs[:4])
    kernels.softmax_forward(probs[4:], x[:4])  # apart: a new layout of the same buffers


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 15, 16, 17, 33])
def test_the_row_maximum_orders_negatives_infinities_and_nans_as_floats_do(backend, dtype, n):
    """softmax and the cross-entropy subtract each row's maximum (compiled: over the floats' integer
    order). All-negative rows whose spread would overflow exp from any other maximum, -0.0 beside
    0.0, -inf, +inf and NaNs of either sign, at lengths around the 16 lanes."""
    rng = np.random.default_rng(n)
    rows = -rng.uniform(1, 150, (6, n))  # all negative: exp(x - m) overflows unless m is the largest
    rows[1, :] = -0.0
    rows[1, n // 2] = 0.0
    rows[2, n - 1] = -np.inf
    rows[3, 0] = np.inf
    rows[4, n // 2] = np.nan
    rows[5, n // 3] = np.copysign(np.nan, -1.0)  # a NaN with the sign bit set
    x = rows.astype(dtype)
    probs, losses, lse = np.empty_like(x), np.empty(6, dtype), np.empty(6, dtype)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf in the last rows
        kernels.softmax_forward(probs, x)
        kernels.crossentropy_forward(losses, lse, x, np.zeros(6, dtype=np.int64))
        m = rows.max(axis=1, keepdims=True)
        e = np.exp(rows - m)
        want_p, want_lse = e / e.sum(axis=1, keepdims=True), (m + np.log(e.sum(axis=1, keepdims=True)))[:, 0]
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(probs[:3], want_p[:3], **tol)
    np.testing.assert_allclose(lse[:3], want_lse[:3], **tol)
    assert np.isnan(probs[3:]).any(axis=1).all() and np.isnan(lse[3:]).all()  # inf or NaN: NaN out


# float32 accuracy, pinned with float32-sized tolerances -------------------------------------------


def test_float32_exp_is_within_its_bound(backend):
    """exp over the whole range the kernels call it on: x <= 0 (a softmax's x - max, tanh's -2|u|),
    down to float32's smallest normal and below. softmax([0, x]) gives exp(x) = p[1] / p[0] with two
    roundings (~1.2e-7) beside exp's 2e-7."""
    x = np.concatenate([np.linspace(-87.3, 0, 400_001), np.random.default_rng(0).uniform(-87.3, 0, 100_000)])
    rows = np.stack([np.zeros_like(x), x], axis=1).astype(np.float32)
    p = np.empty_like(rows)
    kernels.softmax_forward(p, rows)
    got = p[:, 1].astype(np.float64) / p[:, 0]
    rel = np.abs(got / np.exp(rows[:, 1].astype(np.float64)) - 1)
    assert rel.max() < 3.2e-7, (rel.max(), rows[rel.argmax(), 1])
    # below: float32's subnormals (given as 0 or as themselves), then -inf (a masked score) and NaN
    tail = np.array([[0, x] for x in np.linspace(-104, -87.4, 1001)] + [[0, -np.inf], [0, np.nan]], np.float32)
    p = np.empty_like(tail)
    kernels.softmax_forward(p, tail)
    sub, exact = p[:-2, 1], np.exp(tail[:-2, 1].astype(np.float64))
    assert np.all((sub == 0) | (np.abs(sub - exact) <= 1.5e-45))  # flushed, or within a subnormal's step
    np.testing.assert_array_equal(p[:-1, 0], 1.0)
    assert p[-2, 1] == 0.0 and np.isnan(p[-1]).all()


def test_float32_gelu_matches_the_formula_to_float32_precision(backend):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) in float64 on float32 inputs; the bound is
    relative to |x|, since 1 + tanh(u) cancels for negative x."""
    x = np.linspace(-10, 10, 400_001).astype(np.float32)
    out, th = np.empty_like(x), np.empty_like(x)
    kernels.gelu_forward(out, th, x)
    x64 = x.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
    assert np.max(np.abs(out - 0.5 * x64 * (1 + np.tanh(u))) / (np.abs(x64) + 1e-3)) < 4e-7
    assert np.max(np.abs(th - np.tanh(u))) < 3e-7
    d_ref = 0.5 * (1 + np.tanh(u)) + 0.5 * x64 * (1 - np.tanh(u) ** 2) * np.sqrt(2 / np.pi) * (
        1 + 3 * 0.044715 * x64**2
    )
    dx = np.empty_like(x)
    kernels.gelu_backward(dx, x, np.tanh(u).astype(np.float32), np.ones_like(x))
    assert np.max(np.abs(dx - d_ref) / (1 + np.abs(d_ref))) < 1e-6


def test_float32_layernorm_and_crossentropy_to_float32_precision(backend):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 256)) * 3 + 5).astype(np.float32)
    w, b = rng.standard_normal(256).astype(np.float32), rng.standard_normal(256).astype(np.float32)
    out, mean, rstd = np.empty_like(x), np.empty(64, np.float32), np.empty(64, np.float32)
    kernels.layernorm_forward(out, mean, rstd, x, w, b, 1e-5)
    np.testing.assert_allclose(out, ref_layernorm(x.astype(np.float64), w, b), rtol=1e-5, atol=2e-6)
    logits = (rng.standard_normal((64, 500)) * 4).astype(np.float32)
    targets = rng.integers(0, 500, 64)
    losses, lse = np.empty(64, np.float32), np.empty(64, np.float32)
    kernels.crossentropy_forward(losses, lse, logits, targets)
    np.testing.assert_allclose(losses, ref_crossentropy(logits.astype(np.float64), targets), rtol=2e-6, atol=2e-6)


def _simd_in_a_fresh_process(**env):
    import os
    import subprocess
    import sys

    code = "import simple_llm, simple_llm.kernels as k; print(simple_llm.BACKEND, simple_llm.SIMD, k.impl.__name__)"
    full = {k: v for k, v in os.environ.items() if not k.startswith("SIMPLE_LLM_")} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full)


def test_the_widest_simd_level_the_cpu_runs_is_chosen_and_can_be_capped():
    compiled_kernels()  # skips where nothing is built
    from simple_llm.kernels import _cpu_levels

    runs = _cpu_levels()
    widest = next(level for level in ("avx512", "avx2", "baseline") if level in runs)
    module = {level: f"simple_llm._kernels{'' if level == 'baseline' else '_' + level}" for level in runs}
    assert _simd_in_a_fresh_process().stdout.split() == ["cython", widest, module[widest]]
    for cap in ("avx2", "baseline"):  # a cap the CPU runs is the level; a higher one, the widest below it
        level = cap if cap in runs else "baseline"
        assert _simd_in_a_fresh_process(SIMPLE_LLM_SIMD=cap).stdout.split() == ["cython", level, module[level]]
    assert _simd_in_a_fresh_process(SIMPLE_LLM_PURE_PYTHON="1").stdout.split() == [
        "numpy",
        "None",
        "simple_llm.fallback",
    ]
    wrong = _simd_in_a_fresh_process(SIMPLE_LLM_SIMD="avx9")
    assert wrong.returncode != 0 and "SIMPLE_LLM_SIMD must be one of baseline, avx2, avx512, not 'avx9'" in wrong.stderr


def test_a_layout_checked_once_is_still_checked_for_what_changes(backend):
    """The checks remember layouts that passed (kernels._CHECKED): what the memo keys on (address,
    shape, strides, dtype, writability) is checked again when it changes, and the values (token
    ids, numbers) at every call."""
    V, C, B, T = 7, 4, 2, 3
    out, wte, wpe = np.zeros((B, T, C)), rand(V, C), rand(T, C)
    idx = np.zeros((B, T), dtype=np.int64)
    kernels.encoder_forward(out, idx, wte, wpe)
    kernels.encoder_forward(out, idx, wte, wpe)  # remembered
    idx[1, 2] = V  # the same array, a value out of range
    with pytest.raises(ValueError, match="idx holds values outside"):
        kernels.encoder_forward(out, idx, wte, wpe)
    idx[1, 2] = 0
    out.flags.writeable = False  # the same buffer, now read-only
    with pytest.raises(ValueError, match="out is read-only"):
        kernels.encoder_forward(out, idx, wte, wpe)
    with pytest.raises(ValueError, match="dtype"):  # the same memory seen as float32
        kernels.encoder_forward(np.zeros((B, T, 2 * C)).view(np.float32)[:, :, :C], idx, wte, wpe)
    x, w, b = rand(5, C), np.ones(C), np.zeros(C)
    mean, rstd = np.zeros(5), np.zeros(5)
    kernels.layernorm_forward(x, mean, rstd, x.copy(), w, b, 1e-5)
    with pytest.raises(ValueError, match="eps"):  # a number: checked at every call
        kernels.layernorm_forward(x, mean, rstd, x.copy(), w, b, -1.0)
    with pytest.raises(ValueError, match="overlaps"):  # out over its own input: another layout
        kernels.layernorm_forward(x, mean, rstd, x, w, b, 1e-5)
    assert kernels._layout("f", x, [1.0]) is None and kernels._py_layout("f", x, None) is None
    assert kernels._layout("f", x, w[::2]) == kernels._py_layout("f", x, w[::2])  # the compiled key is the same
    assert kernels._layout("f", x) != kernels._layout("f", x[:, ::2]) != kernels._layout("g", x[:, ::2])
