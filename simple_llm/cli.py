"""The command line: ``python -m simple_llm [en|ja]`` runs the demo; subcommands do the rest.

Errors in what the user typed or pointed at (a missing file, a bad flag) print one line,
``simple_llm CMD: error: ...``, on stderr and exit with status 2; ``--help`` prints the full usage.
Ctrl-C stops any command with ``simple_llm CMD: interrupted`` and status 130 (train saves first and
exits 0: docs/TRAINING.md).
Set SIMPLE_LLM_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .cli_args import CLIError, Parser

# each command's module builds its parser; it is imported only when that command runs
COMMANDS = {
    "train": "train",
    "generate": "generate",
    "chat": "generate",
    "eval": "evaluate",
    "explore": "explore",
    "inspect": "inspection",
    "plot": "plot",
    "merge": "merge",
    "bench": "bench",
}
DEMO_LANGUAGES = ("en", "ja")


def parser_of(name: str) -> Parser:
    module = importlib.import_module(f"simple_llm.{COMMANDS[name]}")
    return module.parser(name)


def _unknown_command(word: str) -> str | None:
    """The one-line error for a first word that is neither a command nor a demo language."""
    if word.startswith("-") or word in COMMANDS or word in DEMO_LANGUAGES:
        return None
    choices = [*DEMO_LANGUAGES, *COMMANDS]
    near = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return f"unknown command {word!r}{hint}; the commands are {', '.join(choices)}"


def fallback_note() -> str | None:
    """One line for a user who gets the slow NumPy kernels without asking for them, or None."""
    from . import kernels

    if kernels.BACKEND == "cython" or kernels.FORCED_FALLBACK:
        return None
    tree = Path(kernels.__file__).resolve().parent.parent
    if (tree / "src" / "_kernels.pyx").exists():
        return (
            f"note: the slow NumPy kernels run: simple_llm is imported from the source tree {tree}, where the "
            "compiled kernels are not built; run `pip install -e .` there, or run from another directory"
        )
    return "note: the slow NumPy kernels run: the compiled kernels of this installation do not import"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" not in argv and "--help" not in argv and (note := fallback_note()):
        print(note, file=sys.stderr)
    demo = not (argv and argv[0] in COMMANDS)
    if demo:
        parser = importlib.import_module("simple_llm.demo").parser("demo")
    else:
        parser, argv = parser_of(argv[0]), argv[1:]
    try:
        if demo and argv and (message := _unknown_command(argv[0])):
            raise CLIError(message)
        args = parser.parse_args(argv)
        args.argv = argv  # the command's own words, for a hint that repeats them (train's resume line)
        return int(args.run(args))
    except KeyboardInterrupt:  # Ctrl-C outside train's own handling: every file is written atomically
        print(f"\n{parser.prog}: interrupted", file=sys.stderr)
        return 130
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
