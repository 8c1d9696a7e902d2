# ----------------------------------------------------------------------------------------------
# Generation: one new position through the whole model in one call, and the int8 product.
#
# Included by _kernels.pyx (so every SIMD build has it). float32 only: generation runs in float32,
# and float64 models keep the Python layers, which are the reference these are tested against.
#
# A step reads every weight once, so its speed limit is memory bandwidth. Every product here is
# written as rows of axpys, out[r, j] += x[r, i] * W[i, j] for each input i: each weight row is read
# once for all the batch's rows, in order, and the loop over j needs no reordered float sums to
# vectorise. Two threads share each product by columns (one core alone does not reach the
# bandwidth); between the products, a spin barrier. The second thread is started and joined within
# the call, so nothing runs or spins once it returns.

cdef extern from *:
    """
    #if defined(_WIN32)
    #define WIN32_LEAN_AND_MEAN
    #define NOMINMAX
    #include <windows.h>
    typedef HANDLE sl_thread;
    #define SL_LOAD(p) InterlockedCompareExchange((volatile LONG*)(p), 0, 0)
    #define SL_INC(p) InterlockedIncrement((volatile LONG*)(p))
    #define SL_STORE(p, v) InterlockedExchange((volatile LONG*)(p), (v))
    #define SL_YIELD() SwitchToThread()
    #else
    #include <pthread.h>
    #include <sched.h>
    typedef pthread_t sl_thread;
    #define SL_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
    #define SL_INC(p) __atomic_add_fetch((p), 1, __ATOMIC_ACQ_REL)
    #define SL_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
    #define SL_YIELD() sched_yield()
    #endif
    #if defined(_MSC_VER)
    #include <intrin.h>
    #define sl_prefetch(p) _mm_prefetch((const char*)(p), _MM_HINT_T0)
    #else
    #define sl_prefetch(p) __builtin_prefetch(p)
    #endif
    #if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
    #include <emmintrin.h>
    #define SL_PAUSE() _mm_pause()
    #elif defined(__aarch64__)
    #define SL_PAUSE() __asm__ __volatile__("yield")
    #else
    #define SL_PAUSE() ((void)0)
    #endif

    /* n threads meet: the last to arrive opens the next phase. A waiting thread spins a little
       (the other is a few microseconds away), then yields its core (the other was descheduled). */
    typedef struct { long count; long phase; long n; } sl_barrier;
    static void sl_barrier_wait(sl_barrier* b) {
        long phase = SL_LOAD(&b->phase);
        if (SL_INC(&b->count) == b->n) {
            SL_STORE(&b->count, 0);
            SL_STORE(&b->phase, phase + 1);
            return;
        }
        for (long spins = 0; SL_LOAD(&b->phase) == phase; spins++) {
            if (spins < 20000) SL_PAUSE(); else SL_YIELD();
        }
    }

    typedef struct { void (*fn)(void*); void* arg; } sl_task;
    #if defined(_WIN32)
    static DWORD WINAPI sl_trampoline(LPVOID t) { ((sl_task*)t)->fn(((sl_task*)t)->arg); return 0; }
    static int sl_start(sl_thread* th, sl_task* t) {
        *th = CreateThread(NULL, 0, sl_trampoline, t, 0, NULL);
        return *th == NULL;
    }
    static void sl_join(sl_thread th) { WaitForSingleObject(th, INFINITE); CloseHandle(th); }
    #else
    static void* sl_trampoline(void* t) { ((sl_task*)t)->fn(((sl_task*)t)->arg); return NULL; }
    static int sl_start(sl_thread* th, sl_task* t) { return pthread_create(th, NULL, sl_trampoline, t); }
    static void sl_join(sl_thread th) { pthread_join(th, NULL); }
    #endif
    """
    ctypedef struct sl_barrier:
        long count
        long phase
        long n
    ctypedef struct sl_task:
        void (*fn)(void*) noexcept nogil
        void* arg
    ctypedef struct sl_thread:
        pass
    void sl_barrier_wait(sl_barrier* b) nogil
    void sl_prefetch(const void* p) nogil  # a cache line's fetch ahead of its use (a hint)
    int sl_start(sl_thread* th, sl_task* t) nogil
    void sl_join(sl_thread th) nogil


