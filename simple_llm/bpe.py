"""Byte-level BPE: GPT-2's own tokenizer, and the same algorithm trained on your text.

Text is split into pieces by a regex (GPT-2's pattern by default), each piece is turned into its UTF-8
bytes, and adjacent tokens are merged, the pair whose merged token has the lowest rank first, until no
adjacent pair merges. That is tiktoken's rule, and for GPT-2's files it gives exactly tiktoken's ids.
Every byte is a token, so any text round-trips: ``decode(encode(s)) == s``.

Not handled: normalisation (NFC etc.) and the unpaired surrogates that UTF-8 cannot encode.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import regex

from . import kernels as K
from .bpe_merges import learn_merges
from .fileio import read_json_object
from .tokenizers import Tokenizer, TokenizerError, string_list

ENDOFTEXT = "<|endoftext|>"
# tiktoken's spellings of the pre-tokenisation patterns (possessive quantifiers; the `regex` module
# reads them as tiktoken's Rust engine does).
PATTERNS = {
    "gpt2": r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
}
CACHE_LIMIT = 200_000  # pieces whose encoding is remembered (repeated words are most of any text)


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte, as in its vocabulary files ("Ġ" for a space).

    Printable Latin-1 bytes stand for themselves; the other 68 become chr(256), chr(257), ... in order.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def to_printable(token: bytes) -> str:
    """b' the' -> 'Ġthe'."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in token)


def from_printable(text: str) -> bytes:
    """'Ġthe' -> b' the'; a ValueError for a character that stands for no byte."""
    inverse = _unicode_to_bytes()
    try:
        return bytes(inverse[ch] for ch in text)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} stands for no byte") from None


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {ch: b for b, ch in bytes_to_unicode().items()}


def compile_pattern(pattern: str | None) -> regex.Pattern | None:
    """The regex of "gpt2", "gpt4" or a pattern of your own; None for no regex."""
    if pattern is None:
        return None
    try:
        return regex.compile(PATTERNS.get(pattern, pattern))
    except regex.error as exc:
        raise ValueError(f"pattern is neither gpt2, gpt4 nor a valid regex: {exc}") from None


def split_pieces(text: str, rx: regex.Pattern | None) -> list[str]:
    """Pre-tokenisation: the regex's matches, or the lines (newline kept) when there is no regex, so
    that training stays fast and merges never cross a line break."""
    return rx.findall(text) if rx is not None else text.splitlines(keepends=True)


class ByteLevelBPE(Tokenizer):
    """What BPETokenizer and GPT2Tokenizer share: ranks, pre-tokenisation, special tokens."""

    def __init__(self, vocab: list[bytes], pattern: str | None, specials: Mapping[str, int]):
        self.vocab = vocab  # id -> token bytes; the id is also the merge rank
        self.ranks: dict[bytes, int] = {}
        for i, token in enumerate(vocab):
            # Training can (rarely) build the same bytes twice, as (a, bc) and (ab, c); encoding
            # emits the first id, decoding reads either.
            self.ranks.setdefault(token, i)
        missing = [b for b in range(256) if bytes([b]) not in self.ranks]
        if missing:
            raise TokenizerError(f"byte {missing[0]} has no token, so some text could not be encoded")
        self.pattern = pattern
        self._regex = compile_pattern(pattern)
        self.specials = dict(specials)
        self.special_ids = {i: s for s, i in self.specials.items()}
        self._special_regex = (
            regex.compile("|".join(regex.escape(s) for s in sorted(self.specials, key=len, reverse=True)))
            if self.specials
            else None
        )
        self.eos_id = self.specials.get(ENDOFTEXT)
        self._cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return max(len(self.vocab), max(self.specials.values(), default=-1) + 1)

    def pieces(self, text: str) -> list[str]:
        """The pre-tokenisation: text split by the regex (by lines when there is no pattern)."""
        return split_pieces(text, self._regex)

    def encode_ordinary(self, text: str) -> list[int]:
        """Token ids of text, special-token strings included as plain text (tiktoken's name)."""
        ids: list[int] = []
        cache = self._cache
        for piece in self.pieces(text):
            tokens = cache.get(piece)
            if tokens is None:
                tokens = K.merge_piece(piece.encode("utf-8"), self.ranks)
                if len(cache) >= CACHE_LIMIT:
                    cache.clear()
                cache[piece] = tokens
            ids.extend(tokens)
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of text; a special token's string (``<|endoftext|>``) becomes its id."""
        if self._special_regex is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        for m in self._special_regex.finditer(text):
            ids.extend(self.encode_ordinary(text[start : m.start()]))
            ids.append(self.specials[m.group()])
            start = m.end()
        ids.extend(self.encode_ordinary(text[start:]))
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        out = []
        for i in ids:
            i = int(i)
            if 0 <= i < len(self.vocab):
                out.append(self.vocab[i])
            elif i in self.special_ids:
                out.append(self.special_ids[i].encode("utf-8"))
            else:
                raise ValueError(f"token id {i} is outside this vocabulary of {self.vocab_size}")
        return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of the ids; a token sequence that splits a character shows U+FFFD there."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_text(self, token_id: int) -> str:
        return self.decode([token_id])


