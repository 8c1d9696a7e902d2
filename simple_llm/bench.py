"""``python -m simple_llm bench``: training and generation speed, ours beside PyTorch's, measured fairly.

Each contender runs in a fresh process of its own, at its own defaults (threads included), with
nothing else imported: simple_llm compiled, simple_llm on the NumPy fallback, PyTorch eager mode
(scaled_dot_product_attention, AdamW(fused=True)) for training and transformers' generate(use_cache=True)
for generation. The PyTorch side lives in benchmarks/torch_contenders.py (a source checkout). Rounds
run the contenders in turn, A B C A B C ..., and each ratio is the median of the rounds' ratios, so
that the machine's drifting speed hits every contender alike. Beside the figures: the machine's
float32 GEMM GFLOP/s and memory read bandwidth, training MFU, and for generation the bandwidth bound
(bandwidth / bytes read per token) with our share of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import fallback, kernels, parallel
from .cli_args import Parser, command_parser, positive_int
from .config import GPTConfig
from .model import GPT, flops_per_token
from .optim import AdamW
from .parallel import cores

# name: (vocab, block, n_embd, n_head, n_layer, batch)
CONFIGS = {
    "seed-tiny": (64, 16, 64, 4, 2, 8),
    "shakespeare-cpu": (65, 64, 128, 4, 4, 12),  # nanoGPT's CPU recipe
    "small": (512, 128, 256, 8, 6, 16),
}
GEN_TOKENS = 256
TORCH_CONTENDERS = Path(__file__).resolve().parent.parent / "benchmarks" / "torch_contenders.py"


@dataclass
class Bench:
    name: str
    cfg: GPTConfig
    batch: int

    @classmethod
    def named(cls, name: str) -> Bench:
        V, T, C, NH, L, B = CONFIGS[name]
        return cls(name, GPTConfig(vocab_size=V, n_ctx=T, n_embd=C, n_head=NH, n_layer=L), B)

    @property
    def shape(self) -> str:
        return ",".join(map(str, CONFIGS[self.name]))

    def flops_per_token(self) -> float:
        """Training FLOPs per token (model.flops_per_token) at the configuration's context."""
        return flops_per_token(self.cfg, self.cfg.n_ctx)

    def generation_config(self, new_tokens: int) -> GPTConfig:
        """The bench's model with room for the 1-token prompt and the new tokens."""
        c = self.cfg
        n_ctx = max(c.n_ctx, new_tokens + 1)
        return GPTConfig(vocab_size=c.vocab_size, n_ctx=n_ctx, n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer)


