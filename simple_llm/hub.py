"""Models by name: ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, or any ``owner/name`` on the
Hugging Face Hub that holds a GPT-2 checkpoint.

huggingface_hub (the ``hub`` extra: ``pip install "simple_llm[hub]"``) downloads the files a model
directory needs once, with its progress bar, into the Hub's usual cache (``~/.cache/huggingface``,
or ``HF_HUB_CACHE``), and finds them there afterwards, offline too (``HF_HUB_OFFLINE=1``). A path that
exists always wins over a name.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["GPT2_NAMES", "HubError", "model_directory"]

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
# what a model directory needs (GPT-2's vocabulary files; a Hub tokenizer.json is another format)
FILES = ["config.json", "model.safetensors", "vocab.json", "merges.txt"]
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


class HubError(ValueError):
    """A model that is neither a directory nor a name that can be found: one line."""


def model_directory(model: str | os.PathLike) -> Path:
    """The directory of `model`: the path itself when it exists, else the Hub's cached copy of the
    model of that name (downloaded first when it is not cached)."""
    path = Path(model)
    if path.exists():
        return path
    name = str(model)
    if name not in GPT2_NAMES and not REPO_ID.fullmatch(name):
        names = ", ".join(GPT2_NAMES)
        raise HubError(f"{name} is not a directory, nor a model name ({names}, or owner/name on the Hugging Face Hub)")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise HubError(
            f"{name} is not a directory; to download the model {name} by name: pip install 'simple_llm[hub]'"
        ) from None
    try:
        return Path(snapshot_download(name, allow_patterns=FILES))
    except LocalEntryNotFoundError:
        raise HubError(
            f"{name} is not in the Hugging Face cache, and the Hub cannot be reached (offline): "
            "connect once to download it, or give a directory"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(f"there is no model {name} on the Hugging Face Hub (or it is private)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise HubError(f"cannot download {name} from the Hugging Face Hub: {str(exc).splitlines()[0]}") from None
