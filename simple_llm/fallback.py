"""NumPy twins of the compiled kernels in ``src/_kernels.pyx``: same names, same signatures.

Used when the extension is not built or ``SIMPLE_LLM_PURE_PYTHON=1`` is set, and as the reference the
compiled kernels are tested against. Each function states the same equation as its compiled twin in
whole-array NumPy, so it reads as the maths; it is slower because every line is a separate pass over
memory (and some lines make temporaries).

B = batch, T = sequence length, C = channels, NH = heads, hs = C / NH, V = vocabulary, N = rows.
"""

from __future__ import annotations

import numpy as np

# sqrt(2 / pi) and the cubic term's weight: GPT-2's tanh approximation of GELU.
GELU_SCALE = 0.7978845608028654
GELU_CUBIC = 0.044715


def openmp_threads() -> int:
    """Threads the kernels use: the fallback's own loops run on one (BLAS may use more)."""
    return 1


# token + position embedding


def encoder_forward(out, idx, wte, wpe):
    """out[b, t] = wte[idx[b, t]] + wpe[t]; out (B, T, C), idx (B, T), wte (V, C), wpe (>= T, C)."""
    T = idx.shape[1]
    np.take(wte, idx, axis=0, out=out)
    out += wpe[:T]


def encoder_backward(dwte, dwpe, dout, idx):
    """dwte[idx[b, t]] += dout[b, t]; dwpe[t] += dout[b, t] (both accumulate)."""
    T, C = dout.shape[1], dout.shape[2]
    np.add.at(dwte, idx.reshape(-1), dout.reshape(-1, C))
    dwpe[:T] += dout.sum(axis=0)


# layer norm


def layernorm_forward(out, mean, rstd, inp, weight, bias, eps):
    """out = (inp - mean) * rstd * weight + bias per row; out, inp (N, C); mean, rstd (N,)."""
    mu = inp.mean(axis=1)
    xc = inp - mu[:, None]
    s = 1.0 / np.sqrt((xc * xc).mean(axis=1) + eps)
    np.multiply(xc, s[:, None], out=out)
    out *= weight
    out += bias
    mean[...] = mu
    rstd[...] = s


def layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd):
    """Backward of layernorm_forward; adds into dinp (the residual stream), dweight and dbias."""
    norm = (inp - mean[:, None]) * rstd[:, None]
    dnorm = dout * weight
    dbias += dout.sum(axis=0)
    dweight += (norm * dout).sum(axis=0)
    dinp += (
        dnorm
        - dnorm.mean(axis=1, keepdims=True)
        - norm * (dnorm * norm).mean(axis=1, keepdims=True)
    ) * rstd[:, None]


# softmax


def softmax_forward(probs, logits):
    """probs[i] = softmax(logits[i]); probs, logits (N, V); probs may be logits itself."""
    m = logits.max(axis=1, keepdims=True)
    np.subtract(logits, m, out=probs)
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=1, keepdims=True)


# causal self-attention


def _split_heads(x, n_head):
    """(B, T, C) -> (B, NH, T, hs), a view."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def attention_forward(out, att, inp, n_head, mask=None):
    """Causal self-attention for the last Tq of T positions (see the compiled twin).

    out (B, Tq, C); att (B, NH, Tq, T) saved softmax; inp (B, T, 3C) = q, k, v; mask (B, NH, Tq, T).
    """
    B, T, C3 = inp.shape
    C, Tq = C3 // 3, out.shape[1]
    q = _split_heads(inp[:, T - Tq :, :C], n_head)  # (B, NH, Tq, hs)
    k = _split_heads(inp[:, :, C : 2 * C], n_head)  # (B, NH, T, hs)
    v = _split_heads(inp[:, :, 2 * C :], n_head)  # (B, NH, T, hs)
    np.matmul(q, k.swapaxes(-1, -2), out=att)
    att *= 1.0 / np.sqrt(C // n_head)
    future = np.triu(np.ones((Tq, T), dtype=bool), k=T - Tq + 1)  # key after the query
    att[..., future] = -np.inf
    softmax_forward(att.reshape(-1, T), att.reshape(-1, T))
    p = att if mask is None else att * mask
    out[...] = np.matmul(p, v).transpose(0, 2, 1, 3).reshape(B, Tq, C)


def attention_backward(dinp, datt, dout, inp, att, n_head, mask=None):
    """Backward of attention_forward with Tq == T; writes dinp (B, T, 3C); datt is scratch."""
    B, T, C3 = inp.shape
    C = C3 // 3
    q = _split_heads(inp[:, :, :C], n_head)
    k = _split_heads(inp[:, :, C : 2 * C], n_head)
    v = _split_heads(inp[:, :, 2 * C :], n_head)
    dy = _split_heads(dout, n_head)  # (B, NH, T, hs)
    dq = _split_heads(dinp[:, :, :C], n_head)
    dk = _split_heads(dinp[:, :, C : 2 * C], n_head)
    dv = _split_heads(dinp[:, :, 2 * C :], n_head)
    keep = 1.0 if mask is None else mask
    # forward was: y = (att * keep) @ v
    dv[...] = np.matmul((att * keep).swapaxes(-1, -2), dy)
    np.matmul(dy, v.swapaxes(-1, -2), out=datt)
    datt *= keep
    # forward was: att = softmax(pre)
    dpre = att * (datt - (att * datt).sum(axis=-1, keepdims=True))
    dpre *= 1.0 / np.sqrt(C // n_head)
    # forward was: pre = scale * q @ k^T
    dq[...] = np.matmul(dpre, k)
    dk[...] = np.matmul(dpre.swapaxes(-1, -2), q)


# GELU, tanh approximation


def gelu_forward(out, inp):
    """out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) over flat arrays; out may be inp."""
    x = inp.astype(np.float64)
    out[...] = 0.5 * x * (1.0 + np.tanh(GELU_SCALE * (x + GELU_CUBIC * x**3)))


def gelu_backward(dinp, inp, dout):
    """dinp = gelu'(inp) * dout over flat arrays; dinp may be dout itself."""
    x = inp.astype(np.float64)
    th = np.tanh(GELU_SCALE * (x + GELU_CUBIC * x**3))
    local = 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)
    dinp[...] = local * dout


# cross-entropy over the softmax of the logits


def crossentropy_forward(losses, lse, logits, targets):
    """losses = logsumexp(logits) - logits[target] per row (0 where target < 0); lse saved."""
    m = logits.max(axis=1)
    z = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
    scored = targets >= 0
    picked = logits[np.arange(len(targets)), np.where(scored, targets, 0)]
    lse[...] = z
    losses[...] = np.where(scored, z - picked, 0.0)


def crossentropy_backward(dlogits, logits, lse, targets, dloss):
    """dlogits = (softmax(logits) - onehot(target)) * dloss per row (0 where target < 0)."""
    scored = targets >= 0
    np.subtract(logits, lse[:, None], out=dlogits)
    np.exp(dlogits, out=dlogits)
    dlogits[np.flatnonzero(scored), targets[scored]] -= 1.0
    dlogits *= dloss
    dlogits[~scored] = 0.0


# AdamW


def adamw_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, step):
    """One AdamW step over flat arrays, exactly as torch.optim.AdamW (see the compiled twin)."""
    m += (1.0 - beta1) * (grads - m)
    v *= beta2
    v += (1.0 - beta2) * grads * grads
    params *= 1.0 - lr * weight_decay
    denom = np.sqrt(v) / np.sqrt(1.0 - beta2**step) + eps
    params -= (lr / (1.0 - beta1**step)) * m / denom
