"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed.

A crash, a Ctrl-C or a full disk while writing leaves the previous file untouched, never half of a
new one.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on any error it is removed.

    The temporary file is created with mode 0666 less the umask, as open() creates any file, and
    keeps that mode even if the writer recreates it (safetensors writes 0600), so the saved file gets
    the user's usual permissions."""
    path = Path(path)
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # another writer's name: draw again
            continue
    mode = tmp.stat().st_mode & 0o777
    try:
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str]) -> None:
    """safetensors.numpy.save_file, atomically; a failed write (a full disk) is an OSError."""
    from safetensors import SafetensorError
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as exc:
            raise OSError(f"cannot write {path}: {str(exc).removeprefix('Error while serializing: ')}") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_text_file(path: str | os.PathLike, what: str = "file") -> str:
    """The UTF-8 text of a file, or a ValueError that says in one line why it cannot be used."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what} {path} does not exist")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory, not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if b"\x00" in data:
        raise ValueError(f"{what} {path} looks binary (it contains NUL bytes), not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise ValueError(f"{what} {path} is empty")
    return text.removeprefix("\ufeff")  # a byte-order mark is not part of the text


def read_json_object(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The JSON object in a UTF-8 file, or a ValueError that says in one line why it is not one."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} {path} is damaged: {exc}") from None
    except RecursionError:
        raise ValueError(f"{what} {path} is damaged: its JSON is nested too deep") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what} {path} is damaged: not a JSON object")
    return value
