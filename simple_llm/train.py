"""``python -m simple_llm train``: train a GPT-2 on your own text file, checkpoint it, resume it.

The text is tokenized (characters, words or byte-level BPE learned on it, or the tokenizer of the
model that --init-from fine-tunes), the token stream is split 90/10 into training and validation,
and each step trains on --batch-size x --grad-accum random windows of --block-size tokens: AdamW
with warmup, cosine decay and gradient clipping (nanoGPT's loop).

``--out DIR`` receives, each write atomic: config.json + model.safetensors (Hugging Face's GPT-2
format), tokenizer.json, ``train_state`` (weights, AdamW moments, step and random states: everything
``--resume`` needs, in one file written before the others), log.csv and loss.png.
"""

from __future__ import annotations

import argparse
import math
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .checkpoint import read_config
from .cli_args import CLIError, Parser, nonnegative_float, nonnegative_int, positive_int
from .config import GPTConfig
from .fileio import read_text_file
from .model import GPT
from .modeldir import load_model, load_tokenizer
from .optim import AdamW, clip_grad_norm, lr_at
from .params import Parameters
from .run_files import PLOT_FILE, STATE_FILE, Run, load_state, plot, save_state, saved_block_size, write_log
from .tokenizers import TOKENIZER_FILE, CharTokenizer, Tokenizer, WordTokenizer

SHAPE_FLAGS = {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "n_embd", "block_size": "n_ctx"}


class DefaultsHelp(argparse.HelpFormatter):
    """Each flag's help ends with its default, when it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


FRESH_DEFAULTS = dict(tokenizer="char", n_layer=4, n_head=4, n_embd=128, block_size=64)  # a new model's
MODEL_FLAGS = ("tokenizer", "n_layer", "n_head", "n_embd")  # what --init-from and --resume take from DIR


def parser(name: str) -> Parser:
    p = Parser(
        prog=f"simple_llm {name}",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
        formatter_class=DefaultsHelp,
    )
    p.add_argument("--data", required=True, metavar="FILE", help="a UTF-8 text file to learn")
    p.add_argument("--out", required=True, metavar="DIR", help="where the model and its state go")
    p.add_argument(
        "--init-from",
        metavar="DIR",
        help="start from this model directory (a Hugging Face GPT-2 checkpoint or one of ours): its config "
        "and tokenizer are used (fine-tuning)",
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
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(run=run)
    return p


def check_flags(args: argparse.Namespace) -> None:
    given = [f for f in MODEL_FLAGS if getattr(args, f) is not None]
    if args.init_from and args.resume:
        raise CLIError("--init-from starts a new run and --resume continues one: give only one")
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


class Batches:
    """Random windows of a token stream: x (B, T) and the next tokens y (B, T), in reused buffers."""

    def __init__(self, data: np.ndarray, batch: int, block: int):
        self.data, self.block = data, block
        self.offsets = np.arange(block)
        self.x = np.empty((batch, block), dtype=np.int64)
        self.y = np.empty((batch, block), dtype=np.int64)

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        starts = rng.integers(0, len(self.data) - self.block, size=len(self.x))
        window = starts[:, None] + self.offsets  # (B, T)
        np.take(self.data, window, out=self.x)
        np.take(self.data, window + 1, out=self.y)
        return self.x, self.y


def estimate_loss(model: GPT, batches: Batches, steps: int, seed: int, step: int) -> float:
    """Mean loss over `steps` batches drawn from their own generator (training's stays untouched)."""
    rng = np.random.default_rng([seed, step])
    return float(np.mean([model.loss(*batches.sample(rng)) for _ in range(steps)]))


class StopFlag:
    """The first Ctrl-C asks the loop to stop after the current step (and save); a second one
    interrupts at once, leaving the last saved checkpoint as it was."""

    def __init__(self) -> None:
        self.stop = False

    def __enter__(self) -> StopFlag:
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.stop = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)


