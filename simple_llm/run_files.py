"""The files of a training run besides the model: ``train_state`` (everything ``--resume`` needs),
``log.csv`` and ``loss.png``. Each is written atomically; each is checked when read back."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import plotting
from .checkpoint import CONFIG_FILE
from .cli_args import CLIError
from .fileio import atomic_path, atomic_write_text, write_safetensors
from .model import GPT
from .optim import AdamW

STATE_FILE = "train_state"
LOG_FILE = "log.csv"
PLOT_FILE = "loss.png"
LOG_COLUMNS = ["step", "lr", "train_loss", "val_loss", "tokens_per_s"]


STATE_FORMAT = "simple_llm train_state 1"
# the flags of `train` that a run saves and `--resume` takes back (the model's shape is in config.json)
SETTINGS = (
    "data", "batch_size", "grad_accum", "max_steps", "lr", "min_lr", "warmup_steps", "lr_decay_steps",
    "beta1", "beta2", "weight_decay", "grad_clip", "dropout", "eval_interval", "eval_steps", "log_interval",
    "seed", "sample_every", "sample_prompt", "lora_rank", "lora_alpha", "lora_targets",
)  # fmt: skip


@dataclass
class Run:
    """What a checkpoint holds beyond the weights."""

    step: int = 0  # steps completed
    best_val: float = float("inf")
    log: list[dict] = field(default_factory=list)


@dataclass
class StateMeta:
    """train_state's metadata, every field checked."""

    step: int
    adam_t: int
    best_val: float
    rng: dict
    dropout_rng: dict
    block_size: int
    settings: dict  # SETTINGS -> value; {} in a state saved before settings were


def _whole(meta: dict, name: str, low: int) -> int:
    text = meta.get(name)
    if not isinstance(text, str) or not text.isdecimal() or int(text) < low:
        raise ValueError(f"{name} {text!r} is not a whole number >= {low}")
    return int(text)


def _json_object(meta: dict, name: str) -> dict:
    try:
        value = json.loads(meta.get(name, ""))
    except (json.JSONDecodeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise ValueError(f"{name} is not a JSON object")
    return value


def read_state_meta(path: Path, n_ctx: int) -> StateMeta:
    """The checked metadata of train_state at path; a damaged or lying field is a CLIError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CLIError(f"--resume: {path} is damaged ({exc})") from None
    if meta.get("format") != STATE_FORMAT:
        raise CLIError(f"{path} is not a simple_llm training state")
    try:
        step = _whole(meta, "step", 0)
        adam_t = _whole(meta, "adam_t", 0)
        if adam_t != step:  # one AdamW update per step, from step 0
            raise ValueError(f"adam_t {adam_t} is not the step, {step}")
        try:
            best_val = float(meta.get("best_val", ""))
        except ValueError:
            best_val = math.nan
        if not best_val >= 0:  # a cross-entropy; inf before the first evaluation
            raise ValueError(f"best_val {meta.get('best_val')!r} is not a loss >= 0")
        block_size = _whole(meta, "block_size", 1)
        if block_size > n_ctx:
            raise ValueError(f"block_size {block_size} is above the model's context, {n_ctx}")
        settings = _json_object(meta, "settings") if "settings" in meta else {}
        if unknown := sorted(set(settings) - set(SETTINGS)):
            raise ValueError(f"settings has an unknown flag, {unknown[0]!r}")
        return StateMeta(
            step, adam_t, best_val, _json_object(meta, "rng"), _json_object(meta, "dropout_rng"), block_size, settings
        )
    except ValueError as exc:
        raise CLIError(f"--resume: {path} is damaged: {exc}") from None


def save_state(
    directory: Path, model: GPT, opt: AdamW, rng: np.random.Generator, run: Run, block_size: int, settings: dict
) -> None:
    """train_state: everything needed to continue exactly, in one safetensors file."""
    tensors = {"params": model.trainable.flat}  # a LoRA run's adapters: its base is saved elsewhere
    for i, (m, v) in enumerate(zip(opt.m, opt.v)):
        tensors[f"adam_m.{i}"], tensors[f"adam_v.{i}"] = m, v
    meta = {
        "format": STATE_FORMAT,
        "step": str(run.step),
        "adam_t": str(opt.t),
        "best_val": repr(run.best_val),
        "rng": json.dumps(rng.bit_generator.state),
        "dropout_rng": json.dumps(model.rng.bit_generator.state),
        "block_size": str(block_size),
        "settings": json.dumps({k: settings[k] for k in SETTINGS}),
    }
    write_safetensors(directory / STATE_FILE, tensors, meta)


def load_state(directory: Path, model: GPT, opt: AdamW, rng: np.random.Generator) -> Run:
    from safetensors import SafetensorError, safe_open

    path = directory / STATE_FILE
    meta = read_state_meta(path, model.config.n_ctx)
    try:
        with safe_open(str(path), framework="numpy") as f:
            for name, target in [("params", model.trainable.flat), *_moments(opt)]:
                tensor = f.get_tensor(name)
                if tensor.shape != target.shape:  # assigning would broadcast a smaller one
                    raise CLIError(f"--resume: {path} does not match the model in {directory / CONFIG_FILE} ({name})")
                target[...] = tensor
            opt.t = meta.adam_t
            rng.bit_generator.state = meta.rng
            model.rng.bit_generator.state = meta.dropout_rng
    except (SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise CLIError(f"--resume: {path} is damaged ({exc})") from None
    run = Run(step=meta.step, best_val=meta.best_val)
    try:
        run.log = read_log(directory / LOG_FILE, run.step)
    except CLIError as exc:
        raise CLIError(f"--resume: {exc}") from None
    return run


def _moments(opt: AdamW) -> list[tuple[str, np.ndarray]]:
    return [(f"adam_{kind}.{i}", a) for i in range(len(opt.m)) for kind, a in (("m", opt.m[i]), ("v", opt.v[i]))]


def read_log(path: Path, last_step: float) -> list[dict]:
    """The rows of log.csv up to last_step (none if there is no file); a damaged file is a CLIError."""
    if not path.exists():
        return []
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        log: list[dict] = [
            {k: None if k == "val_loss" and r[k] == "" else float(r[k]) for k in LOG_COLUMNS} for r in rows
        ]
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as exc:
        raise CLIError(f"{path} is damaged ({type(exc).__name__}: {exc}); remove it to start a new log") from None
    return [row for row in log if row["step"] <= last_step]


def write_log(directory: Path, log: list[dict]) -> None:
    """log.csv: an evaluation row has both losses; a training row (every --log-interval steps) has
    the step's own batch loss and no val_loss."""
    out = io.StringIO()
    writer = csv.DictWriter(out, LOG_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in log:
        writer.writerow({k: int(v) if k == "step" else "" if v is None else f"{v:.6g}" for k, v in row.items()})
    atomic_write_text(directory / LOG_FILE, out.getvalue())


def plot(path: Path, log: list[dict]) -> None:
    """loss.png at path: training and validation loss against step (ImportError without matplotlib)."""
    fig = plotting.figure(figsize=(7, 4), dpi=100)
    ax = fig.subplots()
    batches = [r for r in log if r["val_loss"] is None]  # a training row: one batch's loss
    evals = [r for r in log if r["val_loss"] is not None]
    if batches:
        ax.plot([r["step"] for r in batches], [r["train_loss"] for r in batches], alpha=0.4, label="train (one batch)")
    ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], marker="o", label="train (estimate)")
    ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], marker="o", label="validation (estimate)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (cross-entropy, nats)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
