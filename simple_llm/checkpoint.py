"""Hugging Face GPT-2 checkpoints, both ways: a directory with ``config.json`` + ``model.safetensors``.

Loading checks the config, then every tensor's name, shape and dtype from the file's header, before
it allocates anything; a bad file gives one CheckpointError line that says what is wrong, and no model
(never a half-loaded one). A config that makes transformers compute something other than GPT-2 (another
activation, other attention scaling, another MLP width, an untied output layer) is refused, naming the
field. Saving writes what ``transformers.GPT2LMHeadModel.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .config import GPTConfig
from .fileio import atomic_write_text, read_json_object, write_safetensors
from .params import Parameters

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FLOAT_FORMATS = {"F16": np.float16, "BF16": None, "F32": np.float32, "F64": np.float64}
SKIPPED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # the causal-mask buffers some files store
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")  # transformers' two names for GPT-2's tanh GELU


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says why in one line."""


def read_config(directory: str | os.PathLike) -> GPTConfig:
    """The GPTConfig of ``directory/config.json`` (GPT-2's key names)."""
    return _config(_config_json(directory), Path(directory) / CONFIG_FILE)


def _config_json(directory: str | os.PathLike) -> dict[str, Any]:
    try:
        return read_json_object(Path(directory) / CONFIG_FILE, "GPT-2 config")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def _config(raw: dict[str, Any], path: Path) -> GPTConfig:
    if "n_positions" not in raw and "n_ctx" in raw:
        raw["n_positions"] = raw["n_ctx"]
    missing = [k for k in ("vocab_size", "n_positions", "n_embd", "n_head", "n_layer") if k not in raw]
    if missing:
        raise CheckpointError(f"{path} is not a GPT-2 config: it has no {missing[0]}")
    try:
        cfg = GPTConfig(
            vocab_size=raw["vocab_size"],
            n_ctx=raw["n_positions"],
            n_embd=raw["n_embd"],
            n_head=raw["n_head"],
            n_layer=raw["n_layer"],
            layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    _check_computes_gpt2(raw, cfg, path)
    return cfg


def _check_computes_gpt2(raw: dict[str, Any], cfg: GPTConfig, path: Path) -> None:
    """Refuse the config fields with which transformers computes a different model from ours."""
    n_inner = raw.get("n_inner")
    wrong = {
        "activation_function": raw.get("activation_function", "gelu_new") not in GELU_TANH,
        "scale_attn_weights": raw.get("scale_attn_weights", True) is not True,
        "scale_attn_by_inverse_layer_idx": raw.get("scale_attn_by_inverse_layer_idx", False) is not False,
        "reorder_and_upcast_attn": raw.get("reorder_and_upcast_attn", False) is not False,
        "n_inner": n_inner is not None and n_inner != 4 * cfg.n_embd,
    }
    for field, differs in wrong.items():
        if differs:
            raise CheckpointError(
                f"{path}: {field} {json.dumps(raw.get(field))} is not supported: simple_llm computes "
                "GPT-2's own model (gelu_new, attention scaled by 1/sqrt(head size), n_inner 4 * n_embd)"
            )


def open_checkpoint(
    directory: str | os.PathLike,
) -> tuple[GPTConfig, Callable[[np.dtype], Iterator[tuple[str, np.ndarray]]]]:
    """The config of a checkpoint directory, once its config and the header of its weights have
    passed every check, and a function that reads the weights one at a time, as (parameter name,
    array cast to a dtype): into Parameters of that config, or into an int8 model."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is not a checkpoint directory")
    raw = _config_json(directory)
    cfg = _config(raw, directory / CONFIG_FILE)
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    with _reading(path) as f:
        header = {key: (f.get_slice(key).get_dtype(), tuple(f.get_slice(key).get_shape())) for key in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    _check_layer_count(header, cfg.n_layer, path)  # before listing n_layer layers' names
    names = _match_names(header, cfg.shapes(), path)
    if raw.get("tie_word_embeddings", True) is not True and "lm_head.weight" not in header:
        raise CheckpointError(
            f"{path}: tie_word_embeddings is not true and there is no lm_head.weight; GPT-2's output layer is wte"
        )

    def tensors(dtype: np.dtype) -> Iterator[tuple[str, np.ndarray]]:
        with _tensor_file(path) as read:
            for name, key in names.items():
                yield name, read(key, dtype)
            if "lm_head.weight" in header:  # allowed only as an exact copy of wte (tied)
                head = read("lm_head.weight", np.float64)
                wte = read(names["wte.weight"], np.float64)
                if not np.array_equal(head, wte):
                    raise CheckpointError(
                        f"{path}: lm_head.weight differs from wte.weight; "
                        "only a tied output layer (as GPT-2's) is supported"
                    )

    return cfg, tensors


@contextmanager
def _reading(path: Path) -> Iterator[Any]:
    """safe_open(path), with the library's and the system's errors as one CheckpointError line."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            yield f
    except SafetensorError as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}") from None
    except (OSError, MemoryError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def _check_layer_count(header: dict, n_layer: int, path: Path) -> None:
    layers = {int(m.group(1)) for key in header if (m := re.match(r"(?:transformer\.)?h\.(\d+)\.", key))}
    if len(layers) != n_layer:
        raise CheckpointError(f"{path} holds {len(layers)} layers but {CONFIG_FILE} says n_layer {n_layer}")


def _match_names(header: dict[str, tuple[str, tuple]], expected: dict[str, tuple], path: Path) -> dict[str, str]:
    """parameter name -> key in the file, after every check on names, shapes and dtypes."""
    names: dict[str, str] = {}
    for key, (dtype, shape) in header.items():
        name = key.removeprefix("transformer.")
        if name.endswith(SKIPPED_SUFFIXES) or key == "lm_head.weight":
            if key == "lm_head.weight" and shape != expected["wte.weight"]:
                raise CheckpointError(
                    f"{path}: lm_head.weight has shape {list(shape)}, expected {list(expected['wte.weight'])}"
                )
            continue
        if name not in expected:
            raise CheckpointError(f"{path} has a tensor {key} that GPT-2 does not have")
        if name in names:
            raise CheckpointError(f"{path} holds {name} twice")
        if dtype not in FLOAT_FORMATS:
            raise CheckpointError(f"{path}: tensor {key} has dtype {dtype}; expected F16, BF16, F32 or F64")
        if shape != expected[name]:
            raise CheckpointError(
                f"{path}: tensor {key} has shape {list(shape)}, expected {list(expected[name])} from {CONFIG_FILE}"
            )
        names[name] = key
    for name in expected:
        if name not in names:
            raise CheckpointError(f"{path} has no tensor {name}")
    return names


@contextmanager
def _tensor_file(path: Path) -> Iterator[Callable[[str, Any], np.ndarray]]:
    """read(key, dtype): one tensor of a safetensors file whose header safe_open has checked, read
    with plain reads. Not through safetensors' memory map: every page of it that a read touches counts
    in the process's memory until the file is closed, so loading GPT-2 124M would peak at the whole
    500 MB file on top of the model (on top of its 140 MB of int8 weights, for --quantize int8)."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            meta, base = json.loads(f.read(size)), 8 + size

            def read(key: str, dtype: Any) -> np.ndarray:
                info = meta[key]
                shape, count = tuple(info["shape"]), int(np.prod(info["shape"], dtype=np.int64))
                f.seek(base + info["data_offsets"][0])
                bf16 = info["dtype"] == "BF16"  # the top half of a float32; NumPy has no type for it
                stored = np.dtype("<u2" if bf16 else FLOAT_FORMATS[info["dtype"]]).newbyteorder("<")
                a = np.fromfile(f, dtype=stored, count=count)
                if a.size != count:
                    raise CheckpointError(f"{path}: tensor {key} is cut short")
                if bf16:
                    a = (a.astype(np.uint32) << 16).view(np.float32)
                return a.reshape(shape).astype(dtype, copy=False)

            yield read
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def hf_config(cfg: GPTConfig, eos_token_id: int | None = None) -> dict[str, Any]:
    """config.json as transformers' GPT2Config writes it."""
    eos = eos_token_id if eos_token_id is not None else (50256 if cfg.vocab_size > 50256 else None)
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.n_ctx,
        "n_ctx": cfg.n_ctx,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "n_layer": cfg.n_layer,
        "n_inner": None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "bos_token_id": eos,
        "eos_token_id": eos,
    }


def save(cfg: GPTConfig, params: Parameters, directory: str | os.PathLike, eos_token_id: int | None = None) -> Path:
    """Write config.json + model.safetensors (names as transformers writes them), each atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"transformer.{name}": np.ascontiguousarray(p) for name, p in params.items()}
    write_safetensors(directory / WEIGHTS_FILE, tensors, {"format": "pt"})  # transformers insists on "pt"
    atomic_write_text(directory / CONFIG_FILE, json.dumps(hf_config(cfg, eos_token_id), indent=2) + "\n")
    return directory
