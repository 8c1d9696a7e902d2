"""`python -m simple_llm bench --quick` runs end to end and prints every figure the issue names.

The figures themselves are not checked (timings are not a test's business); their presence is."""

from __future__ import annotations

import importlib.util
import re

import pytest
from support import run_cli

NUMBER = r"[0-9]+(?:\.[0-9]+)?"


def run_quick(*extra):
    proc = run_cli("bench", "--quick", "--config", "seed-tiny", *extra, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


def test_bench_quick_prints_training_generation_and_kernel_figures():
    out = run_quick("--no-torch")
    assert re.search(rf"float32 GEMM \(n=1024\): {NUMBER} GFLOP/s; memory read: {NUMBER} GB/s", out), out
    assert re.search(rf"\[seed-tiny\] .* {NUMBER} MFLOP per training token", out), out
    backends = re.findall(rf"train +(\w+) +{NUMBER} tokens/s +{NUMBER} GFLOP/s +MFU +{NUMBER}%", out)
    assert "numpy" in backends, out
    assert re.search(rf"generate +\w+ +{NUMBER} tokens/s .*bandwidth bound {NUMBER} tokens/s, ours {NUMBER}%", out), out
    assert "PyTorch" not in out  # --no-torch
    if "cython" in backends:  # the per-kernel table: compiled, NumPy, speedup, ns an element, roofline share
        assert re.search(rf"generate +int8 +{NUMBER} tokens/s .*{NUMBER}% of the float32 bound", out), out
        assert re.search(rf"roofline: the larger of bytes / {NUMBER} GB/s and flops / {NUMBER} GFLOP/s", out), out
        rows = re.findall(rf"^  (\w+) +{NUMBER} +{NUMBER} +{NUMBER}x +{NUMBER} +{NUMBER}%$", out, re.M)
        kernels = {"gelu_forward", "adamw_update", "attention_softmax_fwd", "crossentropy_backward"}
        assert kernels <= set(rows) and len(rows) == 20, out  # ten kernels at two sizes


@pytest.mark.skipif(
    not (importlib.util.find_spec("torch") and importlib.util.find_spec("transformers")),
    reason="needs torch and transformers (the reference side of the bench)",
)
def test_bench_quick_compares_with_pytorch_and_transformers():
    out = run_quick()
    assert re.search(rf"train +\w+ +{NUMBER} tokens/s .*\({NUMBER}x PyTorch\)", out), out
    assert re.search(rf"train +torch +{NUMBER} tokens/s", out), out
    assert re.search(rf"generate +hf +{NUMBER} tokens/s .*ours {NUMBER}x", out), out


def test_a_machine_limit_is_its_best_run_and_a_step_its_median(monkeypatch):
    """Noise only slows a run down, so the GEMM rate and the bandwidth (the MFU's and the rooflines'
    denominators) take the fastest run; a contender's step time takes the median."""
    from simple_llm import bench

    def clock(*ticks):
        it = iter(ticks)
        monkeypatch.setattr(bench.time, "perf_counter", lambda: next(it))

    calls = []
    clock(0, 5, 10, 11, 20, 23)  # three timed runs: 5, 1 and 3 seconds
    assert bench.best_time(lambda: calls.append(1), 3) == 1
    assert len(calls) == 4  # one warm-up call, untimed
    clock(0, 5, 10, 11, 20, 23)
    assert bench.median_time(lambda: None, 3) == 3
