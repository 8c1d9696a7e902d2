"""simple_llm leaves the process as it found it: no environment variables written, no signal
handler, no umask change, no switch of matplotlib's backend (../shared/CONTRACTS.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from simple_llm import GPT, GPTConfig

IMPORT_EVERYTHING = """
import os, signal, sys
before = (dict(os.environ), signal.getsignal(signal.SIGINT))
import simple_llm, simple_llm.cli, simple_llm.train, simple_llm.inspection, simple_llm.bench, simple_llm.demo
import simple_llm.generate, simple_llm.explore, simple_llm.evaluate, simple_llm.plot
# a training step on two shards: the BLAS is held to one thread (threadpoolctl) and given back
import numpy as np
model = simple_llm.GPT(simple_llm.GPTConfig(vocab_size=5, n_ctx=4, n_embd=4, n_head=1, n_layer=1))
with simple_llm.parallel.single_threaded_blas():
    pass
model.loss_and_grads(np.zeros((2, 4), int), np.ones((2, 4), int))
assert "threadpoolctl" in sys.modules
after = (dict(os.environ), signal.getsignal(signal.SIGINT))
changed = sorted(k for k in set(before[0]) | set(after[0]) if before[0].get(k) != after[0].get(k))
print(changed, before[1] is after[1])
"""


def test_importing_and_training_write_no_environment_variable_and_no_signal_handler():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "OPENBLAS_THREAD"))}
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["[]", "True"], out.stdout


def test_saving_never_touches_the_umask(tmp_path, monkeypatch):
    def no_umask(mask):
        raise AssertionError("os.umask called: it changes the mask of every thread for a moment")

    monkeypatch.setattr(os, "umask", no_umask)
    GPT(GPTConfig(vocab_size=5, n_ctx=4, n_embd=4, n_head=1, n_layer=1)).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()


def test_drawing_keeps_the_users_matplotlib_backend(tmp_path):
    import matplotlib

    from simple_llm.run_files import plot

    previous = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        plot(tmp_path / "loss.png", [dict(step=s, train_loss=1.0 / s, val_loss=1.1 / s) for s in (1, 2, 3)])
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(previous)


def test_float_state_of_numpy_is_left_alone():
    before = np.geterr()
    GPT(GPTConfig(vocab_size=5, n_ctx=4, n_embd=4, n_head=1, n_layer=1)).generate(np.array([[1]]), 3)
    assert np.geterr() == before
