"""CI: fail unless the compiled kernels are in use and every backend-parametrized test passed on them.

python .ci/check_compiled.py junit.xml
"""

import sys
import xml.etree.ElementTree as ET

import simple_llm

assert simple_llm.BACKEND == "cython", f"the compiled kernels are not in use: BACKEND={simple_llm.BACKEND}"


def passed(case):
    return not any(case.find(tag) is not None for tag in ("failure", "error", "skipped"))


cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
# every backend-parametrized test has a [numpy...] and a [cython...] case; both must have passed
on_numpy = {c.get("name").replace("[numpy", "[") for c in cases if "[numpy" in c.get("name") and passed(c)}
on_cython = {c.get("name").replace("[cython", "[") for c in cases if "[cython" in c.get("name") and passed(c)}
direct = [c for c in cases if "compiled" in c.get("name")]  # compiled kernels against the fallback
print(
    f"backend-parametrized tests passed: {len(on_numpy)} on numpy, {len(on_cython)} on cython; "
    f"compiled-vs-fallback tests passed: {sum(map(passed, direct))} of {len(direct)}"
)
assert on_cython and on_cython == on_numpy, f"not run on the compiled kernels: {sorted(on_numpy - on_cython)[:5]}"
assert direct and all(map(passed, direct)), "the compiled kernels were not compared with the fallback"
