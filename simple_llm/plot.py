"""``python -m simple_llm plot RUN_DIR``: draw a training run's loss curve again from its log.csv.

Training draws RUN_DIR/loss.png at every checkpoint; this draws it again from RUN_DIR/log.csv (after
a run made elsewhere, say, or while one is still writing it), into loss.png or the file --out names.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .cli_args import CLIError, Parser, command_parser
from .run_files import LOG_FILE, PLOT_FILE, plot, read_log


def parser(name: str) -> Parser:
    p = command_parser(name, __doc__)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run's --out directory")
    p.add_argument("--out", metavar="FILE.png", help="where to draw (default: RUN_DIR/loss.png)")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    directory = Path(args.run_dir)
    log_path = directory / LOG_FILE
    if not log_path.is_file():
        raise CLIError(f"{directory} holds no {LOG_FILE}: is it the --out of a training run?")
    log = read_log(log_path, math.inf)
    if not log:
        raise CLIError(f"{log_path} has no rows to draw")
    out = Path(args.out) if args.out else directory / PLOT_FILE
    try:
        plot(out, log)
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    print(f"drew {len(log)} rows of {log_path} into {out}")
    return 0
