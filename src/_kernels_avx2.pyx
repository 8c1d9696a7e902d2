# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False
"""The kernels of _kernels.pyx compiled for x86-64 CPUs with AVX2 and FMA (setup.py adds -mavx2
-mfma): eight float32 lanes where the baseline build has four. simple_llm.kernels imports this one
where the CPU has both (``simple_llm.SIMD == "avx2"``), the baseline one otherwise."""

include "_kernels.pyx"
