"""Against the real thing: transformers' GPT2LMHeadModel, PyTorch autograd and torch.optim.AdamW.

These run when torch and transformers are installed (``pip install torch==2.13.0 -e ".[reference]"``)
and are reported as skipped otherwise. Following ../shared/CONTRACTS.md, a float32 result is compared
with PyTorch run in float64 on the same float32-rounded weights; float64 is compared with float64.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from simple_llm import GPT, AdamW, GPTConfig, clip_grad_norm

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CFG = dict(vocab_size=97, n_positions=24, n_embd=32, n_head=4, n_layer=3)


def hf_model(tmp_path, seed=0, dtype=torch.float64):
    """A randomly initialised transformers GPT-2 (biases and norms randomised too), saved to disk."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**CFG, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # biases around 0, layer-norm gains around 1
                gain = name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if gain else 0.0))
    model.save_pretrained(tmp_path)
    return model


def tokens(B=3, T=20, seed=0):
    return np.random.default_rng(seed).integers(0, CFG["vocab_size"], (B, T))


def test_logits_match_transformers_float64(tmp_path, backend):
    ref = hf_model(tmp_path)
    ours = GPT.from_pretrained(tmp_path, dtype=np.float64)
    idx = tokens()
    with torch.no_grad():
        expected = ref(torch.tensor(idx)).logits.numpy()
    assert np.abs(ours.forward(idx) - expected).max() <= 1e-9


def test_logits_match_transformers_float32(tmp_path, backend):
    hf_model(tmp_path, dtype=torch.float32)
    ours = GPT.from_pretrained(tmp_path, dtype=np.float32)
    # the reference: PyTorch in float64 on the same float32-rounded weights
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).to(torch.float64).eval()
    idx = tokens()
    with torch.no_grad():
        expected = ref(torch.tensor(idx)).logits.numpy()
    assert np.abs(ours.forward(idx) - expected).max() <= 1e-4


def test_loss_and_every_gradient_match_autograd_float64(tmp_path, backend):
    ref = hf_model(tmp_path)
    ours = GPT.from_pretrained(tmp_path, dtype=np.float64)
    idx, targets = tokens(seed=1), tokens(seed=2)
    targets[0, :3] = -1  # not scored: ignore_index=-1 on the PyTorch side
    out = ref(torch.tensor(idx))
    ref_loss = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, CFG["vocab_size"]), torch.tensor(targets).reshape(-1), ignore_index=-1
    )
    ref_loss.backward()
    loss, grads = ours.loss_and_grads(idx, targets)
    assert abs(loss - ref_loss.item()) <= 1e-8 * abs(ref_loss.item())
    ref_grads = {n.removeprefix("transformer."): p.grad.numpy() for n, p in ref.named_parameters()}
    assert set(ref_grads) == set(grads)  # the tied lm_head is wte itself
    for name, g in grads.items():
        err = np.linalg.norm(g - ref_grads[name]) / np.linalg.norm(ref_grads[name])
        assert err <= 1e-8, (name, err)


def test_adamw_training_matches_torch(tmp_path, backend):
    """Five steps of clipped AdamW with a changing learning rate: same losses, same weights."""
    ref = hf_model(tmp_path)
    ours = GPT.from_pretrained(tmp_path, dtype=np.float64)
    params = dict(ref.named_parameters())
    groups = [
        {"params": [p for p in params.values() if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for p in params.values() if p.ndim < 2], "weight_decay": 0.0},
    ]
    ref_opt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opt = AdamW(ours.params, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for step in range(5):
        lr = 1e-2 * (step + 1) / 5
        idx, targets = tokens(seed=10 + step), tokens(seed=20 + step)
        ref_opt.zero_grad()
        logits = ref(torch.tensor(idx)).logits
        ref_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, CFG["vocab_size"]), torch.tensor(targets).reshape(-1)
        )
        ref_loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        for group in ref_opt.param_groups:
            group["lr"] = lr
        ref_opt.step()
        loss, grads = ours.loss_and_grads(idx, targets)
        clip_grad_norm(grads, 0.5)
        opt.lr = lr
        opt.step(grads)
        assert loss == pytest.approx(ref_loss.item(), rel=1e-10)
    for name, p in params.items():
        np.testing.assert_allclose(
            ours.params[name.removeprefix("transformer.")], p.detach().numpy(), rtol=1e-8, atol=1e-10, err_msg=name
        )


