"""Builds the compiled kernels: src/_kernels.pyx -> simple_llm._kernels.

Everything else about the package is declared in pyproject.toml. OpenMP is used when the compiler
has it (gcc, MSVC, clang with libomp) and skipped otherwise: the kernels then run on one thread.
Set SIMPLE_LLM_NO_OPENMP=1 to build without it.
"""

import os
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP_PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def openmp_flags(compiler):
    """(compile args, link args) that turn OpenMP on, or None when this compiler cannot."""
    if os.environ.get("SIMPLE_LLM_NO_OPENMP", "").strip() not in ("", "0"):
        return None
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":  # Apple clang needs Homebrew's libomp
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        for cflags, lflags in candidates:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=lflags)
            except Exception:  # any failure means: not with these flags
                continue
            return cflags, lflags
    return None


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
        flags = openmp_flags(self.compiler)
        print(f"simple_llm: building with OpenMP {'flags ' + str(flags) if flags else 'off'}")
        for ext in self.extensions:
            ext.extra_compile_args += ["/O2"] if msvc else GCC_FLAGS
            if flags:
                ext.extra_compile_args += flags[0]
                ext.extra_link_args += flags[1]
        super().build_extensions()


extension = Extension(
    "simple_llm._kernels",
    ["src/_kernels.pyx"],
    include_dirs=[np.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize([extension], language_level=3),
    cmdclass={"build_ext": BuildExt},
)
