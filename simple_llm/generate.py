"""``python -m simple_llm generate`` and ``chat``: text from a saved model, streamed as it comes.

A model directory holds config.json + model.safetensors (Hugging Face's GPT-2 format) and its
tokenizer (tokenizer.json, or GPT-2's vocab.json + merges.txt): what ``train`` writes, and what the
real ``gpt2`` checkpoint ships.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .cli import Parser, add_sampling_flags
from .model import GPT
from .session import Session, Settings
from .tokenizers import Tokenizer, load_tokenizer


def load_model(directory: str | Path) -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a model directory; a ValueError says what is missing or wrong."""
    model = GPT.from_pretrained(directory)
    tok = load_tokenizer(directory)
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer in {directory} has {tok.vocab_size} tokens but the model only {model.config.vocab_size}"
        )
    return model, tok


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        show_probs=args.show_probs,
    )


def parser(name: str) -> Parser:
    p = Parser(
        prog=f"simple_llm {name}",
        description="Generate text from a model directory."
        if name == "generate"
        else "Talk to a model directory: one prompt at a time, /help for commands.",
    )
    p.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="checkpoint directory: config.json, model.safetensors and a tokenizer",
    )
    if name == "generate":
        p.add_argument("--prompt", required=True, help="the text to continue")
    add_sampling_flags(p, max_new_tokens=50 if name == "generate" else 100)
    p.set_defaults(run=run_generate if name == "generate" else run_chat)
    return p


def run_generate(args: argparse.Namespace) -> int:
    model, tok = load_model(args.model)
    Session(model, tok, settings_from(args)).generate(args.prompt, continuation_only=False)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    model, tok = load_model(args.model)
    return Session(model, tok, settings_from(args)).interact()
