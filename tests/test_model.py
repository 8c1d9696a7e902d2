"""The model: every parameter's gradient against finite differences, the API contract, generation with
and without the key/value cache, buffers that do not grow, and the optimizers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from support import numgrad, rel_err, step_allocations

from simple_llm import GPT, SGD, AdamW, GPTConfig, clip_grad_norm, fallback, lr_at
from simple_llm import model as model_module
from simple_llm.params import gpt2_shapes

TINY = dict(vocab_size=11, n_ctx=8, n_embd=8, n_head=2, n_layer=2)


def batch(cfg, B=2, T=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))


def perturb(model, seed=1, scale=0.3):
    """Move every parameter away from its initial value, so no gradient is trivially zero."""
    model.params.flat[...] += np.random.default_rng(seed).standard_normal(model.params.flat.size) * scale


def test_params_have_gpt2_names_and_shapes():
    cfg = GPTConfig(**TINY)
    model = GPT(cfg)
    assert {k: v.shape for k, v in model.params.items()} == gpt2_shapes(11, 8, 8, 2)
    assert "lm_head.weight" not in model.params  # the output layer is wte, tied
    assert model.params["h.1.attn.c_attn.weight"].shape == (8, 24)
    assert model.params["h.0.mlp.c_proj.weight"].shape == (32, 8)
    assert model.n_params == sum(v.size for v in model.params.values())


def test_gpt2_initialisation():
    model = GPT(GPTConfig(vocab_size=500, n_ctx=64, n_embd=64, n_head=4, n_layer=3), seed=0)
    p = model.params
    assert abs(p["wte.weight"].std() - 0.02) < 0.002
    assert abs(p["h.0.attn.c_proj.weight"].std() - 0.02 / math.sqrt(6)) < 0.001
    assert np.all(p["h.2.ln_1.weight"] == 1.0) and np.all(p["h.2.mlp.c_fc.bias"] == 0.0)


def test_writing_params_in_place_changes_the_model(backend):
    model = GPT(GPTConfig(**TINY), dtype=np.float64)
    idx, _ = batch(model.config)
    before = model.forward(idx)
    model.params["ln_f.bias"][...] = 1.0
    assert not np.allclose(model.forward(idx), before)
    model.params["ln_f.bias"] = np.zeros(8)  # assignment copies into the live buffer
    np.testing.assert_allclose(model.forward(idx), before)
    with pytest.raises(ValueError, match="shape"):
        model.params["ln_f.bias"] = np.zeros(3)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_every_gradient_matches_finite_differences(backend, dropout):
    """float64, every entry of every parameter tensor: relative error below 1e-6."""
    cfg = GPTConfig(**TINY, dropout=dropout)
    model = GPT(cfg, seed=0, dtype=np.float64)
    perturb(model)
    idx, targets = batch(cfg)
    targets[0, 1] = -1  # an unscored position must not contribute
    state = model.rng.bit_generator.state

    def loss():
        model.rng.bit_generator.state = state  # the same dropout masks every time
        return model.loss_and_grads(idx, targets)[0]

    loss()
    grads = {k: v.copy() for k, v in model.grads.items()}
    for name, p in model.params.items():
        err = rel_err(grads[name], numgrad(loss, p, eps=1e-5))
        assert err < 1e-6, (name, err)
        assert np.linalg.norm(grads[name]) > 0, name  # every weight is trained


def test_loss_matches_forward_and_eval_has_no_dropout(backend):
    cfg = GPTConfig(**{**TINY, "n_layer": 1}, dropout=0.5)
    model = GPT(cfg, dtype=np.float64)
    idx, targets = batch(cfg)
    logits = model.forward(idx)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, targets[..., None], -1).mean()
    assert model.loss(idx, targets) == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(model.forward(idx), logits)  # evaluation is deterministic
    assert model.loss_and_grads(idx, targets)[0] != pytest.approx(expected, rel=1e-6)  # dropout on


def test_backends_agree_on_forward_and_grads(dtype, monkeypatch):
    from support import compiled_kernels

    from simple_llm import fallback, kernels

    cfg = GPTConfig(vocab_size=50, n_ctx=16, n_embd=32, n_head=4, n_layer=2)
    idx, targets = batch(cfg, B=3, T=16)
    results = []
    for module in (fallback, compiled_kernels()):
        monkeypatch.setattr(kernels, "impl", module)
        model = GPT(cfg, seed=3, dtype=dtype)
        loss, grads = model.loss_and_grads(idx, targets)
        results.append((model.forward(idx), loss, grads.flat.copy()))
    (l1, s1, g1), (l2, s2, g2) = results
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(l2, l1, **tol)
    assert s2 == pytest.approx(s1, rel=tol["rtol"])
    np.testing.assert_allclose(g2, g1, **tol)


def test_float32_and_float64_models_agree():
    cfg = GPTConfig(**TINY)
    idx, targets = batch(cfg)
    m32, m64 = GPT(cfg, seed=5, dtype=np.float32), GPT(cfg, seed=5, dtype=np.float64)
    np.testing.assert_allclose(m32.params.flat, m64.params.flat, rtol=1e-6)
    assert m32.loss(idx, targets) == pytest.approx(m64.loss(idx, targets), rel=1e-5)
    assert m32.grads.flat.dtype == np.float32 and m32.loss_and_grads(idx, targets)[1]["wte.weight"].dtype == np.float32


def test_training_memorises_a_tiny_corpus(backend):
    """AdamW on one repeated batch: the loss falls from ~log(V) to near zero."""
    cfg = GPTConfig(vocab_size=20, n_ctx=12, n_embd=32, n_head=4, n_layer=2)
    model = GPT(cfg, seed=0)
    rng = np.random.default_rng(0)
    seq = rng.integers(0, 20, (4, 13))
    opt = AdamW(model.params, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for _ in range(150):
        loss, grads = model.loss_and_grads(seq[:, :-1], seq[:, 1:])
        opt.step(grads)
        losses.append(loss)
    assert losses[0] == pytest.approx(math.log(20), abs=0.3)
    assert losses[-1] < 0.05, losses[-1]
    assert (model.generate(seq[:, :1], 11)[:, 1:] == seq[:, 1:12]).all()  # recites what it learned


def test_sgd_lowers_the_loss(backend):
    cfg = GPTConfig(**TINY)
    model = GPT(cfg, seed=0)
    idx, targets = batch(cfg)
    opt = SGD(model.params, lr=0.5)
    first = model.loss(idx, targets)
    for _ in range(30):
        opt.step(model.loss_and_grads(idx, targets)[1])
    assert model.loss(idx, targets) < first - 0.3


def test_adamw_decays_2d_tensors_only():
    model = GPT(GPTConfig(**TINY), dtype=np.float64)
    before = {k: v.copy() for k, v in model.params.items()}
    zero = {k: np.zeros_like(v) for k, v in model.params.items()}  # a plain dict works too
    opt = AdamW(model.params, lr=0.1, weight_decay=0.5)
    opt.step(zero)
    for name, p in model.params.items():
        factor = 1 - 0.1 * 0.5 if p.ndim == 2 else 1.0
        np.testing.assert_allclose(p, before[name] * factor, rtol=1e-14, err_msg=name)


def test_adamw_over_a_plain_dict_equals_over_parameters(backend):
    cfg = GPTConfig(**TINY)
    idx, targets = batch(cfg)
    a, b = GPT(cfg, seed=1, dtype=np.float64), GPT(cfg, seed=1, dtype=np.float64)
    plain = {k: v.copy() for k, v in b.params.items()}
    opt_a = AdamW(a.params, lr=1e-2, weight_decay=0.1)
    opt_b = AdamW(plain, lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        _, g = a.loss_and_grads(idx, targets)
        opt_a.step(g)
        b.params.flat[...] = a.params.flat  # same weights, so same gradients for the plain dict
        opt_b.step({k: v.copy() for k, v in g.items()})
    for name in plain:
        np.testing.assert_allclose(plain[name], a.params[name], rtol=1e-12, err_msg=name)


def test_lr_schedule_warmup_cosine_floor():
    assert lr_at(0, 1.0, 0.1, 10, 100) == pytest.approx(1 / 11)
    assert lr_at(9, 1.0, 0.1, 10, 100) == pytest.approx(10 / 11)
    assert lr_at(10, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 0.1, 10, 100) == pytest.approx(0.55)  # halfway down the cosine
    assert lr_at(100, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    assert lr_at(500, 1.0, 0.1, 10, 100) == 0.1


def test_clip_grad_norm():
    g = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]])}
    assert clip_grad_norm(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(g["a"], [3 / (5 + 1e-6), 0.0])
    assert clip_grad_norm(g, 10.0) == pytest.approx(1.0, rel=1e-6)  # below the limit: unchanged
    np.testing.assert_allclose(g["b"], [[4 / (5 + 1e-6)]])


# generation ---------------------------------------------------------------------------------------


def test_generate_shape_and_prompt(backend):
    model = GPT(GPTConfig(**TINY), seed=2)
    idx = np.array([[1, 2, 3], [4, 5, 6]])
    out = model.generate(idx, max_new_tokens=4)
    assert out.shape == (2, 7)
    np.testing.assert_array_equal(out[:, :3], idx)


@pytest.mark.parametrize("prompt_len", [1, 3])
def test_cache_gives_the_same_greedy_tokens_and_logits(backend, prompt_len):
    """Past n_ctx too: the context slides in both paths."""
    model = GPT(GPTConfig(**TINY), seed=4, dtype=np.float64)
    perturb(model, scale=0.5)
    idx = np.random.default_rng(0).integers(0, 11, (2, prompt_len))
    with_cache = list(model.stream(idx, 14, use_cache=True))
    without = list(model.stream(idx, 14, use_cache=False))
    for a, b in zip(with_cache, without):
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.probs, b.probs, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("prompt_len", [6, 11])  # shorter and longer than n_ctx = 8
@pytest.mark.parametrize("use_cache", [True, False])
def test_past_n_ctx_each_step_sees_exactly_the_last_n_ctx_tokens(backend, use_cache, prompt_len):
    """The contract's crop: every step's distribution is that of a plain forward pass over the last
    n_ctx tokens of prompt + generated so far (not n_ctx - 1, not n_ctx + 1)."""
    model = GPT(GPTConfig(**TINY), seed=4, dtype=np.float64)
    perturb(model, scale=0.5)
    seq = np.random.default_rng(1).integers(0, 11, (2, prompt_len))
    for step in model.stream(seq, 12, use_cache=use_cache):
        logits = model.forward(seq[:, -TINY["n_ctx"] :])[:, -1]
        want = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(step.probs, want / want.sum(1, keepdims=True), rtol=1e-10, atol=1e-14)
        seq = np.concatenate([seq, step.tokens[:, None]], axis=1)
    assert seq.shape[1] == prompt_len + 12


def test_sampling_is_seeded_and_respects_top_k(backend):
    model = GPT(GPTConfig(**TINY), seed=4)
    perturb(model, scale=1.0)
    idx = np.array([[1, 2]])
    a = model.generate(idx, 6, temperature=1.0, seed=7)
    assert (a == model.generate(idx, 6, temperature=1.0, seed=7)).all()
    for step in model.stream(idx, 5, temperature=1.0, top_k=3, seed=1):
        assert np.count_nonzero(step.probs[0]) == 3
        assert step.probs[0, step.tokens[0]] > 0
        assert step.probs[0].sum() == pytest.approx(1.0)


def test_top_p_keeps_the_smallest_set_reaching_p():
    from simple_llm.sampling import Sampler

    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    probs, _ = Sampler(temperature=1.0, top_p=0.7)(logits)
    np.testing.assert_allclose(probs, [[0.5 / 0.8, 0.3 / 0.8, 0, 0]])  # 0.5 + 0.3 reaches 0.7
    probs, _ = Sampler(temperature=1.0, top_p=0.4)(logits)
    np.testing.assert_allclose(probs, [[1, 0, 0, 0]])


def test_stop_token_ends_generation():
    cfg = GPTConfig(vocab_size=5, n_ctx=8, n_embd=8, n_head=2, n_layer=1)
    model = GPT(cfg)
    model.params["wte.weight"][...] = 0.0
    model.params["wte.weight"][3, 0] = 1.0
    model.params["ln_f.weight"][...] = 0.0
    model.params["ln_f.bias"][...] = 0.0
    model.params["ln_f.bias"][0] = 5.0  # every position's logits favour token 3
    out = model.generate(np.array([[1], [2]]), max_new_tokens=6, stop_token=3)
    np.testing.assert_array_equal(out, [[1, 3], [2, 3]])


# validation and memory ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=30, n_head=4), "not divisible"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(vocab_size=-3), "vocab_size"),
        (dict(dropout=1.0), "dropout"),
    ],
)
def test_config_rejects_nonsense(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**TINY, **kwargs})


def test_model_rejects_bad_tokens():
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(ValueError, match="token ids in"):
        model.forward(np.array([[1, 11]]))
    with pytest.raises(ValueError, match="context is 8"):
        model.forward(np.zeros((1, 9), dtype=int))
    with pytest.raises(ValueError, match="2-D"):
        model.forward(np.array([1, 2]))
    with pytest.raises(ValueError, match="no scored position"):
        model.loss_and_grads(np.zeros((1, 3), dtype=int), np.full((1, 3), -1))


def test_training_step_allocates_no_large_arrays(backend):
    """After the first call, repeated loss_and_grads + AdamW steps allocate nothing big."""
    cfg = GPTConfig(vocab_size=65, n_ctx=64, n_embd=64, n_head=4, n_layer=2)
    model = GPT(cfg)
    opt = AdamW(model.params, lr=1e-3)
    peak, kept = step_allocations(model, opt, *batch(cfg, B=4, T=64))
    smallest_activation = 4 * 64 * 64 * 4  # one (B, T, C) float32 buffer
    if backend is not fallback:  # any compiled build (the fallback makes temporaries of its own)
        # what remains is NumPy's own: a product written into a strided view of the heads goes
        # through a temporary, half a (B, T, C) buffer per shard, and the shards run at once
        assert peak < 2 * smallest_activation, peak
    assert kept < 64 * 1024  # nothing kept between steps


# sampling and dropout, pinned exactly --------------------------------------------------------------


def test_dropout_keeps_each_unit_with_probability_1_minus_p_and_scales_it():
    from simple_llm.model import dropout_mask

    for p in (0.1, 0.3, 0.6):
        mask = np.empty(1_000_000, np.float64)
        dropout_mask(mask, p, np.random.default_rng(0))
        kept = mask != 0
        assert abs(kept.mean() - (1 - p)) < 0.003  # 6 standard deviations
        np.testing.assert_allclose(mask[kept], 1 / (1 - p), rtol=1e-12)  # the survivors are scaled up
        assert abs(mask.mean() - 1.0) < 0.005  # so that the expectation is unchanged


def test_temperature_divides_the_logits():
    from simple_llm.sampling import Sampler

    logits = np.array([[2.0, 1.0, -0.5, 0.0]])
    for t in (0.5, 2.0):
        probs, _ = Sampler(temperature=t)(logits)
        e = np.exp(logits / t)
        np.testing.assert_allclose(probs, e / e.sum(), rtol=1e-12)


@pytest.mark.parametrize("t", [1e-300, 1e-310, 5e-324])
def test_any_temperature_above_0_gives_finite_probabilities(t):
    """logits / 1e-310 overflow to inf and the softmax to NaN; the limit of a tiny temperature is greedy
    (shared among equal maxima)."""
    from simple_llm.sampling import Sampler

    probs, tokens = Sampler(temperature=t, seed=0)(np.array([[1.0, 3.0, 2.0], [5.0, -1.0, 5.0]]))
    np.testing.assert_array_equal(probs, [[0, 1, 0], [0.5, 0, 0.5]])
    assert tokens[0] == 1 and tokens[1] in (0, 2)
    probs, tokens = Sampler(temperature=t, top_k=2, top_p=0.9, seed=0)(np.array([[1.0, 3.0, 2.0]]))
    np.testing.assert_array_equal(probs, [[0, 1, 0]])


def test_top_p_keeps_tokens_until_the_sum_reaches_p_exactly():
    """probabilities 1/2, 1/4, 1/8, 1/8 (exact in binary): top_p 0.75 is reached by the first two,
    so the third is out; any p above 0.75 keeps the third."""
    from simple_llm.sampling import Sampler

    logits = np.log([[0.125, 0.5, 0.125, 0.25]])
    probs, _ = Sampler(temperature=1.0, top_p=0.75)(logits)
    np.testing.assert_allclose(probs, [[0, 2 / 3, 0, 1 / 3]], atol=1e-15)
    probs, _ = Sampler(temperature=1.0, top_p=0.76)(logits)
    np.testing.assert_allclose(probs, [[1 / 7, 4 / 7, 0, 2 / 7]], atol=1e-15)  # of equals, the first is kept
    probs, _ = Sampler(temperature=1.0, top_p=0.5)(logits)
    np.testing.assert_allclose(probs, [[0, 1, 0, 0]], atol=1e-15)


def test_top_k_keeps_the_k_most_likely_renormalised():
    from simple_llm.sampling import Sampler

    logits = np.log([[0.1, 0.4, 0.2, 0.3]])
    probs, _ = Sampler(temperature=1.0, top_k=2)(logits)
    np.testing.assert_allclose(probs, [[0, 4 / 7, 0, 3 / 7]], rtol=1e-12)


class FixedDraws:
    """Stands in for the sampler's generator: every u ~ U[0, 1) is the given value."""

    def __init__(self, u):
        self.u = u

    def random(self, shape):
        return np.full(shape, self.u)