cdef extern from *:
    """
    /* One block of 32 weights in four int8 rows: o[j] += s0 q0[j] + s1 q1[j] + s2 q2[j] + s3 q3[j],
       added in that order (as _block4_q8). Written with intrinsics where the CPU has AVX2 or AVX-512:
       GCC's vectoriser widens int8 to int32 in two halving steps with extracts, five shuffles per 32
       weights on the one port that shuffles, which made this loop compute-bound at half the memory's
       speed; vpmovsxbd widens 8 (AVX2) or 16 (AVX-512) weights in one. */
    #if defined(__AVX512F__) || (defined(__AVX2__) && (defined(__FMA__) || defined(_MSC_VER)))
    #include <immintrin.h>
    #define SL_Q8_INTRINSICS 1
    #if defined(__AVX512F__)
    #define SL_W 16
    #define SL_VEC __m512
    #define SL_LOAD_PS _mm512_loadu_ps
    #define SL_STORE_PS _mm512_storeu_ps
    #define SL_FMA _mm512_fmadd_ps
    #define SL_SET1 _mm512_set1_ps
    #define SL_WIDEN(p) _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)(p))))
    #else
    #define SL_W 8
    #define SL_VEC __m256
    #define SL_LOAD_PS _mm256_loadu_ps
    #define SL_STORE_PS _mm256_storeu_ps
    #define SL_FMA _mm256_fmadd_ps
    #define SL_SET1 _mm256_set1_ps
    #define SL_WIDEN(p) _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(p))))
    #endif
    static inline void sl_q8_block4(float* o, float s0, float s1, float s2, float s3, const signed char* q0,
                                    const signed char* q1, const signed char* q2, const signed char* q3) {
        for (int h = 0; h < 32; h += SL_W) {
            SL_VEC acc = SL_LOAD_PS(o + h);
            acc = SL_FMA(SL_SET1(s0), SL_WIDEN(q0 + h), acc);
            acc = SL_FMA(SL_SET1(s1), SL_WIDEN(q1 + h), acc);
            acc = SL_FMA(SL_SET1(s2), SL_WIDEN(q2 + h), acc);
            acc = SL_FMA(SL_SET1(s3), SL_WIDEN(q3 + h), acc);
            SL_STORE_PS(o + h, acc);
        }
    }
    #else
    #define SL_Q8_INTRINSICS 0
    #define sl_q8_block4(o, s0, s1, s2, s3, q0, q1, q2, q3) ((void)0)
    #endif
    """
    bint SL_Q8_INTRINSICS
    void sl_q8_block4(float* o, float s0, float s1, float s2, float s3, const int8_t* q0, const int8_t* q1,
                      const int8_t* q2, const int8_t* q3) nogil


cdef enum:
    QBLOCK = 32  # int8 weights that share one scale (llama.cpp's q8_0 block)
    PREFETCH_ROWS = 8  # int8 weight rows read ahead: 1.5x faster (float32 rows: 15% slower, so not there)
    TILE = 8192  # output sums per pass over a product's weight rows (all rows of the batch): 32 KB, in L1


cdef struct Lin:
    # y = x @ W + b with W (n_in, n_out) as Linear stores it: float32 w, or int8 q with scales s
    # (n_in, ceil(n_out / QBLOCK)), W[i, j] = s[i, j // QBLOCK] * q[i, j]
    const float* w
    const int8_t* q
    const float* s
    const float* b  # (n_out,), or NULL
    Py_ssize_t n_in, n_out


cdef struct Layer:
    const float* ln1_w
    const float* ln1_b
    const float* ln2_w
    const float* ln2_b
    Lin c_attn, attn_proj, c_fc, mlp_proj


cdef struct Model:
    Py_ssize_t C, NH, L, V
    float eps
    const float* wte  # (V, C) float32 embedding and output layer; NULL when head holds them
    Lin head  # int8: wte^T (C, V), so that the output layer is a product like the others
    const float* wpe  # (n_ctx, C)
    const float* lnf_w
    const float* lnf_b
    Layer* layers