def test_saved_checkpoint_loads_in_transformers_without_warnings(tmp_path, backend, caplog):
    ours = GPT(GPTConfig(vocab_size=97, n_ctx=24, n_embd=32, n_head=4, n_layer=3), seed=3)
    ours.params.flat[...] += np.random.default_rng(0).standard_normal(ours.n_params).astype(np.float32) * 0.05
    ours.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        ref, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not [r for r in caplog.records if "weights" in r.getMessage().lower()]
    idx = tokens()
    with torch.no_grad():
        expected = ref.to(torch.float64).eval()(torch.tensor(idx)).logits.numpy()
    assert np.abs(ours.forward(idx) - expected).max() <= 1e-4
    again = GPT.from_pretrained(tmp_path)
    np.testing.assert_array_equal(again.params.flat, ours.params.flat)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_generation_matches_transformers(tmp_path, backend, use_cache):
    ref = hf_model(tmp_path, seed=5)
    ours = GPT.from_pretrained(tmp_path, dtype=np.float64)
    prompt = tokens(B=1, T=4, seed=3)
    with torch.no_grad():
        expected = ref.generate(
            torch.tensor(prompt),
            max_new_tokens=16,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
            eos_token_id=None,
            attention_mask=torch.ones_like(torch.tensor(prompt)),
        )
    np.testing.assert_array_equal(ours.generate(prompt, max_new_tokens=16, use_cache=use_cache), expected.numpy())


def test_bfloat16_and_float16_checkpoints_load(tmp_path):
    ref = hf_model(tmp_path, dtype=torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        ref.to(dtype).save_pretrained(tmp_path)
        ours = GPT.from_pretrained(tmp_path, dtype=np.float32)
        expected = ref.transformer.wte.weight.detach().to(torch.float32).numpy()
        np.testing.assert_array_equal(ours.params["wte.weight"], expected)


def test_scale_path_to_pytorch_and_back(tmp_path):
    """Train here, load in transformers, train one step with PyTorch, save_pretrained, and fine-tune
    that directory here again: no conversion step anywhere."""
    import shutil

    from support import run_cli

    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. the dog ran far.\n" * 60, encoding="utf-8")
    ours, theirs, back = tmp_path / "ours", tmp_path / "theirs", tmp_path / "back"
    flags = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4"]
    proc = run_cli(
        "train", "--data", text, "--out", ours, *flags, "--max-steps", "3", "--eval-steps", "1", "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr
    model = transformers.GPT2LMHeadModel.from_pretrained(ours)
    idx = torch.tensor(tokens(B=2, T=16, seed=1) % model.config.vocab_size)
    torch.optim.AdamW(model.parameters(), lr=1e-2).zero_grad()
    model(idx, labels=idx).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-2 * p.grad  # one plain step: the weights move
    model.save_pretrained(theirs)
    shutil.copy(ours / "tokenizer.json", theirs / "tokenizer.json")  # the tokenizer travels beside it
    moved = GPT.from_pretrained(theirs)
    state = {k.removeprefix("transformer."): v.detach().numpy() for k, v in model.state_dict().items()}
    for name, p in moved.params.items():
        np.testing.assert_array_equal(p, state[name], err_msg=name)
    assert not np.array_equal(moved.params.flat, GPT.from_pretrained(ours).params.flat)
    recipe = ["--lr", "3e-5", "--min-lr", "3e-5", "--warmup-steps", "0", "--eval-steps", "1", "--no-progress"]
    proc = run_cli("train", "--data", text, "--out", back, "--init-from", theirs, "--batch-size", "2",
                   "--max-steps", "2", *recipe)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert transformers.GPT2LMHeadModel.from_pretrained(back) is not None
