"""Helpers shared by the tests (imported as `support`: pytest puts this folder on sys.path, so the
tests also run against an installed wheel from any directory, never against a source tree)."""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
DATA = Path(__file__).resolve().parent / "data"  # excerpts of ../shared/corpus, so no test needs it


def corpus(name: str) -> Path:
    """A real corpus: ../shared/corpus/NAME.txt, or the excerpt in tests/data where it is absent."""
    full = SHARED / "corpus" / f"{name}.txt"
    return full if full.exists() else DATA / f"{name}_excerpt.txt"


PURE_PYTHON = os.environ.get("SIMPLE_LLM_PURE_PYTHON", "").strip() not in ("", "0")
REQUIRE_COMPILED = os.environ.get("SIMPLE_LLM_REQUIRE_COMPILED", "").strip() not in ("", "0")
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}


def compiled_kernels():
    """The compiled module that runs (the widest instruction level the CPU has, or the one
    SIMPLE_LLM_SIMD caps it to: CI runs the suite at each), or skip (fail under
    SIMPLE_LLM_REQUIRE_COMPILED) when none is built, and skip when SIMPLE_LLM_PURE_PYTHON forces the
    fallback everywhere."""
    if PURE_PYTHON:
        pytest.skip("SIMPLE_LLM_PURE_PYTHON=1: the fallback is forced everywhere")
    from simple_llm import kernels

    if kernels.BACKEND != "cython":
        if REQUIRE_COMPILED:  # (kernels raises first under it; this is for a module swapped in a test)
            pytest.fail("SIMPLE_LLM_REQUIRE_COMPILED is set but the compiled kernels do not import")
        pytest.skip("compiled kernels not built")
    return kernels.impl


def char_model_dir(path: Path, text: str, jitter: float = 0.0, seed: int = 0, **config) -> Path:
    """A model directory at path: a CharTokenizer of text and a GPT of that vocabulary, config and
    seed, its weights moved by N(0, jitter) noise (from seed 0) so that its outputs are not near-uniform."""
    from simple_llm import GPT, CharTokenizer, GPTConfig

    tok = CharTokenizer.train(text)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **config), seed=seed)
    if jitter:
        model.params.flat[...] += np.random.default_rng(0).standard_normal(model.n_params).astype(np.float32) * jitter
    model.save_pretrained(path)
    tok.save(path)
    return path


def run_cli(*args, input_text=None, env=None, timeout=300, cwd=None):
    """Run ``python -m simple_llm ARGS`` as a user would; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})}
    full_env.pop("SIMPLE_LLM_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "simple_llm", *map(str, args)],
        input=input_text,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=full_env,
        timeout=timeout,
        cwd=cwd,
    )


@contextmanager
def explore_process(model):
    """`python -m simple_llm explore --model MODEL --port 0 --no-browser` in a process of its own:
    yields ((host, port), the process) once it has said where it serves; Ctrl-C stops it on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "simple_llm", "explore", "--model", str(model), "--port", "0", "--no-browser"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        host, port = line.split("//")[1].strip().split(":")
        yield (host, int(port)), proc
    finally:
        proc.send_signal(2)  # Ctrl-C
        proc.wait(timeout=30)


def assert_one_line_error(proc, *fragments, code=2):
    """A user error: exit status 2, exactly one line on stderr naming the problem, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def numgrad(f, x, eps=1e-6):
    """Central finite differences of the scalar f() with respect to every entry of x (in place)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        up = f()
        x[i] = old - eps
        down = f()
        x[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


def rel_err(a, b):
    """|a - b| / (|a| + |b|) over whole tensors."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-30))


def step_allocations(model, opt, idx, targets, steps: int = 3) -> tuple[int, int]:
    """(peak, kept): bytes allocated at the peak of `steps` training steps after a first one, and
    bytes still held after them, both above what was held before them (tracemalloc)."""
    opt.step(model.loss_and_grads(idx, targets)[1])
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(steps):
            opt.step(model.loss_and_grads(idx, targets)[1])
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base, current - base
