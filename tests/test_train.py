"""python -m simple_llm train, as a user runs it: learning, resuming bit for bit, Ctrl-C, atomic
checkpoints, and one clear line for every kind of bad input."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import load_file
from support import assert_one_line_error, run_cli

from simple_llm import GPT, load_tokenizer
from simple_llm.fileio import atomic_path

TINY = [
    "--n-layer",
    "1",
    "--n-head",
    "2",
    "--n-embd",
    "16",
    "--block-size",
    "16",
    "--batch-size",
    "4",
    "--eval-steps",
    "2",
    "--no-progress",
]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "text.txt"
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far"]
    path.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(300)) + "\n", encoding="utf-8")
    return path


def train(*args, **kw):
    proc = run_cli("train", *args, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc


def weights(directory):
    return load_file(directory / "model.safetensors")


def test_a_tiny_run_learns_and_writes_everything(tmp_path):
    data = tmp_path / "abc.txt"
    data.write_text("abcdefgh" * 400, encoding="utf-8")
    out = tmp_path / "run"
    proc = train(
        "--data",
        data,
        "--out",
        out,
        *TINY,
        "--max-steps",
        "150",
        "--eval-interval",
        "50",
        "--lr",
        "1e-2",
        "--warmup-steps",
        "10",
    )
    assert sorted(p.name for p in out.iterdir() if p.name != "loss.png") == [
        "config.json",
        "log.csv",
        "model.safetensors",
        "tokenizer.json",
        "train_state",
    ]
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert list(rows[0]) == ["step", "lr", "train_loss", "val_loss", "tokens_per_s"]
    assert [int(r["step"]) for r in rows] == [50, 100, 150]
    assert float(rows[-1]["val_loss"]) < 0.1 < float(rows[0]["val_loss"]) or float(rows[-1]["val_loss"]) < 0.1
    assert "step 150: train loss" in proc.stdout and "best validation loss" in proc.stdout
    model, tok = GPT.from_pretrained(out), load_tokenizer(out)
    out_ids = model.generate(np.array([tok.encode("abc")]), max_new_tokens=10)
    assert tok.decode(out_ids[0]) == "abcdefghabcde"  # the pattern, learned
    generated = run_cli("generate", "--model", out, "--prompt", "cde", "--max-new-tokens", "5")
    assert generated.stdout == "cdefghab\n"


def test_loss_plot(tmp_path, text_file):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    train("--data", text_file, "--out", out, *TINY, "--max-steps", "4", "--eval-interval", "2")
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


@pytest.mark.parametrize("dropout", ["0.0", "0.1"])
@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_resume_is_bit_for_bit(tmp_path, text_file, dropout, tokenizer):
    """20 steps, then --resume to 40, equals 40 steps in one go (CONTRACTS.md's example)."""
    common = [
        "--data",
        text_file,
        *TINY,
        "--dropout",
        dropout,
        "--tokenizer",
        tokenizer,
        "--vocab-size",
        "300",
        "--lr-decay-steps",
        "40",
        "--eval-interval",
        "15",
        "--seed",
        "3",
    ]
    once, twice = tmp_path / "once", tmp_path / "twice"
    train(*common, "--out", once, "--max-steps", "40")
    train(*common, "--out", twice, "--max-steps", "20")
    half = weights(twice)
    train(*common, "--out", twice, "--max-steps", "40", "--resume")
    a, b = weights(once), weights(twice)
    assert any(not np.array_equal(half[k], b[k]) for k in b)  # the resumed run did train
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    log = list(csv.DictReader((twice / "log.csv").open()))
    assert [int(r["step"]) for r in log] == [15, 20, 30, 40]


POSIX_ONLY = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals and resource limits")


@POSIX_ONLY
def test_ctrl_c_saves_and_resumes_to_the_same_weights(tmp_path, text_file):
    many = "1000000"
    common = ["--data", text_file, *TINY, "--lr-decay-steps", many, "--eval-interval", many, "--seed", "1"]
    out = tmp_path / "interrupted"
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simple_llm", "train", *map(str, common), "--out", str(out), "--max-steps", many],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    first_line = proc.stdout.readline()  # printed just before the first step
    assert "parameters" in first_line, first_line
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Interrupted at step" in stdout and "--resume" in stdout and "Traceback" not in stderr
    command = shlex.split(stdout.split("Continue with:")[1].strip().splitlines()[0])  # pastes into a shell
    assert command == ["python", "-m", "simple_llm", "train", *map(str, common), "--out", str(out), "--max-steps",
                       many, "--resume"]  # fmt: skip
    stopped = int(stdout.split("Interrupted at step ")[1].split(";")[0])
    assert 0 < stopped < int(many)
    finish = stopped + 5
    train(*common, "--out", out, "--max-steps", str(finish), "--resume")
    straight = tmp_path / "straight"
    train(*common, "--out", straight, "--max-steps", str(finish))
    a, b = weights(out), weights(straight)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "file"
    target.write_text("old")
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file"]  # no temporary left behind


@POSIX_ONLY
def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(tmp_path, text_file):
    import resource

    out = tmp_path / "run"
    common = ["--data", text_file, "--out", out, *TINY, "--eval-interval", "5"]
    train(*common, "--max-steps", "5")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    limit = max(len(v) for v in before.values()) // 2  # the next big write cannot finish

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [sys.executable, "-m", "simple_llm", "train", *map(str, common), "--max-steps", "10", "--resume"],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert_one_line_error(proc, "simple_llm train: error:", "File too large")
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before  # untouched: no half-written file, no temporary left


@pytest.mark.parametrize(
    "make, args, fragment",
    [
        (None, [], "does not exist"),
        (b"", [], "is empty"),
        (b"\xff\xfe\x00\x00binary", [], "looks binary"),
        (b"caf\xe9 au lait " * 50, [], "is not UTF-8"),
        (b"short text", [], "needs at least"),
        (b"x" * 5000, ["--tokenizer", "bpe", "--vocab-size", "200"], "--vocab-size 200 is too small"),
        (b"x" * 5000, ["--n-embd", "30", "--n-head", "4"], "--n-embd 30 is not divisible by --n-head 4"),
        (b"x" * 5000, ["--resume"], "holds no training state"),
        (b"x" * 5000, ["--dropout", "1.5"], "--dropout 1.5 must be below 1"),
        (b"x" * 5000, ["--max-steps", "0"], "--max-steps: must be a positive integer"),
        (b"x" * 5000, ["--tokenizer", "sentencepiece"], "invalid choice: 'sentencepiece'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, make, args, fragment):
    data = tmp_path / "data.txt"
    if make is not None:
        data.write_bytes(make)
    proc = run_cli("train", "--data", data, "--out", tmp_path / "out", "--no-progress", *args)
    assert_one_line_error(proc, "simple_llm train: error:", fragment)
    assert not (tmp_path / "out" / "train_state").exists()


def test_resume_with_another_shape_or_tokenizer_is_refused(tmp_path, text_file):
    out = tmp_path / "run"
    train("--data", text_file, "--out", out, *TINY, "--max-steps", "2", "--eval-interval", "2")
    proc = run_cli("train", "--data", text_file, "--out", out, *TINY, "--n-embd", "32", "--max-steps", "4", "--resume")
    assert_one_line_error(proc, "--resume:", "--n-embd 16, not 32")
    proc = run_cli(
        "train", "--data", text_file, "--out", out, *TINY, "--tokenizer", "word", "--max-steps", "4", "--resume"
    )
    assert_one_line_error(proc, "--resume:", "--tokenizer char, not word")
    proc = run_cli("train", "--data", text_file, "--out", out, *TINY, "--max-steps", "4")
    assert_one_line_error(proc, "already holds a training run")


def test_damaged_state_is_one_line(tmp_path, text_file):
    out = tmp_path / "run"
    train("--data", text_file, "--out", out, *TINY, "--max-steps", "2", "--eval-interval", "2")
    (out / "train_state").write_bytes(b"\x00" * 100)
    proc = run_cli("train", "--data", text_file, "--out", out, *TINY, "--max-steps", "4", "--resume")
    assert_one_line_error(proc, "--resume:", "train_state is damaged")


def test_loss_that_is_not_finite_stops_with_a_clear_line(tmp_path, text_file):
    proc = run_cli(
        "train",
        "--data",
        text_file,
        "--out",
        tmp_path / "run",
        *TINY,
        "--max-steps",
        "50",
        "--lr",
        "1e30",
        "--warmup-steps",
        "0",
        "--grad-clip",
        "0",
        "--eval-interval",
        "1000",
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "loss is not finite at step" in lines[0], proc.stderr


@pytest.mark.parametrize("log", ["step,lr\n1,2\n", "step,lr,train_loss,val_loss,tokens_per_s\n2,x,1,1,1\n", "\x00\xff"])
def test_damaged_log_on_resume_is_one_line(tmp_path, text_file, log):
    out = tmp_path / "run"
    train("--data", text_file, "--out", out, *TINY, "--max-steps", "2", "--eval-interval", "2")
    (out / "log.csv").write_bytes(log.encode("latin-1"))
    proc = run_cli("train", "--data", text_file, "--out", out, *TINY, "--max-steps", "4", "--resume")
    assert_one_line_error(proc, "--resume:", "log.csv is damaged")


def test_resume_says_where_it_starts_and_refuses_a_finished_run(tmp_path, text_file):
    out = tmp_path / "run"
    train("--data", text_file, "--out", out, *TINY, "--max-steps", "2", "--eval-interval", "2")
    proc = run_cli("train", "--data", text_file, "--out", out, *TINY, "--max-steps", "3", "--resume", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "resuming from step 2 of 3" in proc.stdout
    proc = run_cli("train", "--data", text_file, "--out", out, *TINY, "--max-steps", "3", "--resume")
    assert_one_line_error(proc, "--resume:", "already at step 3")