@pytest.mark.parametrize("u, want", [(0.0, 2), (np.nextafter(1.0, 0.0), 4)])
def test_the_ends_of_u_never_draw_a_filtered_token(u, want):
    """Tokens 0, 1 and 3 are filtered out (probability 0): the inverse transform must skip them
    at u = 0 and at the largest u below 1, where the cumulative sums meet u exactly."""
    from simple_llm.sampling import Sampler

    sampler = Sampler(temperature=1.0, top_k=2, vocab_size=5)
    sampler.rng = FixedDraws(u)
    probs, tokens = sampler(np.array([[0.0, 0.0, 5.0, 0.0, 5.0]]))
    np.testing.assert_allclose(probs[0], [0, 0, 0.5, 0, 0.5])
    assert int(tokens[0]) == want


def test_sampled_tokens_follow_the_distribution():
    from simple_llm.sampling import Sampler

    logits = np.log(np.array([[0.1, 0.6, 0.3]]).repeat(20_000, axis=0))
    _, tokens = Sampler(temperature=1.0, seed=1)(logits)
    freq = np.bincount(tokens, minlength=3) / len(tokens)
    np.testing.assert_allclose(freq, [0.1, 0.6, 0.3], atol=0.015)


# each generation owns its cache ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lively():
    """A model whose greedy output changes token to token (random weights, scaled up)."""
    model = GPT(GPTConfig(vocab_size=11, n_ctx=24, n_embd=16, n_head=2, n_layer=2), seed=3)
    model.params.flat[...] *= 20
    return model


