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
from support import assert_one_line_error, char_model_dir, run_cli

from simple_llm import GPT, GPTConfig, load_tokenizer
from simple_llm.cli_args import CLIError
from simple_llm.fileio import atomic_path
from simple_llm.train import parser, split
from simple_llm.trainer import Trainer

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
    evals = [r for r in rows if r["val_loss"]]
    assert [int(r["step"]) for r in evals] == [0, 50, 100, 150]  # step 0 is evaluated too
    batches = [int(r["step"]) for r in rows if not r["val_loss"]]
    assert batches == list(range(10, 151, 10))  # a training-loss row every --log-interval (10) steps
    assert float(evals[-1]["val_loss"]) < 0.1 < float(evals[0]["val_loss"])  # it learned
    assert "step 150: train loss" in proc.stdout and "best validation loss" in proc.stdout
    model, tok = GPT.from_pretrained(out), load_tokenizer(out)
    out_ids = model.generate(np.array([tok.encode("abc")]), max_new_tokens=10)
    assert tok.decode(out_ids[0]) == "abcdefghabcde"  # the pattern, learned
    generated = run_cli("generate", "--model", out, "--prompt", "cde", "--max-new-tokens", "5")
    assert generated.stdout == "cdefghab\n"


def test_loss_plot_and_drawing_it_again(tmp_path, text_file):
    out = tmp_path / "run"
    train("--data", text_file, "--out", out, *TINY, "--max-steps", "4", "--eval-interval", "2")
    png = (out / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    (out / "loss.png").unlink()
    proc = run_cli("plot", out)
    assert proc.returncode == 0 and "drew 3 rows" in proc.stdout, proc.stderr  # evaluations at 0, 2 and 4
    assert (out / "loss.png").read_bytes()[:8] == png[:8]
    elsewhere = tmp_path / "elsewhere.png"
    assert run_cli("plot", out, "--out", elsewhere).returncode == 0 and elsewhere.stat().st_size > 5000
    assert_one_line_error(run_cli("plot", tmp_path), "holds no log.csv")
    (out / "log.csv").write_text("step,lr,train_loss,val_loss,tokens_per_s\n", encoding="utf-8")
    assert_one_line_error(run_cli("plot", out), "has no rows to draw")
    (out / "log.csv").write_text("step,lr\n1,2\n", encoding="utf-8")
    assert_one_line_error(run_cli("plot", out), "log.csv is damaged")


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
    assert [int(r["step"]) for r in log if r["val_loss"]] == [0, 15, 20, 30, 40]  # 20: where the first part ended
    batch_rows = [(r["step"], r["train_loss"]) for r in log if not r["val_loss"]]
    assert [int(s) for s, _ in batch_rows] == [10, 20, 30, 40]
    straight = [(r["step"], r["train_loss"]) for r in csv.DictReader((once / "log.csv").open()) if not r["val_loss"]]
    assert batch_rows == straight  # the same batch losses, step for step


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


def test_grad_accum_draws_the_same_windows_and_ends_with_the_same_weights(tmp_path, text_file):
    common = ["--data", text_file, *TINY, "--max-steps", "6", "--eval-interval", "6", "--seed", "4"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(*common, "--out", whole, "--batch-size", "8")
    proc = train(*common, "--out", parts, "--batch-size", "2", "--grad-accum", "4")
    a, b = (
        np.concatenate([v.ravel() for v in weights(whole).values()]),
        np.concatenate([v.ravel() for v in weights(parts).values()]),
    )
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 1e-5
    other = tmp_path / "other"  # a different batch gives visibly different weights: the check can fail
    train(*common, "--out", other, "--batch-size", "2", "--grad-accum", "3")
    c = np.concatenate([v.ravel() for v in weights(other).values()])
    assert np.linalg.norm(a - c) / np.linalg.norm(a) > 1e-4
    assert "tokens/s" in proc.stdout  # counted over every micro-batch (8 windows a step)


def float64_trainer(tmp_path, model, train_stream, val_stream, *flags):
    """The train command's Trainer over given token streams, with train's defaults plus flags."""
    args = parser("train").parse_args(["--data", "unused", "--out", str(tmp_path), *flags])
    args.block_size = model.config.n_ctx
    return Trainer(args, model, None, train_stream, val_stream)


def test_grad_accum_gradient_is_the_whole_batch_gradient_in_float64(tmp_path):
    """AdamW hardly sees a constant factor on the gradient, so the weights above cannot pin the
    average: the accumulated gradient itself must be the 8-window batch's, up to summation order."""
    model = GPT(GPTConfig(vocab_size=13, n_ctx=6, n_embd=8, n_head=2, n_layer=2), seed=1, dtype=np.float64)
    stream = np.random.default_rng(0).integers(0, 13, 400)
    trainer = float64_trainer(tmp_path, model, stream[:300], stream[300:], "--batch-size", "2", "--grad-accum", "4")
    x, y = trainer.next_batch()
    assert x.shape == (8, 6)
    loss, grads = trainer.gradients(x, y)
    accumulated = grads.flat.copy()
    whole_loss, whole = model.loss_and_grads(x, y)
    assert abs(loss - whole_loss) < 1e-12
    np.testing.assert_allclose(accumulated, whole.flat, rtol=1e-10, atol=1e-14)


def test_the_last_tenth_is_validation_and_evaluation_reads_each_split(tmp_path):
    train_part, val_part = split(np.arange(100), 9)
    np.testing.assert_array_equal(train_part, np.arange(90))
    np.testing.assert_array_equal(val_part, np.arange(90, 100))
    with pytest.raises(CLIError, match="validation split needs at least 110 tokens"):
        split(np.arange(100), 10)  # 10 validation tokens hold no window of 10 + 1
    # one token repeated in each split: every window of a split is the same, whatever is drawn
    model = GPT(GPTConfig(vocab_size=5, n_ctx=4, n_embd=8, n_head=2, n_layer=1), seed=3, dtype=np.float64)
    trainer = float64_trainer(tmp_path, model, np.full(50, 1), np.full(50, 3), "--eval-steps", "2")
    train_loss, val_loss = trainer.evaluate()
    assert train_loss == pytest.approx(model.loss(np.full((1, 4), 1), np.full((1, 4), 1)), rel=1e-12)
    assert val_loss == pytest.approx(model.loss(np.full((1, 4), 3), np.full((1, 4), 3)), rel=1e-12)
    assert abs(train_loss - val_loss) > 1e-3


def test_init_from_fine_tunes_a_model_directory(tmp_path, text_file):
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    train("--data", text_file, "--out", base, *TINY, "--max-steps", "4", "--eval-interval", "4")
    recipe = ["--lr", "3e-5", "--min-lr", "3e-5", "--warmup-steps", "0", "--no-progress", "--eval-steps", "2"]
    args = ["--data", text_file, "--out", tuned, "--init-from", base, "--batch-size", "4", *recipe]
    proc = train(*args, "--max-steps", "3", "--eval-interval", "3")
    assert f"from {base}" in proc.stdout
    before, after = weights(base), weights(tuned)
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # it trained ...
    assert max(float(np.abs(before[k] - after[k]).max()) for k in before) < 1e-2  # ... gently, from base
    text = text_file.read_text(encoding="utf-8")[:200]
    assert load_tokenizer(tuned).encode(text) == load_tokenizer(base).encode(text)
    assert GPT.from_pretrained(tuned).config == GPT.from_pretrained(base).config
    resume = [a for a in args if a not in ("--init-from", base)]  # the run now lives in --out
    proc = run_cli("train", *resume, "--max-steps", "5", "--eval-interval", "5", "--resume")
    assert proc.returncode == 0 and "resuming from step 3 of 5" in proc.stdout, proc.stderr


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--n-layer", "2"], "--init-from uses the config and tokenizer of"),
        (["--tokenizer", "bpe"], "drop --tokenizer"),
        (["--resume"], "give only one"),
        (["--block-size", "17"], "--block-size 17 is above the context"),
    ],
)
def test_init_from_refuses_what_the_model_already_says(tmp_path, text_file, extra, fragment):
    base = tmp_path / "base"
    train("--data", text_file, "--out", base, *TINY, "--max-steps", "2", "--eval-interval", "2")
    proc = run_cli("train", "--data", text_file, "--out", tmp_path / "t", "--init-from", base, *extra)
    assert_one_line_error(proc, fragment)


