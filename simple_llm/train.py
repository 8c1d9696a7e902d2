"""``python -m simple_llm train``: train a GPT-2 on your own text file, checkpoint it, resume it.

The text is tokenized (characters, words or byte-level BPE learned on it, or the tokenizer of the
model that --init-from fine-tunes), the token stream is split 90/10 into training and validation,
and each step trains on --batch-size x --grad-accum random windows of --block-size tokens: AdamW
with warmup, cosine decay and gradient clipping (nanoGPT's loop).

``--out DIR`` receives, each write atomic: config.json + model.safetensors (Hugging Face's GPT-2
format), tokenizer.json, ``train_state`` (weights, AdamW moments, step and random states: everything
``--resume`` needs, in one file written before the others), log.csv and loss.png. With --lora-rank,
the model is frozen and only LoRA's adapters train: --out holds adapter_config.json +
adapter_model.safetensors (PEFT's format) in place of the whole model.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from . import lora
from .cli_args import (
    CLIError,
    Parser,
    command_parser,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from .config import GPTConfig
from .fileio import read_text_file
from .lora import LoRAConfig
from .memory import available_bytes, gigabytes, training_bytes
from .model import GPT, shard_count
from .modeldir import load_model, load_tokenizer, model_directory, read_model_config
from .run_files import STATE_FILE, read_state_meta
from .tokenizers import CharTokenizer, Tokenizer, WordTokenizer
from .trainer import Trainer

SHAPE_FLAGS = {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd", "block_size": "n_ctx"}


FRESH_DEFAULTS = dict(tokenizer="char", n_layer=4, n_head=4, n_embd=128, block_size=64)  # a new model's
MODEL_FLAGS = ("tokenizer", "n_layer", "n_head", "n_embd")  # what --init-from and --resume take from DIR
# what --resume lets a command change, none of which changes the weights' path: the length of the run,
# the input, and when it evaluates, logs and prints samples (each from a generator of its own)
CHANGEABLE_ON_RESUME = {
    "max_steps",
    "lr_decay_steps",
    "data",
    "eval_interval",
    "log_interval",
    "sample_every",
    "sample_prompt",
}


def parser(name: str) -> Parser:
    p = command_parser(name, __doc__)
    p.add_argument("--data", metavar="FILE", help="a UTF-8 text file to learn (required; --resume: the saved run's)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the model and its state go")
    p.add_argument(
        "--init-from",
        metavar="DIR|NAME",
        help="start from this model directory (a Hugging Face GPT-2 checkpoint or one of ours), or a model's "
        "name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, owner/name: downloaded once; the hub extra): its "
        "config and tokenizer are used (fine-tuning)",
    )
    g = p.add_argument_group("tokenizer (a new model)")
    g.add_argument(
        "--tokenizer",
        choices=["char", "word", "bpe"],
        help="char: one token per character; word: whitespace-separated; bpe: byte-level BPE learned on "
        "--data (default char)",
    )
    g.add_argument("--vocab-size", type=positive_int, default=1024, help="bpe only: tokens to learn (>= 257)")
    g = p.add_argument_group("model (a new model; --init-from and --resume take the saved one's)")
    g.add_argument("--n-layer", type=positive_int, help="transformer blocks (default 4)")
    g.add_argument("--n-head", type=positive_int, help="attention heads per block (default 4)")
    g.add_argument("--n-embd", type=positive_int, help="channels of the residual stream (default 128)")
    g.add_argument(
        "--block-size",
        type=positive_int,
        help="tokens of context per training window (default 64; with --init-from min(n_ctx, 256))",
    )
    g.add_argument("--dropout", type=nonnegative_float, default=0.0, help="dropout probability while training")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=positive_int, default=12, help="windows per micro-batch")
    g.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches averaged into each optimizer step")
    g.add_argument("--max-steps", type=positive_int, default=2000, help="optimizer steps to train to")
    g.add_argument("--lr", type=nonnegative_float, default=1e-3, help="peak learning rate")
    g.add_argument("--min-lr", type=nonnegative_float, default=1e-4, help="learning rate at the end of the decay")
    g.add_argument("--warmup-steps", type=nonnegative_int, default=100, help="steps of linear warmup")
    g.add_argument(
        "--lr-decay-steps", type=positive_int, default=None, help="length of the cosine schedule (default: --max-steps)"
    )
    g.add_argument("--beta1", type=nonnegative_float, default=0.9, help="AdamW's first-moment decay")
    g.add_argument("--beta2", type=nonnegative_float, default=0.95, help="AdamW's second-moment decay")
    g.add_argument("--weight-decay", type=nonnegative_float, default=0.1, help="AdamW's decay of 2-D weights")
    g.add_argument("--grad-clip", type=nonnegative_float, default=1.0, help="largest gradient norm; 0 turns it off")
    g = p.add_argument_group("evaluation, logging and checkpoints")
    g.add_argument(
        "--eval-interval", type=positive_int, default=250, help="steps between evaluations (and checkpoints)"
    )
    g.add_argument("--eval-steps", type=positive_int, default=20, help="batches per loss estimate")
    g.add_argument("--log-interval", type=positive_int, default=10, help="steps between training-loss rows in log.csv")
    g.add_argument(
        "--sample-every", type=nonnegative_int, default=0, help="print a short sample every N steps (0: off)"
    )
    g.add_argument("--sample-prompt", metavar="TEXT", help="the samples' prompt (default: the start of --data)")
    g.add_argument("--seed", type=int, default=0, help="random seed of the model, the batches and dropout")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --out with its saved flags; a flag that would change its weights' path is "
        "refused (--max-steps and --lr-decay-steps extend it)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    g = p.add_argument_group("LoRA (with --init-from: the model stays frozen; small adapters train beside it)")
    g.add_argument(
        "--lora-rank",
        type=positive_int,
        metavar="R",
        help="train adapters A (in, R) and B (R, out) beside each targeted layer's weight W, which stays frozen: "
        "the layer computes x @ W + b + (alpha / R) * (x @ A) @ B",
    )
    g.add_argument("--lora-alpha", type=positive_float, metavar="A", help="the adapters' scale alpha (default: R)")
    g.add_argument(
        "--lora-targets",
        metavar="NAMES",
        help="comma-separated layers to adapt: c_attn, c_proj, c_fc, or longer names such as mlp.c_proj "
        f"(default {','.join(lora.DEFAULT_TARGETS)})",
    )
    g.add_argument("--quantize", help=argparse.SUPPRESS)  # refused in one line: training needs float32 weights
    p.set_defaults(run=run)
    return p


def given_flags(argv: list[str]) -> set[str]:
    """The flags (by dest) that argv sets itself, as opposed to their defaults."""
    p = parser("train")
    for action in p._actions:
        action.default, action.required = argparse.SUPPRESS, False
    return set(vars(p.parse_args(argv)))


def take_saved_settings(args: argparse.Namespace, out: Path) -> None:
    """--resume: every flag the run saved and this command does not give comes back from train_state;
    a given flag that differs is refused (it would change what the run computes), except those that
    extend the run, and the sampling ones, which only print."""
    if not (out / STATE_FILE).is_file():
        raise CLIError(f"--resume: {out} holds no training state ({STATE_FILE}) to resume")
    settings = read_state_meta(out / STATE_FILE, read_model_config(out).n_ctx).settings
    given = given_flags(args.argv) if hasattr(args, "argv") else set(vars(args))
    for flag, value in settings.items():
        if flag not in given:
            setattr(args, flag, value)
        elif getattr(args, flag) != value and flag not in CHANGEABLE_ON_RESUME:
            option = "--" + flag.replace("_", "-")
            was = f"without {option}" if value is None else f"with {option} {value}"
            raise CLIError(
                f"--resume: {out} was trained {was}, not {getattr(args, flag)}; "
                f"drop {option} to continue as it was (--max-steps and --lr-decay-steps extend a run)"
            )


def check_flags(args: argparse.Namespace) -> None:
    if not args.data:
        raise CLIError("the following arguments are required: --data")
    if args.lora_rank is None:
        if given := [f for f in ("lora_alpha", "lora_targets") if getattr(args, f) is not None]:
            raise CLIError(f"--{given[0].replace('_', '-')} needs --lora-rank")
    elif not (args.init_from or args.resume):
        raise CLIError("--lora-rank adapts a trained model, which stays frozen: give it with --init-from DIR|NAME")
    given = [f for f in MODEL_FLAGS if getattr(args, f) is not None]
    if args.init_from and given:
        raise CLIError(
            f"--init-from uses the config and tokenizer of {args.init_from}: drop --{given[0].replace('_', '-')}"
        )
    if not (args.init_from or args.resume):
        for flag, value in FRESH_DEFAULTS.items():
            setattr(args, flag, value if getattr(args, flag) is None else getattr(args, flag))
    if args.n_embd and args.n_head and args.n_embd % args.n_head:
        raise CLIError(f"--n-embd {args.n_embd} is not divisible by --n-head {args.n_head}")
    if args.tokenizer == "bpe" and args.vocab_size < 257 and not args.resume:
        raise CLIError(
            f"--vocab-size {args.vocab_size} is too small for byte-level BPE: it needs the "
            "256 bytes and <|endoftext|>, at least 257"
        )
    if not args.dropout < 1:
        raise CLIError(f"--dropout {args.dropout} must be below 1")
    for flag in ("beta1", "beta2"):
        if not getattr(args, flag) < 1:
            raise CLIError(f"--{flag} {getattr(args, flag)} must be below 1")
    if args.min_lr > args.lr:
        raise CLIError(f"--min-lr {args.min_lr} is above --lr {args.lr}")


def build_tokenizer(kind: str, text: str, vocab_size: int) -> Tokenizer:
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "word":
        return WordTokenizer.train(text)
    from .bpe import BPETokenizer

    return BPETokenizer.train(text, vocab_size)


def split(tokens: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """90% of the stream for training, the last 10% for validation; each must hold a window."""
    n = int(len(tokens) * 0.9)
    train, val = tokens[:n], tokens[n:]
    if len(val) <= block:
        need = math.ceil((block + 1) / 0.1)
        raise CLIError(
            f"the text is {len(tokens)} tokens long; with --block-size {block} the 10% "
            f"validation split needs at least {need} tokens (lower --block-size or add text)"
        )
    return train, val


def prepare(args: argparse.Namespace, out: Path, text: str) -> tuple[GPT, Tokenizer]:
    """A fresh model and tokenizer, the ones of --init-from, or the ones in --out for --resume; sets
    args.block_size where it was left to the model."""
    if args.resume:
        cfg = read_model_config(out)
        tok = load_tokenizer(out)
        block = read_state_meta(out / STATE_FILE, cfg.n_ctx).block_size
        saved: dict[str, object] = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=block)
        saved["tokenizer"] = tok.kind
        for flag, value in saved.items():
            if getattr(args, flag) not in (None, value):
                raise CLIError(
                    f"--resume: {out} was trained with --{flag.replace('_', '-')} {value}, not {getattr(args, flag)}"
                )
            setattr(args, flag, value)
        cfg.dropout = args.dropout
        check_memory(args, cfg)
        if lora.is_adapter_directory(out):  # the base model, frozen, and the adapters; train_state has the rest
            model = GPT.from_pretrained(out)
            model.config.dropout = args.dropout
            return model, tok
        if args.lora_rank:
            raise CLIError(f"--resume: {out} is a full fine-tune, not a LoRA run: drop --lora-rank")
        return GPT(cfg, seed=args.seed), tok
    if (out / STATE_FILE).exists():
        raise CLIError(f"{out} already holds a training run; add --resume to continue it, or choose another --out")
    if args.init_from:
        cfg = read_model_config(args.init_from)
        args.block_size = args.block_size or min(cfg.n_ctx, 256)
        if args.block_size > cfg.n_ctx:
            raise CLIError(f"--block-size {args.block_size} is above the context of {args.init_from} ({cfg.n_ctx})")
        adapters = lora_config(args, cfg)
        check_memory(args, cfg, adapters)
        model, tok = load_model(args.init_from)  # adapters in it are merged: a model like any other
        model.config.dropout = args.dropout
        model.rng = np.random.default_rng(args.seed)
        if adapters is not None:
            model.add_lora(adapters, seed=args.seed)
        return model, tok
    tok = build_tokenizer(args.tokenizer, text, args.vocab_size)
    cfg = GPTConfig(
        vocab_size=tok.vocab_size,
        n_ctx=args.block_size,
        n_embd=args.n_embd,
        n_head=args.n_head,
        n_layer=args.n_layer,
        dropout=args.dropout,
    )
    check_memory(args, cfg)
    return GPT(cfg, seed=args.seed), tok


def lora_config(args: argparse.Namespace, cfg: GPTConfig) -> LoRAConfig | None:
    """--lora-*'s adapters for the model of --init-from (None without --lora-rank), checked against cfg.
    The base is named as PEFT will look for it: a model's name, or the directory's absolute path."""
    if args.lora_rank is None:
        return None
    if lora.is_adapter_directory(args.init_from):
        raise CLIError(
            f"--lora-rank: {args.base_model} holds LoRA adapters; merge them into a model first "
            f"(python -m simple_llm merge --model {args.base_model} --out DIR) and start from DIR"
        )
    args.lora_targets = args.lora_targets or ",".join(lora.DEFAULT_TARGETS)
    args.lora_alpha = args.lora_alpha or args.lora_rank
    targets = tuple(t.strip() for t in args.lora_targets.split(","))
    try:
        config = LoRAConfig(args.lora_rank, args.lora_alpha, targets, args.base_model)
        config.shapes(cfg)
    except ValueError as exc:
        raise CLIError(f"--lora-targets: {exc}") from None
    return config


def check_memory(args: argparse.Namespace, cfg: GPTConfig, adapters: LoRAConfig | None = None) -> None:
    """Sets args.memory to the run's estimated peak; refuses a run that cannot fit in this machine."""
    if adapters is None and args.lora_rank:  # --resume of a LoRA run
        adapters = LoRAConfig(args.lora_rank, args.lora_alpha, tuple(args.lora_targets.split(",")))
    trained = None if adapters is None else sum(a * b for a, b in adapters.shapes(cfg).values())
    shards = shard_count(cfg, args.batch_size, args.block_size)
    args.memory = training_bytes(cfg, args.batch_size, args.block_size, args.grad_accum, shards, trained)
    free = available_bytes()
    if free is not None and args.memory > free:
        raise CLIError(
            f"this run needs about {gigabytes(args.memory)} of memory and the machine has {gigabytes(free)} "
            "available: choose a smaller model (--n-embd, --n-layer), --batch-size or --block-size"
        )


