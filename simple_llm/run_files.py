"""The files of a training run besides the model: ``train_state`` (everything ``--resume`` needs),
``log.csv`` and ``loss.png``. Each is written atomically; each is checked when read back."""

from __future__ import annotations

import csv
import io
import json
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


def saved_block_size(directory: Path) -> int | None:
    """The --block-size that the run in directory trained with (None: not recorded, or unreadable)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(directory / STATE_FILE), framework="numpy") as f:
            return int((f.metadata() or {})["block_size"])
    except (SafetensorError, OSError, KeyError, ValueError):
        return None


@dataclass
class Run:
    """What a checkpoint holds beyond the weights."""

    step: int = 0  # steps completed
    best_val: float = float("inf")
    log: list[dict] = field(default_factory=list)


def save_state(directory: Path, model: GPT, opt: AdamW, rng: np.random.Generator, run: Run, block_size: int) -> None:
    """train_state: everything needed to continue exactly, in one safetensors file."""
    tensors = {"params": model.params.flat}
    for i, (m, v) in enumerate(zip(opt.m, opt.v)):
        tensors[f"adam_m.{i}"], tensors[f"adam_v.{i}"] = m, v
    meta = {
        "format": "simple_llm train_state 1",
        "step": str(run.step),
        "adam_t": str(opt.t),
        "best_val": repr(run.best_val),
        "rng": json.dumps(rng.bit_generator.state),
        "dropout_rng": json.dumps(model.rng.bit_generator.state),
        "block_size": str(block_size),
    }
    write_safetensors(directory / STATE_FILE, tensors, meta)


def load_state(directory: Path, model: GPT, opt: AdamW, rng: np.random.Generator) -> Run:
    from safetensors import SafetensorError, safe_open

    path = directory / STATE_FILE
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "simple_llm train_state 1":
                raise CLIError(f"{path} is not a simple_llm training state")
            params = f.get_tensor("params")
            if params.shape != model.params.flat.shape:
                raise CLIError(f"--resume: {path} does not match the model in {directory / CONFIG_FILE}")
            model.params.flat[...] = params
            for i in range(len(opt.m)):
                opt.m[i][...] = f.get_tensor(f"adam_m.{i}")
                opt.v[i][...] = f.get_tensor(f"adam_v.{i}")
            opt.t = int(meta["adam_t"])
            rng.bit_generator.state = json.loads(meta["rng"])
            model.rng.bit_generator.state = json.loads(meta["dropout_rng"])
            run = Run(step=int(meta["step"]), best_val=float(meta["best_val"]))
    except (SafetensorError, KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, CLIError):
            raise
        raise CLIError(f"--resume: {path} is damaged ({exc})") from None
    run.log = read_log(directory / LOG_FILE, run.step)
    return run


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
        raise CLIError(
            f"--resume: {path} is damaged ({type(exc).__name__}: {exc}); remove it to start a new log"
        ) from None
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


def plot(directory: Path, log: list[dict]) -> bool:
    """loss.png: training and validation loss against step. False when matplotlib is missing."""
    try:
        fig = plotting.figure(figsize=(7, 4), dpi=100)
    except ImportError:
        return False
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
    with atomic_path(directory / PLOT_FILE) as tmp:
        fig.savefig(tmp, format="png")
    return True
