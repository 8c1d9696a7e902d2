"""Builds the compiled kernels: src/_kernels.pyx (with src/_floatmath.pxd) -> simple_llm._kernels, and on
x86-64 the same again for AVX2 + FMA CPUs -> simple_llm._kernels_avx2 (src/_kernels_avx2.pyx) and for
AVX-512 CPUs -> simple_llm._kernels_avx512 (src/_kernels_avx512.pyx).

Everything else about the package is declared in pyproject.toml. The kernels use no OpenMP: each runs
on its caller's thread, and the model runs one thread per core over shards of the batch
(simple_llm/parallel.py), so nothing needs a compiler's OpenMP runtime. The one exception, the decode
step (src/_decode.pxi), starts and joins a second thread of its own within each call (POSIX threads,
hence -pthread; Windows threads on MSVC).
"""

import platform

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# Let the compiler call vectorised sqrt (no errno, no trapping). Deliberately not -ffast-math:
# -ffinite-math-only would let it assume there is no NaN or inf, and a loss that goes to NaN must show
# as NaN. Nor -fassociative-math: it folds the float32 exp's two-part range reduction (x - n ln 2) back
# into one rounded ln 2, which cost up to 3.8e-6 relative error, and GCC 12's __builtin_assoc_barrier
# did not stop it in the vectorised loop. Without it, float sums stay in order; a training step
# measured the same within noise.
GCC_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros"]


# The same kernels three times on x86-64: for the baseline instruction set, which every CPU runs (SSE2,
# four float32 lanes), for AVX2 + FMA (eight lanes, fused multiply-adds) and for AVX-512 (sixteen).
# simple_llm.kernels picks the widest one the CPU runs when it is imported, so one wheel runs
# everywhere and fast.
AVX512 = ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"]
LEVELS = {
    "_kernels": {},
    "_kernels_avx2": {"gcc": ["-mavx2", "-mfma"], "msvc": ["/arch:AVX2"]},
    "_kernels_avx512": {"gcc": AVX512, "msvc": ["/arch:AVX512"]},
}
X86_64 = platform.machine().lower() in ("x86_64", "amd64")


class BuildExt(build_ext):
    def build_extensions(self):
        kind = "msvc" if self.compiler.compiler_type == "msvc" else "gcc"
        for ext in self.extensions:
            level = LEVELS[ext.name.split(".")[-1]].get(kind, [])
            ext.extra_compile_args += (["/O2"] if kind == "msvc" else [*GCC_FLAGS, "-pthread"]) + level
            ext.extra_link_args += [] if kind == "msvc" else ["-pthread"]
        super().build_extensions()


extensions = [
    Extension(
        f"simple_llm.{name}",
        [f"src/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for name in LEVELS
    if name == "_kernels" or X86_64
]

setup(
    ext_modules=cythonize(extensions, language_level=3, include_path=["src"]),
    cmdclass={"build_ext": BuildExt},
)