def test_samples_while_training_and_help_shows_defaults(tmp_path, text_file):
    proc = train("--data", text_file, "--out", tmp_path / "run", *TINY, "--max-steps", "4", "--eval-interval", "4",
                 "--sample-every", "2", "--sample-prompt", "the cat")  # fmt: skip
    samples = [line for line in proc.stdout.splitlines() if line.startswith("sample at step")]
    assert [line.split(":")[0] for line in samples] == ["sample at step 2", "sample at step 4"]
    assert all("'the cat" in line for line in samples)
    help_text = run_cli("train", "--help").stdout
    assert "(default: 12)" in help_text and "--grad-accum" in help_text and "``" not in help_text


def run_until(args, marker, timeout=60, watch="stderr"):
    """Start ``python -m simple_llm ARGS``, wait for marker on its stderr (or stdout), send Ctrl-C;
    (code, stdout, stderr)."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "COLUMNS": "100"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "simple_llm", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    stream = getattr(proc, watch)
    seen, end = b"", time.monotonic() + timeout
    os.set_blocking(stream.fileno(), False)
    while marker.encode() not in seen and time.monotonic() < end and proc.poll() is None:
        seen += stream.read() or b""
        time.sleep(0.05)
    assert marker.encode() in seen, seen
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=timeout)
    out, err = (seen + out, err) if watch == "stdout" else (out, seen + err)
    return proc.returncode, out.decode(), err.decode()


@POSIX_ONLY
def test_ctrl_c_in_the_first_evaluation_shows_progress_and_leaves_nothing(tmp_path, text_file):
    out = tmp_path / "run"
    slow = [a for a in TINY if a != "--no-progress"] + ["--eval-steps", "100000"]  # a GPT-2's minute of silence
    code, _, stderr = run_until(["train", "--data", text_file, "--out", out, *slow], "evaluating step 0")
    assert code == 130, stderr
    assert "Traceback" not in stderr
    assert "Interrupted before the first step; nothing was saved" in stderr.splitlines()[-1]
    assert not out.exists()  # not even tokenizer.json: a new run there starts cleanly
    train("--data", text_file, "--out", out, *TINY, "--max-steps", "1")


@POSIX_ONLY
def test_ctrl_c_in_a_long_generation_is_one_line_and_status_130(tmp_path, text_file):
    out = tmp_path / "run"
    train("--data", text_file, "--out", out, *TINY, "--max-steps", "2")
    code, _, stderr = run_until(
        ["generate", "--model", out, "--prompt", "the", "--max-new-tokens", "100000"],
        "the",
        watch="stdout",
    )
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 130 and lines == ["simple_llm generate: interrupted"], stderr


def test_a_diverging_run_exits_1_and_saves_nothing_broken(tmp_path, text_file):
    """The issue's run: the loss of step 1 is finite, the update makes the weights ~1e30, and the
    evaluation after it is NaN: nothing may be saved over (or instead of) a finite checkpoint."""
    out = tmp_path / "nan"
    flags = ["--max-steps", "1", "--lr", "1e30", "--warmup-steps", "0", "--grad-clip", "0", "--n-layer", "1",
             "--n-embd", "32", "--block-size", "16", "--no-progress"]  # fmt: skip
    proc = run_cli("train", "--data", text_file, "--out", out, *flags)
    line = assert_one_line_error(proc, "not finite", "step 1", "nothing was saved", code=1)
    assert "done" not in proc.stdout, line
    assert not (out / "model.safetensors").exists() and not (out / "train_state").exists()


@pytest.mark.parametrize(
    "n_ctx, name, where, value",
    [
        (6, "h.0.mlp.c_fc.weight", (0, 0), np.inf),  # the next loss is not finite
        (8, "wpe.weight", (7, 0), np.nan),  # a row that no window of 6 reaches: every loss stays finite
    ],
)
def test_the_checkpoint_kept_after_divergence_is_the_last_finite_one(tmp_path, n_ctx, name, where, value):
    """The update of step 3 leaves one weight that is not finite: the run stops with status 1 and the
    checkpoint of step 2 stays. With the NaN in wpe's last row, only the check of the weights after
    each update keeps it out of the checkpoint."""
    from simple_llm import CharTokenizer
    from simple_llm.run_files import read_state_meta

    model = GPT(GPTConfig(vocab_size=13, n_ctx=n_ctx, n_embd=8, n_head=2, n_layer=1), seed=1, dtype=np.float64)
    stream = np.random.default_rng(0).integers(0, 13, 400)
    flags = ["--max-steps", "6", "--eval-interval", "2", "--eval-steps", "1", "--no-progress"]
    args = parser("train").parse_args(["--data", "unused", "--out", str(tmp_path), *flags])
    args.block_size = 6
    trainer = Trainer(args, model, CharTokenizer.train("abcdefghijklm"), stream[:300], stream[300:])
    step = trainer.opt.step

    def step_then_break(grads):
        step(grads)
        if trainer.opt.t == 3:
            model.params[name][where] = value

    trainer.opt.step = step_then_break
    assert trainer.fit() == 1
    assert read_state_meta(tmp_path / "train_state", n_ctx).step == 2
    assert all(np.isfinite(w).all() for w in weights(tmp_path).values())
    assert int(list(csv.DictReader((tmp_path / "log.csv").open()))[-1]["step"]) == 2


def test_step_rows_log_the_learning_rate_that_step_used(tmp_path):
    """Row s of log.csv shows lr_at(s - 1): the update that took the run to step s; step 0's row
    shows the rate the first step will use (warmup's start, not the peak)."""
    from simple_llm import CharTokenizer, lr_at

    model = GPT(GPTConfig(vocab_size=13, n_ctx=6, n_embd=8, n_head=2, n_layer=1), seed=1)
    stream = np.random.default_rng(0).integers(0, 13, 400)
    flags = ["--max-steps", "8", "--warmup-steps", "4", "--lr", "1e-2", "--min-lr", "1e-3", "--log-interval", "1",
             "--eval-interval", "100", "--eval-steps", "1", "--no-progress"]  # fmt: skip
    trainer = float64_trainer(tmp_path, model, stream[:300], stream[300:], *flags)
    trainer.tok = CharTokenizer.train("abcdefghijklm")
    used = []
    step = trainer.opt.step
    trainer.opt.step = lambda grads: (used.append(trainer.opt.lr), step(grads))
    assert trainer.fit() == 0
    assert used == [lr_at(s, 1e-2, 1e-3, 4, 8) for s in range(8)]
    rows = {(r["step"], r["val_loss"] is None): r["lr"] for r in trainer.run.log}
    assert rows[(0, False)] == pytest.approx(1e-2 / 5)
    assert [rows[(s, True)] for s in range(1, 9)] == used


def test_resume_alone_continues_with_the_saved_flags(tmp_path, text_file):
    common = ["--data", text_file, *TINY, "--lr", "3e-3", "--batch-size", "3", "--warmup-steps", "2", "--seed", "5",
              "--lr-decay-steps", "8", "--eval-interval", "4"]  # fmt: skip
    once, twice = tmp_path / "once", tmp_path / "twice"
    train(*common, "--out", once, "--max-steps", "8")
    train(*common, "--out", twice, "--max-steps", "4")
    proc = train("--out", twice, "--resume", "--max-steps", "8")  # no other flag, not even --data
    assert "resuming from step 4 of 8" in proc.stdout
    a, b = weights(once), weights(twice)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for flag, value in [("--lr", "1e-3"), ("--batch-size", "12"), ("--seed", "0"), ("--grad-clip", "0.5"),
                        ("--dropout", "0.1"), ("--warmup-steps", "100"), ("--beta2", "0.99")]:  # fmt: skip
        proc = run_cli("train", "--out", twice, "--resume", "--max-steps", "9", flag, value)
        shown = value if value.isdigit() else float(value)
        assert_one_line_error(proc, f"was trained with {flag} ", f"not {shown};")
    # the unchanged flags, pasted, are accepted; --max-steps extends the run
    proc = train(*common, "--out", twice, "--resume", "--max-steps", "9")
    assert "resuming from step 8 of 9" in proc.stdout


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("step", "-5", "step '-5'"),
        ("step", "2.5", "step '2.5'"),
        ("adam_t", "0", "adam_t 0 is not the step, 2"),
        ("best_val", "nan", "best_val 'nan'"),
        ("best_val", "-1", "best_val '-1'"),
        ("block_size", "-4", "block_size '-4'"),
        ("block_size", "17", "block_size 17 is above the model's context, 16"),
        ("rng", "[1]", "rng is not a JSON object"),
        ("rng", "[" * 100_000 + "]" * 100_000, "rng is not a JSON object"),
        ("dropout_rng", "{}", "damaged"),
        ("settings", '{"lr": 1, "bogus": 2}', "unknown flag, 'bogus'"),
        ("format", "other", "not a simple_llm training state"),
    ],
)
def test_every_field_of_train_state_is_checked(tmp_path, text_file, field, value, fragment):
    from safetensors import safe_open
    from safetensors.numpy import save_file

    out = tmp_path / "run"
    train("--data", text_file, "--out", out, *TINY, "--max-steps", "2")
    with safe_open(str(out / "train_state"), framework="numpy") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(out / "train_state"), metadata={**meta, field: value})
    before = (out / "model.safetensors").read_bytes()
    proc = run_cli("train", "--out", out, "--resume", "--max-steps", "4", "--data", text_file)
    assert_one_line_error(proc, fragment)
    assert (out / "model.safetensors").read_bytes() == before


