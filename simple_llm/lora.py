"""LoRA adapters: their settings, names and shapes, and the two files PEFT reads.

A LoRA fine-tune (``train --init-from M --lora-rank R``) freezes every weight of M and trains, beside
each targeted linear layer's weight W (in, out), two small matrices A (in, R) and B (R, out):
y = x @ W + b + (alpha / R) * (x @ A) @ B (model.LoRALinear). A run's directory holds them as PEFT
saves them, ``adapter_config.json`` + ``adapter_model.safetensors``, which ``PeftModel.from_pretrained``
loads onto transformers' GPT-2. PEFT keeps nn.Linear's (out, in) layout for its adapters, so the file
holds lora_A.weight = A^T (R, in) and lora_B.weight = B^T (out, R); ``fan_in_fan_out`` tells it that
GPT-2's own weights (Conv1D) are (in, out).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import CheckpointError
from .config import GPTConfig
from .fileio import atomic_write_text, read_json_object, write_safetensors

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LINEAR_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # each block's, in order
DEFAULT_TARGETS = ("c_attn",)  # PEFT's default for GPT-2 (LoRA's paper adapts the attention)
PREFIX = "base_model.model.transformer."  # what PEFT puts before transformers' module names


@dataclass(frozen=True)
class LoRAConfig:
    """rank R, alpha, the targeted layers (names or name endings, as PEFT's target_modules: c_proj
    is both attn.c_proj and mlp.c_proj) and the base model (a name, or a directory's absolute path)."""

    rank: int
    alpha: float
    targets: tuple[str, ...] = DEFAULT_TARGETS
    base: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a whole number >= 1, not {self.rank!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a number > 0, not {self.alpha!r}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ValueError(f"LoRA targets must be layer names, not {self.targets!r}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def layers(self, n_layer: int) -> list[str]:
        """The targeted linear layers (h.0.attn.c_attn, ...) in the model's order; a ValueError for a
        target that names none of them."""
        names = [f"h.{i}.{layer}" for i in range(n_layer) for layer in LINEAR_LAYERS]
        for target in self.targets:
            if not any(_is(name, target) for name in names):
                raise ValueError(
                    f"the model has no linear layer {target!r} to adapt (LoRA targets: c_attn, c_proj, c_fc, "
                    "or a longer name ending in one, such as mlp.c_proj or h.0.attn.c_attn)"
                )
        return [name for name in names if any(_is(name, target) for target in self.targets)]

    def shapes(self, cfg: GPTConfig) -> dict[str, tuple[int, int]]:
        """name -> shape of every adapter: LAYER.lora_A (in, R) and LAYER.lora_B (R, out)."""
        weights, shapes = cfg.shapes(), {}
        for layer in self.layers(cfg.n_layer):
            n_in, n_out = weights[layer + ".weight"]
            shapes[layer + ".lora_A"], shapes[layer + ".lora_B"] = (n_in, self.rank), (self.rank, n_out)
        return shapes


def _is(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def is_adapter_directory(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def save(directory: str | os.PathLike, lora: LoRAConfig, adapters: dict[str, np.ndarray]) -> Path:
    """adapter_model.safetensors, then adapter_config.json, as PEFT's save_pretrained writes them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {PREFIX + name + ".weight": np.ascontiguousarray(a.T) for name, a in adapters.items()}
    write_safetensors(directory / ADAPTER_WEIGHTS, tensors, {"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": lora.base,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "target_modules": list(lora.targets),
        "fan_in_fan_out": True,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    atomic_write_text(directory / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")
    return directory


def read_config(directory: str | os.PathLike) -> LoRAConfig:
    """The LoRAConfig of directory/adapter_config.json; a CheckpointError line for anything that
    PEFT would compute differently from model.LoRALinear."""
    path = Path(directory) / ADAPTER_CONFIG
    try:
        raw = read_json_object(path, "LoRA adapter config")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    unsupported = {
        "peft_type": raw.get("peft_type", "LORA") != "LORA",
        "bias": raw.get("bias", "none") != "none",
        "use_rslora": bool(raw.get("use_rslora")),
        "use_dora": bool(raw.get("use_dora")),
        "rank_pattern": bool(raw.get("rank_pattern")),
        "alpha_pattern": bool(raw.get("alpha_pattern")),
        "layers_to_transform": raw.get("layers_to_transform") is not None,
        "modules_to_save": bool(raw.get("modules_to_save")),
    }
    for field, differs in unsupported.items():
        if differs:
            raise CheckpointError(f"{path}: {field} {json.dumps(raw.get(field))} is not supported (plain LoRA only)")
    targets, base = raw.get("target_modules"), raw.get("base_model_name_or_path")
    if not isinstance(targets, list):
        raise CheckpointError(f"{path}: target_modules must be a list of layer names, not {json.dumps(targets)}")
    if not isinstance(base, str) or not base:
        raise CheckpointError(f"{path}: base_model_name_or_path names no base model ({json.dumps(base)})")
    try:
        return LoRAConfig(raw.get("r"), raw.get("lora_alpha", 8), tuple(targets), base)  # type: ignore[arg-type]
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def read_adapters(directory: str | os.PathLike, lora: LoRAConfig, cfg: GPTConfig) -> dict[str, np.ndarray]:
    """name -> adapter (our layout, float32 or float64 as stored) from adapter_model.safetensors,
    every name and shape checked against lora and the base model's cfg."""
    from safetensors import SafetensorError, safe_open

    path = Path(directory) / ADAPTER_WEIGHTS
    try:
        shapes = lora.shapes(cfg)
    except ValueError as exc:
        raise CheckpointError(f"{Path(directory) / ADAPTER_CONFIG}: {exc}") from None
    expected = {PREFIX + name + ".weight": (name, shape[::-1]) for name, shape in shapes.items()}
    adapters: dict[str, Any] = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                if key not in expected:
                    raise CheckpointError(f"{path} has a tensor {key} that {ADAPTER_CONFIG} does not describe")
                tensor = f.get_tensor(key)
                name, shape = expected[key]
                if tensor.shape != shape or tensor.dtype.kind != "f":
                    raise CheckpointError(
                        f"{path}: {key} is {tensor.dtype} {list(tensor.shape)}, expected float {list(shape)} "
                        f"(rank {lora.rank} on a model of n_embd {cfg.n_embd})"
                    )
                adapters[name] = tensor.T
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None
    if missing := [name for name in shapes if name not in adapters]:
        raise CheckpointError(f"{path} has no tensor for {missing[0]}")
    return adapters
