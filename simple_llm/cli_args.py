"""What every command's parser shares: one-line usage errors, argument types, the sampling flags.

The command modules import this (never cli.py, never each other); cli.py dispatches to them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NoReturn

from .int8 import KINDS


class CLIError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


class DefaultsHelp(argparse.HelpFormatter):
    """Each flag's help ends with its default, unless it says it already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        has_default = action.default is not None and action.default is not False  # 0 and 0.0 are defaults
        if has_default and action.default != argparse.SUPPRESS and action.option_strings and "default" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage block), and each
    flag's help says its default."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"formatter_class": DefaultsHelp, **kwargs})

    def error(self, message: str) -> NoReturn:
        raise CLIError(message)


def command_parser(name: str, doc: str, paragraph: int = 1, **kwargs: Any) -> Parser:
    """The parser of ``simple_llm NAME``, described by one paragraph of its module's docstring."""
    description = doc.split("\n\n")[paragraph].replace("\n", " ")
    return Parser(prog=f"simple_llm {name}", description=description, **kwargs)


def _argument_type(parse: Callable[[str], Any], ok: Callable[[Any], bool], must: str) -> Callable[[str], Any]:
    """An argparse type: parse the text, and say in one line what it must be when it is not."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {must}, not {text!r}")
        return value

    return convert


positive_int = _argument_type(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _argument_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _argument_type(float, lambda v: 0.0 < v < float("inf"), "a number > 0")
nonnegative_float = _argument_type(float, lambda v: 0.0 <= v < float("inf"), "a number >= 0")
unit_interval = _argument_type(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")  # top-p


MODEL_HELP = (
    "a model directory, or a model's name: gpt2, gpt2-medium, gpt2-large, gpt2-xl or owner/name on the "
    "Hugging Face Hub (downloaded once into its cache; needs the hub extra)"
)


def add_model_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR|NAME", help=MODEL_HELP)


def add_quantize_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quantize",
        choices=KINDS,
        help="load the weights as int8 for inference (docs/QUANTIZATION.md); the checkpoint stays as it is",
    )


def add_sampling_flags(
    p: argparse.ArgumentParser, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0
) -> None:
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=max_new_tokens,
        metavar="N",
        help=f"stop after N new tokens (default {max_new_tokens})",
    )
    p.add_argument(
        "--temperature",
        type=nonnegative_float,
        default=temperature,
        metavar="T",
        help=f"0 = greedy; above 0 samples, higher is more random (default {temperature:g})",
    )
    p.add_argument(
        "--top-k",
        type=nonnegative_int,
        default=top_k,
        metavar="K",
        help=f"sample only among the K most likely tokens; 0 = no limit (default {top_k})",
    )
    p.add_argument(
        "--top-p",
        type=unit_interval,
        default=None,
        metavar="P",
        help="sample only among the most likely tokens that together reach probability P (default: no limit)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the session's one random stream (default 0)")
    p.add_argument(
        "--show-probs",
        type=nonnegative_int,
        default=0,
        metavar="K",
        help="under each generated token, list the K most likely tokens with bars (default 0: off)",
    )