def prepare(args: argparse.Namespace, out: Path, text: str) -> tuple[GPT, Tokenizer]:
    """A fresh model and tokenizer, the ones of --init-from, or the ones in --out for --resume; sets
    args.block_size where it was left to the model."""
    if args.resume:
        if not (out / STATE_FILE).is_file():
            raise CLIError(f"--resume: {out} holds no training state ({STATE_FILE}) to resume")
        cfg = read_config(out)
        tok = load_tokenizer(out)
        block = saved_block_size(out) or cfg.n_ctx
        saved: dict[str, object] = dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, block_size=block)
        saved["tokenizer"] = tok.kind
        for flag, value in saved.items():
            if getattr(args, flag) not in (None, value):
                raise CLIError(
                    f"--resume: {out} was trained with --{flag.replace('_', '-')} {value}, not {getattr(args, flag)}"
                )
            setattr(args, flag, value)
        cfg.dropout = args.dropout
        return GPT(cfg, seed=args.seed), tok
    if (out / STATE_FILE).exists():
        raise CLIError(f"{out} already holds a training run; add --resume to continue it, or choose another --out")
    if args.init_from:
        model, tok = load_model(args.init_from)
        n_ctx = model.config.n_ctx
        args.block_size = args.block_size or min(n_ctx, 256)
        if args.block_size > n_ctx:
            raise CLIError(f"--block-size {args.block_size} is above the context of {args.init_from} ({n_ctx})")
        model.config.dropout = args.dropout
        model.rng = np.random.default_rng(args.seed)
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
    return GPT(cfg, seed=args.seed), tok


def encode(tok: Tokenizer, text: str) -> np.ndarray:
    try:
        return np.asarray(tok.encode(text), dtype=np.int64)
    except ValueError as exc:  # a character the saved tokenizer has never seen (--resume on new text)
        raise CLIError(f"cannot tokenize --data with this tokenizer: {exc}") from None