class BPETokenizer(ByteLevelBPE):
    """Byte-level BPE trained on your text (as minbpe's RegexTokenizer).

    Ids 0..255 are the bytes, then one id per learned merge, then the special tokens.
    """

    kind = "bpe"

    def __init__(
        self, merges: list[tuple[int, int]], pattern: str | None = "gpt2", special_tokens: Iterable[str] = (ENDOFTEXT,)
    ):
        vocab = [bytes([b]) for b in range(256)]
        for a, b in merges:
            if not (0 <= a < len(vocab) and 0 <= b < len(vocab)):
                raise TokenizerError(f"merge ({a}, {b}) names a token that does not exist yet")
            vocab.append(vocab[a] + vocab[b])
        self.merges = list(merges)
        super().__init__(vocab, pattern, {s: len(vocab) + i for i, s in enumerate(special_tokens)})

    @classmethod
    def train(
        cls, text: str, vocab_size: int, pattern: str | None = "gpt2", special_tokens: Iterable[str] = (ENDOFTEXT,)
    ) -> BPETokenizer:
        """Learn merges on text until the vocabulary (bytes + merges + specials) has vocab_size tokens.

        pattern: "gpt2", "gpt4", a regex of your own, or None (no regex: lines are the pieces).
        Training stops early when no pair of tokens occurs twice any more.
        """
        special_tokens = list(special_tokens)
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(
                f"a byte-level BPE vocabulary needs at least 256 + {len(special_tokens)} "
                f"tokens (the bytes and the special tokens), not {vocab_size}"
            )
        chunks = Counter(piece.encode("utf-8") for piece in split_pieces(text, compile_pattern(pattern)))
        merges = learn_merges([list(c) for c in chunks], list(chunks.values()), vocab_size - 256 - len(special_tokens))
        return cls(merges, pattern, special_tokens)

    def _state(self) -> dict[str, Any]:
        vocab = self.vocab
        return {
            "pattern": self.pattern,
            "special_tokens": list(self.specials),
            # merges in GPT-2's merges.txt spelling: the two tokens, printable, separated by a space
            "merges": [f"{to_printable(vocab[a])} {to_printable(vocab[b])}" for a, b in self.merges],
        }

    fields = ("pattern", "special_tokens", "merges")

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Tokenizer:
        pattern = state.get("pattern")
        if pattern is not None and not isinstance(pattern, str):
            raise TokenizerError(f"'pattern' must be a string or null, not {type(pattern).__name__}")
        specials = string_list(state, "special_tokens", [])
        vocab = [bytes([b]) for b in range(256)]
        ranks = {token: i for i, token in enumerate(vocab)}
        merges = []
        for k, line in enumerate(string_list(state, "merges")):
            halves = line.split(" ")
            if len(halves) != 2 or not all(halves):
                raise TokenizerError(f"merge {k} ({line!r}) is not two tokens separated by one space")
            left, right = (from_printable(t) for t in halves)
            if left not in ranks or right not in ranks:
                raise TokenizerError(f"merge {k} ({line!r}) names a token that no earlier merge made")
            merges.append((ranks[left], ranks[right]))
            ranks.setdefault(left + right, len(vocab))
            vocab.append(left + right)
        return cls(merges, pattern, specials)

    def vocabulary_listing(self) -> str:
        lines = []
        for i, token in enumerate(self.vocab):
            origin = "byte" if i < 256 else f"= {self.merges[i - 256][0]} + {self.merges[i - 256][1]}"
            lines.append(f"{i}\t{to_printable(token)}\t{token.decode('utf-8', errors='replace')!r}\t{origin}")
        lines += [f"{i}\t{s}\tspecial" for s, i in self.specials.items()]
        return "\n".join(lines)