def run_times(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    return statistics.median(run_times(fn, repeats, warmup))


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` runs: a machine's limit, which noise on a shared machine only hides
    (the median of 5 GEMMs once came out at half the rate, and the MFU beside it above 100%)."""
    return min(run_times(fn, repeats))


def random_batch(b: Bench, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.random.default_rng(seed).integers(0, b.cfg.vocab_size, (b.batch, b.cfg.n_ctx + 1))
    return np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])


def ours_trainer(b: Bench) -> Callable[[], object]:
    """One training step (forward, backward, AdamW) of simple_llm with the kernels now selected."""
    model = GPT(b.cfg, seed=0)
    opt = AdamW(model.params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x, y = random_batch(b)
    return lambda: opt.step(model.loss_and_grads(x, y)[1])


def ours_generator(model: GPT, new_tokens: int, prompt_len: int = 1, use_cache: bool = True) -> Callable[[], object]:
    """One greedy generation of new_tokens after a prompt of prompt_len tokens, batch 1."""
    prompt = np.zeros((1, prompt_len), dtype=np.int64)
    return lambda: model.generate(prompt, new_tokens, use_cache=use_cache)


# one contender in its own process ------------------------------------------------------------------


def worker(job: str, name: str, steps: int, new_tokens: int) -> float:
    """Median seconds per training step or per generation, in this process (see contender())."""
    b = Bench.named(name)
    if job == "train":
        return median_time(ours_trainer(b), steps, warmup=2)
    model = GPT(b.generation_config(new_tokens))
    return median_time(ours_generator(model.quantize("int8") if job == "generate-int8" else model, new_tokens), steps)


def contender(who: str, job: str, b: Bench, steps: int, new_tokens: int) -> list[str]:
    """The command line that times one contender (ours or torch) in a fresh process."""
    if who == "torch":
        return [sys.executable, str(TORCH_CONTENDERS), job, b.shape, str(steps), str(new_tokens)]
    return [sys.executable, "-m", "simple_llm.bench", job, b.name, str(steps), str(new_tokens)]


def run_contender(command: list[str], numpy_backend: bool = False) -> float:
    """Seconds per step printed by a contender's process (its environment is ours, plus the
    fallback switch for the NumPy contender: set in the child alone)."""
    env = {**os.environ, "SIMPLE_LLM_PURE_PYTHON": "1"} if numpy_backend else None
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])


def rounds(commands: dict[str, tuple[list[str], bool]], n: int) -> dict[str, list[float]]:
    """Seconds per step of each contender, n rounds, the contenders in turn within each round."""
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(n):
        for label, (command, numpy_backend) in commands.items():
            times[label].append(run_contender(command, numpy_backend))
    return times


def ratio(ours: list[float], theirs: list[float]) -> float:
    """How many times faster ours is: the median of the rounds' ratios."""
    return statistics.median(t / o for o, t in zip(ours, theirs))


# the machine ---------------------------------------------------------------------------------------


def gemm_gflops(n: int = 1024) -> float:
    """float32 matrix product n x n x n through NumPy's BLAS, at its default threads: the best of 20."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = np.empty_like(a)
    return 2 * n**3 / best_time(lambda: np.matmul(a, a, out=out), 20) / 1e9


def read_bandwidth_gbs(megabytes: int = 1024) -> float:
    """Memory read bandwidth as generation sees it: a float32 matrix-vector product (BLAS sgemv,
    default threads) over a matrix far larger than the caches; GB/s. 1 GB: this machine's CPU reports
    a 480 MB last-level cache, and over 256 MB the product ran 8-15% faster than over 1 or 2 GB (which
    agree), so a 256 MB bound was partly the cache's, above what a 500 MB model can be read at."""
    rows = megabytes * 2**20 // (4 * 4096)
    w = np.ones((rows, 4096), np.float32)
    x, y = np.ones(4096, np.float32), np.empty(rows, np.float32)
    return w.nbytes / best_time(lambda: np.matmul(w, x, out=y), 7) / 1e9  # a limit: the best run


def bytes_per_token(cfg: GPTConfig, positions: float) -> float:
    """Bytes a float32 generation step reads: every weight once (wte twice: embedding row, output
    layer; the row is negligible) plus the cached keys and values of `positions` positions."""
    n_params = sum(int(np.prod(s)) for s in cfg.shapes().values())
    return 4.0 * (n_params + cfg.n_layer * positions * 2 * cfg.n_embd)


def blas_info() -> str:
    from threadpoolctl import threadpool_info

    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i['internal_api']} {i.get('architecture', '')} x{i['num_threads']}" for i in info) or "none"


# kernels -----------------------------------------------------------------------------------------


@dataclass
class KernelCase:
    """One call of a kernel at a configuration's sizes, with what it must move and compute."""

    call: Callable[[], None]
    elements: int  # of its main array
    bytes: int  # it must read and write at least once (float32)
    flops: int  # its arithmetic, counting exp and tanh as EXP_FLOPS each


EXP_FLOPS = 15  # _expf: a rounding, a 6-term polynomial and the exponent bits (src/_floatmath.pxd)


def kernel_cases(b: Bench, dtype=np.float32) -> dict[str, KernelCase]:
    """One call of each fused kernel (through simple_llm.kernels, so with the backend in use) at
    this configuration's sizes. The outputs are allocated once; the in-place kernels work on their
    array again at each call (the values stay finite)."""
    c, B = b.cfg, b.batch
    T, C, NH, V, N = c.n_ctx, c.n_embd, c.n_head, c.vocab_size, b.batch * c.n_ctx
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x, w, bias, dout = r(N, C), r(C), r(C), r(N, C)
    mean, rstd, out, dx, dw, db = np.empty(N, dtype), np.empty(N, dtype), r(N, C), r(N, C), r(C), r(C)
    scores, att, datt = r(B, NH, T, T), np.empty((B, NH, T, T), dtype), r(B, NH, T, T)
    h, logits, targets = r(N, 4 * C), r(N, V), rng.integers(0, V, N)
    th, gout, probs, dlogits = np.tanh(h), np.empty_like(h), np.empty_like(logits), np.empty_like(logits)
    losses, lse = np.empty(N, dtype), np.empty(N, dtype)
    n = sum(int(np.prod(s)) for s in c.shapes().values())
    p, g, m, v = r(n), r(n), r(n), np.abs(r(n))
    K = kernels
    K.layernorm_forward(out, mean, rstd, x, w, bias, 1e-5)
    att[...] = scores
    K.attention_softmax_forward(att, 0.2)
    K.crossentropy_forward(losses, lse, logits, targets)
    NC, M, E, NV, f = N * C, B * NH * T * T, N * 4 * C, N * V, 4  # f: bytes of a float32
    return {  # bytes: each array read or written once (the causal half of att read, all of it written)
        "layernorm_forward": KernelCase(
            lambda: K.layernorm_forward(out, mean, rstd, x, w, bias, 1e-5), NC, f * (2 * NC + 2 * N), 8 * NC
        ),
        "layernorm_backward": KernelCase(
            lambda: K.layernorm_backward(dx, dw, db, dout, x, w, mean, rstd), NC, f * 4 * NC, 12 * NC
        ),
        "attention_softmax_fwd": KernelCase(
            lambda: K.attention_softmax_forward(scores, 0.2), M, f * (M // 2 + M), (M // 2) * (5 + EXP_FLOPS)
        ),
        "attention_softmax_bwd": KernelCase(lambda: K.attention_softmax_backward(datt, att, 0.2), M, f * 3 * M, 5 * M),
        "softmax_forward": KernelCase(lambda: K.softmax_forward(probs, logits), NV, f * 2 * NV, NV * (4 + EXP_FLOPS)),
        "gelu_forward": KernelCase(lambda: K.gelu_forward(gout, th, h), E, f * 3 * E, E * (10 + EXP_FLOPS)),
        "gelu_backward": KernelCase(lambda: K.gelu_backward(gout, h, th, h), E, f * 4 * E, 14 * E),
        "crossentropy_forward": KernelCase(
            lambda: K.crossentropy_forward(losses, lse, logits, targets), NV, f * NV, NV * (3 + EXP_FLOPS)
        ),
        "crossentropy_backward": KernelCase(
            lambda: K.crossentropy_backward(dlogits, logits, lse, targets, 1.0 / N),
            NV,
            f * 2 * NV,
            NV * (3 + EXP_FLOPS),
        ),
        "adamw_update": KernelCase(
            lambda: K.adamw_update(p, g, m, v, 1e-9, 0.9, 0.95, 1e-8, 0.1, 1), n, f * 7 * n, 16 * n
        ),
    }


def one_core_limits() -> tuple[float, float]:
    """(GB/s, GFLOP/s) of one core, the kernels' limits (each kernel runs on its caller's thread):
    a float32 matrix-vector product over 1 GB and an n = 1024 matrix product, BLAS on one thread."""
    with parallel.single_threaded_blas():
        return read_bandwidth_gbs(), gemm_gflops()


def kernel_table(b: Bench, repeats: int, limits: tuple[float, float]) -> list[tuple]:
    """Per kernel at b's sizes: (name, compiled microseconds, NumPy microseconds, compiled ns per
    element, share of its roofline). The roofline is the larger of (bytes / one core's bandwidth)
    and (flops / one core's GEMM rate); the compiled kernels are the build in use (kernels.SIMD)."""
    bandwidth, peak = limits
    rows = []
    saved = compiled = kernels.impl
    try:
        for name, case in kernel_cases(b).items():
            kernels.impl = compiled
            t_c = median_time(case.call, repeats)
            kernels.impl = fallback
            t_n = median_time(case.call, repeats)
            roofline = max(case.bytes / (bandwidth * 1e9), case.flops / (peak * 1e9))
            rows.append((name, t_c * 1e6, t_n * 1e6, t_c * 1e9 / case.elements, roofline / t_c))
    finally:
        kernels.impl = saved
    return rows


PEAK_RSS_CODE = """
import resource, sys
from simple_llm.bench import Bench, ours_trainer, median_time
median_time(ours_trainer(Bench.named(sys.argv[1])), int(sys.argv[2]))
try:  # Linux: this process's own high-water mark (ru_maxrss would include the parent's, from fork)
    kib = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
except OSError:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
print(kib)
"""


def peak_rss_mb(name: str, steps: int) -> float:
    """Peak resident memory of a separate process that trains configuration `name` for `steps`."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_CODE, name, str(steps)], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[-1]) / 1024


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# the command -------------------------------------------------------------------------------------


def parser(name: str) -> Parser:
    p = command_parser(name, __doc__)
    p.add_argument("--config", action="append", choices=list(CONFIGS), help="only this configuration (repeatable)")
    p.add_argument("--steps", type=positive_int, default=5, help="timed training steps per contender and round")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds of the contenders in turn (default 3)")
    p.add_argument("--quick", action="store_true", help="a few steps of everything: checks that it runs")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch and transformers contenders")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    steps, n_rounds = (2, 1) if args.quick else (args.steps, args.rounds)
    new_tokens = 16 if args.quick else GEN_TOKENS
    with_torch = not args.no_torch and have("torch") and TORCH_CONTENDERS.exists()
    with_hf = with_torch and have("transformers")
    compiled = kernels.BACKEND == "cython"
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"note: {var}={os.environ[var]} is set; it slows current NumPy BLAS kernels")
    if not args.no_torch and not with_torch:
        why = "torch is not installed" if not have("torch") else f"it needs the source checkout's {TORCH_CONTENDERS}"
        print(f"note: no PyTorch comparison: {why}")
    gflops, bandwidth = gemm_gflops(), read_bandwidth_gbs()
    print(
        f"simple_llm bench: {cores()} cores; kernels {kernels.BACKEND} ({kernels.SIMD or 'no SIMD level'}); "
        f"BLAS {blas_info()}; "
        f"float32 GEMM (n=1024): {gflops:.1f} GFLOP/s; memory read: {bandwidth:.1f} GB/s"
    )
    print("each contender in its own process at its own defaults; ratios: median over rounds")
    for name in args.config or list(CONFIGS):
        b = Bench.named(name)
        c = b.cfg
        print(
            f"\n[{name}] vocab {c.vocab_size}, block {c.n_ctx}, n_embd {c.n_embd}, n_head {c.n_head}, "
            f"n_layer {c.n_layer}, batch {b.batch}; {b.flops_per_token() / 1e6:.2f} MFLOP per training token"
        )
        commands = {"numpy": (contender("ours", "train", b, steps, new_tokens), True)}
        if compiled:
            commands = {"cython": (commands["numpy"][0], False), **commands}
        if with_torch:
            commands["torch"] = (contender("torch", "train", b, steps, new_tokens), False)
        times = rounds(commands, n_rounds)
        for label, ts in times.items():
            tps = b.batch * c.n_ctx / statistics.median(ts)
            achieved = tps * b.flops_per_token() / 1e9
            vs = f"  ({ratio(ts, times['torch']):.2f}x PyTorch)" if with_torch and label != "torch" else ""
            print(
                f"  train    {label:<8} {tps:10.0f} tokens/s  {achieved:6.2f} GFLOP/s  MFU {achieved / gflops:5.1%}{vs}"
            )
        ours = "cython" if compiled else "numpy"
        gen = {ours: (contender("ours", "generate", b, 1, new_tokens), not compiled)}
        if compiled:
            gen["int8"] = (contender("ours", "generate-int8", b, 1, new_tokens), False)
        if with_hf:
            gen["hf"] = (contender("torch", "generate", b, 1, new_tokens), False)
        times = rounds(gen, n_rounds)
        gcfg = b.generation_config(new_tokens)
        bound = bandwidth * 1e9 / bytes_per_token(gcfg, new_tokens / 2)
        tps = new_tokens / statistics.median(times[ours])
        print(
            f"  generate {ours:<8} {tps:10.0f} tokens/s  (batch 1, 1-token prompt, {new_tokens} new, cache; "
            f"float32 bandwidth bound {bound:.0f} tokens/s, ours {tps / bound:.0%} of it)"
        )
        if compiled:
            tps8 = new_tokens / statistics.median(times["int8"])
            print(
                f"  generate {'int8':<8} {tps8:10.0f} tokens/s  (the same, int8 weights; "
                f"{tps8 / bound:.0%} of the float32 bound)"
            )
        if with_hf:
            vs = f"ours {ratio(times[ours], times['hf']):.1f}x"
            vs += f", int8 {ratio(times['int8'], times['hf']):.1f}x" if compiled else ""
            print(
                f"  generate {'hf':<8} {new_tokens / statistics.median(times['hf']):10.0f} tokens/s  "
                f"transformers generate(use_cache=True); {vs}"
            )
    if compiled:
        limits = one_core_limits()
        print(
            f"\n[kernels, float32, {kernels.SIMD}] microseconds per call, median, this process, one thread; "
            f"roofline: the larger of bytes / {limits[0]:.1f} GB/s and flops / {limits[1]:.1f} GFLOP/s (one core)"
        )
        for name in ("shakespeare-cpu", "small"):
            print(f"  {name:<22} {'compiled':>10} {'numpy':>10} {'speedup':>8} {'ns/elem':>8} {'roofline':>9}")
            for kernel, t_c, t_n, ns, share in kernel_table(Bench.named(name), 3 if args.quick else 10, limits):
                print(f"  {kernel:<22} {t_c:10.1f} {t_n:10.1f} {t_n / t_c:7.1f}x {ns:8.2f} {share:9.0%}")
    if not args.quick:
        rss = peak_rss_mb("small", steps)
        print(f"\npeak RSS of a 'small' training run ({steps} steps, own process): {rss:.0f} MB")
    return 0


def main(argv: list[str]) -> None:
    """A contender's process: python -m simple_llm.bench train|generate CONFIG STEPS NEW_TOKENS."""
    job, name, steps, new_tokens = argv[0], argv[1], int(argv[2]), int(argv[3])
    print(json.dumps({"seconds": worker(job, name, steps, new_tokens)}))


if __name__ == "__main__":
    main(sys.argv[1:])