class Trainer:
    """nanoGPT's training loop in named steps: next_batch, train_step, evaluate, checkpoint."""

    def __init__(self, args: argparse.Namespace, model: GPT, tok: Tokenizer, train: np.ndarray, val: np.ndarray):
        self.args, self.model, self.tok, self.out = args, model, tok, Path(args.out)
        # one draw of batch_size * grad_accum windows per step, cut into micro-batches: the same
        # windows as one batch of that size
        self.train_batches = Batches(train, args.batch_size * args.grad_accum, args.block_size)
        self.val_batches = Batches(val, args.batch_size, args.block_size)
        self.opt = AdamW(
            model.params, lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8, weight_decay=args.weight_decay
        )
        self.rng = np.random.default_rng(args.seed)  # the training batches
        self.run = load_state(self.out, model, self.opt, self.rng) if args.resume else Run()
        self.decay_steps = args.lr_decay_steps or args.max_steps
        self.tokens_per_s = 0.0
        self.accumulated = model.params.like() if args.grad_accum > 1 else None

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        return self.train_batches.sample(self.rng)

    def gradients(self, x: np.ndarray, y: np.ndarray) -> tuple[float, Parameters]:
        """Mean loss and gradient over the windows x, y, as --grad-accum micro-batches of --batch-size."""
        if self.accumulated is None:
            return self.model.loss_and_grads(x, y)
        B, n, total = self.args.batch_size, self.args.grad_accum, self.accumulated.flat
        losses = []
        for k in range(n):
            loss, grads = self.model.loss_and_grads(x[k * B : (k + 1) * B], y[k * B : (k + 1) * B])
            losses.append(loss)
            if k == 0:
                total[...] = grads.flat
            else:
                total += grads.flat
        total *= 1.0 / n  # every window is whole, so the mean of the micro-batches' means is the mean
        return float(np.mean(losses)), self.accumulated

    def train_step(self) -> float:
        """One optimizer step on the next batch; returns its loss (not finite: nothing was changed)."""
        a, run = self.args, self.run
        self.opt.lr = lr_at(run.step, a.lr, a.min_lr, a.warmup_steps, self.decay_steps)
        loss, grads = self.gradients(*self.next_batch())
        if not math.isfinite(loss):
            return loss
        if a.grad_clip > 0:
            clip_grad_norm(grads, a.grad_clip)
        self.opt.step(grads)
        run.step += 1
        return loss

    def evaluate(self) -> tuple[float, float]:
        """(train, validation) loss, each a mean over --eval-steps batches of their own generator."""
        a, step = self.args, self.run.step
        return (
            estimate_loss(self.model, self.train_batches, a.eval_steps, a.seed, step),
            estimate_loss(self.model, self.val_batches, a.eval_steps, a.seed + 1, step),
        )

    def log_evaluation(self) -> None:
        train_loss, val_loss = self.evaluate()
        run = self.run
        run.best_val = min(run.best_val, val_loss)
        run.log.append(
            dict(
                step=run.step, lr=self.opt.lr, train_loss=train_loss, val_loss=val_loss, tokens_per_s=self.tokens_per_s
            )
        )
        from tqdm import tqdm

        tqdm.write(f"step {run.step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")

    def log_training(self, loss: float) -> None:
        row = dict(step=self.run.step, lr=self.opt.lr, train_loss=loss, val_loss=None, tokens_per_s=self.tokens_per_s)
        self.run.log.append(row)

    def sample(self) -> str:
        """A short sample from --sample-prompt, drawn from its own generator (training's stays untouched)."""
        a, tok = self.args, self.tok
        ids = tok.encode(a.sample_prompt) if a.sample_prompt else self.train_batches.data[:8].tolist()
        ids = (ids or [tok.eos_id or 0])[-self.model.config.n_ctx :]
        rng = np.random.default_rng([a.seed, self.run.step, 2])
        out = self.model.generate(np.array([ids]), 48, temperature=0.8, top_k=40, seed=rng, stop_token=tok.eos_id)
        return tok.decode(ids + [int(t) for t in out[0, len(ids) :] if t != tok.eos_id])

    def checkpoint(self) -> None:
        """Everything in --out, each file atomically; train_state first: alone it is enough to resume."""
        save_state(self.out, self.model, self.opt, self.rng, self.run, self.args.block_size)
        self.model.save_pretrained(self.out, eos_token_id=self.tok.eos_id)
        write_log(self.out, self.run.log)
        plot(self.out, self.run.log)

    def fit(self) -> int:
        """Train to --max-steps (or the first Ctrl-C, after which the step in progress finishes and
        everything is saved); the command's exit status."""
        from tqdm import tqdm

        a, run = self.args, self.run
        start_step, training_seconds, started = run.step, 0.0, time.perf_counter()
        tokens_per_step = a.batch_size * a.grad_accum * a.block_size  # every micro-batch counts
        if run.step == 0:
            self.log_evaluation()  # where the run starts from
        bar = tqdm(
            total=a.max_steps,
            initial=start_step,
            disable=a.no_progress,
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        # NumPy's overflow warnings would bury the one line that a diverging run gets (below)
        with StopFlag() as flag, np.errstate(all="ignore"):
            while run.step < a.max_steps and not flag.stop:
                step_start = time.perf_counter()
                loss = self.train_step()
                if not math.isfinite(loss):
                    bar.close()
                    print(
                        f"simple_llm train: error: loss is not finite at step {run.step + 1} "
                        f"(learning rate {self.opt.lr:.3g}); the last checkpoint in {self.out} is kept",
                        file=sys.stderr,
                    )
                    return 1
                training_seconds += time.perf_counter() - step_start
                self.tokens_per_s = (run.step - start_step) * tokens_per_step / training_seconds
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.4f}", lr=f"{self.opt.lr:.2e}", tok_s=f"{self.tokens_per_s:,.0f}", refresh=False
                )
                if run.step % a.log_interval == 0:
                    self.log_training(loss)
                if a.sample_every and run.step % a.sample_every == 0:
                    tqdm.write(f"sample at step {run.step}: {self.sample()!r}")
                if run.step % a.eval_interval == 0 or run.step == a.max_steps:
                    self.log_evaluation()
                    self.checkpoint()
        bar.close()
        if flag.stop:
            self.checkpoint()
            print(f"Interrupted at step {run.step}; saved in {self.out}. Continue with:\n  {resume_command(a)}")
            return 0
        have_plot = (self.out / PLOT_FILE).exists()
        print(
            f"done: {run.step} steps; best validation loss {run.best_val:.4f}; "
            f"{time.perf_counter() - started:.1f} s in all, {self.tokens_per_s:,.0f} tokens/s while training. "
            f"Saved in {self.out}" + ("" if have_plot else " (pip install matplotlib for loss.png)")
        )
        return 0


def resume_command(args: argparse.Namespace) -> str:
    """The whole command line that continues this run: the flags it was started with, plus --resume."""
    words = list(getattr(args, "argv", None) or ["--data", args.data, "--out", args.out])
    if "--init-from" in words:  # the run now lives in --out
        i = words.index("--init-from")
        del words[i : i + 2]
    if "--resume" not in words:
        words.append("--resume")
    return shlex.join(["python", "-m", "simple_llm", "train", *words])


def run(args: argparse.Namespace) -> int:
    check_flags(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
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
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        tok.save(out / TOKENIZER_FILE)
    print(
        f"{model.n_params:,} parameters{' from ' + args.init_from if args.init_from else ''}; "
        f"{tok.kind} tokenizer of {tok.vocab_size} tokens; "
        f"{len(train):,} training and {len(val):,} validation tokens",
        flush=True,
    )
    return trainer.fit()
