"""The compiled decode step (src/_decode.pxi) against the model's Python layers, which stay the reference:
logits within float32 tolerance and the same greedy tokens, for float32 and int8 models, one and two
threads, batches of one and several rows, past n_ctx (the sliding context), and beside other
generations in other threads. CI runs this file at every SIMD level."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from support import compiled_kernels

from simple_llm import GPT, GPTConfig, kernels
from simple_llm.activations import KVCache

# C = 48 is not a multiple of 32 (a thread's share of the columns ends in a short block), V = 77 neither
CONFIGS = {
    "tiny": GPTConfig(vocab_size=77, n_ctx=24, n_embd=48, n_head=3, n_layer=2),
    "char": GPTConfig(vocab_size=65, n_ctx=64, n_embd=128, n_head=4, n_layer=3),
}


def sharp_model(cfg: GPTConfig, seed: int = 0) -> GPT:
    """A random model whose logits are spread out (weights x4), so that greedy choices are not near-ties."""
    model = GPT(cfg, seed=seed)
    for w in model.params.values():
        if w.ndim == 2:
            w *= 4.0
    return model


def python_layers(model: GPT) -> GPT:
    """The same model (the very same weights) with its compiled decode step turned off."""
    twin = object.__new__(GPT)
    twin.__dict__.update(model.__dict__)
    twin._build_layers()
    twin._decoder = None
    return twin


def step_both(model, tokens, threads):
    """Feed tokens (B, T) one position at a time through the compiled step and through the layers;
    return both sequences of logits."""
    compiled_kernels()
    reference = python_layers(model)
    assert model._decode_step() is not None
    B, T = tokens.shape
    caches = [KVCache(model.config, B, np.float32) for _ in range(2)]
    out = [[], []]
    for t in range(T):
        logits = np.empty((B, model.config.vocab_size), np.float32)
        model._decode_step().step(logits, np.ascontiguousarray(tokens[:, t]), caches[0].layers, t, threads)
        out[0].append(logits)
        out[1].append(reference.next_logits(tokens[:, t : t + 1], caches[1]))
    return np.stack(out[0], 1), np.stack(out[1], 1), caches


def assert_close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("size", CONFIGS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("int8", [False, True])
def test_decode_step_equals_the_python_layers(size, threads, B, int8):
    cfg = CONFIGS[size]
    model = sharp_model(cfg)
    model = model.quantize("int8") if int8 else model
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (B, cfg.n_ctx))
    got, want, caches = step_both(model, tokens, threads)
    assert_close(got, want)
    assert (got.argmax(-1) == want.argmax(-1)).all()
    for a, b in zip(caches[0].layers, caches[1].layers):  # the cache itself: q, k and v of every position
        assert_close(a, b)


def test_greedy_generation_is_the_same_past_n_ctx():
    """Longer than the context: the context slides and the cache is rebuilt, several times."""
    compiled_kernels()
    cfg = CONFIGS["tiny"]
    for model in (sharp_model(cfg, 3), sharp_model(cfg, 3).quantize("int8")):
        prompt = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 5))
        got = model.generate(prompt, 3 * cfg.n_ctx)
        want = python_layers(model).generate(prompt, 3 * cfg.n_ctx)
        assert got.shape == (2, 5 + 3 * cfg.n_ctx)
        np.testing.assert_array_equal(got, want)


def test_generations_in_threads_do_not_disturb_each_other():
    compiled_kernels()
    model = sharp_model(CONFIGS["char"], 4)
    prompts = [np.random.default_rng(k).integers(0, 65, (1, 3 + k)) for k in range(4)]
    alone = [model.generate(p, 40) for p in prompts]
    together: list = [None] * len(prompts)

    def run(k):
        together[k] = model.generate(prompts[k], 40)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


def test_a_weight_written_in_place_is_seen_by_the_next_step():
    compiled_kernels()
    model = sharp_model(CONFIGS["tiny"])
    before = model.generate([[1, 2]], 4)  # makes the decode step
    p = model.params  # ln_f's output becomes (1, 0, 0...) and the logits wte[:, 0]: token 7 wins
    p["ln_f.weight"][:], p["ln_f.bias"][:], p["ln_f.bias"][0] = 0.0, 0.0, 1.0
    p["wte.weight"][:, 0], p["wte.weight"][7, 0] = 0.0, 50.0
    after = model.generate([[1, 2]], 4)
    assert not (before[0, 2:] == 7).all()
    np.testing.assert_array_equal(after[0, 2:], 7)


def test_the_fallback_has_no_decode_step_and_the_compiled_backend_has_one():
    model = GPT(CONFIGS["tiny"])
    if kernels.BACKEND == "numpy":
        assert model._decode_step() is None
    else:
        assert model._decode_step() is not None
        assert GPT(CONFIGS["tiny"], dtype=np.float64)._decode_step() is None  # float64: the layers


def test_decode_step_checks_its_arguments():
    compiled_kernels()
    model = GPT(CONFIGS["tiny"])
    step, cfg = model._decode_step(), model.config
    cache = KVCache(cfg, 2, np.float32)
    logits = np.empty((2, cfg.vocab_size), np.float32)
    ok = dict(logits=logits, tokens=np.array([1, 2]), caches=cache.layers, pos=0)
    step.step(**ok)
    bad = [
        dict(tokens=np.array([1, cfg.vocab_size])),  # a token outside the vocabulary
        dict(tokens=np.array([1, -1])),
        dict(tokens=np.array([1, 2, 3])),  # three rows, a cache of two
        dict(pos=cfg.n_ctx),  # past the cache
        dict(pos=-1),
        dict(caches=cache.layers[:1]),  # a layer short
        dict(caches=[np.zeros(c.shape) for c in cache.layers]),  # float64
        dict(logits=np.empty((2, cfg.vocab_size + 1), np.float32)),
        dict(logits=cache.layers[0][:, 0, : cfg.vocab_size]),  # not contiguous
    ]
    for change in bad:
        with pytest.raises(ValueError):
            step.step(**(ok | change))
    short = KVCache(cfg, 2, np.float32, capacity=4)
    with pytest.raises(ValueError, match="pos"):
        step.step(logits, np.array([1, 2]), short.layers, 4)
