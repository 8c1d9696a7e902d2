"""int8 weights: the block format (int8.py), the quantised product (kernels.q8_matmul) on both backends
against a float64 reference, GPT.quantize, loading with quantize="int8", and --quantize on the
command line. CI runs this file at every SIMD level."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import char_model_dir, compiled_kernels, run_cli

from simple_llm import GPT, GPTConfig, fallback, int8, kernels

CFG = GPTConfig(vocab_size=77, n_ctx=32, n_embd=48, n_head=3, n_layer=2)  # 48, 77: not multiples of 32


def reference(q, scales):
    """The weights that (q, scales) stand for, in float64, written independently of int8.dequantize."""
    rows, cols = q.shape
    w = np.empty((rows, cols))
    for i in range(rows):
        for j in range(cols):
            w[i, j] = float(scales[i, j // 32]) * int(q[i, j])
    return w


# the format --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cols", [32, 45, 64, 77, 1])
def test_each_block_of_32_has_the_scale_of_its_largest_weight_and_rounds_to_half_of_it(cols):
    w = np.random.default_rng(cols).normal(size=(5, cols)).astype(np.float32)
    q, scales = int8.quantize(w)
    assert q.dtype == np.int8 and q.shape == w.shape
    assert scales.dtype == np.float32 and scales.shape == (5, -(-cols // 32))
    for b in range(scales.shape[1]):
        block = w[:, b * 32 : (b + 1) * 32]  # the last one shorter when cols is not a multiple of 32
        np.testing.assert_allclose(scales[:, b], np.abs(block).max(axis=1) / 127, rtol=1e-6)
        assert (np.abs(q[:, b * 32 : (b + 1) * 32]).max(axis=1) == 127).all()  # the largest is +-127
    err = np.abs(reference(q, scales) - w)
    bound = np.repeat(scales, 32, axis=1)[:, :cols] / 2
    assert (err <= bound * (1 + 1e-5)).all()
    np.testing.assert_array_equal(int8.dequantize(q, scales), reference(q, scales).astype(np.float32))


def test_quantizing_the_transpose_in_slices_is_quantizing_the_transpose():
    w = np.random.default_rng(3).normal(size=(2 * 64 + 45, 40)).astype(np.float32)  # rows: not a multiple of 32
    for step in (32, 64, 1024):
        q, s = int8.quantize_transposed(w, step)
        want_q, want_s = int8.quantize(w.T)
        np.testing.assert_array_equal(q, want_q)
        np.testing.assert_array_equal(s, want_s)


def test_an_all_zero_block_is_zero_and_an_outlier_keeps_its_value():
    w = np.zeros((2, 64), np.float32)
    w[1, 32:] = np.linspace(-0.01, 0.01, 32)
    w[1, 40] = 1000.0  # one huge weight: its block's other weights round to 0 (error <= 1000/254)
    q, scales = int8.quantize(w)
    assert (q[0] == 0).all() and (scales[0] == 0).all() and (q[1, :32] == 0).all()
    assert not np.isnan(scales).any()
    d = int8.dequantize(q, scales)
    np.testing.assert_array_equal(d[0], 0.0)
    assert d[1, 40] == pytest.approx(1000.0, rel=1e-6) and q[1, 40] == 127
    assert np.abs(d[1, 32:] - w[1, 32:]).max() <= 1000 / 254
    assert (d[1, 32:40] == 0).all()


# the product -------------------------------------------------------------------------------------


def _product_case(N, n_in, n_out, bias, seed=0):
    rng = np.random.default_rng(seed)
    q, scales = int8.quantize(rng.normal(size=(n_in, n_out)).astype(np.float32))
    x = rng.normal(size=(N, n_in)).astype(np.float32)
    b = rng.normal(size=n_out).astype(np.float32) if bias else None
    want = x.astype(np.float64) @ reference(q, scales) + (0 if b is None else b)
    return x, q, scales, b, want


SHAPES = [(1, 1, 32), (1, 5, 45), (3, 64, 77), (2, 7, 96), (1, 37, 8192 + 96), (5, 6, 8192 // 5 + 40)]


@pytest.mark.parametrize("backend", ["fallback", "compiled"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_q8_matmul_is_the_product_with_the_dequantised_weights(backend, shape, bias):
    """n_in not a multiple of 4 (the kernel takes four rows at a time), n_out not a multiple of 32 and
    wider than the kernel's 8192-column tile, several rows."""
    module = fallback if backend == "fallback" else compiled_kernels()
    x, q, scales, b, want = _product_case(*shape, bias)
    out = np.full((shape[0], shape[2]), np.nan, np.float32)
    module.q8_matmul(out, x, q, scales, b)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_q8_matmul_checks_its_arguments():
    x, q, scales, b, _ = _product_case(2, 8, 40, True)
    out = np.empty((2, 40), np.float32)
    kernels.q8_matmul(out, x, q, scales, b)
    bad = [
        (out, x, q.astype(np.int16), scales, b),
        (out, x, q, scales[:, :1], b),  # 40 columns need two scales a row
        (out, x.astype(np.float64), q, scales, b),
        (out, x[:, :7], q, scales, b),
        (out[:, :39], x, q, scales, b),
        (out, x, q, scales, b[:39]),
        (x[:, :0], x, q, scales, b),
        (np.asfortranarray(out), x, q, scales, b),
        (out, x, q, scales, out[0]),  # the output overlaps the bias
    ]
    for args in bad:
        with pytest.raises(ValueError):
            kernels.q8_matmul(*args)


