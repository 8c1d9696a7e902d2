"""NumPy (and, for BPE's merges, plain Python) twins of the compiled kernels in ``src/_kernels.pyx``:
same names, same signatures.

Used when the extension is not built or ``SIMPLE_LLM_PURE_PYTHON=1`` is set, and as the reference the
compiled kernels are tested against. Each function states the same equation as its compiled twin in
whole-array NumPy, so it reads as the maths; it is slower because every line is a separate pass over
memory (and some lines make temporaries).

B = batch, T = sequence length, C = channels, NH = heads, hs = C / NH, V = vocabulary, N = rows.
"""

from __future__ import annotations

import heapq
import operator
from itertools import repeat

import numpy as np

# sqrt(2 / pi) and the cubic term's weight: GPT-2's tanh approximation of GELU.
GELU_SCALE = 0.7978845608028654
GELU_CUBIC = 0.044715


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
    # sums down the rows in float64: NumPy adds along axis 0 one row at a time, which in float32
    # loses accuracy with every row
    dbias += dout.sum(axis=0, dtype=np.float64)
    dweight += (norm * dout).sum(axis=0, dtype=np.float64)
    dinp += (dnorm - dnorm.mean(axis=1, keepdims=True) - norm * (dnorm * norm).mean(axis=1, keepdims=True)) * rstd[
        :, None
    ]


# softmax


def softmax_forward(probs, logits):
    """probs[i] = softmax(logits[i]); probs, logits (N, V); probs may be logits itself."""
    m = logits.max(axis=1, keepdims=True)
    np.subtract(logits, m, out=probs)
    np.exp(probs, out=probs)
    probs /= probs.sum(axis=1, keepdims=True)


# attention: the elementwise chain between the two BLAS products (simple_llm.kernels does those)


def attention_softmax_forward(att, scale):
    """In place over att (B, NH, Tq, T): softmax(scale * scores) over the keys at or before each
    query's position (query i is position T - Tq + i), 0 after it."""
    Tq, T = att.shape[-2:]
    att *= scale
    att[..., np.triu(np.ones((Tq, T), dtype=bool), k=T - Tq + 1)] = -np.inf
    softmax_forward(att.reshape(-1, T), att.reshape(-1, T))


def attention_softmax_backward(datt, att, scale):
    """In place over datt (B, NH, T, T): scale * att * (datt - sum over the row of att * datt)."""
    datt -= (att * datt).sum(axis=-1, keepdims=True)
    datt *= att
    datt *= scale


# GELU, tanh approximation


def gelu_forward(out, tanh_u, inp):
    """out = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), over flat arrays; tanh_u saves
    tanh(u). out may be inp."""
    x = inp.astype(np.float64)
    th = np.tanh(GELU_SCALE * (x + GELU_CUBIC * x**3))
    tanh_u[...] = th
    out[...] = 0.5 * x * (1.0 + th)


def gelu_backward(dinp, inp, tanh_u, dout):
    """dinp = gelu'(inp) * dout over flat arrays, from the saved tanh(u); dinp may be dout."""
    x = inp.astype(np.float64)
    th = tanh_u.astype(np.float64)
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


# byte-level BPE

BYTES = [bytes([b]) for b in range(256)]


def merge_piece(piece, ranks):
    """The token ids of one piece (bytes): merge the lowest-ranked adjacent pair (the leftmost of
    equals) until none merges; ranks maps a token's bytes to its rank, which is its id.

    The pairs wait in a heap by (rank, position), so a piece of n bytes takes O(n log n), not the
    O(n^2) of rescanning every pair after each merge (a 40 kB word without spaces: 0.04 s, not 25 s).
    parts[i] is the token starting at byte i (None once merged into its left neighbour); nxt and prv
    link the tokens still there; pair[i] is the rank of the pair starting at i (-1: none), and a heap
    entry whose rank is no longer there is stale and skipped.

    >>> merge_piece(b"abc", {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"abc": 4})
    [4]
    """
    parts: list[bytes | None] = list(map(BYTES.__getitem__, piece))  # None: merged into its left
    n = len(parts)
    if n < 2:
        return [ranks[p] for p in parts]
    nxt, prv = list(range(1, n + 1)), list(range(-1, n - 1))
    get = ranks.get
    pair = list(map(get, map(operator.add, parts, parts[1:]), repeat(-1, n - 1)))
    pair.append(-1)
    heap = [r * n + i for i, r in enumerate(pair) if r >= 0]  # (rank, position) as one int: faster
    heapq.heapify(heap)
    while heap:
        rank, i = divmod(heapq.heappop(heap), n)
        if pair[i] != rank:  # stale: that pair has changed since
            continue
        j = nxt[i]
        parts[i] = merged = parts[i] + parts[j]
        parts[j], pair[j], pair[i] = None, -1, -1
        nxt[i] = k = nxt[j]
        if k < n:
            prv[k] = i
            if (r := get(merged + parts[k], -1)) >= 0:
                pair[i] = r
                heapq.heappush(heap, r * n + i)
        if (p := prv[i]) >= 0:
            pair[p] = r = get(parts[p] + merged, -1)
            if r >= 0:
                heapq.heappush(heap, r * n + p)
    return [ranks[p] for p in parts if p is not None]


# int8 weights ------------------------------------------------------------------------------------


def q8_matmul(out, x, q, scales, bias):
    # the weights dequantised whole, then one BLAS product: W[i, j] = scales[i, j // 32] * q[i, j]
    w = q.astype(np.float32) * np.repeat(scales, 32, axis=1)[:, : q.shape[1]]
    np.matmul(x, w, out=out)
    if bias is not None:
        out += bias


def decoder(n_head, eps, wte, wpe, lnf_w, lnf_b, blocks):
    # no decode step of its own: with the NumPy backend, GPT.next_logits runs the model's layers
    return None
