"""Builds the compiled kernels: src/_kernels.pyx (with src/_floatmath.pxd) -> simple_llm._kernels.

Everything else about the package is declared in pyproject.toml. The kernels use no OpenMP: each runs
on its caller's thread, and the model runs one thread per core over shards of the batch
(simple_llm/parallel.py), so nothing needs a compiler's OpenMP runtime.
"""

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


class BuildExt(build_ext):
    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        for ext in self.extensions:
            ext.extra_compile_args += ["/O2"] if msvc else GCC_FLAGS
        super().build_extensions()


extension = Extension(
    "simple_llm._kernels",
    ["src/_kernels.pyx"],
    include_dirs=[np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize([extension], language_level=3, include_path=["src"]),
    cmdclass={"build_ext": BuildExt},
)
