"""``python -m simple_llm bench``: training and generation speed, ours beside PyTorch's.

For each configuration: training tokens/s (forward + backward + AdamW, float32, random tokens) on the
compiled kernels and on the NumPy fallback; generation tokens/s (batch 1, a 1-token prompt, 256 new
tokens, with the key/value cache); and, when torch is installed, the same model in PyTorch eager mode
(F.scaled_dot_product_attention, AdamW(fused=True)) and transformers' generate(use_cache=True), on
the same number of threads, with the ratio ours / PyTorch. Then the model FLOPs per token, the GFLOP/s
achieved, the machine's float32 GEMM GFLOP/s, a per-kernel table (compiled against NumPy) and the
peak memory of a training run. Every figure is the median of several timed repeats.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from . import fallback, kernels
from .cli_args import Parser, positive_int
from .config import GPTConfig
from .model import GPT
from .optim import AdamW
from .parallel import cores

# name: (vocab, block, n_embd, n_head, n_layer, batch)
CONFIGS = {
    "seed-tiny": (64, 16, 64, 4, 2, 8),
    "shakespeare-cpu": (65, 64, 128, 4, 4, 12),  # nanoGPT's CPU recipe
    "small": (512, 128, 256, 8, 6, 16),
}
GEN_TOKENS = 256


@dataclass
class Bench:
    name: str
    cfg: GPTConfig
    batch: int

    @classmethod
    def named(cls, name: str) -> Bench:
        V, T, C, NH, L, B = CONFIGS[name]
        return cls(name, GPTConfig(vocab_size=V, n_ctx=T, n_embd=C, n_head=NH, n_layer=L), B)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 per parameter (forward 2, backward 4) plus attention's
        12 * L * C * T (PaLM's estimate, as nanoGPT's estimate_mfu)."""
        c = self.cfg
        n_params = sum(int(np.prod(s)) for s in c.shapes().values())
        return 6.0 * n_params + 12.0 * c.n_layer * c.n_embd * c.n_ctx


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def backend(module) -> Iterator[None]:
    saved = kernels.impl
    kernels.impl = module
    try:
        yield
    finally:
        kernels.impl = saved


def compiled():
    from . import _kernels  # type: ignore[attr-defined]

    return _kernels


def random_batch(b: Bench, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.random.default_rng(seed).integers(0, b.cfg.vocab_size, (b.batch, b.cfg.n_ctx + 1))
    return np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])


# simple_llm --------------------------------------------------------------------------------------


def ours_trainer(b: Bench) -> Callable[[], object]:
    """One training step (forward, backward, AdamW) of simple_llm with the kernels now selected."""
    model = GPT(b.cfg, seed=0)
    opt = AdamW(model.params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x, y = random_batch(b)
    return lambda: opt.step(model.loss_and_grads(x, y)[1])


def ours_train(b: Bench, steps: int) -> float:
    """Training tokens/s with the kernels now selected."""
    return b.batch * b.cfg.n_ctx / median_time(ours_trainer(b), steps, warmup=2)


def generation_config(b: Bench) -> GPTConfig:
    """The bench's model with room for the 1-token prompt and GEN_TOKENS new tokens."""
    c = b.cfg
    return GPTConfig(
        vocab_size=c.vocab_size, n_ctx=max(c.n_ctx, GEN_TOKENS + 1), n_embd=c.n_embd, n_head=c.n_head, n_layer=c.n_layer
    )


def ours_generator(model: GPT, new_tokens: int, prompt_len: int = 1, use_cache: bool = True) -> Callable[[], object]:
    """One greedy generation of new_tokens after a prompt of prompt_len tokens, batch 1."""
    prompt = np.zeros((1, prompt_len), dtype=np.int64)
    return lambda: model.generate(prompt, new_tokens, use_cache=use_cache)


# PyTorch -----------------------------------------------------------------------------------------


def torch_model(cfg: GPTConfig):
    """GPT-2 in PyTorch eager mode, nanoGPT's way (scaled_dot_product_attention, tied output)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            C = cfg.n_embd
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, cfg.n_head, C // cfg.n_head).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPTTorch(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
            self.wpe = nn.Embedding(cfg.n_ctx, cfg.n_embd)
            self.h = nn.ModuleList(Block() for _ in range(cfg.n_layer))
            self.ln_f = nn.LayerNorm(cfg.n_embd)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    return GPTTorch()


def torch_trainer(b: Bench, threads: int) -> Callable[[], object]:
    """One training step of the same model in PyTorch eager mode, AdamW(fused=True)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_model(b.cfg)
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=True)
    x, y = (torch.from_numpy(a) for a in random_batch(b))

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, y).backward()
        opt.step()

    return step


