"""inspect: attention heatmaps of the right size, weights that are causal distributions, a trace whose
shapes follow the config, the embedding view, and the one-line answer without matplotlib."""

from __future__ import annotations

import re

import numpy as np
import pytest
from support import assert_one_line_error, char_model_dir, run_cli

from simple_llm import GPT, CharTokenizer, GPTConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = dict(n_ctx=16, n_embd=16, n_head=4, n_layer=3)
    return char_model_dir(tmp_path_factory.mktemp("model"), "Hello world!", jitter=0.3, seed=0, **config)


@pytest.mark.parametrize(
    "extra, size",
    [([], (3 * 300, 4 * 300)), (["--layer", "2", "--head", "1"], (300, 300)), (["--layer", "0"], (300, 4 * 300))],
)
def test_heatmap_png_size_follows_layers_and_heads(model_dir, tmp_path, extra, size):
    import matplotlib.pyplot as plt

    out = tmp_path / "attention.png"
    proc = run_cli("inspect", "--model", model_dir, "--prompt", "Hello world", "--out", out, *extra)
    assert proc.returncode == 0, proc.stderr
    height, width = plt.imread(out).shape[:2]
    assert (height, width) == size


def test_attention_weights_are_causal_distributions(model_dir):
    model = GPT.from_pretrained(model_dir)
    trace = dict(model.trace(np.array([[1, 2, 3, 4, 5, 6]])))
    for layer in range(3):
        att = trace[f"h.{layer}.attn.softmax"][0]  # (NH, T, T), the weights the heatmaps draw
        np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-5)
        lower = np.tril(np.ones(att.shape[-2:], dtype=bool))
        assert np.all(att[..., ~lower] == 0.0)  # nothing from later positions
        assert np.all(att[..., lower] > 0.0)


def test_trace_shapes_match_the_config(model_dir):
    proc = run_cli("inspect", "--model", model_dir, "--prompt", "Hello", "--trace", "--top", "3")
    assert proc.returncode == 0, proc.stderr
    shapes = dict(re.findall(r"^(\S.*?)\s{2,}(\(\d+(?:, \d+)*\))", proc.stdout, re.M))
    T, C, NH, V = 5, 16, 4, GPT.from_pretrained(model_dir).config.vocab_size
    assert shapes["wte[idx] + wpe"] == f"(1, {T}, {C})"
    for layer in range(3):
        assert shapes[f"h.{layer}.attn.c_attn (q, k, v)"] == f"(1, {T}, {3 * C})"
        assert shapes[f"h.{layer}.attn.softmax"] == f"(1, {NH}, {T}, {T})"
        assert shapes[f"h.{layer}.mlp.gelu"] == f"(1, {T}, {4 * C})"
    assert shapes["logits = ln_f @ wte^T"] == f"(1, {T}, {V})"
    tail = proc.stdout.split("most likely next tokens after 'Hello':\n")[1].splitlines()
    probs = [float(re.search(r"(\d\.\d\d)", line).group(1)) for line in tail]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True)