cdef struct Step:
    # one call of Decoder.step: B rows at position pos, and its scratch
    Model* m
    Py_ssize_t B, pos, cap
    const int64_t* tokens  # (B,)
    float** cache  # L of (B, cap, 3C): c_attn's output, q beside k and v (activations.KVCache)
    float* logits  # (B, V)
    float* x  # (B, C) the residual stream
    float* h  # (nt, B, C) layer norm's output, one per thread
    float* atty  # (B, C) attention's output
    float* fc  # (B, 4C) the MLP's hidden layer
    float* th  # (nt, 4C) GELU's tanh, which the span writes (a decode step has no backward)
    float* att  # (nt, NH, cap) attention weights, per thread
    float* part  # (nt, B, 4C) each thread's sums over its rows of a product's weights (two threads)
    int nt
    sl_barrier bar


cdef inline void _axpy(float* o, float a, const float* w, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):  # simd
        o[j] = o[j] + a * w[j]


cdef inline void _axpy4(float* o, const float* a, const float** w, Py_ssize_t n) noexcept nogil:
    # o[:n] += a[0] w[0][:n] + ... + a[3] w[3][:n]: o is loaded and stored once for four weight rows
    # (it stays in L1, but its loads and stores would otherwise cost as much as the weights')
    cdef Py_ssize_t j
    cdef float a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3]
    cdef const float* w0 = w[0]
    cdef const float* w1 = w[1]
    cdef const float* w2 = w[2]
    cdef const float* w3 = w[3]
    for j in range(n):  # simd
        o[j] = o[j] + a0 * w0[j] + a1 * w1[j] + a2 * w2[j] + a3 * w3[j]


cdef inline void _axpy4_q8(float* o, const float* a, const int8_t** q, const float** s, Py_ssize_t n,
                           const int8_t** pf) noexcept nogil:
    # _axpy4 over int8 rows, dequantised on the way: row k's weight j is s[k][j // QBLOCK] * q[k][j]
    cdef Py_ssize_t b, j, full = n // QBLOCK
    for b in range(full):
        if pf != NULL and b % 2 == 0:  # the same columns of the four rows after these: a cache line each
            for j in range(4):
                sl_prefetch(pf[j] + b * QBLOCK)
        if SL_Q8_INTRINSICS:
            sl_q8_block4(o + b * QBLOCK, a[0] * s[0][b], a[1] * s[1][b], a[2] * s[2][b], a[3] * s[3][b],
                         q[0] + b * QBLOCK, q[1] + b * QBLOCK, q[2] + b * QBLOCK, q[3] + b * QBLOCK)
        else:
            _block4_q8(o + b * QBLOCK, a, q, s, b, QBLOCK)
    if full * QBLOCK < n:  # a row whose length is not a multiple of 32 ends in a shorter block
        _block4_q8(o + full * QBLOCK, a, q, s, full, n - full * QBLOCK)


cdef inline void _block4_q8(float* o, const float* a, const int8_t** q, const float** s, Py_ssize_t b,
                            Py_ssize_t n) noexcept nogil:
    # block b of four int8 rows: o[:n] += sum over k of a[k] s[k][b] q[k][b * QBLOCK:][:n], n <= QBLOCK
    # (inlined with n = QBLOCK, a loop of constant length: no peeling or remainder around it)
    cdef Py_ssize_t j
    cdef float s0 = a[0] * s[0][b], s1 = a[1] * s[1][b], s2 = a[2] * s[2][b], s3 = a[3] * s[3][b]
    cdef const int8_t* q0 = q[0] + b * QBLOCK
    cdef const int8_t* q1 = q[1] + b * QBLOCK
    cdef const int8_t* q2 = q[2] + b * QBLOCK
    cdef const int8_t* q3 = q[3] + b * QBLOCK
    for j in range(n):  # simd in the baseline build (the AVX builds run sl_q8_block4, and this for short blocks)
        o[j] = o[j] + s0 * <float>q0[j] + s1 * <float>q1[j] + s2 * <float>q2[j] + s3 * <float>q3[j]


