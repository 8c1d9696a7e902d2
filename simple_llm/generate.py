"""``python -m simple_llm generate`` and ``chat``: text from a saved model, streamed as it comes.

A model directory holds config.json + model.safetensors (Hugging Face's GPT-2 format) and its
tokenizer (tokenizer.json, or GPT-2's vocab.json + merges.txt): what ``train`` writes, and what the
real ``gpt2`` checkpoint ships.
"""

from __future__ import annotations

import argparse

from .cli_args import Parser, add_model_flag, add_quantize_flag, add_sampling_flags, positive_int
from .modeldir import load_model
from .session import Session, settings_from


def parser(name: str) -> Parser:
    p = Parser(
        prog=f"simple_llm {name}",
        description="Generate text from a model directory."
        if name == "generate"
        else "Talk to a model directory: one prompt at a time, /help for commands.",
    )
    add_model_flag(p)
    if name == "generate":
        p.add_argument("--prompt", required=True, help="the text to continue")
        p.add_argument(
            "--num-samples", type=positive_int, default=1, metavar="N", help="N samples, separated by --- lines"
        )
        add_sampling_flags(p, max_new_tokens=50)
    else:  # a small model answers greedily with one word over and over: chat samples by default
        add_sampling_flags(p, max_new_tokens=100, temperature=0.8, top_k=40)
    add_quantize_flag(p)
    p.set_defaults(run=run_generate if name == "generate" else run_chat)
    return p


def run_generate(args: argparse.Namespace) -> int:
    model, tok = load_model(args.model, args.quantize)
    session = Session(model, tok, settings_from(args))  # one random stream: the samples differ
    for i in range(args.num_samples):
        if i:
            session.out.write("---\n")
        session.generate(args.prompt, continuation_only=False)
    return 0


def run_chat(args: argparse.Namespace) -> int:
    model, tok = load_model(args.model, args.quantize)
    return Session(model, tok, settings_from(args)).interact()
