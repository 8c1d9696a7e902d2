"""Continue one of our runs on many processes with PyTorch's DistributedDataParallel: the scale path.

    torchrun --nproc_per_node N -m simple_llm.torch_ddp --init-from runs/book --data book.txt --out runs/book-ddp

Each process holds transformers' GPT2LMHeadModel, loaded from our model directory (the Hugging Face
GPT-2 format both sides read), and draws its own batches from the training 90% of the token stream
that our ``train`` used (the tokenizer of --init-from, the same split). DDP averages the gradients of
the processes (gloo on CPUs, NCCL on GPUs) before each AdamW step, which follows our schedule
(``simple_llm.optim.lr_at``: warmup, then cosine) with our weight-decay groups (every 2-D tensor)
and gradient clipping: the global batch is N x --batch-size windows. Rank 0 evaluates the validation
10% and writes --out as a model directory (model.safetensors, config.json and our tokenizer), which
``generate --model``, ``eval`` and ``train --init-from`` take back here.

Needs torch and transformers (the ``reference`` extra). Nothing in simple_llm imports this module.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from .fileio import read_text_file
from .hub import model_directory
from .lora import is_adapter_directory
from .modeldir import load_tokenizer
from .optim import lr_at
from .train import encode, split


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="torchrun --nproc_per_node N -m simple_llm.torch_ddp", description=__doc__)
    p.add_argument("--init-from", required=True, metavar="DIR|NAME", help="our run's model directory (or gpt2...)")
    p.add_argument("--data", required=True, metavar="FILE", help="the UTF-8 text that run learned")
    p.add_argument("--out", required=True, metavar="DIR", help="where the model directory goes")
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=12, help="windows per process per step")
    p.add_argument("--block-size", type=int, help="tokens per window (default: the model's n_ctx)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--lr-decay-steps", type=int, help="the schedule's length (default: --max-steps)")
    p.add_argument("--beta1", type=float, default=0.9)
    p.add_argument("--beta2", type=float, default=0.95)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--eval-interval", type=int, default=250)
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn import functional as F
    from torch.nn.parallel import DistributedDataParallel
    from transformers import GPT2LMHeadModel

    args = parser().parse_args(argv)
    directory = model_directory(args.init_from)
    if is_adapter_directory(directory):  # PyTorch continues a whole model: the adapters go into it first
        raise SystemExit(
            f"simple_llm.torch_ddp: error: {directory} holds LoRA adapters; merge them into a model first: "
            f"python -m simple_llm merge --model {directory} --out DIR"
        )
    cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    tok = load_tokenizer(directory)
    model = GPT2LMHeadModel.from_pretrained(directory)
    model.to(device)  # type: ignore[arg-type]  # (transformers types .to as its own wrapper)
    block = args.block_size or model.config.n_positions
    train, val = split(encode(tok, read_text_file(args.data, "data file")), block)
    ddp = DistributedDataParallel(model, device_ids=[local] if cuda else None)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8)
    rng = np.random.default_rng([args.seed, rank])  # each process its own windows

    def batch(tokens: np.ndarray, generator: np.random.Generator):
        starts = generator.integers(0, len(tokens) - block, size=args.batch_size)
        w = torch.from_numpy(np.stack([tokens[s : s + block + 1] for s in starts])).to(device)
        return w[:, :-1], w[:, 1:]

    def loss_of(m, x, y):
        logits = m(input_ids=x).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def evaluate(step: int, train_loss: float) -> None:
        if rank == 0:  # the same validation windows at every evaluation
            model.eval()
            val_rng = np.random.default_rng(args.seed)
            with torch.no_grad():
                v = sum(float(loss_of(model, *batch(val, val_rng))) for _ in range(args.eval_steps))
            model.train()
            print(f"step {step}: train loss {train_loss:.4f}, val loss {v / args.eval_steps:.4f}", flush=True)
        dist.barrier()

    if rank == 0:
        print(f"{world} processes; global batch {world * args.batch_size} windows of {block} tokens", flush=True)
    model.train()
    decay = args.lr_decay_steps or args.max_steps
    loss = torch.tensor(float("nan"))
    for step in range(args.max_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.min_lr, args.warmup_steps, decay)
        loss = loss_of(ddp, *batch(train, rng))
        opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages the gradients of all processes here
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        if (step + 1) % args.eval_interval == 0 and step + 1 < args.max_steps:
            evaluate(step + 1, loss.item())
    evaluate(args.max_steps, loss.item())
    if rank == 0:
        out = Path(args.out)
        model.save_pretrained(out, safe_serialization=True)
        tok.save(out)
        print(f"saved {out}: python -m simple_llm generate --model {out} ...", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
