"""``python -m simple_llm``: the command line (cli.py)."""

import importlib.util
import os
import sys

if getattr(sys.modules.get(__package__ or ""), "__file__", None) is None:
    # A folder named simple_llm in the current directory (the clone of this project, seen from the
    # folder above it) is taken by Python's own finder for a namespace package before an editable
    # install's finder is asked. Run the real package, the one this file belongs to, instead.
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("simple_llm", os.path.join(here, "__init__.py"))
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["simple_llm"] = package
    spec.loader.exec_module(package)

from simple_llm.cli import main  # after the package is the right one

raise SystemExit(main())