def interleaved(steps_by_name: dict[str, Callable[[], object]], steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each contender, measured in turns (A B A B ...) so that the machine's
    drifting speed hits all of them alike: rounds x (median of `steps` steps) each."""
    for step in steps_by_name.values():
        for _ in range(2):
            step()  # warm-up: buffers, caches, thread pools
    times: dict[str, list[float]] = {name: [] for name in steps_by_name}
    for _ in range(rounds):
        for name, step in steps_by_name.items():
            times[name].append(median_time(step, steps, warmup=0))
    return times


def transformers_generator(model: GPT, new_tokens: int, threads: int) -> Callable[[], object]:
    """One greedy generate(use_cache=True) of transformers on the same weights."""
    import tempfile

    import torch
    import transformers

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        ref = transformers.GPT2LMHeadModel.from_pretrained(tmp).eval()
    return hf_generator(ref, new_tokens)


def hf_generator(ref, new_tokens: int) -> Callable[[], object]:
    """One greedy generate(use_cache=True) of a transformers model from a 1-token prompt."""
    import torch

    prompt = torch.zeros((1, 1), dtype=torch.long)

    def run():
        with torch.no_grad():
            ref.generate(
                prompt,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
                attention_mask=torch.ones_like(prompt),
            )

    return run


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# machine -----------------------------------------------------------------------------------------


def gemm_gflops(n: int = 1024) -> float:
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    out = np.empty_like(a)
    return 2 * n**3 / median_time(lambda: np.matmul(a, a, out=out), 5) / 1e9


def blas_threads() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (pip install threadpoolctl)"
    info = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    return ", ".join(f"{i['internal_api']} {i.get('architecture', '')} x{i['num_threads']}" for i in info) or "none"


# kernels -----------------------------------------------------------------------------------------


def kernel_cases(b: Bench, dtype=np.float32) -> dict[str, Callable[[], None]]:
    """One call of each fused kernel (through simple_llm.kernels, so with the backend in use) at
    this configuration's sizes. attention_forward/backward include their BLAS products."""
    c, B = b.cfg, b.batch
    T, C, NH, V, N = c.n_ctx, c.n_embd, c.n_head, c.vocab_size, b.batch * c.n_ctx
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x, w, bias, dout = r(N, C), r(C), r(C), r(N, C)
    mean, rstd = np.empty(N, dtype), np.empty(N, dtype)
    att, out = np.empty((B, NH, T, T), dtype), r(B, T, C)
    scores = r(B, NH, T, T)
    h, logits, targets = r(N, 4 * C), r(N, V), rng.integers(0, V, N)
    th = np.tanh(h)
    losses, lse = np.empty(N, dtype), np.empty(N, dtype)
    n = sum(int(np.prod(s)) for s in c.shapes().values())
    p, g, m, v = r(n), r(n), r(n), np.abs(r(n))
    K = kernels
    K.layernorm_forward(out.reshape(N, C), mean, rstd, x, w, bias, 1e-5)
    att[...] = scores
    K.attention_softmax_forward(att, 0.2)
    K.crossentropy_forward(losses, lse, logits, targets)
    return {
        "layernorm_forward": lambda: K.layernorm_forward(out.reshape(N, C), mean, rstd, x, w, bias, 1e-5),
        "layernorm_backward": lambda: K.layernorm_backward(dout.copy(), w.copy(), bias.copy(), dout, x, w, mean, rstd),
        "attention_softmax_fwd": lambda: K.attention_softmax_forward(scores.copy(), 0.2),
        "attention_softmax_bwd": lambda: K.attention_softmax_backward(scores.copy(), att, 0.2),
        "softmax_forward": lambda: K.softmax_forward(logits.copy(), logits),
        "gelu_forward": lambda: K.gelu_forward(h.copy(), th, h),
        "gelu_backward": lambda: K.gelu_backward(h.copy(), h, th, h),
        "crossentropy_forward": lambda: K.crossentropy_forward(losses, lse, logits, targets),
        "crossentropy_backward": lambda: K.crossentropy_backward(logits.copy(), logits, lse, targets, 1.0 / N),
        "adamw_update": lambda: K.adamw_update(p, g, m, v, 1e-9, 0.9, 0.95, 1e-8, 0.1, 1),
    }


def kernel_table(b: Bench, repeats: int) -> list[tuple[str, float, float]]:
    """(kernel, compiled microseconds, NumPy microseconds) at b's sizes."""
    rows = []
    for name, call in kernel_cases(b).items():
        with backend(compiled()):
            t_c = median_time(call, repeats)
        with backend(fallback):
            t_n = median_time(call, repeats)
        rows.append((name, t_c * 1e6, t_n * 1e6))
    return rows


PEAK_RSS_CODE = """
import resource, sys
from simple_llm.bench import Bench, ours_train
ours_train(Bench.named(sys.argv[1]), int(sys.argv[2]))
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


# the command -------------------------------------------------------------------------------------


def parser(name: str) -> Parser:
    p = Parser(prog=f"simple_llm {name}", description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("--config", action="append", choices=list(CONFIGS), help="only this configuration (repeatable)")
    p.add_argument("--steps", type=positive_int, default=5, help="timed training steps per round")
    p.add_argument(
        "--rounds",
        type=positive_int,
        default=5,
        help="rounds of the contenders in turn (training, then generation); figures are medians over rounds",
    )
    p.add_argument("--quick", action="store_true", help="a few steps of everything: checks that it runs")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    steps = 2 if args.quick else args.steps
    rounds = 1 if args.quick else args.rounds
    names = args.config or list(CONFIGS)
    threads = cores()
    with_torch = not args.no_torch and have("torch")
    with_hf = with_torch and have("transformers")
    try:
        compiled()
        backends = [("cython", compiled()), ("numpy", fallback)]
    except ImportError:
        backends = [("numpy", fallback)]
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            print(f"note: {var}={os.environ[var]} is set; it slows current NumPy BLAS kernels")
    print(
        f"simple_llm bench: {os.cpu_count()} CPUs; kernels: {kernels.BACKEND}, OpenMP threads {threads}; "
        f"BLAS: {blas_threads()}; float32 GEMM (n=1024): {gemm_gflops():.1f} GFLOP/s"
    )
    if with_torch:
        import torch

        print(f"PyTorch {torch.__version__}, eager mode, torch.set_num_threads({threads})")
    for name in names:
        b = Bench.named(name)
        c = b.cfg
        print(
            f"\n[{name}] vocab {c.vocab_size}, block {c.n_ctx}, n_embd {c.n_embd}, n_head {c.n_head}, "
            f"n_layer {c.n_layer}, batch {b.batch}; {b.flops_per_token() / 1e6:.2f} MFLOP per training token"
        )
        contenders = {}
        for label, module in backends:
            with backend(module):
                contenders[label] = ours_trainer(b)
        if with_torch:
            contenders["torch"] = torch_trainer(b, threads)

        def timed(step, module):
            def run():
                with backend(module):
                    step()

            return run

        calls = {label: timed(step, dict(backends).get(label, kernels.impl)) for label, step in contenders.items()}
        times = interleaved(calls, steps, rounds)
        tokens = b.batch * c.n_ctx
        for label, ts in times.items():
            tps = tokens / statistics.median(ts)
            ratio = ""
            if "torch" in times and label != "torch":  # the ratio of each round, then their median
                ratio = f"  ({statistics.median(t2 / t1 for t1, t2 in zip(ts, times['torch'])):.2f}x PyTorch)"
            print(f"  train    {label:<8} {tps:10.0f} tokens/s  {tps * b.flops_per_token() / 1e9:6.2f} GFLOP/s{ratio}")
        gen_model = GPT(generation_config(b), seed=0)
        gen_tokens = 16 if args.quick else GEN_TOKENS
        generators = {backends[0][0]: timed(ours_generator(gen_model, gen_tokens), backends[0][1])}
        if with_hf:
            generators["hf"] = transformers_generator(gen_model, gen_tokens, threads)
        # each round: one whole generation per side, so that both meet the same drift
        times = interleaved(generators, 1, rounds)
        ours_ts = times[backends[0][0]]
        print(
            f"  generate {backends[0][0]:<8} {gen_tokens / statistics.median(ours_ts):10.0f} tokens/s  "
            f"(batch 1, 1-token prompt, {gen_tokens} new, cache)"
        )
        if with_hf:
            gen_ratio = statistics.median(t2 / t1 for t1, t2 in zip(ours_ts, times["hf"]))
            print(
                f"  generate {'hf':<8} {gen_tokens / statistics.median(times['hf']):10.0f} tokens/s  "
                f"transformers generate(use_cache=True); ours {gen_ratio:.1f}x"
            )
    if len(backends) == 2:
        b = Bench.named("small")
        print("\n[kernels at 'small' sizes, float32] microseconds per call, median")
        print(f"  {'kernel':<22} {'compiled':>10} {'numpy':>10} {'speedup':>8}")
        for name, t_c, t_n in kernel_table(b, 3 if args.quick else 10):
            print(f"  {name:<22} {t_c:10.1f} {t_n:10.1f} {t_n / t_c:7.1f}x")
    if not args.quick:
        print(
            f"\npeak RSS of a 'small' training run ({steps} steps, separate process): "
            f"{peak_rss_mb('small', steps):.0f} MB"
        )
    return 0