def test_interleaved_streams_and_foreign_calls_change_nothing(lively):
    prompt = np.array([[1, 2, 3]])
    alone = lively.generate(prompt, 12, temperature=0.8, seed=5)
    greedy_alone = lively.generate(prompt[:, :2], 12)
    a = lively.stream(prompt, 12, temperature=0.8, seed=5)
    b = lively.stream(prompt[:, :2], 12)
    got_a, got_b = [], []
    for i, (step_a, step_b) in enumerate(zip(a, b)):
        got_a.append(int(step_a.tokens[0]))
        got_b.append(int(step_b.tokens[0]))
        for T in range(1, 6 + i % 4):  # forward, loss and another generation on other shapes in between
            lively.forward(np.ones((2, T), dtype=np.int64))
        lively.loss(np.ones((1, 5), dtype=np.int64), np.ones((1, 5), dtype=np.int64))
        lively.generate(np.array([[4, 4]]), 3)
    assert got_a == alone[0, 3:].tolist()
    assert got_b == greedy_alone[0, 2:].tolist()
    assert len(set(got_a)) > 2  # the test means something only if the tokens vary


def test_threads_generating_at_once_get_their_own_tokens(lively):
    from concurrent.futures import ThreadPoolExecutor

    prompts = [np.array([[i % 11, (3 * i) % 11]]) for i in range(8)]
    expected = [lively.generate(p, 16, temperature=0.7, seed=i) for i, p in enumerate(prompts)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: lively.generate(prompts[i], 16, temperature=0.7, seed=i), range(8)))
        logits = list(pool.map(lambda T: lively.forward(np.full((1, T), 2)), range(1, 9)))
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)
    for T, got in zip(range(1, 9), logits):
        np.testing.assert_array_equal(got, lively.forward(np.full((1, T), 2)))


