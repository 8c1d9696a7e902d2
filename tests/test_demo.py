"""The seed demo, run as a user runs it: a subprocess with answers piped on stdin."""

from __future__ import annotations

import re
import sys

import pytest
from support import assert_one_line_error, run_cli


def epoch_losses(stdout, label):
    return [float(x) for x in re.findall(rf"^Epoch \d+: {label} = ([0-9.]+)$", stdout, re.M)]


@pytest.mark.parametrize(
    "backend_env", [{}, {"SIMPLE_LLM_PURE_PYTHON": "1"}], ids=["installed-kernels", "pure-python-env"]
)
def test_english_demo_says_hello_world(backend_env):
    proc = run_cli("en", input_text="Hello\nThe train\nquit\n", env=backend_env)
    assert proc.returncode == 0, proc.stderr
    losses = epoch_losses(proc.stdout, "average loss")
    assert len(losses) == 100
    assert losses[-1] < losses[0] / 5  # clearly falling
    assert "Enter a prompt (or 'quit' to exit): Generated text: world\n" in proc.stdout
    assert "Generated text: leaves the station at noon\n" in proc.stdout
    assert proc.stderr == ""


def test_japanese_demo_is_the_default():
    proc = run_cli(input_text="こんにちは\n")  # ends with end of input (Ctrl-D)
    assert proc.returncode == 0, proc.stderr
    losses = epoch_losses(proc.stdout, "平均損失")
    assert len(losses) == 100 and losses[-1] < losses[0] / 5
    assert "Generated text: 世界\n" in proc.stdout


def test_demo_flags_epochs_seed_data_and_sampling(tmp_path):
    data = tmp_path / "mine.txt"
    data.write_text("red green blue\nred green blue\n", encoding="utf-8")
    proc = run_cli(
        "en",
        "--data",
        data,
        "--epochs",
        "30",
        "--seed",
        "3",
        "--temperature",
        "0.5",
        "--max-new-tokens",
        "1",
        input_text="red\nquit\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert len(epoch_losses(proc.stdout, "average loss")) == 30
    assert "Generated text: green\n" in proc.stdout  # one new token at most


def test_unknown_words_and_empty_prompts_keep_the_session():
    proc = run_cli("en", "--epochs", "2", input_text="\nzzz qqq\nquit\n")
    assert proc.returncode == 0
    assert proc.stdout.count("Enter a prompt") == 3


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\n  \n", "is empty"),
        (b"caf\xe9 au lait\n", "is not UTF-8"),
        (b"\x00\x01\x02binary", "looks binary"),
    ],
)
def test_bad_data_file_is_one_line_and_exit_2(tmp_path, content, fragment):
    path = tmp_path / "data.txt"
    if content is not None:
        path.write_bytes(content)
    proc = run_cli("en", "--data", path)
    assert_one_line_error(proc, "simple_llm: error:", fragment)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["fr"], "unknown command 'fr'; the commands are en, ja, train"),
        (["trian", "--data", "x"], "unknown command 'trian' (did you mean train?)"),
        (["en", "--epochs", "0"], "--epochs: must be a positive integer"),
        (["en", "--temperature", "-1"], "--temperature: must be a number >= 0"),
        (["en", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args, fragment):
    assert_one_line_error(run_cli(*args), "simple_llm: error:", fragment)


def test_help_prints_the_full_usage():
    proc = run_cli("--help")
    assert proc.returncode == 0 and "usage: simple_llm" in proc.stdout and "--epochs" in proc.stdout


@pytest.mark.parametrize("command", ["demo", "train", "generate", "chat", "eval", "explore", "inspect", "bench"])
def test_every_flag_with_a_default_says_it_in_help(command):
    """0 and 0.0 are defaults too (--dropout's, --sample-every's were hidden: 0.0 == False)."""
    import argparse
    import importlib

    from simple_llm.cli import parser_of

    p = importlib.import_module("simple_llm.demo").parser("demo") if command == "demo" else parser_of(command)
    formatter = p._get_formatter()
    for action in p._actions:
        if action.option_strings and action.default not in (None, argparse.SUPPRESS) and action.default is not False:
            help_text = formatter._get_help_string(action) % {"default": action.default}
            assert "default" in help_text, (command, action.option_strings, help_text)
    if command == "train":
        assert "(default: %(default)s)" in formatter._get_help_string(p._option_string_actions["--dropout"])
    if command == "eval":
        assert p.parse_args(["--model", "m", "--data", "d", "--no-progress"]).no_progress


def test_backend_is_reported_and_switchable():
    import os
    import subprocess

    code = "import simple_llm; print(simple_llm.BACKEND)"
    env = {**os.environ, "SIMPLE_LLM_PURE_PYTHON": "1"}
    pure = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert pure.stdout.strip() == "numpy", pure.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT cannot be sent to a child process on Windows")
def test_ctrl_c_at_the_prompt_leaves_cleanly():
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "simple_llm", "en", "--epochs", "2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    seen = b""
    while b"Enter a prompt" not in seen:  # the prompt has no newline: read byte by byte
        byte = proc.stdout.read(1)
        assert byte, proc.stderr.read()
        seen += byte
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"Traceback" not in stderr, stderr


def test_an_unbuilt_source_tree_says_that_the_fallback_runs(tmp_path, monkeypatch):
    """Imported from a checkout (src/_kernels.pyx beside the package) without the compiled module:
    one note line that says why and what to type; nothing when the fallback was asked for."""
    from simple_llm import cli, kernels

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "_kernels.pyx").write_text("# the kernels' source\n")
    monkeypatch.setattr(kernels, "BACKEND", "numpy")
    monkeypatch.setattr(kernels, "__file__", str(tmp_path / "simple_llm" / "kernels.py"))
    monkeypatch.setattr(kernels, "FORCED_FALLBACK", False)
    note = cli.fallback_note()
    assert note is not None and "slow NumPy kernels" in note and str(tmp_path) in note and "pip install -e ." in note
    monkeypatch.setattr(kernels, "FORCED_FALLBACK", True)  # SIMPLE_LLM_PURE_PYTHON=1 at import
    assert cli.fallback_note() is None
    monkeypatch.setattr(kernels, "BACKEND", "cython")
    monkeypatch.setattr(kernels, "FORCED_FALLBACK", False)
    assert cli.fallback_note() is None


def test_japanese_as_people_write_it_without_spaces():
    proc = run_cli(input_text="猫が\nこんにちは\n")
    assert proc.returncode == 0, proc.stderr
    assert "Generated text: 暖かいマットの上で眠る" in proc.stdout  # an unspaced prompt, known characters
    assert "Generated text: 世界" in proc.stdout
    spaced = run_cli("ja", "--tokenizer", "word", input_text="猫 が\n")  # the word model needs the spaces
    assert "Generated text: 暖かい マット の 上 で 眠る" in spaced.stdout


def test_every_command_runs_from_the_folder_above_a_clone(tmp_path):
    """`git clone` names the folder simple_llm; from the folder above it, Python takes that folder for
    a namespace package before an editable install's finder is asked (issue 22)."""
    (tmp_path / "simple_llm" / "src").mkdir(parents=True)  # the clone, as seen from above
    version = run_cli("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("simple_llm 0."), version.stderr
    assert "usage: simple_llm" in run_cli("--help", cwd=tmp_path).stdout
    assert_one_line_error(run_cli("trian", cwd=tmp_path), "did you mean train?")
    demo = run_cli("en", "--epochs", "2", input_text="Hello\nquit\n", cwd=tmp_path)
    assert demo.returncode == 0 and "Generated text:" in demo.stdout, demo.stderr