def test_a_model_too_big_for_the_machine_is_refused_before_allocating(tmp_path, text_file):
    proc = run_cli("train", "--data", text_file, "--out", tmp_path / "big", "--n-embd", "65536", "--n-head", "4")
    assert_one_line_error(proc, "this run needs about", "GB of memory and the machine has", "available")
    assert not (tmp_path / "big").exists()


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak from Linux's /proc")
def test_the_memory_estimate_is_near_the_measured_peak(tmp_path):
    """The banner's estimate against the peak RSS of a run whose activations dominate."""
    from simple_llm.memory import training_bytes

    text = tmp_path / "t.txt"
    text.write_text("".join(chr(97 + i % 26) for i in range(40_000)), encoding="utf-8")
    args = ["--n-layer", "8", "--n-head", "4", "--n-embd", "96", "--block-size", "192", "--batch-size", "12",
            "--max-steps", "2", "--eval-steps", "1", "--no-progress"]  # fmt: skip
    script = (  # VmHWM, the peak of this process's own memory: ru_maxrss keeps the parent's across exec
        "import sys; from simple_llm.cli import main; code = main(sys.argv[1:]); "
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')); "
        "print('peak', int(hwm.split()[1]) * 1024); sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", script, "train", "--data", str(text), "--out", str(tmp_path / "r"),
                           *args], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.split("peak ")[1])
    from simple_llm.model import shard_count

    cfg = GPTConfig(vocab_size=26, n_ctx=192, n_embd=96, n_head=4, n_layer=8)
    estimate = training_bytes(cfg, 12, 192, 1, shard_count(cfg, 12, 192))
    assert f"about {estimate / 2**30:.2f} GB of memory" in proc.stdout
    assert 0.85 < estimate / peak < 1.2, (estimate, peak)  # a layer's activations are 7% of it


