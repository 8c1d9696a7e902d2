"""CI: fail when a float32 inner loop of the compiled kernels stops vectorising.

python .ci/check_vectorised.py

Every loop marked ``# simd`` in src/_kernels.pyx, src/_floatmath.pxd and src/_decode.pxi must be reported by GCC as
"loop vectorized" in the float32 variant of its function, in each build: the baseline one
(src/_kernels.c, 16-byte vectors), the AVX2 + FMA one (src/_kernels_avx2.c, 32 bytes) and the
AVX-512 one (src/_kernels_avx512.c, 64 bytes). The check
compiles the C files that the build wrote from the .pyx files once more, with setup.py's flags and
GCC's vectorisation report, and maps each reported loop back to its function (Cython's __pyx_fuse_0
variant is float32) and to the .pyx line that Cython's comments name. A timing would catch a scalar loop only by luck:
this catches it by name (the float32 exp loops said they vectorised and compiled to scalar code, 35x
slower than np.tanh, until a zero-division check that Cython put in _tanh was turned off).
"""

from __future__ import annotations

import ast
import platform
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("_kernels.pyx", "_floatmath.pxd", "_decode.pxi")
FUNCTION = re.compile(
    r"^static[^=;]*?\b(?:__pyx_fuse_(\d))?__pyx_f_(?:10simple_llm_\d+_kernels(?:_avx2|_avx512)?|10_floatmath)_(\w+)\(.*\)\s*\{"
)
ORIGIN = re.compile(r'/\* "(?:src/)?(_kernels\.pyx|_floatmath\.pxd|_decode\.pxi)":(\d+)')
REPORT = re.compile(r".*_kernels(?:_avx2|_avx512)?\.c:(\d+):\d+: optimized: loop vectorized using (\d+) byte vectors")
AVX512 = ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"]
BUILDS = {"_kernels": ([], 16), "_kernels_avx2": (["-mavx2", "-mfma"], 32), "_kernels_avx512": (AVX512, 64)}


def marked_loops(build: str) -> set[tuple[str, int]]:
    """(file, line) of every loop marked # simd; in the baseline build also those marked "# simd in
    the baseline build" (a loop that the AVX builds replace, and run only for a short remainder)."""

    def marked(line: str) -> bool:
        return line.rstrip().endswith("# simd") or (build == "_kernels" and "# simd in the baseline build" in line)

    return {
        (name, number)
        for name in SOURCES
        for number, line in enumerate((ROOT / "src" / name).read_text(encoding="utf-8").splitlines(), 1)
        if marked(line)
    }


def c_origins(c_file: Path) -> list[tuple[str | None, str | None, tuple[str, int] | None]]:
    """For each line of the generated C: (function, fused variant, (source file, line))."""
    origins = []
    function = variant = origin = None
    for line in c_file.read_text(encoding="utf-8").splitlines():
        if m := FUNCTION.match(line):
            variant, function, origin = m.group(1), m.group(2), None
        elif line.startswith("}"):
            function = variant = None
        if m := ORIGIN.search(line):
            origin = (m.group(1), int(m.group(2)))
        origins.append((function, variant, origin))
    return origins


def gcc_flags() -> list[str]:
    """setup.py's GCC_FLAGS, read without running setup.py."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "GCC_FLAGS" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise SystemExit("setup.py has no GCC_FLAGS")


def vectorised(c_file: Path, flags: list[str], width: int) -> set[tuple[str, int]]:
    """The (file, line) of the loops GCC vectorised with `width`-byte vectors in float32 functions."""
    includes = [f"-I{sysconfig.get_paths()['include']}", f"-I{np.get_include()}"]
    with tempfile.TemporaryDirectory() as tmp:
        command = ["gcc", *gcc_flags(), *flags, "-fPIC", *includes, "-c", str(c_file), "-o", f"{tmp}/k.o",
                   "-fopt-info-vec-optimized"]  # fmt: skip
        report = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    origins = c_origins(c_file)
    found = set()
    for line in report.splitlines():
        if (m := REPORT.match(line)) and int(m.group(2)) == width:
            function, variant, origin = origins[int(m.group(1)) - 1]
            if function and variant in (None, "0") and origin:  # float32 (or not fused)
                found.add(origin)
    return found


def main() -> None:
    failed = False
    for build, (flags, width) in BUILDS.items():
        marked = marked_loops(build)
        c_file = ROOT / "src" / f"{build}.c"
        if not c_file.exists():
            if build == "_kernels" or platform.machine().lower() in ("x86_64", "amd64"):
                raise SystemExit(f"{c_file} is missing: build the extension first (pip install -e .)")
            continue
        missing = sorted(marked - vectorised(c_file, flags, width))
        done = len(marked) - len(missing)
        print(f"{build}: float32 loops marked # simd: {len(marked)}; vectorised {width} bytes wide: {done}")
        for name, number in missing:
            code = (ROOT / "src" / name).read_text(encoding="utf-8").splitlines()[number - 1].strip()
            print(f"  not vectorised: src/{name}:{number}: {code}")
        failed = failed or bool(missing)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
