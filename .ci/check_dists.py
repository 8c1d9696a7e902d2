"""CI: the sdist holds the sources to build from scratch, the wheel the compiled module and nothing left
over from the build.

    python .ci/check_dists.py DIST_DIR
"""

import sys
import tarfile
import zipfile
from pathlib import Path

dist = Path(sys.argv[1])
with tarfile.open(next(dist.glob("*.tar.gz"))) as sdist:
    names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
for need in (
    "src/_kernels.pyx",
    "src/_floatmath.pxd",
    "src/_decode.pxi",
    "setup.py",
    "pyproject.toml",
    "MANIFEST.in",
    "data/data.txt",
    "data/data_en.txt",
    "docs/PROCESSING_FLOW.md",
    "tests/test_kernels.py",
    "src/_kernels_avx2.pyx",
    "src/_kernels_avx512.pyx",
    "tests/data/shakespeare_excerpt.txt",
    "simple_llm/explorer/app.js",
    "LICENSE-MIT",
    "LICENSE-APACHE",
    "CHANGELOG.md",
):
    assert need in names, f"the sdist lacks {need}"
assert not [n for n in names if n.endswith((".c", ".so", ".pyd", ".o"))], "the sdist holds build products"
with zipfile.ZipFile(next(dist.glob("*.whl"))) as wheel:
    files = wheel.namelist()
for module in ("_kernels.", "_kernels_avx2.", "_kernels_avx512."):  # baseline, AVX2, AVX-512 (x86-64 here)
    assert any(f.startswith(f"simple_llm/{module}") and f.endswith((".so", ".pyd")) for f in files), f"no {module}"
for need in (
    "simple_llm/data/data.txt",
    "simple_llm/data/data_en.txt",
    "simple_llm/py.typed",
    "simple_llm/explorer/index.html",
    "simple_llm/explorer/app.js",
    "simple_llm/explorer/style.css",
):
    assert need in files, f"the wheel lacks {need}"
leftovers = [f for f in files if f.endswith((".c", ".pyx", ".o", ".h")) or f.startswith(("build/", "src/"))]
assert not leftovers, f"build leftovers in the wheel: {leftovers}"
print(f"sdist: {len(names)} files with the sources; wheel: {len(files)} files, compiled module and data, no leftovers")
