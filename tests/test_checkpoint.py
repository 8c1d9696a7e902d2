"""Checkpoints: round trips, and every kind of bad file refused in one line with no model built."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from simple_llm import GPT, GPTConfig
from simple_llm.checkpoint import CheckpointError

CFG = GPTConfig(vocab_size=30, n_ctx=8, n_embd=8, n_head=2, n_layer=2)


@pytest.fixture
def saved(tmp_path):
    model = GPT(CFG, seed=1)
    model.params.flat[...] = np.random.default_rng(0).standard_normal(model.n_params)
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_round_trip_and_files(saved):
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_positions"] == 8 and config["n_embd"] == 8
    assert all(k.startswith("transformer.") for k in load_file(path / "model.safetensors"))
    for dtype in (np.float32, np.float64):
        again = GPT.from_pretrained(path, dtype=dtype)
        assert again.config == CFG and again.dtype == dtype
        np.testing.assert_allclose(again.params.flat, model.params.flat, rtol=1e-7)


def test_layer_norm_epsilon_is_saved_and_defaults_to_gpt2s(tmp_path):
    GPT(GPTConfig(vocab_size=30, n_ctx=8, n_embd=8, n_head=2, n_layer=2, layer_norm_epsilon=1e-6)).save_pretrained(
        tmp_path
    )
    assert json.loads((tmp_path / "config.json").read_text())["layer_norm_epsilon"] == 1e-6
    assert GPT.from_pretrained(tmp_path).config.layer_norm_epsilon == 1e-6
    config = json.loads((tmp_path / "config.json").read_text())
    del config["layer_norm_epsilon"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert GPT.from_pretrained(tmp_path).config.layer_norm_epsilon == 1e-5


def rewrite(path, change):
    tensors = load_file(path / "model.safetensors")
    change(tensors)
    save_file(tensors, path / "model.safetensors")


def test_names_without_prefix_buffers_and_lm_head_are_accepted(saved):
    model, path = saved

    def original_gpt2_layout(t):
        for k in list(t):
            t[k.removeprefix("transformer.")] = t.pop(k)
        t["h.0.attn.bias"] = np.ones((1, 1, 8, 8), np.float32)  # the stored causal mask
        t["lm_head.weight"] = t["wte.weight"].copy()

    rewrite(path, original_gpt2_layout)
    np.testing.assert_array_equal(GPT.from_pretrained(path).params.flat, model.params.flat)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda t: t.pop("transformer.h.1.mlp.c_fc.weight"), "has no tensor h.1.mlp.c_fc.weight"),
        (lambda t: t.update({"transformer.h.0.ln_1.weight": np.ones(9, np.float32)}), "has shape [9], expected [8]"),
        (lambda t: t.update({"transformer.ln_f.bias": np.zeros(8, np.int32)}), "dtype I32"),
        (lambda t: t.update({"transformer.h.7.ln_1.weight": np.ones(8, np.float32)}), "holds 3 layers but"),
        (lambda t: t.update({"transformer.h.0.attn.extra": np.ones(8, np.float32)}), "GPT-2 does not have"),
        (lambda t: t.update({"lm_head.weight": np.ones((30, 8), np.float32)}), "differs from wte.weight"),
    ],
)
def test_bad_tensors_are_named(saved, change, fragment):
    _, path = saved
    rewrite(path, change)
    with pytest.raises(CheckpointError, match=re.escape(fragment)):
        GPT.from_pretrained(path)


@pytest.mark.parametrize(
    "mangle, fragment",
    [
        (lambda b: b[: len(b) // 2], "not a valid safetensors file"),  # truncated
        (lambda b: b"\xff" * 8 + b[8:], "not a valid safetensors file"),  # absurd header length
        (lambda b: b[:9] + b"!" + b[10:], "not a valid safetensors file"),  # broken header JSON
        (lambda b: b"", "not a valid safetensors file"),
    ],
)
def test_damaged_files(saved, mangle, fragment):
    _, path = saved
    weights = path / "model.safetensors"
    weights.write_bytes(mangle(weights.read_bytes()))
    with pytest.raises(CheckpointError, match=fragment) as info:
        GPT.from_pretrained(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"vocab_size": 30, "n_embd": 8, "n_head": 2, "n_layer": 2}, "has no n_positions"),
        ({"vocab_size": 30, "n_ctx": 8, "n_embd": 8, "n_head": 3, "n_layer": 2}, "not divisible"),
        ({"vocab_size": -30, "n_ctx": 8, "n_embd": 8, "n_head": 2, "n_layer": 2}, "positive integer"),
        ({"vocab_size": 10**12, "n_ctx": 8, "n_embd": 8, "n_head": 2, "n_layer": 2}, "expected"),
        ({"vocab_size": "30", "n_ctx": 8, "n_embd": 8, "n_head": 2, "n_layer": 2}, "positive integer"),
        ([1, 2], "config.json is damaged: not a JSON object"),
    ],
)
def test_bad_configs(saved, config, fragment):
    _, path = saved
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=fragment):
        GPT.from_pretrained(path)  # n_ctx alone is accepted; an enormous vocab fails on the shapes


def test_missing_pieces(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        GPT.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"config\.json does not exist"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"vocab_size": 30, "n_ctx": 8, "n_embd": 8, "n_head": 2, "n_layer": 2}')
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not exist"):
        GPT.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("activation_function", "relu"),
        ("activation_function", "gelu"),  # erf GELU: another function than GPT-2's tanh one
        ("scale_attn_weights", False),
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("n_inner", 16),
    ],
)
def test_configs_that_compute_another_model_are_refused(saved, field, value):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    config[field] = value
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=f"{field} {json.dumps(value)} is not supported"):
        GPT.from_pretrained(path)


@pytest.mark.parametrize("field, value", [("activation_function", "gelu_pytorch_tanh"), ("n_inner", 32)])
def test_other_spellings_of_gpt2_are_accepted(saved, field, value):
    model, path = saved
    config = json.loads((path / "config.json").read_text())
    config[field] = value  # the same tanh GELU; n_inner = 4 * n_embd
    (path / "config.json").write_text(json.dumps(config))
    np.testing.assert_array_equal(GPT.from_pretrained(path).params.flat, model.params.flat)


def test_an_untied_output_layer_is_refused(saved):
    _, path = saved
    tensors = load_file(path / "model.safetensors")
    head = tensors["transformer.wte.weight"].copy()
    head[0, 0] += 1e-6  # even a tiny difference is another model
    save_file({**tensors, "lm_head.weight": head}, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"lm_head\.weight differs from wte\.weight"):
        GPT.from_pretrained(path)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(CheckpointError, match="tie_word_embeddings is not true and there is no lm_head"):
        GPT.from_pretrained(path)


def test_saved_files_follow_the_umask(tmp_path):
    """Written as any tool writes them: 0666 less the umask (0644 under umask 022), not 0600."""
    import os

    old = os.umask(0o022)
    try:
        GPT(CFG).save_pretrained(tmp_path)
    finally:
        os.umask(old)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


@pytest.mark.parametrize(
    "sizes, n_ctx", [({"n_positions": 8}, 8), ({"n_ctx": 8}, 8), ({"n_positions": 8, "n_ctx": 6}, 8)]
)
def test_n_positions_is_the_context_and_n_ctx_stands_in_for_it(saved, sizes, n_ctx):
    """transformers sizes wpe by n_positions; n_ctx is its old name, read only when n_positions is
    absent (a config with both, disagreeing, still loads the 8-row wpe)."""
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    del config["n_positions"], config["n_ctx"]
    (path / "config.json").write_text(json.dumps({**config, **sizes}))
    assert GPT.from_pretrained(path).config.n_ctx == n_ctx


@pytest.mark.parametrize("eos, vocab, want", [(7, 30, 7), (None, 30, None), (None, 50257, 50256), (3, 50257, 3)])
def test_the_saved_end_of_text_id(tmp_path, eos, vocab, want):
    """The tokenizer's own end-of-text id; GPT-2's 50256 for a GPT-2 vocabulary without one given."""
    from simple_llm.checkpoint import hf_config

    config = hf_config(GPTConfig(vocab_size=vocab, n_ctx=8, n_embd=8, n_head=2, n_layer=2), eos)
    assert config["eos_token_id"] == want and config["bos_token_id"] == want
    GPT(GPTConfig(vocab_size=30, n_ctx=8, n_embd=8, n_head=2, n_layer=2)).save_pretrained(tmp_path, eos_token_id=7)
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 7
