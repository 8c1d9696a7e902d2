"""Every fenced Python block in README.md and docs/*.md runs as written (each file's blocks in order,
in one namespace, in a scratch directory)."""

from __future__ import annotations

import os
import re

import pytest
from support import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_the_docs_have_python_to_run():
    assert sum(len(BLOCK.findall(p.read_text(encoding="utf-8"))) for p in DOCS) >= 3


@pytest.mark.parametrize("path", [p for p in DOCS if BLOCK.search(p.read_text(encoding="utf-8"))], ids=lambda p: p.name)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(BLOCK.findall(path.read_text(encoding="utf-8"))):
        exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)


def test_docs_name_only_real_files_and_commands():
    """Paths like `simple_llm/model.py` and commands like `python -m simple_llm train` exist."""
    commands = {"train", "generate", "chat", "eval", "explore", "inspect", "bench", "en", "ja"}
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for ref in re.findall(r"`((?:simple_llm|src|tests|docs|benchmarks|data)/[\w./]+\.(?:pyx|py|md|txt))\b", text):
            assert (ROOT / ref).exists(), f"{path.name} names {ref}, which does not exist"
        for cmd in re.findall(r"python -m simple_llm (\w+)", text):
            assert cmd in commands, f"{path.name} runs an unknown command: {cmd}"
    assert os.path.exists(ROOT / "docs" / "PROCESSING_FLOW.md")


def test_docs_name_only_tests_that_exist():
    """`test_x.py::test_name` and `::test_name` (the file named last before it) are real tests."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        current = None
        for file, name in re.findall(r"(test_\w+\.py)?::(test_\w+)", text):
            current = file or current
            assert current, f"{path.name} names ::{name} without a test file before it"
            source = (ROOT / "tests" / current).read_text(encoding="utf-8")
            assert re.search(rf"^def {name}\b", source, re.M), (
                f"{path.name} names {current}::{name}, which does not exist"
            )
