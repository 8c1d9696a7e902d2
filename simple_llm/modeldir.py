"""What a model directory holds: config.json + model.safetensors (Hugging Face's GPT-2 format) and a
tokenizer (our tokenizer.json of any kind, or GPT-2's own vocabulary files)."""

from __future__ import annotations

import os
from pathlib import Path

from .bpe import BPETokenizer, GPT2Tokenizer
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


def load_model(directory: str | os.PathLike, quantize: str | None = None) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a model directory, or of a model's name (hub.py: gpt2, owner/name on
    the Hugging Face Hub); a ValueError says what is missing or wrong. quantize="int8" loads the model
    as GPT.quantize makes it (the checkpoint is read as it is)."""
    directory = model_directory(directory)
    model = GPT.from_pretrained(directory, quantize=quantize)
    tok = load_tokenizer(directory)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer in {directory} has {tok.vocab_size} tokens but the model only {model.config.vocab_size}"
        )
    return model, tok