cdef void _linear(float* out, Py_ssize_t out_stride, const float* x, Py_ssize_t x_stride, Py_ssize_t R,
                  const Lin* f, Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t j0, Py_ssize_t j1, bint add,
                  bint bias) noexcept nogil:
    # out[r, j0:j1] = (out[r, j0:j1] if add else 0) + (b[j0:j1] if bias) + x[r, i0:i1] @ W[i0:i1, j0:j1]
    # for r < R, rows out_stride and x_stride apart; j0 is a multiple of QBLOCK. W's rows go four at
    # a time.
    cdef Py_ssize_t t0, n, i, r, j, k, row, nblk = (f.n_out + QBLOCK - 1) // QBLOCK
    cdef Py_ssize_t tile = max(<Py_ssize_t>QBLOCK, TILE // R // QBLOCK * QBLOCK)  # long runs of each row: prefetched
    cdef float* o
    cdef float zero = 0
    cdef float a[4]
    cdef const float* w[4]
    cdef const int8_t* q[4]
    cdef const int8_t* pf[4]
    cdef const float* s[4]
    for k in range((j1 - j0 + tile - 1) // tile):
        t0 = j0 + k * tile
        n = min(tile, j1 - t0)
        for r in range(R):
            o = out + r * out_stride + t0
            if not add:
                for j in range(n):
                    o[j] = zero
            if bias and f.b != NULL:
                for j in range(n):
                    o[j] = o[j] + f.b[t0 + j]
        for i in range(i0, i1, 4):
            for j in range(4):  # past the last row: the first row again, times 0 (adds nothing, for finite weights)
                row = i + j if i + j < i1 else i0
                if f.q != NULL:
                    q[j], s[j] = f.q + row * f.n_out + t0, f.s + row * nblk + t0 // QBLOCK
                    pf[j] = f.q + (min(i + PREFETCH_ROWS + j, i1 - 1)) * f.n_out + t0
                else:
                    w[j] = f.w + row * f.n_out + t0
            for r in range(R):
                for j in range(4):
                    a[j] = x[r * x_stride + i + j] if i + j < i1 else zero
                o = out + r * out_stride + t0
                if f.q != NULL:
                    _axpy4_q8(o, a, q, s, n, pf if r == 0 else NULL)
                else:
                    _axpy4(o, a, w, n)


cdef enum:
    DOT_LANES = 32  # partial sums of _dot: four vectors of eight, so that no addition waits on the last


cdef inline float _dot(const float* x, const float* w, Py_ssize_t n) noexcept nogil:
    # x . w as _row_dot, with more partial sums (in order): the output layer's 38M products per
    # token are one long chain of dot products, and eight sums wait on the adder's latency
    cdef float acc[DOT_LANES]
    cdef Py_ssize_t j, k, blk, whole = n - n % DOT_LANES
    cdef float total = 0
    for k in range(DOT_LANES):
        acc[k] = 0
    for blk in range(whole // DOT_LANES):
        j = blk * DOT_LANES
        for k in range(DOT_LANES):  # simd
            acc[k] = acc[k] + x[j + k] * w[j + k]
    for k in range(DOT_LANES):
        total = total + acc[k]
    for j in range(whole, n):
        total = total + x[j] * w[j]
    return total


cdef void _product(Step* s, int tid, float* out, Py_ssize_t out_stride, const float* x, Py_ssize_t x_stride,
                   const Lin* f, bint add, bint gelu) noexcept nogil:
    # out[r] = (out[r] if add else 0) + x[r] @ W + b for the step's B rows, then GELU if gelu; every
    # thread returns with all of out written. The threads share W by rows, so that each reads one
    # stretch of memory front to back (shared by columns, each would read a piece of every row, and
    # the prefetcher would start over at each), into sums of their own, then add the sums up by columns.
    cdef Py_ssize_t B = s.B, r, j, j0, j1, i0, i1
    cdef float zero = 0
    cdef float* o
    cdef float* p0
    cdef float* p1
    if s.nt == 1:
        _linear(out, out_stride, x, x_stride, B, f, 0, f.n_in, 0, f.n_out, add, True)
        if gelu:
            for r in range(B):
                _gelu_forward_span(out + r * out_stride, s.th, out + r * out_stride, f.n_out)
        return
    i0, i1 = f.n_in // 4 * tid // s.nt * 4, f.n_in // 4 * (tid + 1) // s.nt * 4
    if tid == s.nt - 1:
        i1 = f.n_in
    _linear(s.part + tid * B * f.n_out, f.n_out, x, x_stride, B, f, i0, i1, 0, f.n_out, False, tid == 0)
    sl_barrier_wait(&s.bar)
    _columns(f.n_out, tid, s.nt, &j0, &j1)
    for r in range(B):
        o, p0, p1 = out + r * out_stride, s.part + r * f.n_out, s.part + (B + r) * f.n_out
        for j in range(j0, j1):
            o[j] = (o[j] if add else zero) + p0[j] + p1[j]
        if gelu:
            _gelu_forward_span(o + j0, s.th + tid * 4 * s.m.C, o + j0, j1 - j0)
    sl_barrier_wait(&s.bar)


cdef inline void _columns(Py_ssize_t n, int tid, int nt, Py_ssize_t* j0, Py_ssize_t* j1) noexcept nogil:
    # thread tid's share of n columns, in whole blocks of QBLOCK
    cdef Py_ssize_t blocks = (n + QBLOCK - 1) // QBLOCK
    j0[0] = min(blocks * tid // nt * QBLOCK, n)
    j1[0] = min(blocks * (tid + 1) // nt * QBLOCK, n)


cdef void _decode(Step* s, int tid) noexcept nogil:
    """The step's work for thread tid of s.nt: every layer, then the logits."""
    cdef Model* m = s.m
    cdef Py_ssize_t B = s.B, C = m.C, C3 = 3 * m.C, C4 = 4 * m.C, hs = m.C // m.NH
    cdef Py_ssize_t b, c, l, hd, t, T = s.pos + 1, j0, j1, h0, h1, v
    cdef Layer* lay
    cdef float* h = s.h + tid * B * C
    cdef float* att = s.att + tid * m.NH * s.cap
    cdef const float* qkv
    cdef const float* e
    cdef float* y
    cdef float mean, rstd, zero = 0, scale = 1 / _sqrt(<float>hs)
    cdef Py_ssize_t vblocks = (m.V + QBLOCK - 1) // QBLOCK
    if tid == 0:  # x = wte[token] + wpe[pos]
        for b in range(B):
            if m.wte != NULL:
                e = m.wte + s.tokens[b] * C
                for c in range(C):
                    s.x[b * C + c] = e[c] + m.wpe[s.pos * C + c]
            else:  # the int8 table is stored transposed: token's column
                for c in range(C):
                    s.x[b * C + c] = (m.head.s[c * vblocks + s.tokens[b] // QBLOCK]
                                      * <float>m.head.q[c * m.V + s.tokens[b]] + m.wpe[s.pos * C + c])
    if s.nt > 1:
        sl_barrier_wait(&s.bar)
    h0, h1 = m.NH * tid // s.nt, m.NH * (tid + 1) // s.nt
    for l in range(m.L):
        lay = &m.layers[l]
        # qkv = c_attn(ln_1(x)), written straight into the cache at pos
        for b in range(B):
            _layernorm_row(h + b * C, &mean, &rstd, s.x + b * C, lay.ln1_w, lay.ln1_b, C, m.eps)
        _product(s, tid, s.cache[l] + s.pos * C3, s.cap * C3, h, C, &lay.c_attn, False, False)
        # atty = softmax(q k^T / sqrt(hs)) v for this thread's heads, position by position: the
        # keys (and then the values) of one position for all these heads lie side by side, and the
        # next position's are fetched while this one's are used (positions are 3C apart, too far
        # for the hardware prefetcher)
        for b in range(B):
            qkv = s.cache[l] + b * s.cap * C3
            for t in range(T):
                for c in range(h0 * hs, h1 * hs, 16):
                    sl_prefetch(qkv + min(t + 2, T - 1) * C3 + C + c)
                for hd in range(h0, h1):
                    att[(hd - h0) * s.cap + t] = _row_dot(qkv + s.pos * C3 + hd * hs, qkv + t * C3 + C + hd * hs, hs)
            for hd in range(h0, h1):
                _causal_softmax_row(att + (hd - h0) * s.cap, T, T, scale)
            y = s.atty + b * C
            for c in range(h0 * hs, h1 * hs):
                y[c] = zero
            for t in range(T):
                for c in range(h0 * hs, h1 * hs, 16):
                    sl_prefetch(qkv + min(t + 2, T - 1) * C3 + 2 * C + c)
                for hd in range(h0, h1):
                    _axpy(y + hd * hs, att[(hd - h0) * s.cap + t], qkv + t * C3 + 2 * C + hd * hs, hs)
        if s.nt > 1:
            sl_barrier_wait(&s.bar)
        # x += c_proj(atty)
        _product(s, tid, s.x, C, s.atty, C, &lay.attn_proj, True, False)
        # fc = gelu(c_fc(ln_2(x)))
        for b in range(B):
            _layernorm_row(h + b * C, &mean, &rstd, s.x + b * C, lay.ln2_w, lay.ln2_b, C, m.eps)
        _product(s, tid, s.fc, C4, h, C, &lay.c_fc, False, True)
        # x += c_proj(fc)
        _product(s, tid, s.x, C, s.fc, C4, &lay.mlp_proj, True, False)
    # logits = ln_f(x) @ wte^T
    for b in range(B):
        _layernorm_row(h + b * C, &mean, &rstd, s.x + b * C, m.lnf_w, m.lnf_b, C, m.eps)
    _columns(m.V, tid, s.nt, &j0, &j1)
    if m.wte != NULL:  # float32: logits[b, v] = h[b] . wte[v]
        for v in range(j0, j1):
            for c in range(0, C, 16):  # the row 4 ahead, a cache line at a time: 1.25x faster (8 ahead: 1.1x)
                sl_prefetch(m.wte + min(v + 4, j1 - 1) * C + c)
            for b in range(B):
                s.logits[b * m.V + v] = _dot(h + b * C, m.wte + v * C, C)
    else:
        _linear(s.logits, m.V, h, C, B, &m.head, 0, C, j0, j1, False, True)


cdef void _second_thread(void* step) noexcept nogil:
    _decode(<Step*>step, 1)


cdef Lin _lin(object weight, object bias, list keep) except *:
    """A Lin over a float32 (n_in, n_out) array, or an int8 (q, scales) pair; bias (n_out,) or None."""
    cdef Lin f
    cdef const float[:, ::1] w
    cdef const int8_t[:, ::1] q
    cdef const float[:, ::1] s
    cdef const float[::1] bv
    f.w, f.q, f.s, f.b = NULL, NULL, NULL, NULL
    if isinstance(weight, tuple):
        q, s = weight
        f.q, f.s, f.n_in, f.n_out = &q[0, 0], &s[0, 0], q.shape[0], q.shape[1]
    else:
        w = weight
        f.w, f.n_in, f.n_out = &w[0, 0], w.shape[0], w.shape[1]
    if bias is not None:
        bv = bias
        f.b = &bv[0]
    keep.append((weight, bias))
    return f


cdef const float* _vec(object a, list keep) except NULL:
    cdef const float[::1] v = a.reshape(-1)
    keep.append(a)
    return &v[0]


cdef class Decoder:
    """A float32 GPT-2's weights, for Decoder.step: the next position's logits in one call.

    Built by simple_llm.kernels.decoder from the model's own arrays (no copies: a weight written in
    place is seen by the next step), which it keeps alive. Each linear weight is a float32
    (n_in, n_out) array or an int8 (q, scales) pair (simple_llm.int8); the embedding is wte (V, C), or
    the int8 pair of wte^T (C, V), which is then also the output layer.
    """
    cdef Model m
    cdef list keep

    def __cinit__(self, int n_head, double eps, object wte, const float[:, ::1] wpe, object lnf_w, object lnf_b,
                  list blocks):
        cdef const float[:, ::1] e
        self.keep = [wpe]
        self.m.layers = <Layer*>malloc(max(1, len(blocks)) * sizeof(Layer))
        if self.m.layers == NULL:
            raise MemoryError()
        self.m.NH, self.m.eps, self.m.L, self.m.C = n_head, eps, len(blocks), wpe.shape[1]
        self.m.wpe = &wpe[0, 0]
        self.m.lnf_w, self.m.lnf_b = _vec(lnf_w, self.keep), _vec(lnf_b, self.keep)
        if isinstance(wte, tuple):
            self.m.wte = NULL
            self.m.head = _lin(wte, None, self.keep)
            self.m.V = self.m.head.n_out
        else:
            e = wte
            self.keep.append(wte)
            self.m.wte, self.m.V = &e[0, 0], e.shape[0]
        for l, (ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, mproj_w, mproj_b) in enumerate(blocks):
            self.m.layers[l].ln1_w, self.m.layers[l].ln1_b = _vec(ln1_w, self.keep), _vec(ln1_b, self.keep)
            self.m.layers[l].ln2_w, self.m.layers[l].ln2_b = _vec(ln2_w, self.keep), _vec(ln2_b, self.keep)
            self.m.layers[l].c_attn = _lin(attn_w, attn_b, self.keep)
            self.m.layers[l].attn_proj = _lin(proj_w, proj_b, self.keep)
            self.m.layers[l].c_fc = _lin(fc_w, fc_b, self.keep)
            self.m.layers[l].mlp_proj = _lin(mproj_w, mproj_b, self.keep)

    def __dealloc__(self):
        free(self.m.layers)

    def step(self, float[:, ::1] logits, const int64_t[::1] tokens, list caches, Py_ssize_t pos, int threads):
        """logits (B, V) of the position after pos, for tokens (B,) at pos; their keys and values go
        into caches[l][:, pos] (each (B, cap, 3C), positions before pos filled). threads: 1 or 2."""
        cdef Step s
        cdef Py_ssize_t B = tokens.shape[0], C = self.m.C, l
        cdef float[:, :, ::1] cv
        cdef list views = []
        cdef sl_thread second
        cdef sl_task task
        s.m, s.B, s.pos, s.tokens, s.logits = &self.m, B, pos, &tokens[0], &logits[0, 0]
        s.nt = 2 if threads > 1 else 1
        s.cache = <float**>malloc(max(1, self.m.L) * sizeof(float*))
        s.cap = caches[0].shape[1] if self.m.L else pos + 1
        s.x = <float*>malloc((B * C * (6 + s.nt) + s.nt * (4 * C + self.m.NH * s.cap) + s.nt * B * 4 * C) * sizeof(float))
        if s.cache == NULL or s.x == NULL:
            free(s.cache)
            free(s.x)
            raise MemoryError()
        s.atty = s.x + B * C
        s.fc = s.atty + B * C
        s.h = s.fc + 4 * B * C
        s.th = s.h + s.nt * B * C
        s.att = s.th + s.nt * 4 * C
        s.part = s.att + s.nt * self.m.NH * s.cap
        for l in range(self.m.L):
            cv = caches[l]
            views.append(cv)
            s.cache[l] = &cv[0, 0, 0]
        s.bar.count, s.bar.phase, s.bar.n = 0, 0, s.nt
        with nogil:
            if s.nt > 1:
                task.fn, task.arg = _second_thread, &s
                if sl_start(&second, &task) != 0:
                    s.nt = 1  # no second thread: this one does it all
                    s.bar.n = 1
            _decode(&s, 0)
            if s.nt > 1:
                sl_join(second)
        free(s.cache)
        free(s.x)


def q8_matmul(float[:, ::1] out, const float[:, ::1] x, const int8_t[:, ::1] q, const float[:, ::1] scales,
              object bias):
    """out (N, n_out) = x (N, n_in) @ W + bias, W[i, j] = scales[i, j // 32] * q[i, j] dequantised
    inside the loop (the weights are read once, as int8); bias (n_out,) or None."""
    cdef list keep = []
    cdef Lin f = _lin((q, scales), bias, keep)
    with nogil:
        _linear(&out[0, 0], f.n_out, &x[0, 0], f.n_in, out.shape[0], &f, 0, f.n_in, 0, f.n_out, False, True)


def decoder(int n_head, double eps, object wte, const float[:, ::1] wpe, object lnf_w, object lnf_b, list blocks):
    """The Decoder over these weights (simple_llm.kernels.decoder says what they are)."""
    return Decoder(n_head, eps, wte, wpe, lnf_w, lnf_b, blocks)
