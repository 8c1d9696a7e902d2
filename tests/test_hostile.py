"""Hostile inputs: fuzzed kernel arguments, damaged tokenizer and checkpoint files, absurd configs and
bad command lines. Each must end in one clear error of the documented kind, never a crash, a
traceback, or an absurd allocation."""

from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import assert_one_line_error, compiled_kernels, run_cli

from simple_llm import (
    GPT,
    BPETokenizer,
    CharTokenizer,
    GPTConfig,
    TokenizerError,
    WordTokenizer,
    fallback,
    kernels,
    load_tokenizer,
)
from simple_llm.checkpoint import CheckpointError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# kernels ----------------------------------------------------------------------------------------


def valid_args(name: str, dt, B=2, T=3, C=4, NH=2, V=5):
    """Correct arguments for each checked kernel at small sizes."""
    r = np.random.default_rng(0)

    def f(*shape):
        return r.standard_normal(shape).astype(dt)

    N = B * T
    idx = r.integers(0, V, (B, T))
    return {
        "encoder_forward": [f(B, T, C), idx, f(V, C), f(T, C)],
        "encoder_backward": [f(V, C), f(T, C), f(B, T, C), idx],
        "layernorm_forward": [f(N, C), f(N), f(N), f(N, C), f(C), f(C), 1e-5],
        "layernorm_backward": [f(N, C), f(C), f(C), f(N, C), f(N, C), f(C), f(N), np.abs(f(N))],
        "softmax_forward": [f(N, V), f(N, V)],
        "attention_softmax_forward": [f(B, NH, T, T), 0.5],
        "attention_softmax_backward": [f(B, NH, T, T), np.abs(f(B, NH, T, T)), 0.5],
        "gelu_forward": [f(N, C), f(N, C), f(N, C)],
        "gelu_backward": [f(N, C), f(N, C), np.tanh(f(N, C)), f(N, C)],
        "crossentropy_forward": [f(N), f(N), f(N, V), r.integers(-1, V, N)],
        "crossentropy_backward": [f(N, V), f(N, V), f(N), r.integers(-1, V, N), 0.1],
        "adamw_update": [f(20), f(20), f(20), np.abs(f(20)), 1e-3, 0.9, 0.95, 1e-8, 0.1, 1],
    }[name]


KERNELS = [
    "encoder_forward", "encoder_backward", "layernorm_forward", "layernorm_backward", "softmax_forward",
    "attention_softmax_forward", "attention_softmax_backward",
    "gelu_forward", "gelu_backward", "crossentropy_forward", "crossentropy_backward", "adamw_update",
]  # fmt: skip


def mutate(a, how: int, rng):
    """A damaged version of an argument: wrong shape, dtype, layout, type, or values."""
    if not isinstance(a, np.ndarray):
        return [None, "x", np.zeros(2), -1, 10**9][how % 5]
    return [
        lambda: a.reshape(-1),  # wrong number of dimensions
        lambda: np.concatenate([a.reshape(-1), a.reshape(-1)[:1]]).astype(a.dtype),  # wrong size
        lambda: a.astype(np.float16),  # unsupported dtype
        lambda: a.astype(np.float32 if a.dtype == np.float64 else np.float64),  # the other float
        lambda: np.asfortranarray(a.reshape(a.shape[0], -1)).reshape(a.shape) if a.ndim > 1 else a[::2],
        lambda: a.tolist(),  # not an array at all
        lambda: np.full_like(a, 10**6 if a.dtype.kind == "i" else np.nan),  # indices out of range / NaN
        lambda: np.broadcast_to(a.reshape(-1)[:1], a.shape),  # read-only view
        lambda: a[..., :0] if a.ndim else a,  # empty last axis
    ][how % 9]()


@FUZZ
@given(
    kernel=st.sampled_from(KERNELS),
    which=st.integers(0, 9),
    how=st.integers(0, 40),
    dt=st.sampled_from([np.float32, np.float64]),
)
def test_fuzzed_kernel_arguments_raise_value_error_or_run(backend, kernel, which, how, dt):
    args = valid_args(kernel, dt)
    args[which % len(args)] = mutate(args[which % len(args)], how, np.random.default_rng(how))
    try:
        getattr(kernels, kernel)(*args)
    except ValueError as exc:
        assert kernel in str(exc) or "n_head" in str(exc) or "step" in str(exc), str(exc)


GUARD = 8  # elements of sentinel before and after each array in its own buffer


