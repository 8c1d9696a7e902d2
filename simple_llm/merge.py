"""``python -m simple_llm merge --model LORA_DIR --out DIR``: fold a LoRA run's adapters into its model.

Each adapted layer's weight becomes W + (alpha / R) * A @ B, and DIR receives a plain GPT-2 checkpoint
(config.json + model.safetensors, which transformers' GPT2LMHeadModel loads) and the tokenizer: the
same logits as the base model with its adapters, with no adapters left to apply.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import lora
from .cli_args import CLIError, Parser, add_model_flag, command_parser
from .hub import model_directory
from .modeldir import load_model


def parser(name: str) -> Parser:
    p = command_parser(name, __doc__)
    add_model_flag(p)
    p.add_argument("--out", required=True, metavar="DIR", help="where the merged model and its tokenizer go")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    directory, out = model_directory(args.model), Path(args.out)
    if not lora.is_adapter_directory(directory):
        raise CLIError(f"{directory} holds no LoRA adapters ({lora.ADAPTER_CONFIG}): there is nothing to merge")
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory")
    if out.exists() and out.resolve() == directory.resolve():
        raise CLIError("--out is the adapters' own directory: choose another, the merged model is a new one")
    model, tok = load_model(directory)  # the adapters merged as it loads
    model.save_pretrained(out, eos_token_id=tok.eos_id)
    tok.save(out)
    print(f"merged {directory} into {out}: {model.n_params:,} parameters")
    return 0
