"""``python -m simple_llm generate`` and ``chat``: text from a saved model, streamed as it comes.

A model directory holds config.json + model.safetensors (Hugging Face's GPT-2 format) and its
tokenizer (tokenizer.json, or GPT-2's vocab.json + merges.txt): what ``train`` writes, and what the
real ``gpt2`` checkpoint ships.
"""

from __future__ import annotations

import argparse

from .cli_args import Parser, add_sampling_flags
from .modeldir import load_model
from .session import Session, settings_from


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
