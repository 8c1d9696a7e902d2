"""eval: every token after the first predicted exactly once, the loss the model's own, one line or
JSON, and bad input as one line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from support import assert_one_line_error, char_model_dir, run_cli

from simple_llm import GPT
from simple_llm.evaluate import loss_sum, windows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    text, config = "abcdefgh .\n", dict(n_ctx=8, n_embd=16, n_head=2, n_layer=1)
    return char_model_dir(tmp_path_factory.mktemp("model"), text, jitter=0.5, seed=1, **config)


@pytest.mark.parametrize("n, block", [(2, 4), (5, 4), (9, 4), (10, 4), (23, 8), (24, 8)])
def test_windows_predict_every_token_after_the_first_once(n, block):
    targets = [i for start, length in windows(n, block) for i in range(start + 1, start + length)]
    assert targets == list(range(1, n))
    assert all(length <= block + 1 for _, length in windows(n, block))


def test_the_loss_is_the_mean_over_every_target(model_dir):
    """By hand: each target's -log p under the model, from the windows' own contexts."""
    model = GPT.from_pretrained(model_dir)
    tokens = np.random.default_rng(3).integers(0, model.config.vocab_size, 21)
    total, scored = loss_sum(model, tokens, block=8, batch=2)
    expected = 0.0
    for start, length in windows(len(tokens), 8):
        logits = model.forward(tokens[None, start : start + length - 1])[0].astype(np.float64)
        logp = (
            logits
            - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
            - logits.max(1, keepdims=True)
        )
        expected -= logp[np.arange(length - 1), tokens[start + 1 : start + length]].sum()
    assert scored == 20
    assert total == pytest.approx(expected, rel=1e-5)


def test_command_line_and_json(model_dir, tmp_path):
    text = "abc defgh.\nhgf edcba.\n" * 3
    data = tmp_path / "text.txt"
    data.write_text(text, encoding="utf-8")
    proc = run_cli("eval", "--model", model_dir, "--data", data)
    assert proc.returncode == 0, proc.stderr
    words = proc.stdout.split()
    assert words[0::2] == ["loss", "perplexity", "tokens"] and int(words[5]) == len(text) - 1
    assert float(words[3]) == pytest.approx(math.exp(float(words[1])), rel=1e-3)
    result = json.loads(run_cli("eval", "--model", model_dir, "--data", data, "--json", "--block-size", "3").stdout)
    assert set(result) == {"loss", "perplexity", "tokens", "bytes", "bits_per_byte"}
    assert result["tokens"] == len(text) - 1 and result["bytes"] == len(text.encode())
    assert result["bits_per_byte"] == pytest.approx(result["loss"] * result["tokens"] / math.log(2) / result["bytes"])


@pytest.mark.parametrize(
    "content, extra, fragment",
    [
        ("abc", ["--block-size", "9"], "--block-size 9 is above this model's context (8)"),
        ("a", [], "needs at least 2"),
        ("", [], "is empty"),
        ("abcz", [], "cannot tokenize --data"),
    ],
)
def test_bad_input_is_one_line(model_dir, tmp_path, content, extra, fragment):
    data = tmp_path / "text.txt"
    data.write_text(content, encoding="utf-8")
    assert_one_line_error(
        run_cli("eval", "--model", model_dir, "--data", data, *extra), "simple_llm eval: error:", fragment
    )
    assert_one_line_error(run_cli("eval", "--model", tmp_path / "nope", "--data", data), "simple_llm eval: error:")
