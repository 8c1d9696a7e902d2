"""LoRA: the adapters' gradients against PyTorch autograd, training that moves only them, PEFT's files
both ways, merge, the commands that load an adapter directory, --resume, and the refusals."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from support import assert_one_line_error, char_model_dir, explore_process, run_cli, step_allocations

from simple_llm import GPT, AdamW, GPTConfig, fallback, lora, parallel
from simple_llm import model as model_module
from simple_llm.lora import LoRAConfig

CFG = GPTConfig(vocab_size=29, n_ctx=12, n_embd=16, n_head=2, n_layer=2)
ALL = ("c_attn", "c_proj", "c_fc")


def batch(cfg=CFG, B=3, T=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))


def lora_model(targets=ALL, rank=3, alpha=5.0, dtype=np.float64, seed=1):
    """A GPT with adapters whose B is not zero (at zero, A's gradient is zero too)."""
    model = GPT(CFG, seed=seed, dtype=dtype).add_lora(LoRAConfig(rank, alpha, targets), seed=seed)
    rng = np.random.default_rng(seed + 10)
    for name, a in model.adapters.items():
        if name.endswith("lora_B"):
            a[...] = rng.normal(0.0, 0.2, a.shape)
    return model


# the layer, written out -----------------------------------------------------------------------


def test_targets_pick_layers_as_peft_does():
    layers = LoRAConfig(2, 2, ("c_proj",)).layers(2)
    assert layers == ["h.0.attn.c_proj", "h.0.mlp.c_proj", "h.1.attn.c_proj", "h.1.mlp.c_proj"]
    assert LoRAConfig(2, 2, ("mlp.c_proj", "h.1.attn.c_attn")).layers(2) == [
        "h.0.mlp.c_proj",
        "h.1.attn.c_attn",
        "h.1.mlp.c_proj",
    ]
    shapes = LoRAConfig(3, 1, ("c_fc",)).shapes(CFG)
    assert shapes["h.1.mlp.c_fc.lora_A"] == (16, 3) and shapes["h.1.mlp.c_fc.lora_B"] == (3, 64)
    for bad in ("ln_1", "attn", "c_att", "h.2.attn.c_attn"):
        with pytest.raises(ValueError, match="no linear layer"):
            LoRAConfig(2, 2, (bad,)).layers(2)
    for rank, alpha in ((0, 1), (2, 0), (2, math.inf), (1.5, 1)):
        with pytest.raises(ValueError):
            LoRAConfig(rank, alpha)


def test_a_new_lora_model_computes_the_frozen_model(backend):
    model = GPT(CFG, seed=4, dtype=np.float64)
    idx, _ = batch()
    before = model.forward(idx)
    model.add_lora(LoRAConfig(4, 8, ALL), seed=7)
    np.testing.assert_array_equal(model.forward(idx), before)  # B = 0: exactly the same
    for name, a in model.adapters.items():
        if name.endswith("lora_B"):
            assert not a.any(), name
        else:  # PEFT's (torch's kaiming-uniform) A: uniform in +-1/sqrt(in)
            bound = 1 / math.sqrt(a.shape[0])
            assert bound * 0.8 < np.abs(a).max() <= bound, name
            assert abs(a.mean()) < 0.2 * bound, name
    assert set(model.grads) == set(model.adapters)  # no gradient buffer for any frozen weight
    assert model.trainable is model.adapters
    assert model.n_params == model.params.flat.size + model.adapters.flat.size


def test_merge_gives_the_same_logits(backend):
    model = lora_model(targets=("c_proj", "c_fc"))  # c_proj: both of each block's
    idx, _ = batch()
    expected = model.forward(idx)
    W = model.params["h.1.mlp.c_proj.weight"].copy()
    A, B = model.adapters["h.1.mlp.c_proj.lora_A"].copy(), model.adapters["h.1.mlp.c_proj.lora_B"].copy()
    model.merge_lora()
    np.testing.assert_allclose(model.params["h.1.mlp.c_proj.weight"], W + 5.0 / 3 * A @ B, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(model.forward(idx), expected, rtol=1e-11, atol=1e-12)
    assert model.lora is None and set(model.grads) == set(model.params)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        model.merge_lora()


def test_a_lora_model_is_merged_before_it_is_quantized():
    model = lora_model(dtype=np.float32)
    with pytest.raises(ValueError, match="merge_lora"):
        model.quantize("int8")
    with pytest.raises(ValueError, match="add_lora: this model has LoRA adapters"):
        model.add_lora(LoRAConfig(2, 2))
    idx, _ = batch()
    expected = model.forward(idx)
    np.testing.assert_allclose(model.merge_lora().quantize("int8").forward(idx), expected, rtol=0.05, atol=0.05)


def test_adapter_gradients_match_autograd_float64(backend):
    """Every adapter's gradient equals PyTorch autograd's on the same computation: transformers'
    GPT-2 with x @ W + b + (alpha / R) (x @ A) @ B added by hooks on the targeted Conv1D layers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = lora_model()
    idx, targets = batch(seed=3)
    targets[1, :4] = -1  # not scored
    config = transformers.GPT2Config(
        vocab_size=CFG.vocab_size, n_positions=CFG.n_ctx, n_embd=CFG.n_embd, n_head=CFG.n_head, n_layer=CFG.n_layer,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    ref = transformers.GPT2LMHeadModel(config).to(torch.float64).eval()
    ref.load_state_dict({"transformer." + n: torch.tensor(p) for n, p in model.params.items()}, strict=False)
    ref.requires_grad_(False)
    adapters = {n: torch.tensor(a, requires_grad=True) for n, a in model.adapters.items()}
    scale = model.lora.scale
    for layer in model.lora.layers(CFG.n_layer):
        A, B = adapters[layer + ".lora_A"], adapters[layer + ".lora_B"]
        module = ref.transformer.get_submodule(layer)
        module.register_forward_hook(lambda mod, inp, out, A=A, B=B: out + scale * (inp[0] @ A) @ B)
    logits = ref(torch.tensor(idx)).logits
    ref_loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, CFG.vocab_size), torch.tensor(targets).reshape(-1), ignore_index=-1
    )
    ref_loss.backward()
    loss, grads = model.loss_and_grads(idx, targets)
    assert abs(loss - ref_loss.item()) <= 1e-10 * ref_loss.item()
    assert set(grads) == set(adapters) and len(grads) == 2 * 4 * 2  # A, B of 4 layers (c_proj is 2) x 2 blocks
    for name, g in grads.items():
        expected = adapters[name].grad.numpy()
        err = np.linalg.norm(g - expected) / np.linalg.norm(expected)
        assert err <= 1e-8, (name, err)


@pytest.mark.parametrize("cores", [2, 3])
def test_lora_shards_add_up_to_the_batch(cores, monkeypatch):
    idx, targets = batch(B=5)
    monkeypatch.setattr(model_module, "SHARD_FLOPS", 1.0)  # a tiny model would run in one shard
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    loss1, grads1 = lora_model().loss_and_grads(idx, targets)
    whole = grads1.flat.copy()
    monkeypatch.setattr(parallel, "cores", lambda: cores)
    model = lora_model()
    for _ in range(2):  # the second time the replicas' buffers are reused, not summed
        loss, grads = model.loss_and_grads(idx, targets)
        assert len(model._replicas) == cores
        assert loss == pytest.approx(loss1, rel=1e-13)
        np.testing.assert_allclose(grads.flat, whole, rtol=1e-11, atol=1e-15)


def test_a_lora_step_allocates_no_large_arrays(backend):
    """After the first step, the adapters' products reuse their arrays: a LoRA step allocates no
    (B*T, out) or (B*T, in) array, as a full one allocates none."""
    cfg = GPTConfig(vocab_size=29, n_ctx=64, n_embd=64, n_head=4, n_layer=2)
    model = GPT(cfg, seed=1).add_lora(LoRAConfig(4, 8.0, ALL), seed=1)
    peak, kept = step_allocations(model, AdamW(model.trainable, lr=1e-3), *batch(cfg, B=4, T=64))
    smallest_product = 4 * 64 * 64 * 4  # x @ A @ B of c_proj: a (B*T, C) float32 array
    if backend is not fallback:  # (NumPy's own temporaries: see test_model.py's twin)
        assert peak < 2 * smallest_product, peak
    assert kept < 64 * 1024  # nothing kept between steps


def test_training_moves_only_the_adapters_and_lowers_the_loss(backend):
    model = lora_model(targets=("c_attn", "c_fc"), dtype=np.float32, rank=4, alpha=4)
    model.params.flat[: model.params.n_decay] *= 10  # weights far from GPT-2's small initial ones
    frozen = model.params.flat.copy()
    opt = AdamW(model.trainable, lr=3e-2, weight_decay=0.0)
    assert sum(m.size for m in opt.m + opt.v) == 2 * model.adapters.flat.size  # moments for the adapters alone
    idx, targets = batch(B=4, T=12, seed=5)
    first = model.loss(idx, targets)
    for _ in range(40):
        _, grads = model.loss_and_grads(idx, targets)
        opt.step(grads)
    np.testing.assert_array_equal(model.params.flat, frozen)
    assert model.loss(idx, targets) < 0.6 * first


def test_a_lora_model_generates_as_its_merged_twin(backend):
    model = lora_model(dtype=np.float32)
    prompt = np.array([[1, 2, 3]])
    tokens = model.generate(prompt, 8)
    np.testing.assert_array_equal(model.merge_lora().generate(prompt, 8), tokens)


# PEFT's files ------------------------------------------------------------------------------------


@pytest.fixture
def base(tmp_path):
    """A tiny character-level model directory (weights moved off their initial values)."""
    return char_model_dir(tmp_path / "base", "the quick brown fox jumps over the lazy dog\n", jitter=0.1, n_ctx=16,
                          n_embd=16, n_head=2, n_layer=2)  # fmt: skip


def test_adapters_save_and_load_back(tmp_path, base, backend):
    model = GPT.from_pretrained(base).add_lora(LoRAConfig(2, 4.0, ("c_attn", "mlp.c_proj"), str(base)))
    model.adapters.flat[...] = np.random.default_rng(0).normal(0, 0.1, model.adapters.flat.size)
    out = model.save_pretrained(tmp_path / "adapters")
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 4.0 and config["fan_in_fan_out"] is True
    assert config["target_modules"] == ["c_attn", "mlp.c_proj"] and config["base_model_name_or_path"] == str(base)
    stored = load_file(out / "adapter_model.safetensors")
    key = "base_model.model.transformer.h.1.mlp.c_proj.lora_A.weight"
    np.testing.assert_array_equal(stored[key], model.adapters["h.1.mlp.c_proj.lora_A"].T)  # PEFT's (R, in)
    assert stored[key.replace("lora_A", "lora_B")].shape == (16, 2)  # (out, R)
    again = GPT.from_pretrained(out)
    assert again.lora == model.lora
    np.testing.assert_array_equal(again.adapters.flat, model.adapters.flat)
    np.testing.assert_array_equal(again.params.flat, model.params.flat)
    idx = np.array([[1, 5, 2, 7]])
    np.testing.assert_array_equal(again.forward(idx), model.forward(idx))


def test_peft_loads_our_adapters_and_we_load_peft(tmp_path, base):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    ours = GPT.from_pretrained(base).add_lora(LoRAConfig(4, 6.0, ALL, str(base)), seed=2)
    ours.adapters.flat[...] = np.random.default_rng(1).normal(0, 0.1, ours.adapters.flat.size)
    ours.save_pretrained(tmp_path / "ours")
    idx = np.random.default_rng(0).integers(0, ours.config.vocab_size, (2, 12))
    expected = ours.forward(idx)
    hf = transformers.GPT2LMHeadModel.from_pretrained(base)
    theirs = peft.PeftModel.from_pretrained(hf, tmp_path / "ours").eval()
    with torch.no_grad():
        got = theirs(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(expected - GPT.from_pretrained(base).forward(idx)).max() > 1e-2  # the adapters count

    # and back: adapters that PEFT made and saved (random B, so they change the output)
    hf = transformers.GPT2LMHeadModel.from_pretrained(base)
    made = peft.get_peft_model(
        hf, peft.LoraConfig(r=3, lora_alpha=5, target_modules=["c_fc", "c_attn"], init_lora_weights=False,
                            fan_in_fan_out=True)
    ).eval()  # fmt: skip
    made.save_pretrained(tmp_path / "peft")
    with torch.no_grad():
        expected = made(torch.tensor(idx)).logits.numpy()
    loaded = GPT.from_pretrained(tmp_path / "peft")
    assert loaded.lora.rank == 3 and loaded.lora.alpha == 5
    np.testing.assert_allclose(loaded.forward(idx), expected, rtol=1e-4, atol=1e-4)


# the commands ------------------------------------------------------------------------------------


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    rng = np.random.default_rng(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
    path.write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(300)) + "\n", encoding="utf-8")
    return path


def train(*args):
    proc = run_cli("train", *args)
    assert proc.returncode == 0, proc.stderr
    return proc


LORA_RUN = ["--batch-size", "4", "--block-size", "16", "--lr", "3e-2", "--min-lr", "3e-3", "--warmup-steps", "2",
            "--lora-rank", "4", "--lora-targets", "c_attn,c_fc", "--no-progress", "--eval-steps", "2"]  # fmt: skip


def test_a_lora_run_learns_saves_adapters_and_loads_everywhere(tmp_path, base, text_file):
    out = tmp_path / "run"
    proc = train("--data", text_file, "--init-from", base, "--out", out, "--max-steps", "40", "--eval-interval", "20",
                 *LORA_RUN)  # fmt: skip
    assert "of them trained: LoRA adapters of rank 4, alpha 4, on c_attn, c_fc" in proc.stdout
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" not in names and "config.json" not in names
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "train_state"} <= set(names)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base.resolve())
    val = [float(r["val_loss"]) for r in csv.DictReader((out / "log.csv").open()) if r["val_loss"]]
    assert len(val) == 3 and val[2] < val[0] - 0.3, val
    model = GPT.from_pretrained(out)
    np.testing.assert_array_equal(model.params.flat, GPT.from_pretrained(base).params.flat)  # frozen
    assert np.abs(model.adapters.flat).max() > 0

    # generate, eval load base + adapters; merge writes a plain model that computes the same
    merged = tmp_path / "merged"
    proc = run_cli("merge", "--model", out, "--out", merged)
    assert proc.returncode == 0, proc.stderr
    assert not lora.is_adapter_directory(merged)
    idx = np.array([[3, 1, 4, 1, 5, 9, 2, 6]])
    np.testing.assert_allclose(GPT.from_pretrained(merged).forward(idx), model.forward(idx), rtol=1e-5, atol=1e-5)
    for directory in (out, merged):
        proc = run_cli("generate", "--model", directory, "--prompt", "the quick", "--max-new-tokens", "12")
        assert proc.returncode == 0, proc.stderr
        proc_eval = run_cli("eval", "--model", directory, "--data", text_file, "--json")
        assert proc_eval.returncode == 0, proc_eval.stderr
        if directory == out:
            text, loss = proc.stdout, json.loads(proc_eval.stdout)["loss"]
    assert proc.stdout == text
    assert json.loads(proc_eval.stdout)["loss"] == pytest.approx(loss, rel=1e-5)
    assert loss < val[0] - 0.3  # the adapters are applied, not the bare base model
    proc = run_cli("generate", "--model", out, "--prompt", "the quick", "--quantize", "int8", "--max-new-tokens", "4")
    assert proc.returncode == 0 and proc.stdout.startswith("the quick"), proc.stderr
    chats = [run_cli("chat", "--model", d, "--temperature", "0", input_text="the quick\n") for d in (out, merged)]
    assert chats[0].returncode == 0 and "Generated text: " in chats[0].stdout, chats[0].stderr
    assert chats[0].stdout == chats[1].stdout
    assert explored_probs(out) == pytest.approx(explored_probs(merged), rel=1e-4, abs=1e-6)


def explored_probs(directory) -> list[float]:
    """The probability of each next token of one prompt, as `explore --model DIRECTORY` serves it."""
    import http.client

    with explore_process(directory) as (address, _):
        conn = http.client.HTTPConnection(*address, timeout=30)
        conn.request("POST", "/api/analyze", body=json.dumps({"prompt": "the quick"}),
                     headers={"Content-Type": "application/json"})  # fmt: skip
        response = conn.getresponse()
        answer = json.loads(response.read())
        conn.close()
        assert response.status == 200, answer
    return [float(p["prob_of_next"]) for p in answer["positions"][:-1]]  # each token's probability


def test_merged_model_loads_in_transformers(tmp_path, base):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = GPT.from_pretrained(base).add_lora(LoRAConfig(2, 3.0, ALL, str(base)))
    model.adapters.flat[...] = np.random.default_rng(3).normal(0, 0.1, model.adapters.flat.size)
    model.save_pretrained(tmp_path / "adapters")
    (tmp_path / "adapters" / "tokenizer.json").write_bytes((base / "tokenizer.json").read_bytes())
    proc = run_cli("merge", "--model", tmp_path / "adapters", "--out", tmp_path / "merged")
    assert proc.returncode == 0, proc.stderr
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "merged").to(torch.float64).eval()
    idx = np.array([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        got = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(got, model.forward(idx), rtol=1e-4, atol=1e-4)


def test_resume_continues_a_lora_run_bit_for_bit(tmp_path, base, text_file):
    common = ["--data", text_file, *LORA_RUN, "--lr-decay-steps", "16", "--eval-interval", "6", "--dropout", "0.1",
              "--seed", "5"]  # fmt: skip
    once, twice = tmp_path / "once", tmp_path / "twice"
    train(*common, "--init-from", base, "--out", once, "--max-steps", "16")
    train(*common, "--init-from", base, "--out", twice, "--max-steps", "8")
    half = load_file(twice / "adapter_model.safetensors")
    proc = train("--data", text_file, "--out", twice, "--max-steps", "16", "--resume")  # the saved flags come back
    assert "resuming from step 8" in proc.stdout
    a, b = load_file(once / "adapter_model.safetensors"), load_file(twice / "adapter_model.safetensors")
    assert any(not np.array_equal(half[k], b[k]) for k in b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    state_a, state_b = load_file(once / "train_state"), load_file(twice / "train_state")
    assert state_a["params"].size == GPT.from_pretrained(once).adapters.flat.size  # the adapters, not the model
    for name in state_a:
        np.testing.assert_array_equal(state_a[name], state_b[name], err_msg=name)
    proc = run_cli("train", "--data", text_file, "--out", twice, "--max-steps", "20", "--resume", "--lora-rank", "8")
    assert_one_line_error(proc, "--lora-rank 4, not 8")


def test_bad_lora_input_is_one_line(tmp_path, base, text_file):
    run = ["train", "--data", text_file, "--out", tmp_path / "run", "--max-steps", "2"]
    assert_one_line_error(run_cli(*run, "--init-from", base, "--lora-rank", "0"), "--lora-rank", "positive integer")
    assert_one_line_error(run_cli(*run, "--init-from", base, "--lora-rank", "2", "--lora-alpha", "-1"), "--lora-alpha")
    assert_one_line_error(
        run_cli(*run, "--init-from", base, "--lora-rank", "2", "--lora-targets", "c_attn,wte"), "no linear layer 'wte'"
    )
    assert_one_line_error(run_cli(*run, "--lora-rank", "2"), "--init-from")
    assert_one_line_error(run_cli(*run, "--init-from", base, "--lora-alpha", "2"), "--lora-alpha needs --lora-rank")
    assert not (tmp_path / "run").exists()
    # a full fine-tune does not become a LoRA run on --resume
    full = ["train", "--data", text_file, "--out", tmp_path / "full", "--block-size", "16", "--no-progress"]
    assert run_cli(*full, "--init-from", base, "--max-steps", "2", "--eval-interval", "2").returncode == 0
    proc = run_cli(*full, "--max-steps", "4", "--resume", "--lora-rank", "2")
    assert_one_line_error(proc, "was trained without --lora-rank, not 2")
    # merge: a directory without adapters, or onto itself
    assert_one_line_error(run_cli("merge", "--model", base, "--out", tmp_path / "m"), "holds no LoRA adapters")
    adapters = (
        GPT.from_pretrained(base)
        .add_lora(LoRAConfig(2, 2, ("c_attn",), str(base)))
        .save_pretrained(tmp_path / "adapters")
    )
    assert_one_line_error(run_cli("merge", "--model", adapters, "--out", adapters), "another")
    # LoRA on top of adapters: merge first
    proc = run_cli(*run, "--init-from", adapters, "--lora-rank", "2")
    assert_one_line_error(proc, "holds LoRA adapters; merge them")
    # damaged adapter files
    config = json.loads((adapters / "adapter_config.json").read_text())
    for change, fragment in (
        ({"r": 0}, "rank"),
        ({"use_dora": True}, "use_dora"),
        ({"target_modules": "c_attn"}, "target_modules"),
        ({"target_modules": ["nope"]}, "no linear layer"),
        ({"base_model_name_or_path": None}, "base_model_name_or_path"),
        ({"base_model_name_or_path": str(tmp_path / "missing")}, "missing"),
        ({"r": 3}, "expected float"),
    ):
        (adapters / "adapter_config.json").write_text(json.dumps({**config, **change}))
        proc = run_cli("generate", "--model", adapters, "--prompt", "the")
        assert_one_line_error(proc, fragment)
    (adapters / "adapter_config.json").write_text("{not json")
    assert_one_line_error(run_cli("generate", "--model", adapters, "--prompt", "the"), "adapter_config.json")
    (adapters / "adapter_config.json").write_text(json.dumps(config))
    tensors = load_file(adapters / "adapter_model.safetensors")
    tensors["base_model.model.transformer.h.0.ln_1.lora_A.weight"] = np.zeros((2, 16), np.float32)
    save_file(tensors, adapters / "adapter_model.safetensors")
    assert_one_line_error(run_cli("generate", "--model", adapters, "--prompt", "the"), "does not describe")
    (adapters / "adapter_model.safetensors").write_bytes(b"\x00" * 40)
    assert_one_line_error(run_cli("generate", "--model", adapters, "--prompt", "the"), "adapter_model.safetensors")


def test_torch_ddp_asks_for_a_merged_model(tmp_path, base, text_file):
    """The road to PyTorch continues a whole model: adapters are merged first, and it says so."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from simple_llm import torch_ddp

    adapters = (
        GPT.from_pretrained(base)
        .add_lora(LoRAConfig(2, 2, ("c_attn",), str(base)))
        .save_pretrained(tmp_path / "adapters")
    )
    with pytest.raises(SystemExit, match="holds LoRA adapters; merge them into a model first"):
        torch_ddp.main(["--init-from", str(adapters), "--data", str(text_file), "--out", str(tmp_path / "out")])
