"""PyTorch's side of ``python -m simple_llm bench``: one contender, timed in this fresh process.

    python benchmarks/torch_contenders.py train V,T,C,NH,L,B STEPS [--import-first MODULE]
    python benchmarks/torch_contenders.py generate V,T,C,NH,L,B STEPS NEW_TOKENS [--import-first MODULE]

train: GPT-2 in PyTorch eager mode, nanoGPT's way (scaled_dot_product_attention, tied output layer),
AdamW(fused=True), float32, random tokens. generate: transformers' GPT2LMHeadModel.generate, greedy,
use_cache=True, batch 1, a 1-token prompt. Everything at PyTorch's own defaults (threads included);
simple_llm is not imported (unless --import-first names it: the import-order benchmark). Prints one
JSON line: {"seconds": median seconds per step or per generation}.
"""

from __future__ import annotations

import importlib
import json
import statistics
import sys
import time


def gpt(V, T, C, NH, L):
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(C), nn.LayerNorm(C)
            self.c_attn, self.c_proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
            self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.h:
                x = block(x)
            logits = self.ln_f(x) @ self.wte.weight.T
            return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))

    return GPT()


def train_step(V, T, C, NH, L, B):
    import torch

    torch.manual_seed(0)
    model = gpt(V, T, C, NH, L)
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), fused=True)
    tokens = torch.randint(0, V, (B, T + 1), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, y).backward()
        opt.step()

    return step


def generation(V, T, C, NH, L, new_tokens):
    import torch
    import transformers

    cfg = transformers.GPT2Config(vocab_size=V, n_positions=T, n_embd=C, n_head=NH, n_layer=L)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long)

    def run():
        with torch.no_grad():
            model.generate(
                prompt,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
                attention_mask=torch.ones_like(prompt),
            )

    return run


def main(argv: list[str]) -> None:
    if "--import-first" in argv:
        i = argv.index("--import-first")
        importlib.import_module(argv[i + 1])
        del argv[i : i + 2]
    job, shape, steps = argv[0], [int(v) for v in argv[1].split(",")], int(argv[2])
    V, T, C, NH, L, B = shape
    if job == "train":
        fn = train_step(V, T, C, NH, L, B)
        warmup = 2
    else:
        new = int(argv[3])
        fn = generation(V, max(T, new + 1), C, NH, L, new)
        warmup = 1
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    print(json.dumps({"seconds": statistics.median(times)}))


if __name__ == "__main__":
    main(sys.argv[1:])
