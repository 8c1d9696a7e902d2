"""Tokenizers: text <-> token ids. Characters, whitespace-separated words, byte-level BPE (bpe.py).

All share one small interface: ``encode(str) -> list[int]``, ``decode(list[int]) -> str``,
``vocab_size``, ``save(path)`` / ``load(path)`` as one JSON file that names its kind, and
``token_text(id)`` for listings. ``simple_llm.load_tokenizer(DIR)`` (modeldir.py) returns the right
one of any kind for a model directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .fileio import atomic_write_text, read_json_object

TOKENIZER_FILE = "tokenizer.json"
EOS = "<eos>"
UNK = "<unk>"


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used; the message says why in one line."""


def _json_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / TOKENIZER_FILE if path.is_dir() else path


class Tokenizer:
    """The common interface. Subclasses set ``kind`` and implement encode, decode, _state."""

    kind = ""
    eos_id: int | None = None

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def token_text(self, token_id: int) -> str:
        """How one token reads on its own (for listings, labels and probability bars)."""
        return self.decode([token_id])

    def _state(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Tokenizer:
        raise NotImplementedError

    def save(self, path: str | os.PathLike) -> Path:
        """Write one JSON file (``path``, or ``path/tokenizer.json`` for a directory), atomically."""
        target = _json_path(path)
        text = json.dumps({"kind": self.kind, "version": 1, **self._state()}, ensure_ascii=False, indent=1)
        atomic_write_text(target, text + "\n")
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """The tokenizer saved at ``path`` (a JSON file, or a directory's tokenizer.json) by save()."""
        return cls.from_state(read_state(path), _json_path(path))

    fields: tuple[str, ...] = ()  # the keys of its JSON file besides kind and version

    @classmethod
    def from_state(cls, state: dict[str, Any], path: Path) -> Tokenizer:
        """A tokenizer of this class from the JSON object read from path (for the error message);
        every field is checked for its type and range, none is guessed."""
        if state.get("kind") != cls.kind:
            raise TokenizerError(f"{path} holds a {state.get('kind')!r} tokenizer, not {cls.kind}")
        try:
            if state.get("version", 1) != 1:
                raise TokenizerError(f"version {state['version']!r} is not 1, the one this simple_llm reads")
            if unknown := sorted(set(state) - {"kind", "version", *cls.fields}):
                raise TokenizerError(f"{unknown[0]!r} is no field of a {cls.kind} tokenizer")
            return cls._from_state(state)
        except TokenizerError as exc:
            raise TokenizerError(f"tokenizer file {path} is damaged: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TokenizerError(f"tokenizer file {path} is damaged: {type(exc).__name__}: {exc}") from None

    def vocabulary_listing(self) -> str:
        """One line per token: id, then the token as text (escaped so whitespace shows)."""
        return "\n".join(f"{i}\t{self.token_text(i)!r}" for i in range(self.vocab_size))


class _TableTokenizer(Tokenizer):
    """A tokenizer over a fixed table of strings: special tokens first, then the learned ones."""

    def __init__(self, tokens: Sequence[str], specials: Sequence[str] = ()):
        table = list(specials) + [t for t in tokens if t not in specials]
        if len(set(table)) != len(table):
            raise TokenizerError("the token table has duplicate entries")
        if not table:
            raise TokenizerError("the token table is empty")
        self.tokens = table
        self.specials = list(specials)
        self.ids = {t: i for i, t in enumerate(table)}
        self.eos_id = self.ids.get(EOS)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def token_text(self, token_id: int) -> str:
        return self.tokens[token_id]

    def _state(self) -> dict[str, Any]:
        return {"specials": self.specials, "tokens": self.tokens[len(self.specials) :]}

    fields = ("specials", "tokens")

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Tokenizer:
        tokens, specials = string_list(state, "tokens"), string_list(state, "specials", [])
        for t in tokens:
            if not cls.is_token(t):
                raise TokenizerError(f"{t!r} in 'tokens' cannot be a {cls.kind} token")
        return cls(tokens, specials)

    @staticmethod
    def is_token(text: str) -> bool:
        """Whether text can be one of this kind's learned tokens."""
        raise NotImplementedError

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} is outside this vocabulary of {len(self.tokens)}")
        return ids


class CharTokenizer(_TableTokenizer):
    """One token per character (nanoGPT's shakespeare_char). Lossless on its own alphabet."""

    kind = "char"

    @classmethod
    def train(cls, text: str, specials: Sequence[str] = ()) -> CharTokenizer:
        """The sorted set of characters in text, after the special tokens."""
        return cls(sorted(set(text)), specials)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.ids[ch] for ch in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in this tokenizer's vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.tokens[i] for i in self._check_ids(ids))

    @staticmethod
    def is_token(text: str) -> bool:
        return len(text) == 1


class WordTokenizer(_TableTokenizer):
    """Whitespace-separated words, as the original demo: unknown words become ``<unk>``.

    Works for Japanese written with spaces between words (data/data.txt); decoding joins words with
    single spaces, so it is lossless only on text that is already split that way.
    """

    kind = "word"

    @classmethod
    def train(cls, text: str, specials: Sequence[str] = (UNK, EOS)) -> WordTokenizer:
        """Words in order of first appearance, after the special tokens."""
        return cls(list(dict.fromkeys(text.split())), specials)

    def encode(self, text: str) -> list[int]:
        unk = self.ids.get(UNK)
        ids = []
        for word in text.split():
            i = self.ids.get(word, unk)
            if i is None:
                raise ValueError(f"word {word!r} is not in this tokenizer's vocabulary")
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.tokens[i] for i in self._check_ids(ids))

    @staticmethod
    def is_token(text: str) -> bool:
        return text.split() == [text]  # a word: not empty, no whitespace


def string_list(state: dict[str, Any], key: str, default: list[str] | None = None) -> list[str]:
    """state[key] if it is a list of strings (default when absent, if given); a TokenizerError otherwise."""
    value = state.get(key, default)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise TokenizerError(f"{key!r} must be a list of strings, not {type(value).__name__}")
    return value


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of a tokenizer file (or of a directory's tokenizer.json)."""
    try:
        return read_json_object(_json_path(path), "tokenizer file")
    except ValueError as exc:
        raise TokenizerError(str(exc)) from None