@pytest.mark.parametrize("u, want", [(0.0, 0), (0.66, 0), (0.67, 1), (0.999, 1)])
def test_the_draw_follows_the_filtered_distribution_inside(u, want):
    """top_p 0.75 over 1/2, 1/4, 1/8, 1/8 leaves 2/3, 1/3: u below 2/3 draws token 0, above it token 1
    (the unfiltered cumulative sums would put the boundary at 1/2)."""
    from simple_llm.sampling import Sampler

    sampler = Sampler(temperature=1.0, top_p=0.75)
    sampler.rng = FixedDraws(u)
    probs, tokens = sampler(np.log([[0.5, 0.25, 0.125, 0.125]]))
    np.testing.assert_allclose(probs[0], [2 / 3, 1 / 3, 0, 0], atol=1e-15)
    assert int(tokens[0]) == want


def test_every_parameter_starts_as_gpt2s():
    """N(0, 0.02) for every matrix and both embeddings, 0.02 / sqrt(2 L) for the two projections into
    the residual stream, zero biases, unit layer-norm gains: for every name, not a sample of them."""
    L = 3
    model = GPT(GPTConfig(vocab_size=700, n_ctx=300, n_embd=96, n_head=4, n_layer=L), seed=0)
    for name, p in model.params.items():
        if name.endswith(("ln_1.weight", "ln_2.weight")) or name == "ln_f.weight":
            assert np.all(p == 1.0), name
        elif p.ndim == 1:
            assert np.all(p == 0.0), name
        else:
            std = 0.02 / math.sqrt(2 * L) if name.endswith("c_proj.weight") else 0.02
            assert abs(p.std() / std - 1) < 0.03 and abs(p.mean()) < 0.1 * std, (name, p.std(), std)