def inconsistent(args: list, how: int, rng: np.random.Generator) -> tuple[list, list]:
    """Arguments of the right types and layouts that do not fit together: one axis one too long or
    short, an output overlapping another argument (exactly or shifted by one element), or a number
    out of its range. Returned as a recipe -- per argument (buffer, offset, shape) or a number -- and
    the buffers, each array with GUARD sentinels on both sides, so that both backends can be given
    the very same layout."""
    buffers, recipe = [], []
    for a in args:
        if isinstance(a, np.ndarray):
            buf = np.full(a.size + 2 * GUARD, 0 if a.dtype.kind == "i" else 777.0, a.dtype)
            buf[GUARD : GUARD + a.size] = a.reshape(-1)
            buffers.append(buf)
            recipe.append((len(buffers) - 1, GUARD, a.shape))
        else:
            recipe.append(a)
    arrays = [i for i, r in enumerate(recipe) if isinstance(r, tuple)]
    numbers = [i for i, r in enumerate(recipe) if not isinstance(r, tuple)]
    kind = how % 3 if numbers else how % 2
    if kind == 0:  # one axis off by one, filled with fresh values
        i = arrays[rng.integers(len(arrays))]
        b, _, shape = recipe[i]
        axis = int(rng.integers(len(shape)))
        shape = tuple(n + (1 if rng.random() < 0.5 or n == 1 else -1) if k == axis else n for k, n in enumerate(shape))
        size = int(np.prod(shape))
        buf = np.full(size + 2 * GUARD, buffers[b][0], buffers[b].dtype)
        buf[GUARD:-GUARD] = rng.integers(0, 3, size) if buf.dtype.kind == "i" else rng.standard_normal(size)
        buffers[b] = buf
        recipe[i] = (b, GUARD, shape)
    elif kind == 1 and len(arrays) > 1:  # argument j laid over argument i's memory
        i, j = rng.choice(arrays, 2, replace=False)
        (bi, _, _), (bj, _, shape_j) = recipe[i], recipe[j]
        shift = int(rng.integers(2))
        if buffers[bi].dtype == buffers[bj].dtype and int(np.prod(shape_j)) + shift <= buffers[bi].size - GUARD:
            recipe[j] = (bi, GUARD + shift, shape_j)
    elif numbers:  # a number out of its range
        i = numbers[rng.integers(len(numbers))]
        recipe[i] = [-1.0, 0.0, 1.0, -0.5, 2.0][int(rng.integers(5))] if isinstance(recipe[i], float) else 0
    return recipe, buffers


def call_laid_out(module, kernel: str, recipe: list, buffers: list) -> tuple[list, Exception | None]:
    """Call the checked kernel with `module` as the backend on copies of the buffers."""
    bufs = [b.copy() for b in buffers]
    args = [bufs[r[0]][r[1] : r[1] + int(np.prod(r[2]))].reshape(r[2]) if isinstance(r, tuple) else r for r in recipe]
    saved, kernels.impl = kernels.impl, module
    try:
        getattr(kernels, kernel)(*args)
        raised = None
    except ValueError as exc:
        raised = exc
    finally:
        kernels.impl = saved
    return bufs, raised


@FUZZ
@given(
    kernel=st.sampled_from(KERNELS),
    how=st.integers(0, 1000),
    dt=st.sampled_from([np.float32, np.float64]),
)
def test_inconsistent_kernel_arguments_raise_or_match_the_fallback(kernel, how, dt):
    """Every call either raises a ValueError naming the kernel, or gives on the compiled backend what
    it gives on the fallback, with nothing written outside any argument (the GUARD sentinels)."""
    compiled = compiled_kernels()
    recipe, buffers = inconsistent(valid_args(kernel, dt), how, np.random.default_rng(how))
    (ours, raised), (theirs, raised_f) = (call_laid_out(m, kernel, recipe, buffers) for m in (compiled, fallback))
    assert (raised is None) == (raised_f is None), (raised, raised_f)
    if raised is not None:
        assert str(raised).startswith(kernel + ":"), str(raised)
        return
    tol = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-9, atol=1e-12)}[dt]
    for before, a, b in zip(buffers, ours, theirs):
        for result in (a, b):
            np.testing.assert_array_equal(result[:GUARD], before[:GUARD], err_msg="written before the array")
            np.testing.assert_array_equal(result[-GUARD:], before[-GUARD:], err_msg="written after the array")
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, equal_nan=True, err_msg=kernel, **tol)


@pytest.mark.parametrize("kernel", KERNELS)
def test_valid_kernel_arguments_run(backend, kernel, dtype):
    getattr(kernels, kernel)(*valid_args(kernel, dtype))


def test_nan_weights_make_the_loss_not_finite(backend):
    model = GPT(GPTConfig(vocab_size=5, n_ctx=4, n_embd=4, n_head=2, n_layer=1))
    model.params["h.0.mlp.c_fc.weight"][0, 0] = np.nan
    loss, _ = model.loss_and_grads(np.array([[1, 2, 3]]), np.array([[2, 3, 4]]))
    assert not np.isfinite(loss)  # the training loop turns this into "loss is not finite at step N"


