# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The kernels of _kernels.pyx compiled for x86-64 CPUs with AVX-512 (F, VL, BW, DQ: setup.py adds
-mavx512f -mavx512vl -mavx512bw -mavx512dq -mfma): sixteen float32 lanes. simple_llm.kernels imports
this one where the CPU has them (``simple_llm.SIMD == "avx512"``)."""

include "_kernels.pyx"
