# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""Compiled kernels: the hot loops of GPT-2's forward and backward passes.

Same names and signatures as ``simple_llm/fallback.py``, the NumPy twin the tests compare against.
``simple_llm.kernels`` picks one of the two at import time and checks every argument's shape and
dtype before calling, so the functions here trust their caller and check nothing themselves.

B = batch, T = sequence length, C = channels, NH = heads, hs = C / NH (head size), V = vocabulary,
N = rows of a 2-D view (B * T).

The conventions are llm.c's: outputs first, then what the forward saves for the backward, then the
inputs, then the weights, then sizes. A backward *adds* into parameter gradients (the caller zeroes
them once per step) and *writes* activation gradients, except where its docstring says otherwise.
Loops are written so that the compiler can vectorise them (sums stay in order: see setup.py):
float32 is computed in float32 (as PyTorch does), float64 in float64.
"""
from cython cimport floating
from libc.math cimport log, sqrt
from libc.stdint cimport int8_t, int64_t
from libc.stdlib cimport free, malloc

cimport numpy as cnp
import numpy as np

from _floatmath cimport _exp, _row_dot, _row_max, _row_sum, _sqrt, _tanh

cnp.import_array()

# Every loop runs on the calling thread: the model parallelises over shards of the batch, one
# thread per core (parallel.py), so a kernel never competes with another thread pool for a core.
cdef enum:
    LN_COLS = 32  # columns summed at once in layer norm's parameter gradients: rows stay contiguous
    LN_ROWS = 64  # rows summed in float32 before their sum goes into a double
    CHUNK = 4096  # elements per span of an elementwise loop, in cache
    EXP_SPAN = 512  # exps of a row held on the stack at a time (2-4 KB: in L1)
# sqrt(2 / pi) and the cubic term's weight: GPT-2's tanh approximation of GELU.
cdef double GELU_SCALE = 0.7978845608028654
cdef double GELU_CUBIC = 0.044715


# ----------------------------------------------------------------------------------------------
# token + position embedding

def encoder_forward(floating[:, :, ::1] out, const int64_t[:, ::1] idx,
                    const floating[:, ::1] wte, const floating[:, ::1] wpe):
    """out[b, t] = wte[idx[b, t]] + wpe[t].

    out (B, T, C); idx (B, T) token ids; wte (V, C); wpe (>= T, C), row t for position t.
    """
    cdef Py_ssize_t B = out.shape[0], T = out.shape[1], C = out.shape[2]
    cdef Py_ssize_t b, t, c
    cdef int64_t ix
    with nogil:
        for b in range(B):
            for t in range(T):
                ix = idx[b, t]
                for c in range(C):
                    out[b, t, c] = wte[ix, c] + wpe[t, c]


def encoder_backward(floating[:, ::1] dwte, floating[:, ::1] dwpe,
                     const floating[:, :, ::1] dout, const int64_t[:, ::1] idx):
    """Scatter-add: dwte[idx[b, t]] += dout[b, t]; dwpe[t] += dout[b, t].

    dwte (V, C), dwpe (>= T, C) accumulate; dout (B, T, C); idx (B, T).
    Serial on purpose: two positions may hold the same token, and their rows of dwte must not race.
    """
    cdef Py_ssize_t B = dout.shape[0], T = dout.shape[1], C = dout.shape[2]
    cdef Py_ssize_t b, t, c
    cdef int64_t ix
    with nogil:
        for b in range(B):
            for t in range(T):
                ix = idx[b, t]
                for c in range(C):
                    dwte[ix, c] += dout[b, t, c]
                    dwpe[t, c] += dout[b, t, c]


def _layout(str fn, *arrays):
    """(fn, then for each array its address, shape, strides, dtype and whether it is writable), or
    None when one is not exactly an ndarray: everything simple_llm.kernels' layout checks depend on,
    read in about 0.2 us an array, so that a layout once checked is not checked again. (Not a kernel:
    a helper of the checks, with a slower Python twin in kernels.py.)"""
    cdef list key = [fn]
    cdef cnp.ndarray a
    for x in arrays:
        if type(x) is not np.ndarray:
            return None
        a = <cnp.ndarray>x
        key.append((<size_t>cnp.PyArray_DATA(a), x.shape, x.strides, cnp.PyArray_TYPE(a),
                    cnp.PyArray_ISWRITEABLE(a)))
    return tuple(key)


# ----------------------------------------------------------------------------------------------
# layer norm

cdef inline void _layernorm_row(floating* out, floating* mean, floating* rstd, const floating* x,
                                const floating* w, const floating* bias, Py_ssize_t C,
                                double eps) noexcept nogil:
    cdef Py_ssize_t c
    cdef floating m = _row_sum(x, C) / C, var, s
    for c in range(C):  # simd
        out[c] = x[c] - m  # out holds the deviations for a moment
    var = _row_dot(out, out, C) / C  # biased variance, as torch.nn.LayerNorm
    s = 1 / _sqrt(<floating>(var + eps))
    for c in range(C):  # simd
        out[c] = out[c] * s * w[c] + bias[c]
    mean[0] = m
    rstd[0] = s


def layernorm_forward(floating[:, ::1] out, floating[::1] mean, floating[::1] rstd,
                      const floating[:, ::1] inp, const floating[::1] weight,
                      const floating[::1] bias, double eps):
    """out = (inp - mean) * rstd * weight + bias, row by row.

    out (N, C); mean, rstd (N,) saved for the backward; inp (N, C); weight, bias (C,).
    """
    cdef Py_ssize_t N = inp.shape[0], C = inp.shape[1], i
    with nogil:
        for i in range(N):
            _layernorm_row(&out[i, 0], &mean[i], &rstd[i], &inp[i, 0], &weight[0], &bias[0], C, eps)


cdef inline void _layernorm_row_backward(floating* dx, const floating* dout, const floating* x,
                                         const floating* w, floating mean, floating rstd,
                                         Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t c
    cdef floating dnorm, dnorm_mean = 0, dnorm_norm_mean = 0
    for c in range(C):  # simd
        dnorm = w[c] * dout[c]
        dnorm_mean = dnorm_mean + dnorm
        dnorm_norm_mean = dnorm_norm_mean + dnorm * (x[c] - mean) * rstd
    dnorm_mean = dnorm_mean / C
    dnorm_norm_mean = dnorm_norm_mean / C
    for c in range(C):  # simd
        dx[c] += (w[c] * dout[c] - dnorm_mean - (x[c] - mean) * rstd * dnorm_norm_mean) * rstd


cdef void _layernorm_param_grads(floating* dweight, floating* dbias, const floating* dout,
                                 const floating* x, const floating* mean, const floating* rstd,
                                 Py_ssize_t N, Py_ssize_t cols, Py_ssize_t stride) noexcept nogil:
    # dbias[c] += sum_i dout[i, c];  dweight[c] += sum_i norm[i, c] * dout[i, c], for `cols` columns.
    # Blocks of LN_ROWS rows are summed in the arrays' type (that loop vectorises), the blocks' sums
    # in double: a plain running sum in float32 would lose accuracy with every row.
    cdef floating part_w[LN_COLS]
    cdef floating part_b[LN_COLS]
    cdef double acc_w[LN_COLS]
    cdef double acc_b[LN_COLS]
    cdef Py_ssize_t i, i0, block, c
    cdef floating d, norm_scale
    for c in range(cols):
        acc_w[c] = 0
        acc_b[c] = 0
    for block in range((N + LN_ROWS - 1) // LN_ROWS):
        i0 = block * LN_ROWS
        for c in range(cols):
            part_w[c] = 0
            part_b[c] = 0
        for i in range(i0, min(i0 + LN_ROWS, N)):
            norm_scale = rstd[i]
            for c in range(cols):  # simd
                d = dout[i * stride + c]
                part_b[c] += d
                part_w[c] += (x[i * stride + c] - mean[i]) * norm_scale * d
        for c in range(cols):  # simd
            acc_w[c] += part_w[c]
            acc_b[c] += part_b[c]
    for c in range(cols):  # simd
        dbias[c] += <floating>acc_b[c]
        dweight[c] += <floating>acc_w[c]


def layernorm_backward(floating[:, ::1] dinp, floating[::1] dweight, floating[::1] dbias,
                       const floating[:, ::1] dout, const floating[:, ::1] inp,
                       const floating[::1] weight, const floating[::1] mean,
                       const floating[::1] rstd):
    """Backward of layernorm_forward.

    forward was: norm = (inp - mean) * rstd; out = norm * weight + bias, so
        dbias += sum_rows dout;  dweight += sum_rows norm * dout
        dinp  += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)),  dnorm = weight * dout
    dinp (N, C) is *added to*: the input of a layer norm is the residual stream, whose gradient also
    arrives through the skip connection. dweight, dbias (C,) accumulate.
    """
    cdef Py_ssize_t N = inp.shape[0], C = inp.shape[1], i, c0, blk
    with nogil:
        for i in range(N):
            _layernorm_row_backward(&dinp[i, 0], &dout[i, 0], &inp[i, 0], &weight[0],
                                    mean[i], rstd[i], C)
    # Parameter gradients sum over rows, LN_COLS columns at a time (their partial sums fit in registers).
    with nogil:
        for blk in range((C + LN_COLS - 1) // LN_COLS):
            c0 = blk * LN_COLS
            _layernorm_param_grads(&dweight[c0], &dbias[c0], &dout[0, c0], &inp[0, c0], &mean[0], &rstd[0],
                                   N, min(LN_COLS, C - c0), C)


# ----------------------------------------------------------------------------------------------
# softmax

cdef inline void _softmax_row(floating* p, const floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating m = _row_max(x, n)
    for j in range(n):  # simd
        p[j] = _exp(x[j] - m)
    cdef floating total = 1 / _row_sum(p, n)
    for j in range(n):  # simd
        p[j] = p[j] * total


def softmax_forward(floating[:, ::1] probs, const floating[:, ::1] logits):
    """probs[i] = exp(logits[i] - max) / sum(exp(logits[i] - max)), row by row.

    probs, logits (N, V); probs may be logits itself.
    """
    cdef Py_ssize_t N = logits.shape[0], V = logits.shape[1], i
    with nogil:
        for i in range(N):
            _softmax_row(&probs[i, 0], &logits[i, 0], V)


# ----------------------------------------------------------------------------------------------
# attention: the elementwise chain between the two BLAS products (simple_llm.kernels does those)

cdef void _causal_softmax_row(floating* row, Py_ssize_t n, Py_ssize_t T, floating scale) noexcept nogil:
    # row[:n] = softmax(scale * row[:n]); row[n:T] = 0, the keys after the query
    cdef Py_ssize_t j
    cdef floating m = _row_max(row, n) * scale  # scale > 0, so the largest scaled score is the scaled largest
    for j in range(n):  # simd
        row[j] = _exp(row[j] * scale - m)
    cdef floating total = 1 / _row_sum(row, n)
    for j in range(n):  # simd
        row[j] = row[j] * total
    for j in range(n, T):
        row[j] = 0


def attention_softmax_forward(floating[:, :, :, ::1] att, double scale):
    """Scale, causal mask and softmax, in place, in one pass over each row.

    att (B, NH, Tq, T): the scores q . k on entry; on return softmax(scale * scores) over the keys
    at or before each query's position (query i is position T - Tq + i), and 0 after it.
    """
    cdef Py_ssize_t B = att.shape[0], NH = att.shape[1], Tq = att.shape[2], T = att.shape[3]
    cdef Py_ssize_t rows = B * NH * Tq, r
    cdef floating* base = &att[0, 0, 0, 0]
    with nogil:
        for r in range(rows):
            _causal_softmax_row(base + r * T, T - Tq + r % Tq + 1, T, <floating>scale)


cdef void _softmax_backward_row(floating* d, const floating* p, Py_ssize_t T, floating scale) noexcept nogil:
    cdef Py_ssize_t j
    cdef floating dot = _row_dot(p, d, T)
    for j in range(T):  # simd
        d[j] = scale * p[j] * (d[j] - dot)


def attention_softmax_backward(floating[:, :, :, ::1] datt, const floating[:, :, :, ::1] att, double scale):
    """Backward of attention_softmax_forward, in place over datt (B, NH, T, T).

    forward was: att = softmax(scale * s) row by row, so
        ds[j] = scale * att[j] * (datt[j] - sum_k att[k] datt[k])
    The causal mask needs nothing: masked weights are 0, and so is their gradient.
    """
    cdef Py_ssize_t rows = att.shape[0] * att.shape[1] * att.shape[2], T = att.shape[3], r
    cdef floating* d = &datt[0, 0, 0, 0]
    cdef const floating* p = &att[0, 0, 0, 0]
    with nogil:
        for r in range(rows):
            _softmax_backward_row(d + r * T, p + r * T, T, <floating>scale)


# ----------------------------------------------------------------------------------------------
# GELU, tanh approximation (GPT-2's "gelu_new")


cdef void _gelu_forward_span(floating* out, floating* th, const floating* inp, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating x, half = 0.5, one = 1, s = GELU_SCALE, a = GELU_CUBIC
    for i in range(n):  # simd
        x = inp[i]
        th[i] = _tanh(s * (x + a * x * x * x))
        out[i] = half * x * (one + th[i])


cdef void _gelu_backward_span(floating* dinp, const floating* inp, const floating* th, const floating* dout,
                              Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating x, half = 0.5, one = 1, three = 3, s = GELU_SCALE, a = GELU_CUBIC
    for i in range(n):  # simd
        x = inp[i]
        dinp[i] = dout[i] * (half * (one + th[i]) + half * x * (one - th[i] * th[i]) * s * (one + three * a * x * x))


def gelu_forward(floating[::1] out, floating[::1] tanh_u, const floating[::1] inp):
    """out = 0.5 * x * (1 + tanh(u)), u = sqrt(2/pi) * (x + 0.044715 x^3), elementwise over flat
    arrays; tanh_u saves tanh(u) for the backward. out may be inp itself.
    """
    cdef Py_ssize_t n = inp.shape[0], c, start
    with nogil:
        for c in range((n + CHUNK - 1) // CHUNK):
            start = c * CHUNK
            _gelu_forward_span(&out[start], &tanh_u[start], &inp[start], min(CHUNK, n - start))


def gelu_backward(floating[::1] dinp, const floating[::1] inp, const floating[::1] tanh_u,
                  const floating[::1] dout):
    """dinp = gelu'(inp) * dout, elementwise over flat arrays; dinp may be dout itself.

    forward was: out = 0.5 x (1 + tanh(u)), u = s (x + a x^3), so
        gelu'(x) = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) s (1 + 3 a x^2)
    with tanh(u) saved by the forward: no exp here.
    """
    cdef Py_ssize_t n = inp.shape[0], c, start
    with nogil:
        for c in range((n + CHUNK - 1) // CHUNK):
            start = c * CHUNK
            _gelu_backward_span(&dinp[start], &inp[start], &tanh_u[start], &dout[start], min(CHUNK, n - start))


# ----------------------------------------------------------------------------------------------
# cross-entropy over the softmax of the logits: the loss and the output layer's gradient

cdef inline floating _logsumexp_row(const floating* x, Py_ssize_t n) noexcept nogil:
    # exp(x - m) goes into a buffer on the stack, EXP_SPAN at a time, and _row_sum adds it up: a loop
    # that stores its exps vectorises, one that sums them as it goes did not (it ran at 0.8-1.2 ns an
    # element, slower than the backward's exp-and-write)
    cdef floating buf[EXP_SPAN]
    cdef Py_ssize_t j, blk, start, count
    cdef floating m = _row_max(x, n), total = 0
    for blk in range((n + EXP_SPAN - 1) // EXP_SPAN):
        start = blk * EXP_SPAN
        count = min(EXP_SPAN, n - start)
        for j in range(count):  # simd
            buf[j] = _exp(x[start + j] - m)
        total = total + _row_sum(buf, count)
    return m + <floating>log(total)


def crossentropy_forward(floating[::1] losses, floating[::1] lse,
                         const floating[:, ::1] logits, const int64_t[::1] targets):
    """losses[i] = log(sum_j exp(logits[i, j])) - logits[i, targets[i]]; 0 where targets[i] < 0.

    losses, lse (N,): the loss and the log-sum-exp saved for the backward; logits (N, V);
    targets (N,), -1 marks a position that is not scored (padding).
    """
    cdef Py_ssize_t N = logits.shape[0], V = logits.shape[1], i
    cdef floating z
    with nogil:
        for i in range(N):
            z = _logsumexp_row(&logits[i, 0], V)
            lse[i] = z
            losses[i] = z - logits[i, targets[i]] if targets[i] >= 0 else 0


cdef inline void _crossentropy_row_backward(floating* d, const floating* x, floating lse, int64_t target,
                                            floating dloss, Py_ssize_t V) noexcept nogil:
    cdef Py_ssize_t j
    if target < 0:
        for j in range(V):
            d[j] = 0
        return
    for j in range(V):  # simd
        d[j] = _exp(x[j] - lse) * dloss
    d[target] -= dloss


def crossentropy_backward(floating[:, ::1] dlogits, const floating[:, ::1] logits,
                          const floating[::1] lse, const int64_t[::1] targets, double dloss):
    """dlogits[i] = (softmax(logits[i]) - onehot(targets[i])) * dloss; 0 where targets[i] < 0.

    forward was: loss = lse - logits[target], with lse = log(sum exp(logits)), so
        dloss/dlogits[j] = exp(logits[j] - lse) - [j == target]
    dlogits (N, V) is written and may be logits itself; dloss is the gradient of each row's loss
    (1 / number of scored rows for a mean).
    """
    cdef Py_ssize_t N = logits.shape[0], V = logits.shape[1], i
    with nogil:
        for i in range(N):
            _crossentropy_row_backward(&dlogits[i, 0], &logits[i, 0], lse[i], targets[i], <floating>dloss, V)


# ----------------------------------------------------------------------------------------------
# AdamW

cdef void _adamw_span(floating* p, const floating* grads, floating* m, floating* v, Py_ssize_t n,
                      floating step_size, floating inv_bc2_sqrt, floating decay, floating beta1,
                      floating beta2, floating eps) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, mi, vi, one = 1
    for i in range(n):  # simd
        g = grads[i]
        mi = m[i] + (one - beta1) * (g - m[i])  # torch's lerp form of beta1 m + (1 - beta1) g
        vi = beta2 * v[i] + (one - beta2) * g * g
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * mi / (_sqrt(vi) * inv_bc2_sqrt + eps)


def adamw_update(floating[::1] params, const floating[::1] grads, floating[::1] m, floating[::1] v,
                 double lr, double beta1, double beta2, double eps, double weight_decay,
                 int64_t step):
    """One AdamW step over flat arrays, exactly as torch.optim.AdamW (step counts from 1).

    params (n,) are updated in place; grads (n,); m, v (n,) the first and second moments.
        p -= lr * weight_decay * p                        (decoupled weight decay)
        m  = beta1 m + (1 - beta1) g;   v = beta2 v + (1 - beta2) g^2
        p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
    """
    cdef Py_ssize_t n = params.shape[0], c, start
    cdef floating step_size = lr / (1.0 - beta1 ** step)
    cdef floating inv_bc2_sqrt = 1.0 / sqrt(1.0 - beta2 ** step)
    cdef floating decay = 1.0 - lr * weight_decay
    with nogil:
        for c in range((n + CHUNK - 1) // CHUNK):
            start = c * CHUNK
            _adamw_span(&params[start], &grads[start], &m[start], &v[start], min(CHUNK, n - start),
                        step_size, inv_bc2_sqrt, decay, <floating>beta1, <floating>beta2, <floating>eps)


# ----------------------------------------------------------------------------------------------
# byte-level BPE: one piece's merges

cdef inline void _heap_push(int64_t* heap, Py_ssize_t* size, int64_t key) noexcept nogil:
    cdef Py_ssize_t i = size[0]
    cdef Py_ssize_t parent
    size[0] += 1
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= key:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = key


cdef inline int64_t _heap_pop(int64_t* heap, Py_ssize_t* size) noexcept nogil:
    cdef int64_t top = heap[0]
    cdef int64_t last
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t child
    size[0] -= 1
    last = heap[size[0]]
    while True:
        child = 2 * i + 1
        if child >= size[0]:
            break
        if child + 1 < size[0] and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= last:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = last
    return top


cdef inline int64_t _rank(dict ranks, bytes token, int64_t limit) except -2:
    """ranks[token], or -1 when token is not in it; a rank outside [0, limit) is a ValueError, so that
    rank * n + position never overflows into a wrong position."""
    cdef object found = ranks.get(token)
    if found is None:
        return -1
    cdef int64_t rank = found
    if rank < 0 or rank >= limit:
        raise ValueError(f"merge_piece: the rank of {token!r} is {rank}, outside [0, {limit})")
    return rank


def merge_piece(bytes piece, dict ranks):
    """Token ids of one piece: merge the lowest-ranked adjacent pair (the leftmost of equals) until
    none merges. The same heap over (rank, position) as the fallback's, with the bookkeeping in C
    arrays: only the dictionary look-ups of merged pairs stay Python calls."""
    cdef Py_ssize_t n = len(piece)
    if n < 2:
        return [ranks[piece]] if n else []
    cdef list parts = [piece[i : i + 1] for i in range(n)]
    # pair[i]: the rank of the pair starting at i (-1: none); the heap holds n - 1 pairs at first and
    # grows by one at most a merge (one pop, two pushes), so 2n keys
    cdef int64_t* memory = <int64_t*>malloc(5 * n * sizeof(int64_t))
    if memory == NULL:
        raise MemoryError
    cdef int64_t* pair = memory
    cdef int64_t* nxt = memory + n
    cdef int64_t* prv = memory + 2 * n
    cdef int64_t* heap = memory + 3 * n
    try:
        return _merge(piece, ranks, parts, n, pair, nxt, prv, heap)
    finally:
        free(memory)


cdef list _merge(bytes piece, dict ranks, list parts, Py_ssize_t n, int64_t* pair, int64_t* nxt,
                 int64_t* prv, int64_t* heap):
    cdef Py_ssize_t size = 0
    cdef Py_ssize_t i, j, k, p
    cdef int64_t key, rank, r
    cdef int64_t limit = (<int64_t>1 << 62) // n
    cdef bytes merged
    for i in range(n):
        nxt[i] = i + 1
        prv[i] = i - 1
        pair[i] = _rank(ranks, piece[i : i + 2], limit) if i + 1 < n else -1
        if pair[i] >= 0:
            _heap_push(heap, &size, pair[i] * n + i)
    while size > 0:
        key = _heap_pop(heap, &size)
        rank, i = key // n, key % n
        if pair[i] != rank:  # stale: that pair has changed since
            continue
        j = nxt[i]
        merged = <bytes>parts[i] + <bytes>parts[j]
        parts[i] = merged
        parts[j] = None
        pair[j] = -1
        pair[i] = -1
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
            r = _rank(ranks, merged + <bytes>parts[k], limit)
            if r >= 0:
                pair[i] = r
                _heap_push(heap, &size, r * n + i)
        p = prv[i]
        if p >= 0:
            r = _rank(ranks, <bytes>parts[p] + merged, limit)
            pair[p] = r
            if r >= 0:
                _heap_push(heap, &size, r * n + p)
    return [ranks[part] for part in parts if part is not None]


include "_decode.pxi"
