"""The command line: ``python -m simple_llm [en|ja]`` runs the demo; subcommands do the rest.

Errors in what the user typed or pointed at (a missing file, a bad flag) print one line,
``simple_llm CMD: error: ...``, on stderr and exit with status 2; ``--help`` prints the full usage.
Set SIMPLE_LLM_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from . import __version__
from .kernels import BACKEND, openmp_threads


class CLIError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the whole usage block)."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(message)


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
nonnegative_float = _argument_type(float, lambda v: 0.0 <= v < float("inf"), "a number >= 0")
unit_interval = _argument_type(float, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]")  # top-p


def add_sampling_flags(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
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
        default=0.0,
        metavar="T",
        help="0 = greedy (default); above 0 samples, higher is more random",
    )
    p.add_argument(
        "--top-k", type=positive_int, default=None, metavar="K", help="sample only among the K most likely tokens"
    )
    p.add_argument(
        "--top-p",
        type=unit_interval,
        default=None,
        metavar="P",
        help="sample only among the most likely tokens that together reach probability P",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--show-probs",
        type=nonnegative_int,
        default=0,
        metavar="K",
        help="under each generated token, list the K most likely tokens with bars",
    )


# the demo ----------------------------------------------------------------------------------------


def demo_parser() -> Parser:
    p = Parser(
        prog="simple_llm",
        description="Train a small GPT-2 on a few sentences, then complete your prompts. "
        "Other commands: train, generate, chat, inspect, bench (python -m simple_llm CMD --help).",
    )
    p.add_argument(
        "lang", nargs="?", default="ja", choices=["en", "ja"], help="en: data/data_en.txt; ja (default): data/data.txt"
    )
    p.add_argument("--epochs", type=positive_int, default=100, help="passes over the data (default 100)")
    p.add_argument("--data", metavar="FILE", help="train on this UTF-8 file instead, one sentence per line")
    add_sampling_flags(p, max_new_tokens=20)
    p.add_argument("--version", action="version", version=f"simple_llm {__version__} ({BACKEND} kernels)")
    p.set_defaults(run=run_demo)
    return p


def run_demo(args: argparse.Namespace) -> int:
    from .demo import DATA_FILES, EPOCH_LINES, data_file, load_sentences, train_demo
    from .generate import settings_from
    from .session import Session

    path = args.data or data_file(DATA_FILES[args.lang])
    sentences = load_sentences(path)
    print(
        f"Training a small GPT-2 on {len(sentences)} sentences from {path} "
        f"({BACKEND} kernels, {openmp_threads()} threads)",
        flush=True,
    )

    def report(epoch: int, loss: float) -> None:
        print(EPOCH_LINES[args.lang].format(epoch=epoch, loss=loss), flush=True)

    model, tok = train_demo(sentences, epochs=args.epochs, seed=args.seed, on_epoch=report)
    return Session(model, tok, settings_from(args)).interact()


# dispatch ----------------------------------------------------------------------------------------

# each command's module builds its parser: imported only when that command runs
COMMANDS = {"train": "train", "generate": "generate", "chat": "generate", "inspect": "inspection", "bench": "bench"}


def command_parser(name: str) -> Parser:
    module = importlib.import_module(f"simple_llm.{COMMANDS[name]}")
    return module.parser(name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        parser, argv = command_parser(argv[0]), argv[1:]
    else:
        parser = demo_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.run(args))
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (CLIError, ValueError, OSError) as exc:
        if os.environ.get("SIMPLE_LLM_DEBUG"):
            raise
        message = str(exc) if not isinstance(exc, OSError) or not exc.strerror else _os_message(exc)
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2


def _os_message(exc: OSError) -> str:
    return f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror)
