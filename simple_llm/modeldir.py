"""What a model directory holds: config.json + model.safetensors (Hugging Face's GPT-2 format), or
LoRA adapters over a base model (adapter_config.json + adapter_model.safetensors, PEFT's format), and
a tokenizer (our tokenizer.json of any kind, or GPT-2's own vocabulary files; an adapter directory
without one uses its base model's)."""

from __future__ import annotations

import os
from pathlib import Path

from . import lora
from .bpe import BPETokenizer, GPT2Tokenizer
from .checkpoint import read_config
from .config import GPTConfig
from .hub import model_directory
from .model import GPT
from .tokenizers import TOKENIZER_FILE, CharTokenizer, Tokenizer, TokenizerError, WordTokenizer, read_state

KINDS: dict[str, type[Tokenizer]] = {
    "char": CharTokenizer,
    "word": WordTokenizer,
    "bpe": BPETokenizer,
    "gpt2": GPT2Tokenizer,
}


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """The tokenizer saved in a model directory or JSON file.

    Recognises ``tokenizer.json`` (any kind saved by simple_llm) and GPT-2's own vocabulary files,
    ``vocab.json`` + ``merges.txt`` (Hugging Face) or ``encoder.json`` + ``vocab.bpe`` (OpenAI).
    """
    path = Path(path)
    if path.is_dir():
        if (path / TOKENIZER_FILE).is_file():
            path = path / TOKENIZER_FILE
        elif GPT2Tokenizer.files_in(path) is not None:
            return GPT2Tokenizer.from_pretrained(path)
        else:
            raise TokenizerError(
                f"no tokenizer in {path} (expected {TOKENIZER_FILE}, vocab.json + merges.txt, "
                "or encoder.json + vocab.bpe)"
            )
    state = read_state(path)
    kind = state.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise TokenizerError(f"tokenizer file {path} names no known kind ({', '.join(KINDS)}): {kind!r}")
    return KINDS[kind].from_state(state, path)


def base_directory(directory: Path) -> Path:
    """The directory of the model that an adapter directory's adapters go onto."""
    return model_directory(lora.read_config(directory).base)


def read_model_config(directory: str | os.PathLike) -> GPTConfig:
    """The GPTConfig of a model directory, or of an adapter directory's base model."""
    directory = Path(directory)
    return read_config(base_directory(directory) if lora.is_adapter_directory(directory) else directory)


def load_model(directory: str | os.PathLike, quantize: str | None = None) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a model directory, or of a model's name (hub.py: gpt2, owner/name on
    the Hugging Face Hub); a ValueError says what is missing or wrong. quantize="int8" loads the model
    as GPT.quantize makes it (the checkpoint is read as it is). LoRA adapters are merged into their
    base model's weights (the same logits; generation runs the compiled decode step)."""
    directory = model_directory(directory)
    model = GPT.from_pretrained(directory, quantize=quantize)
    if model.lora:
        model.merge_lora()
    has_tokenizer = (directory / TOKENIZER_FILE).is_file() or GPT2Tokenizer.files_in(directory) is not None
    adapters_only = lora.is_adapter_directory(directory) and not has_tokenizer  # as PEFT saves them
    tok = load_tokenizer(base_directory(directory) if adapters_only else directory)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer in {directory} has {tok.vocab_size} tokens but the model only {model.config.vocab_size}"
        )
    return model, tok