class GPT2Tokenizer(ByteLevelBPE):
    """OpenAI's GPT-2 tokenizer from its vocabulary files: the ids of tiktoken's ``gpt2`` encoding."""

    kind = "gpt2"
    _encoder: dict[str, int]  # the files' contents, kept so save() writes them back unchanged
    _merges: list[str]

    @staticmethod
    def files_in(directory: str | os.PathLike) -> tuple[Path, Path] | None:
        """(encoder, merges) file paths in a directory: Hugging Face's or OpenAI's names."""
        d = Path(directory)
        for enc, bpe in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
            if (d / enc).is_file() and (d / bpe).is_file():
                return d / enc, d / bpe
        return None

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> GPT2Tokenizer:
        files = cls.files_in(directory)
        if files is None:
            raise TokenizerError(f"{directory} holds neither vocab.json + merges.txt nor encoder.json + vocab.bpe")
        return cls.from_files(*files)

    @classmethod
    def from_files(cls, encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> GPT2Tokenizer:
        """Load ``encoder.json`` (token -> id) and ``vocab.bpe`` (the merges, in rank order)."""
        try:
            encoder = read_json_object(encoder_json, "GPT-2 vocabulary file")
            merges = Path(vocab_bpe).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise TokenizerError(f"cannot read GPT-2 vocabulary files: {exc}") from None
        try:
            return cls._build(encoder, [m for m in merges if m and not m.startswith("#version")])
        except TokenizerError as exc:
            raise TokenizerError(f"{encoder_json} and {vocab_bpe} do not make a GPT-2 tokenizer: {exc}") from None

    @classmethod
    def _build(cls, encoder: Any, merges: Any) -> GPT2Tokenizer:
        if not isinstance(encoder, dict) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 10_000_000 for i in encoder.values()
        ):
            raise TokenizerError("the encoder must map each token to an integer id >= 0")
        if not encoder:
            raise TokenizerError("the encoder is empty")
        if not isinstance(merges, list) or not all(isinstance(m, str) and " " in m for m in merges):
            raise TokenizerError("each merge must be a line of two tokens separated by a space")
        specials = {token: i for token, i in encoder.items() if token == ENDOFTEXT}
        vocab: list[bytes | None] = [None] * (max(encoder.values()) + 1)
        try:
            for token, i in encoder.items():
                if token not in specials:
                    vocab[i] = from_printable(token)
        except ValueError as exc:
            raise TokenizerError(f"the encoder has a token that is not byte-level: {exc}") from None
        if any(v is None for i, v in enumerate(vocab) if i not in specials.values()):
            raise TokenizerError("the encoder's ids have gaps")
        ordinary = [v for v in vocab if v is not None]
        if len(ordinary) < 256 or any(i < len(ordinary) for i in specials.values()):
            raise TokenizerError("the encoder needs the 256 bytes first, then the merges, then <|endoftext|>")
        # The merge order must agree with the ids, as tiktoken checks: merge k makes token 256 + k.
        for k, line in enumerate(merges[: len(ordinary) - 256]):
            left, _, right = line.partition(" ")
            try:
                made = from_printable(left) + from_printable(right)
            except ValueError as exc:
                raise TokenizerError(f"merge {k} ({line!r}) is not byte-level: {exc}") from None
            if made != ordinary[256 + k]:
                raise TokenizerError(f"merge {k} ({line!r}) does not make token {256 + k}")
        tok = cls(ordinary, "gpt2", specials)
        tok._encoder, tok._merges = encoder, merges
        return tok

    fields = ("encoder", "merges")

    def _state(self) -> dict[str, Any]:
        return {"encoder": self._encoder, "merges": self._merges}

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> Tokenizer:
        return cls._build(state["encoder"], state["merges"])
