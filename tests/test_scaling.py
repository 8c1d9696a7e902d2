"""The road to many machines (docs/SCALING.md): one of our model directories trained further under
PyTorch's DistributedDataParallel (two CPU processes, gloo) by simple_llm.torch_ddp, and back here."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import DATA, char_model_dir, run_cli

from simple_llm import GPT, load_model
from simple_llm.tokenizers import CharTokenizer

pytest.importorskip("torch")
pytest.importorskip("transformers")


def eval_loss(model_dir, data) -> float:
    proc = run_cli("eval", "--model", model_dir, "--data", data, "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return float(proc.stdout.split('"loss": ')[1].split(",")[0])


def test_a_run_continues_under_torchrun_ddp_and_comes_back(tmp_path):
    text = (DATA / "shakespeare_excerpt.txt").read_text(encoding="utf-8")
    base, out, held_out = tmp_path / "base", tmp_path / "ddp", tmp_path / "held_out.txt"
    char_model_dir(base, text, n_ctx=64, n_embd=64, n_head=4, n_layer=2)
    tok = CharTokenizer.train(text)
    held_out.write_text(text[-2000:], encoding="utf-8")  # within the validation 10% that DDP never trains on
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "simple_llm.torch_ddp",
               "--init-from", str(base), "--data", str(DATA / "shakespeare_excerpt.txt"), "--out", str(out),
               "--max-steps", "40", "--batch-size", "8", "--block-size", "32", "--lr", "3e-3", "--warmup-steps", "5",
               "--eval-interval", "20"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 20: train loss" in proc.stdout and "step 40: train loss" in proc.stdout, proc.stdout
    model, back = load_model(out)  # what DDP saved is a model directory here
    assert model.config == GPT.from_pretrained(base).config and back.vocab_size == tok.vocab_size
    before, after = eval_loss(base, held_out), eval_loss(out, held_out)
    assert after < before - 0.5, (before, after)  # random init: ln(vocab) ~ 4.1; 40 steps reach ~3
    assert run_cli("generate", "--model", out, "--prompt", "ROMEO:", "--max-new-tokens", "5").returncode == 0