def test_a_step_leaves_nothing_in_the_gradients_of_the_next(backend):
    """The backward zeroes only what it adds into (layer norms, wpe): whatever it skips must be written
    whole, so a step's gradients are those a fresh model gives on the same batch, to the bit."""
    cfg = GPTConfig(**TINY)
    first, second = batch(cfg, B=3, T=8, seed=1), batch(cfg, B=3, T=8, seed=2)
    model, fresh = GPT(cfg, seed=4, dtype=np.float64), GPT(cfg, seed=4, dtype=np.float64)
    model.loss_and_grads(*first)
    _, grads = model.loss_and_grads(*second)
    _, want = fresh.loss_and_grads(*second)
    for name in want:
        assert np.array_equal(grads[name], want[name]), name


@pytest.mark.parametrize("cores", [2, 3, 5])
def test_the_shards_gradients_add_up_to_the_batchs(cores, monkeypatch):
    """However many shards the batch is cut into, every shard's gradient counts once (float64)."""
    from simple_llm import parallel

    cfg = GPTConfig(vocab_size=13, n_ctx=6, n_embd=8, n_head=2, n_layer=2)
    idx, targets = batch(cfg, B=5, T=6)
    monkeypatch.setattr(model_module, "SHARD_FLOPS", 1.0)  # a tiny model would run in one shard
    monkeypatch.setattr(parallel, "cores", lambda: 1)
    loss1, grads1 = GPT(cfg, seed=2, dtype=np.float64).loss_and_grads(idx, targets)
    whole = grads1.flat.copy()
    monkeypatch.setattr(parallel, "cores", lambda: cores)
    model = GPT(cfg, seed=2, dtype=np.float64)
    loss, grads = model.loss_and_grads(idx, targets)
    assert len(parallel.shards(5)) == cores == len(model._replicas)
    assert loss == pytest.approx(loss1, rel=1e-13)
    np.testing.assert_allclose(grads.flat, whole, rtol=1e-11, atol=1e-15)
    loss, grads = model.loss_and_grads(idx, targets)  # again: the replicas' buffers are reused, not summed
    np.testing.assert_allclose(grads.flat, whole, rtol=1e-11, atol=1e-15)


