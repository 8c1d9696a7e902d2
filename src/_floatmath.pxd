# cython: language_level=3
"""Float arithmetic that vectorises, for src/_kernels.pyx: exp, tanh and sqrt for float32 and float64,
and sums, maxima and dot products over a row. Inline functions: each is compiled into the kernel
that calls it, so the compiler sees the whole loop. A loop marked ``# simd`` (here and in
_kernels.pyx) must be vectorised in its float32 variant: .ci/check_vectorised.py reads GCC's report.
"""
cimport cython
from cython cimport floating
from libc.math cimport INFINITY, exp, sqrt, sqrtf
from libc.stdint cimport INT32_MAX, int32_t
from libc.string cimport memcpy


cdef inline float _expf(float x) noexcept nogil:
    # exp for float32 as plain arithmetic, so that loops of it vectorise (a call to libm's expf
    # does not): exp(x) = 2^n exp(r), n = round(x / ln 2) (adding and taking away 1.5 * 2^23 rounds
    # a float to the nearest integer with no branch: a select there kept GCC from vectorising the
    # loop for AVX2), r = x - n ln 2 with ln 2 split in two
    # parts (the first has few bits, so n * 0.693359375 and its subtraction are exact: setup.py
    # leaves out -fassociative-math, which would merge the parts again), exp(r) by its Taylor series
    # to r^6 (|r| <= 0.35), and 2^n written straight into the exponent bits. The kernels call it on
    # x <= 0 only (x - max in a softmax, -2|u| in tanh): within 2e-7 relative of exp on [-87.3, 0],
    # 0 below (where float32's results are subnormal anyway), 0 for -inf, NaN for NaN
    # (tests/test_kernels.py measures all of that). Above 0 it is never called; it clamps at 88.7.
    # Every constant is a typed float: a bare literal would be a C double and drag the whole
    # expression, and the vectorised loop around it, into double precision (half the lanes).
    cdef float hi = 88.7, lo = -87.3, half = 0.5, one = 1, zero = 0, shifter = 12582912
    cdef float xc = hi if x > hi else x
    xc = lo if xc < lo else xc
    cdef float t = xc * <float>1.44269504088896341
    cdef float nf = (t + shifter) - shifter  # round(t), ties to even (no -fassociative-math: kept)
    cdef int32_t n = <int32_t>nf
    cdef float r = (xc - nf * <float>0.693359375) + nf * <float>2.12194440e-4
    cdef float p = one + r * (one + r * (half + r * (<float>(1 / 6.0) + r * (<float>(1 / 24.0)
                   + r * (<float>(1 / 120.0) + r * <float>(1 / 720.0))))))
    cdef int32_t bits = (n + 127) << 23
    cdef float scale
    memcpy(&scale, &bits, 4)
    return zero if x < lo else p * scale


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return _expf(x)
    else:
        return exp(x)  # float64 keeps libm's exp: exactness against a float64 reference matters more


# Sums and maxima over a row in LANES interleaved partial results: the order of the additions is
# written out (x[0] + x[16] + ..., x[1] + x[17] + ..., the remainder into the first lanes, then the
# lanes folded by halves), so the compiler may turn the lanes into vector registers without being
# allowed to reorder float sums in general. The three
# reductions are written out each: _row_sum as _row_dot with b NULL (a test of b in the loop) made
# layer norm's forward 25% slower, since the dot products keep that test in their loop.
cdef enum:
    LANES = 16  # one AVX-512 register of float32, two of AVX2: 8 made a chain of n / 8 dependent additions


cdef inline floating _fold(floating* acc) noexcept nogil:
    # acc[0] + ... + acc[15], pairwise by halves: three short loops that vectorise and one addition,
    # instead of fifteen scalar additions each waiting on the last
    cdef Py_ssize_t k
    for k in range(8):
        acc[k] = acc[k] + acc[k + 8]
    for k in range(4):
        acc[k] = acc[k] + acc[k + 4]
    for k in range(2):
        acc[k] = acc[k] + acc[k + 2]
    return acc[0] + acc[1]