def test_embeddings_view(model_dir, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("Hello Hello world", encoding="utf-8")
    out = tmp_path / "emb.png"
    proc = run_cli("inspect", "--model", model_dir, "--embeddings", "--data", data, "--out", out, "--labels", "3")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    labelled = int(re.search(r"(\d+) labelled, of the 3 most frequent tokens of ", proc.stdout).group(1))
    skipped = re.search(r"; (\d+) left unlabelled where they would overlap", proc.stdout)
    assert labelled + (int(skipped.group(1)) if skipped else 0) == 3, proc.stdout


def test_the_labels_are_the_most_frequent_tokens_and_overlaps_are_counted(model_dir):
    from collections import Counter

    from simple_llm import load_tokenizer
    from simple_llm.inspection import draw_embeddings

    model, tok = GPT.from_pretrained(model_dir), load_tokenizer(model_dir)
    model.params["wte.weight"][...] = 0.0
    model.params["wte.weight"][:, 0] = np.arange(tok.vocab_size)  # on a line, far apart
    model.params["wte.weight"][:, 1] = np.arange(tok.vocab_size) % 2  # two directions of spread
    model.params["wte.weight"][5] = model.params["wte.weight"][4]  # 5 sits on 4
    import matplotlib

    matplotlib.use("Agg")
    labels = []
    real = matplotlib.axes.Axes.annotate
    matplotlib.axes.Axes.annotate = lambda ax, text, xy, **kw: labels.append(text) or real(ax, text, xy, **kw)
    try:
        counts = Counter({4: 10, 5: 9, 7: 8, 1: 1})
        assert draw_embeddings(model, tok, counts, 3, "/dev/null") == (2, 1)  # 5 would overlap 4
    finally:
        matplotlib.axes.Axes.annotate = real
    from simple_llm.session import token_label

    assert labels == [token_label(tok, 4), token_label(tok, 7)]


def test_pca_finds_the_direction_of_largest_spread():
    from simple_llm.inspection import embedding_pca

    rng = np.random.default_rng(0)
    wte = rng.standard_normal((200, 8)) * 0.01
    wte[:, 3] += np.linspace(-5, 5, 200)  # almost all the variance along channel 3
    xy, share = embedding_pca(wte)
    assert share[0] > 0.99 and share[1] < 0.01  # the shares of the variance
    assert abs(np.corrcoef(xy[:, 0], wte[:, 3])[0, 1]) > 0.999


def test_without_matplotlib_says_how_to_install_it(model_dir, tmp_path):
    fake = tmp_path / "fake" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    proc = run_cli("inspect", "--model", model_dir, "--prompt", "Hello", env={"PYTHONPATH": str(fake.parent)})
    assert_one_line_error(proc, "simple_llm inspect: error:", "pip install matplotlib")
    proc = run_cli(
        "inspect", "--model", model_dir, "--prompt", "Hello", "--trace", env={"PYTHONPATH": str(fake.parent)}
    )
    assert proc.returncode == 0  # the trace needs no matplotlib


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--prompt", "Hello", "--layer", "7"], "--layer 7: this model has 3 (0 to 2)"),
        (["--prompt", "Hello", "--head", "4"], "--head 4: this model has 4 (0 to 3)"),
        ([], "--prompt is needed"),
        (["--prompt", "Hello" * 10], "holds 16"),
    ],
)
def test_bad_inspect_arguments(model_dir, args, fragment):
    assert_one_line_error(run_cli("inspect", "--model", model_dir, *args), "simple_llm inspect: error:", fragment)


def test_each_picture_says_how_to_read_it(model_dir, tmp_path):
    proc = run_cli("inspect", "--model", model_dir, "--prompt", "Hello", "--out", tmp_path / "a.png")
    assert "rows are queries" in proc.stdout and "grey cells are future positions, masked out" in proc.stdout
    proc = run_cli("inspect", "--model", model_dir, "--embeddings", "--out", tmp_path / "e.png")
    assert "two directions of largest spread" in proc.stdout
    assert "labelled, of token ids 0 to 8 (--data FILE labels its most frequent)" in proc.stdout  # 9 tokens


def test_twelve_heads_are_a_grid_with_one_colour_bar(tmp_path):
    """GPT-2's 12 heads were a 3600 x 300 strip with a colour bar each over the token labels."""
    import matplotlib.pyplot as plt

    path = tmp_path / "m"
    tok = CharTokenizer.train("abcdefgh ")
    GPT(GPTConfig(vocab_size=tok.vocab_size, n_ctx=80, n_embd=24, n_head=12, n_layer=2), seed=0).save_pretrained(path)
    tok.save(path)
    out = tmp_path / "a.png"
    proc = run_cli("inspect", "--model", path, "--prompt", "abcdefgh " * 8, "--layer", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert plt.imread(out).shape[:2] == (3 * 300, 4 * 300)  # 4 heads across, 3 rows