def test_a_batch_runs_in_as_many_shards_as_its_work_pays_for(monkeypatch):
    """One shard per core, but at least SHARD_FLOPS of training work per block in each, and no more
    shards than rows: seed-tiny's step runs in one piece, shakespeare-cpu's and small's in two."""
    from simple_llm import parallel
    from simple_llm.bench import Bench
    from simple_llm.model import SHARD_FLOPS, shard_count

    monkeypatch.setattr(parallel, "cores", lambda: 2)
    for name, n in (("seed-tiny", 1), ("shakespeare-cpu", 2), ("small", 2)):
        b = Bench.named(name)
        assert shard_count(b.cfg, b.batch, b.cfg.n_ctx) == n, name
    cfg = GPTConfig(vocab_size=64, n_ctx=16, n_embd=64, n_head=4, n_layer=2)
    per_token = 6 * sum(math.prod(s) for s in cfg.shapes().values()) + 12 * 2 * 64 * 16
    rows = math.ceil(2 * 2 * SHARD_FLOPS / (16 * per_token))  # the fewest rows that pay for 2 shards
    assert shard_count(cfg, rows, 16) == 2 and shard_count(cfg, rows - 1, 16) == 1
    monkeypatch.setattr(parallel, "cores", lambda: 8)
    assert shard_count(cfg, 10_000, 16) == 8 and shard_count(cfg, 3, 16) == 1
    monkeypatch.setattr(model_module, "SHARD_FLOPS", 1.0)
    assert shard_count(cfg, 3, 16) == 3  # never more shards than rows


@pytest.mark.parametrize("n_embd, batch, limited", [(16, 4, True), (512, 1, False)])
def test_blas_keeps_its_threads_only_for_work_that_pays_for_them(monkeypatch, n_embd, batch, limited):
    """A batch too small for two shards runs with NumPy's BLAS on one thread; one large row (a GPT-2
    fine-tune at batch 1) keeps BLAS's own threads for its big products."""
    from contextlib import contextmanager

    from simple_llm import parallel
    from simple_llm.model import SHARD_FLOPS, block_flops

    entered = []

    @contextmanager
    def recording():
        entered.append(True)
        yield

    monkeypatch.setattr(parallel, "single_threaded_blas", recording)
    monkeypatch.setattr(parallel, "cores", lambda: 2)
    cfg = GPTConfig(vocab_size=50, n_ctx=64, n_embd=n_embd, n_head=4, n_layer=2)
    assert (block_flops(cfg, batch, 64) < SHARD_FLOPS) == limited
    idx = np.random.default_rng(0).integers(0, 50, (batch, 64))
    GPT(cfg).loss_and_grads(idx, idx)
    assert bool(entered) == limited
