"""The training loop, nanoGPT's in named steps: next batch, one optimizer step, evaluate, checkpoint.

``train.py`` (the command) builds the model, the tokenizer and the token streams from its flags and
hands them to a Trainer; a fine-tuning run (``--init-from``) and a resumed one run the same loop.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .model import GPT
from .optim import AdamW, clip_grad_norm, lr_at
from .params import Parameters
from .run_files import PLOT_FILE, Run, load_state, plot, save_state, write_log
from .tokenizers import TOKENIZER_FILE, Tokenizer


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


class Diverged(Exception):
    """A loss or weight that is not finite: the run stops, and nothing after it is saved."""


class Interrupted(Exception):
    """Ctrl-C during an evaluation: the evaluation is dropped (a GPT-2's takes a minute)."""


def estimate_loss(
    model: GPT, batches: Batches, steps: int, seed: int, step: int, tick=lambda: None, stop=lambda: False
) -> float:
    """Mean loss over `steps` batches drawn from their own generator (training's stays untouched);
    tick() after each batch, and Interrupted as soon as stop() says so."""
    rng = np.random.default_rng([seed, step])
    losses = []
    for _ in range(steps):
        if stop():
            raise Interrupted
        losses.append(model.loss(*batches.sample(rng)))
        tick()
    return float(np.mean(losses))


def all_finite(a: np.ndarray) -> bool:
    """No NaN or infinity in a (its max and min carry any NaN; no temporary the size of a)."""
    return bool(np.isfinite(a.max()) and np.isfinite(a.min()))


class StopFlag:
    """The first Ctrl-C asks the loop to stop after the current step (and save), or drops an
    evaluation in progress; a second one interrupts at once, leaving the last saved checkpoint as it was."""

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


class Trainer:
    """nanoGPT's training loop in named steps: next_batch, train_step, evaluate, checkpoint."""

    def __init__(self, args: argparse.Namespace, model: GPT, tok: Tokenizer, train: np.ndarray, val: np.ndarray):
        self.args, self.model, self.tok, self.out = args, model, tok, Path(args.out)
        # one draw of batch_size * grad_accum windows per step, cut into micro-batches: the same
        # windows as one batch of that size
        self.train_batches = Batches(train, args.batch_size * args.grad_accum, args.block_size)
        self.val_batches = Batches(val, args.batch_size, args.block_size)
        self.opt = AdamW(  # over the adapters alone for a LoRA run: frozen weights get no moments
            model.trainable, lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8, weight_decay=args.weight_decay
        )
        self.rng = np.random.default_rng(args.seed)  # the training batches
        self.run = load_state(self.out, model, self.opt, self.rng) if args.resume else Run()
        self.decay_steps = args.lr_decay_steps or args.max_steps
        self.opt.lr = self.lr_of_step(self.run.step)  # what step 0's log row shows: warmup's start
        self.saved_step = self.run.step if args.resume else None  # the checkpoint on disk
        self.flag = StopFlag()
        self.tokens_per_s = 0.0
        self.accumulated = model.trainable.like() if args.grad_accum > 1 else None

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

    def lr_of_step(self, step: int) -> float:
        """The learning rate of the update that takes the run from `step` to step + 1."""
        a = self.args
        return lr_at(step, a.lr, a.min_lr, a.warmup_steps, self.decay_steps)

    def train_step(self) -> float:
        """One optimizer step on the next batch; returns its loss. A loss that is not finite changes
        nothing; weights that stop being finite are a Diverged error."""
        a, run = self.args, self.run
        self.opt.lr = self.lr_of_step(run.step)
        loss, grads = self.gradients(*self.next_batch())
        if not math.isfinite(loss):
            raise Diverged(f"the loss is not finite at step {run.step + 1}")
        if a.grad_clip > 0:  # 0: no clipping
            clip_grad_norm(grads, a.grad_clip)
        self.opt.step(grads)
        run.step += 1
        if not all_finite(self.model.trainable.flat):  # frozen weights do not change
            raise Diverged(f"the weights are not finite after step {run.step}")
        return loss

    def evaluate(self) -> tuple[float, float]:
        """(train, validation) loss, each a mean over --eval-steps batches of their own generator,
        with a progress bar (a GPT-2's evaluation takes a minute); Interrupted on Ctrl-C."""
        from tqdm import tqdm

        a, step = self.args, self.run.step
        with tqdm(
            total=2 * a.eval_steps, desc=f"evaluating step {step}", unit="batch", leave=False,
            disable=a.no_progress, dynamic_ncols=True, file=sys.stderr,
        ) as bar:  # fmt: skip
            tick, stop = (lambda: bar.update(1)), (lambda: self.flag.stop)
            return (
                estimate_loss(self.model, self.train_batches, a.eval_steps, a.seed, step, tick, stop),
                estimate_loss(self.model, self.val_batches, a.eval_steps, a.seed + 1, step, tick, stop),
            )

    def log_evaluation(self) -> None:
        """Evaluate and log; a loss that is not finite is a Diverged error (the weights are broken)."""
        train_loss, val_loss = self.evaluate()
        run = self.run
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise Diverged(f"the evaluated loss is not finite at step {run.step}")
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
        """Everything in --out, each file atomically; train_state first: alone it is enough to resume.
        Only finite weights get here (train_step and log_evaluation check)."""
        self.out.mkdir(parents=True, exist_ok=True)
        save_state(self.out, self.model, self.opt, self.rng, self.run, self.args.block_size, vars(self.args))
        if not (self.out / TOKENIZER_FILE).exists():
            self.tok.save(self.out / TOKENIZER_FILE)
        self.model.save_pretrained(self.out, eos_token_id=self.tok.eos_id)
        write_log(self.out, self.run.log)
        plot(self.out / PLOT_FILE, self.run.log)
        self.saved_step = self.run.step

    def kept(self) -> str:
        """What is on disk now, for a message about a run that stopped."""
        if self.saved_step is None:
            return f"nothing was saved in {self.out}"
        return f"the checkpoint of step {self.saved_step} in {self.out} is kept"

    def fit(self) -> int:
        """Train to --max-steps (or the first Ctrl-C, after which the step in progress finishes and
        everything is saved); the command's exit status: 0, 1 for a run that diverged (the last
        finite checkpoint stays), 130 for a Ctrl-C before the first step (nothing saved)."""
        from tqdm import tqdm

        a, run = self.args, self.run
        start_step, training_seconds, started = run.step, 0.0, time.perf_counter()
        tokens_per_step = a.batch_size * a.grad_accum * a.block_size  # every micro-batch counts
        # NumPy's overflow warnings would bury the one line that a diverging run gets
        with self.flag, np.errstate(all="ignore"):
            bar = None
            try:
                if run.step == 0:
                    self.log_evaluation()  # where the run starts from (Interrupted only here: see below)
                bar = tqdm(
                    total=a.max_steps, initial=start_step, disable=a.no_progress, unit="step",
                    dynamic_ncols=True, file=sys.stderr,
                )  # fmt: skip
                while run.step < a.max_steps and not self.flag.stop:
                    step_start = time.perf_counter()
                    loss = self.train_step()
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
                        with contextlib.suppress(Interrupted):  # Ctrl-C: saved without this evaluation
                            self.log_evaluation()
                        self.checkpoint()
            except Interrupted:
                print(f"Interrupted before the first step; {self.kept()}", file=sys.stderr)
                return 130
            except Diverged as exc:
                if bar is not None:
                    bar.close()
                print(
                    f"simple_llm train: error: {exc} (learning rate {self.opt.lr:.3g}); {self.kept()}", file=sys.stderr
                )
                return 1
            bar.close()
            if self.flag.stop:
                if self.saved_step != run.step:
                    self.checkpoint()
                print(f"Interrupted at step {run.step}; saved in {self.out}. Continue with:\n  {resume_command(a)}")
                return 0
        print(
            f"done: {run.step} steps; best validation loss {run.best_val:.4f}; "
            f"{time.perf_counter() - started:.1f} s in all, {self.tokens_per_s:,.0f} tokens/s while training. "
            f"Saved in {self.out}"
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