def encode(tok: Tokenizer, text: str) -> np.ndarray:
    try:
        return np.asarray(tok.encode(text), dtype=np.int64)
    except ValueError as exc:  # a character the saved tokenizer has never seen (--resume on new text)
        raise CLIError(f"cannot tokenize --data with this tokenizer: {exc}") from None


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    if args.quantize:
        raise CLIError(f"--quantize {args.quantize}: a quantized model is for inference and cannot be trained")
    if args.init_from and args.resume:
        raise CLIError("--init-from starts a new run and --resume continues one: give only one")
    if args.init_from:
        given = Path(args.init_from)
        args.base_model = str(given.resolve()) if given.exists() else args.init_from  # LoRA's base, as PEFT finds it
        args.init_from = str(model_directory(args.init_from))
    if args.resume:
        take_saved_settings(args, out)
    check_flags(args)
    text = read_text_file(args.data, "data file")
    model, tok = prepare(args, out, text)
    train, val = split(encode(tok, text), args.block_size)
    trainer = Trainer(args, model, tok, train, val)
    if args.resume:
        if trainer.run.step >= args.max_steps:
            raise CLIError(
                f"--resume: {out} is already at step {trainer.run.step}; give a --max-steps above it to train on"
            )
        print(f"resuming from step {trainer.run.step} of {args.max_steps}", flush=True)
    trained = ""
    if model.lora:
        trained = (
            f" ({model.trainable.flat.size:,} of them trained: LoRA adapters of rank {model.lora.rank}, "
            f"alpha {model.lora.alpha:g}, on {', '.join(model.lora.targets)})"
        )
    print(
        f"{model.n_params:,} parameters{' from ' + args.init_from if args.init_from else ''}{trained}; "
        f"{tok.kind} tokenizer of {tok.vocab_size} tokens; "
        f"{len(train):,} training and {len(val):,} validation tokens; about {gigabytes(args.memory)} of memory",
        flush=True,
    )
    return trainer.fit()