# tokenizer files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory):
    text = "the quick brown fox jumps over the lazy dog, 日本語も。"
    made = {}
    for tok in (CharTokenizer.train(text), WordTokenizer.train(text), BPETokenizer.train(text * 3, 280)):
        path = tmp_path_factory.mktemp(tok.kind) / "tokenizer.json"
        tok.save(path)
        made[tok.kind] = path.read_bytes()
    return made


@FUZZ
@given(
    kind=st.sampled_from(["char", "word", "bpe"]),
    cuts=st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=4)), min_size=1, max_size=4),
)
def test_damaged_tokenizer_files_give_one_clear_error(tmp_path, tokenizer_files, kind, cuts):
    data = bytearray(tokenizer_files[kind])
    for pos, junk in cuts:
        pos %= len(data)
        data[pos : pos + len(junk)] = junk
    path = tmp_path / "tokenizer.json"
    path.write_bytes(bytes(data))
    try:
        tok = load_tokenizer(path)
    except TokenizerError as exc:
        assert "\n" not in str(exc)
        return
    assert isinstance(tok.decode(range(tok.vocab_size)), str)  # what loaded is a working tokenizer


@pytest.mark.parametrize(
    "kind, change, fragment",
    [
        ("char", {"specials": "xz"}, "'specials' must be a list of strings, not str"),
        ("char", {"specials": {"x": 0}}, "'specials' must be a list of strings, not dict"),
        ("char", {"tokens": "abc"}, "'tokens' must be a list of strings"),
        ("char", {"tokens": ["a", "bc"]}, "'bc' in 'tokens' cannot be a char token"),
        ("char", {"tokens": ["a", "a"]}, "duplicate"),
        ("char", {"version": 2}, "version 2 is not 1"),
        ("char", {"extra": 1}, "'extra' is no field of a char tokenizer"),
        ("word", {"tokens": ["two words"]}, "cannot be a word token"),
        ("word", {"tokens": [""]}, "cannot be a word token"),
        ("bpe", {"pattern": 5}, "'pattern' must be a string or null"),
        ("bpe", {"pattern": "("}, "pattern"),
        ("bpe", {"special_tokens": "<|endoftext|>"}, "'special_tokens' must be a list of strings"),
        ("bpe", {"merges": ["t h e"]}, "is not two tokens separated by one space"),
        ("bpe", {"merges": ["th e"]}, "names a token that no earlier merge made"),
        ("bpe", {"merges": {"t": "h"}}, "'merges' must be a list of strings"),
        ("char", {"tokens": [["a"] * 3] * 1}, "'tokens' must be a list of strings"),
    ],
)
def test_every_field_of_a_tokenizer_file_is_checked(tmp_path, tokenizer_files, kind, change, fragment):
    """A damaged file must never load as another tokenizer: "specials": "xz" was read as ["x", "z"],
    and shifted every id by two."""
    state = json.loads(tokenizer_files[kind])
    state.update(change)
    (tmp_path / "tokenizer.json").write_text(json.dumps(state), encoding="utf-8")
    with pytest.raises(TokenizerError, match="damaged") as caught:
        load_tokenizer(tmp_path)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json"])
def test_json_nested_100000_deep_is_one_line(tmp_path, name):
    from simple_llm.checkpoint import read_config

    (tmp_path / name).write_text('{"a": ' * 100_000 + "1" + "}" * 100_000, encoding="utf-8")
    read = read_config if name == "config.json" else load_tokenizer
    with pytest.raises(ValueError, match="nested too deep"):
        read(tmp_path)


# checkpoints ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    GPT(GPTConfig(vocab_size=11, n_ctx=6, n_embd=8, n_head=2, n_layer=1), seed=0).save_pretrained(path)
    return (path / "config.json").read_bytes(), (path / "model.safetensors").read_bytes()


def write_checkpoint(path, config: bytes, weights: bytes):
    (path / "config.json").write_bytes(config)
    (path / "model.safetensors").write_bytes(weights)


@FUZZ
@given(
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), min_size=1, max_size=6),
    truncate=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_bit_flipped_or_truncated_weights(tmp_path, checkpoint_bytes, flips, truncate):
    config, weights = checkpoint_bytes
    data = bytearray(weights)
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    if truncate is not None:
        data = data[: truncate % len(data)]
    write_checkpoint(tmp_path, config, bytes(data))
    try:
        GPT.from_pretrained(tmp_path)  # a flip inside the tensor data loads: other weights, valid file
    except CheckpointError as exc:
        assert "\n" not in str(exc)