cdef inline floating _row_sum(const floating* x, Py_ssize_t n) noexcept nogil:
    cdef floating acc[LANES]
    cdef Py_ssize_t j, k, blk, whole = n - n % LANES
    for k in range(LANES):
        acc[k] = 0
    for blk in range(whole // LANES):  # simd
        j = blk * LANES
        for k in range(LANES):
            acc[k] = acc[k] + x[j + k]
    for j in range(whole, n):  # the remainder joins the lanes: no chain of scalar additions after them
        acc[j - whole] = acc[j - whole] + x[j]
    return _fold(acc)


cdef inline int32_t _order32(float v) noexcept nogil:
    # an integer that orders as the float does (-inf < ... < -0 < 0 < ... < inf < NaN): its bits,
    # with the magnitude bits flipped for negative numbers (which are in sign-magnitude form)
    cdef int32_t b
    memcpy(&b, &v, 4)
    return b ^ ((b >> 31) & INT32_MAX)


cdef inline floating _row_max(const floating* x, Py_ssize_t n) noexcept nogil:
    # The largest of x. float32 compares the floats' integer order (_order32): GCC does not vectorise
    # a float maximum (x > m ? x : m is not associative when a NaN is about, and it keeps the order)
    # but vectorises an integer one. The same value for numbers; a NaN with the sign bit clear comes
    # out as the maximum, one with it set as -inf's neighbour, and either way the exp(x - max) after
    # it is NaN: a NaN in the logits still gives a NaN loss. float64 keeps the float comparison.
    cdef int32_t acc32[LANES]
    cdef floating acc[LANES]
    cdef int32_t m32, b32
    cdef Py_ssize_t j, k, blk, whole = n - n % LANES
    cdef floating m = -INFINITY
    cdef float f32
    if floating is float:
        for k in range(LANES):
            acc32[k] = _order32(-INFINITY)
        for blk in range(whole // LANES):  # simd
            j = blk * LANES
            for k in range(LANES):
                b32 = _order32(x[j + k])
                acc32[k] = b32 if b32 > acc32[k] else acc32[k]
        m32 = _order32(-INFINITY)
        for k in range(LANES):
            m32 = acc32[k] if acc32[k] > m32 else m32
        for j in range(whole, n):
            b32 = _order32(x[j])
            m32 = b32 if b32 > m32 else m32
        m32 = m32 ^ ((m32 >> 31) & INT32_MAX)  # back to the float's bits (the map is its own inverse)
        memcpy(&f32, &m32, 4)
        return f32
    for k in range(LANES):
        acc[k] = -INFINITY
    for blk in range(whole // LANES):
        j = blk * LANES
        for k in range(LANES):
            acc[k] = x[j + k] if x[j + k] > acc[k] else acc[k]
    for k in range(LANES):
        m = acc[k] if acc[k] > m else m
    for j in range(whole, n):
        m = x[j] if x[j] > m else m
    return m


cdef inline floating _row_dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    cdef floating acc[LANES]
    cdef Py_ssize_t j, k, blk, whole = n - n % LANES
    for k in range(LANES):
        acc[k] = 0
    for blk in range(whole // LANES):  # simd
        j = blk * LANES
        for k in range(LANES):
            acc[k] = acc[k] + a[j + k] * b[j + k]
    for j in range(whole, n):
        acc[j - whole] = acc[j - whole] + a[j] * b[j]
    return _fold(acc)


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


@cython.cdivision(True)  # no zero check (1 + e >= 1): Cython's would take the GIL in the loop and stop it vectorising
cdef inline floating _tanh(floating u) noexcept nogil:
    # tanh through one exp (libm's tanh is 3x slower here and never vectorises)
    cdef floating zero = 0, one = 1, two = 2  # typed: see _expf
    cdef floating e = _exp(-two * (u if u >= zero else -u))
    cdef floating th = (one - e) / (one + e)
    return th if u >= zero else -th
