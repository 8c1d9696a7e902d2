"""Every fenced Python block in README.md and docs/*.md runs as written (each file's blocks in order,
in one namespace, in a scratch directory)."""

from __future__ import annotations

import os
import re
from pathlib import Path

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
    from simple_llm.cli import COMMANDS, DEMO_LANGUAGES

    commands = {*COMMANDS, *DEMO_LANGUAGES}
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


FILE_SUFFIXES = {"json", "py", "pyx", "pxd", "csv", "png", "md", "txt", "safetensors", "html", "js", "css", "bpe"}


def _our_names() -> dict[str, list[object]]:
    """simple_llm's modules and the classes defined in them, by the names the docs use; `model` is
    also what the docs call a GPT (model.params)."""
    import importlib
    import inspect

    import simple_llm

    names: dict[str, list[object]] = {}
    for path in sorted(Path(simple_llm.__file__).parent.glob("*.py")):
        if path.stem.startswith("__"):
            continue
        module = importlib.import_module(f"simple_llm.{path.stem}")
        names.setdefault(path.stem, []).append(module)
        for name, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__:
                names.setdefault(name, []).append(value)
    names["model"].append(simple_llm.GPT)
    return names


def _has(owner: object, attr: str) -> bool:
    """owner (a module or class) has attr, as its own or, for a class, as an attribute its code sets."""
    import inspect

    if hasattr(owner, attr):
        return True
    return inspect.isclass(owner) and re.search(rf"self\.{attr}\b\s*[:=,]", inspect.getsource(owner)) is not None


def test_docs_name_only_code_that_exists():
    """`Class.method`, `module.function` (and `GPT.generate(...)`) in backticks: a renamed method
    must not leave the docs pointing at nothing (GPT._logits and kernels.attention_forward did)."""
    names = _our_names()
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for owner, attr in re.findall(r"`([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?:\(.*?\))?`", text):
            if owner in names and attr not in FILE_SUFFIXES:  # config.json is a file, not config's json
                assert any(_has(o, attr) for o in names[owner]), (
                    f"{path.name} names {owner}.{attr}, which does not exist"
                )


def test_the_code_name_check_can_fail():
    names = _our_names()
    assert _has(names["GPT"][0], "forward") and _has(names["GPT"][0], "params") and not _has(names["GPT"][0], "_logits")
    kernels = names["kernels"][0]
    assert _has(kernels, "layernorm_forward") and not _has(kernels, "attention_forward")