def test_the_memory_estimate_of_a_lora_run_is_near_its_peak(tmp_path):
    """A LoRA run on a model whose frozen weights dominate: the estimate counts them once, not four
    times (weights, gradients, two moments) as a full fine-tune's would."""
    from simple_llm.lora import LoRAConfig
    from simple_llm.memory import training_bytes
    from simple_llm.model import shard_count

    text = tmp_path / "t.txt"
    text.write_text("".join(chr(97 + i % 26) for i in range(20_000)), encoding="utf-8")
    base = char_model_dir(tmp_path / "base", text.read_text(), n_ctx=64, n_embd=512, n_head=8, n_layer=8)
    script = (
        "import sys; from simple_llm.cli import main; code = main(sys.argv[1:]); "
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:')); "
        "print('peak', int(hwm.split()[1]) * 1024); sys.exit(code)"
    )
    command = [sys.executable, "-c", script, "train", "--data", str(text), "--out", str(tmp_path / "r"),
               "--init-from", str(base), "--lora-rank", "4", "--batch-size", "2", "--max-steps", "2",
               "--eval-steps", "1", "--no-progress"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peak = int(proc.stdout.split("peak ")[1])
    cfg = GPTConfig(vocab_size=26, n_ctx=64, n_embd=512, n_head=8, n_layer=8)
    trained = sum(a * b for a, b in LoRAConfig(4, 4).shapes(cfg).values())
    estimate = training_bytes(cfg, 2, 64, 1, shard_count(cfg, 2, 64), trained)
    assert f"about {estimate / 2**30:.2f} GB of memory" in proc.stdout
    assert 0.8 < estimate / peak < 1.25, (estimate, peak)
    assert training_bytes(cfg, 2, 64, 1, 1) > 2 * peak  # what a full fine-tune of the same model needs


def tiny_trainer(tmp_path, *flags):
    from simple_llm import CharTokenizer

    model = GPT(GPTConfig(vocab_size=13, n_ctx=6, n_embd=8, n_head=2, n_layer=1), seed=1, dtype=np.float64)
    stream = np.random.default_rng(0).integers(0, 13, 400)
    trainer = float64_trainer(tmp_path, model, stream[:300], stream[300:], "--eval-steps", "1", "--no-progress", *flags)
    trainer.tok = CharTokenizer.train("abcdefghijklm")
    return trainer


@pytest.mark.parametrize("clip", ["0", "0.05"])
def test_grad_clip_0_is_off_and_otherwise_bounds_the_norm(tmp_path, clip):
    trainer = tiny_trainer(tmp_path, "--grad-clip", clip, "--max-steps", "3")
    raw, seen = [], []
    gradients, step = trainer.gradients, trainer.opt.step

    def record_raw(x, y):
        loss, grads = gradients(x, y)
        raw.append(float(np.linalg.norm(grads.flat)))
        return loss, grads

    trainer.gradients = record_raw
    trainer.opt.step = lambda grads: (seen.append(float(np.linalg.norm(grads.flat))), step(grads))
    assert trainer.fit() == 0
    assert all(r > 0.05 for r in raw)  # so that 0.05 clips every step
    want = raw if clip == "0" else [0.05] * len(raw)
    np.testing.assert_allclose(seen, want, rtol=1e-5)


def test_tokens_per_second_counts_every_micro_batch(tmp_path, monkeypatch):
    """A clock that moves 1 s per reading: each step then takes 1 s, and tokens/s is the tokens of a
    step: batch x grad_accum x block."""
    import itertools

    from simple_llm import trainer as trainer_module

    trainer = tiny_trainer(tmp_path, "--batch-size", "2", "--grad-accum", "3", "--max-steps", "2")
    clock = itertools.count()
    monkeypatch.setattr(trainer_module.time, "perf_counter", lambda: float(next(clock)))
    assert trainer.fit() == 0
    assert trainer.tokens_per_s == 2 * 3 * 6


def test_the_best_validation_loss_is_the_lowest_seen(tmp_path):
    trainer = tiny_trainer(tmp_path, "--max-steps", "3", "--eval-interval", "1")
    losses = iter([(3.0, 3.0), (2.0, 1.0), (1.5, 2.0), (1.0, 1.5)])  # steps 0, 1, 2, 3
    trainer.evaluate = lambda: next(losses)
    assert trainer.fit() == 0
    assert trainer.run.best_val == 1.0
    from simple_llm.run_files import read_state_meta

    assert read_state_meta(tmp_path / "train_state", 6).best_val == 1.0