@FUZZ
@given(
    key=st.sampled_from(["vocab_size", "n_positions", "n_embd", "n_head", "n_layer", "layer_norm_epsilon"]),
    value=st.one_of(
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=True),
        st.text(max_size=5),
        st.none(),
        st.lists(st.integers(), max_size=2),
    ),
)
def test_absurd_config_values(tmp_path, checkpoint_bytes, key, value):
    config, weights = checkpoint_bytes
    raw = json.loads(config)
    raw[key] = value
    write_checkpoint(tmp_path, json.dumps(raw).encode(), weights)
    tracemalloc.start()
    try:
        GPT.from_pretrained(tmp_path)
    except CheckpointError as exc:
        assert "\n" not in str(exc)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing absurd was allocated


def test_oversized_header_and_enormous_claimed_tensor(tmp_path, checkpoint_bytes):
    config, weights = checkpoint_bytes
    write_checkpoint(tmp_path, config, struct.pack("<Q", 2**60) + weights[8:])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        GPT.from_pretrained(tmp_path)
    # a header that claims a vocabulary of 10^9 rows, in a file of a few kilobytes
    raw = json.loads(config)
    raw["vocab_size"] = 10**9
    header = json.dumps(
        {"transformer.wte.weight": {"dtype": "F32", "shape": [10**9, 8], "data_offsets": [0, 32 * 10**9]}}
    )
    body = header.encode() + b" " * (-len(header) % 8)
    write_checkpoint(tmp_path, json.dumps(raw).encode(), struct.pack("<Q", len(body)) + body + b"\0" * 64)
    tracemalloc.start()
    with pytest.raises(CheckpointError):
        GPT.from_pretrained(tmp_path)
    assert tracemalloc.get_traced_memory()[1] < 50 * 2**20
    tracemalloc.stop()


# the command line ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    tok = CharTokenizer.train("hello world")
    GPT(GPTConfig(vocab_size=tok.vocab_size, n_ctx=8, n_embd=8, n_head=2, n_layer=1)).save_pretrained(path)
    tok.save(path)
    return path


CLI_CASES = [
    # (arguments, fragment of the one error line); {m} is a model directory, {d} a directory
    (["train"], "the following arguments are required"),
    (["train", "--data", "{d}", "--out", "{d}/o"], "is a directory"),
    (["train", "--data", "/no/such/file", "--out", "{d}/o"], "does not exist"),
    (["train", "--data", "{d}", "--out", "{d}/o", "--n-layer", "two"], "--n-layer: must be a positive integer"),
    (["train", "--data", "{d}", "--out", "{d}/o", "--lr", "-1"], "--lr: must be a number >= 0"),
    (["train", "--data", "{d}", "--out", "{d}/o", "--eval-interval", "0"], "--eval-interval: must be a positive"),
    (["train", "--data", "{d}", "--out", "{d}/o", "--beta2", "1.5"], "must be below 1"),
    (["train", "--data", "{d}", "--out", "{d}/o", "--min-lr", "1", "--lr", "0.1"], "--min-lr 1.0 is above --lr 0.1"),
    (["generate", "--model", "{m}"], "required: --prompt"),
    (["generate", "--model", "{d}", "--prompt", "x"], "config.json does not exist"),
    (["generate", "--model", "{m}", "--prompt", "x", "--temperature", "hot"], "--temperature: must be a number"),
    (["generate", "--model", "{m}", "--prompt", "x", "--top-k", "-1"], "--top-k: must be an integer >= 0"),
    (["generate", "--model", "{m}", "--prompt", "zzz"], "no token of the prompt is in this model's vocabulary: z z z"),
    (["chat"], "required: --model"),
    (["chat", "--model", "/no/such/dir"], "is not a directory, nor a model name"),
    (["chat", "--model", "{m}", "--show-probs", "-3"], "--show-probs: must be an integer >= 0"),
    (["inspect", "--model", "{m}"], "--prompt is needed"),
    (["inspect", "--model", "{m}", "--prompt", "hello", "--layer", "-1"], "--layer: must be an integer >= 0"),
    (["inspect", "--model", "{m}", "--embeddings", "--data", "/no/such/file"], "does not exist"),
    (["bench", "--config", "huge"], "invalid choice: 'huge'"),
    (["bench", "--steps", "0"], "--steps: must be a positive integer"),
    (["en", "--data", "{d}"], "is a directory"),
    (["en", "--max-new-tokens", "0"], "--max-new-tokens: must be a positive integer"),
    (["en", "--top-p", "0"], "--top-p: must be a number in (0, 1]"),
    (["xx"], "unknown command 'xx'"),
]


@pytest.mark.parametrize("args, fragment", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_bad_command_lines(tmp_path, model_dir, args, fragment):
    args = [a.replace("{m}", str(model_dir)).replace("{d}", str(tmp_path)) for a in args]
    assert_one_line_error(run_cli(*args), "error:", fragment)