# the model ---------------------------------------------------------------------------------------


def test_quantize_makes_a_new_model_close_to_the_original_and_leaves_it_unchanged():
    model = GPT(CFG, seed=1)
    before = model.params.flat.copy()
    qm = model.quantize("int8")
    np.testing.assert_array_equal(model.params.flat, before)
    assert qm.quantized == "int8" and model.quantized is None
    assert set(qm.int8_weights) == {"wte.weight"} | {
        f"h.{l}.{n}" for l in range(CFG.n_layer) for n in int8.LINEAR_WEIGHTS
    }
    assert qm.int8_weights["wte.weight"][0].shape == (CFG.n_embd, CFG.vocab_size)  # wte^T
    assert "wpe.weight" in qm.params and "h.0.ln_1.weight" in qm.params and "wte.weight" not in qm.params
    assert qm.n_params == model.n_params
    idx = np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 20))
    want, got = model.forward(idx), qm.forward(idx)
    assert 0 < np.abs(got - want).max() < 0.02 * np.abs(want).max()
    assert qm.loss(idx[:, :-1], idx[:, 1:]) == pytest.approx(model.loss(idx[:, :-1], idx[:, 1:]), rel=5e-3)
    # a prompt of one row uses the int8 kernel, a long evaluation dequantised slices: the same model
    long = np.random.default_rng(1).integers(0, CFG.vocab_size, (4, CFG.n_ctx))
    assert 4 * CFG.n_ctx > int8.KERNEL_ROWS
    rows = np.concatenate([qm.forward(long[i : i + 1, :4]) for i in range(4)])
    np.testing.assert_allclose(qm.forward(long)[:, :4], rows, rtol=1e-5, atol=1e-5)


def test_an_int8_model_is_for_inference_only():
    model = GPT(CFG)
    qm = model.quantize()
    idx = np.zeros((1, 4), np.int64)
    for call in (lambda: qm.loss_and_grads(idx, idx), lambda: qm.save_pretrained("unused")):
        with pytest.raises(ValueError, match="int8 model is for inference"):
            call()
    with pytest.raises(ValueError, match="int4"):
        model.quantize("int4")
    with pytest.raises(ValueError, match="float32"):
        GPT(CFG, dtype=np.float64).quantize()
    assert qm.generate(idx, 5).shape == (1, 9)


def test_loading_with_quantize_is_quantizing_the_loaded_model(tmp_path):
    GPT(CFG, seed=2).save_pretrained(tmp_path)
    direct = GPT.from_pretrained(tmp_path, quantize="int8")
    after = GPT.from_pretrained(tmp_path).quantize("int8")
    assert direct.int8_weights.keys() == after.int8_weights.keys()
    for name, (q, s) in direct.int8_weights.items():
        np.testing.assert_array_equal(q, after.int8_weights[name][0])
        np.testing.assert_array_equal(s, after.int8_weights[name][1])
    np.testing.assert_array_equal(direct.params.flat, after.params.flat)


# the command line --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    config = dict(n_ctx=24, n_embd=32, n_head=2, n_layer=2)
    return char_model_dir(tmp_path_factory.mktemp("model"), "Hello world! abcdefgh", jitter=0.4, seed=2, **config)


def test_generate_and_eval_take_quantize(model_dir, tmp_path):
    args = ("generate", "--model", model_dir, "--prompt", "Hello", "--max-new-tokens", "12")
    plain, quant = run_cli(*args), run_cli(*args, "--quantize", "int8")
    assert plain.returncode == quant.returncode == 0, quant.stderr
    assert quant.stdout.startswith("Hello") and len(quant.stdout.strip()) > len("Hello")
    data = tmp_path / "text.txt"
    data.write_text("Hello world! " * 20)
    losses = []
    for extra in ([], ["--quantize", "int8"]):
        proc = run_cli("eval", "--model", model_dir, "--data", data, "--json", "--no-progress", *extra)
        assert proc.returncode == 0, proc.stderr
        losses.append(float(proc.stdout.split('"loss": ')[1].split(",")[0]))
    assert losses[0] != losses[1] and losses[1] == pytest.approx(losses[0], rel=0.01)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["generate", "--prompt", "Hi", "--quantize", "int4"], "invalid choice: 'int4'"),
        (["eval", "--data", "x", "--quantize", "int4"], "invalid choice: 'int4'"),
        (["explore", "--quantize", "float8"], "invalid choice: 'float8'"),
        (["chat", "--quantize", ""], "invalid choice: ''"),
    ],
)
def test_a_quantize_kind_that_does_not_exist_is_one_line(model_dir, args, fragment):
    proc = run_cli(args[0], "--model", model_dir, *args[1:])
    assert proc.returncode == 2 and fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_train_refuses_a_quantized_model_in_one_line(model_dir, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("Hello world! " * 50)
    proc = run_cli("train", "--data", data, "--out", tmp_path / "run", "--init-from", model_dir, "--quantize", "int8")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "for inference" in proc.stderr and not (tmp_path / "run").exists()
