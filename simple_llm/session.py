"""Generating text for people: streaming output, the interactive prompt, probability bars.

The demo, ``chat`` and ``generate`` all go through here, so the prompt, the slash commands and
``--show-probs`` behave the same everywhere.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from dataclasses import dataclass
from typing import TextIO

import numpy as np

from .model import GPT
from .tokenizers import CharTokenizer, Tokenizer, WordTokenizer

PROMPT = "Enter a prompt (or 'quit' to exit): "
HELP = """commands:
  /temperature T   0 = greedy (always the most likely token); higher = more random
  /top-k K         sample only among the K most likely tokens (0 = no limit)
  /top-p P         sample only among the most likely tokens that reach probability P (1 = no limit)
  /probs K         under each generated token, the K most likely tokens (0 = off)
  /help            this list
  quit             leave (Ctrl-D and Ctrl-C do too)"""
EIGHTHS = " ▏▎▍▌▋▊▉"


@dataclass
class Settings:
    max_new_tokens: int = 20
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    show_probs: int = 0  # how many of the most likely tokens to list under each new token


def settings_from(args: argparse.Namespace) -> Settings:
    """The sampling flags of add_sampling_flags (--top-k 0 means no limit, as /top-k 0 does)."""
    return Settings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        seed=args.seed,
        show_probs=args.show_probs,
    )


def bar(p: float, width: int = 10) -> str:
    """A horizontal bar of p * width cells, in eighths.

    >>> bar(0.82)
    '████████▏'
    """
    eighths = int(p * width * 8)  # truncated, as in the docs: 0.82 shows 8 cells and one eighth
    return "█" * (eighths // 8) + EIGHTHS[eighths % 8].strip()


def token_label(tok: Tokenizer, token_id: int) -> str:
    """A token as a reader should see it: plain when it is plain, quoted when it has whitespace."""
    text = tok.token_text(token_id)
    return text if text and text.isprintable() and text.strip() == text else repr(text)


def display_width(text: str) -> int:
    """Terminal columns of text: East Asian wide and fullwidth characters take two.

    >>> display_width("猫が"), display_width("ＡＢ"), display_width("cat")  # wide, fullwidth, narrow
    (4, 4, 3)
    """
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def probability_lines(tok: Tokenizer, probs: np.ndarray, k: int, chosen: int) -> list[str]:
    """The k most likely tokens of probs (V,) that can be drawn (probability above 0), most likely
    first, as text bars; '>' marks chosen."""
    top = [int(i) for i in np.argsort(-probs, kind="stable")[:k] if probs[i] > 0]
    labels = [token_label(tok, i) for i in top]
    width = max((display_width(label) for label in labels), default=0)
    return [
        f"  {'>' if i == chosen else ' '} {label}{pad}  {probs[i]:.2f} {bar(float(probs[i]))}"
        for i, label, pad in zip(top, labels, (" " * (width - display_width(label)) for label in labels))
    ]


class TextStream:
    """Prints the text of a growing token sequence as it grows.

    Byte-level tokens can end in the middle of a character; such an unfinished tail (decoded as
    U+FFFD) is held back until the next token completes it.
    """

    def __init__(self, tok: Tokenizer, prefix: list[int], out: TextIO, strip_first: bool = False):
        self.tok, self.ids, self.out = tok, list(prefix), out
        self.skip = len(tok.decode(prefix)) if prefix else 0  # characters not to print (the prompt)
        self.printed = ""
        self.strip_first = strip_first  # drop the whitespace that separates prompt and answer

    def add(self, token: int) -> None:
        self.ids.append(token)
        self._show(self.tok.decode(self.ids)[self.skip :].rstrip("\ufffd"))

    def finish(self) -> str:
        self._show(self.tok.decode(self.ids)[self.skip :])
        self.out.write("\n")
        self.out.flush()
        return self.printed

    def _show(self, text: str) -> None:
        if self.strip_first:
            text = text.lstrip()
        if text.startswith(self.printed):
            self.out.write(text[len(self.printed) :])
            self.out.flush()
            self.printed = text


class Session:
    """A model, its tokenizer and the sampling settings, answering one prompt at a time."""

    def __init__(self, model: GPT, tok: Tokenizer, settings: Settings, out: TextIO = sys.stdout):
        self.model, self.tok, self.settings, self.out = model, tok, settings, out
        self.rng = np.random.default_rng(settings.seed)  # one random stream for the whole session

    def prompt_ids(self, text: str) -> list[int]:
        """The prompt's tokens: words the vocabulary lacks are named on stderr and left out; a prompt
        longer than the context keeps its last n_ctx tokens (said on stderr too)."""
        if isinstance(self.tok, (WordTokenizer, CharTokenizer)):
            pieces = text.split() if isinstance(self.tok, WordTokenizer) else list(text)
            unknown = [w for w in pieces if w not in self.tok.ids]
            if unknown and len(unknown) == len(pieces):
                raise ValueError(f"no token of the prompt is in this model's vocabulary: {' '.join(unknown)}")
            if unknown:
                print(f"note: not in this model's vocabulary, left out: {' '.join(unknown)}", file=sys.stderr)
                text = (" " if isinstance(self.tok, WordTokenizer) else "").join(w for w in pieces if w in self.tok.ids)
        ids = self.tok.encode(text)
        if not ids:
            if self.tok.eos_id is None:
                raise ValueError("the prompt has no token this model knows")
            ids = [self.tok.eos_id]  # GPT-2 style: start from the end-of-text token
        n_ctx = self.model.config.n_ctx
        if len(ids) > n_ctx:
            print(f"note: the prompt is {len(ids)} tokens long; using its last {n_ctx} (the context)", file=sys.stderr)
            ids = ids[-n_ctx:]
        return ids

    def generate(self, text: str, label: str = "", continuation_only: bool = True) -> str:
        """Print label, then the generated text as it comes (and the probability bars); return it."""
        s = self.settings
        ids = self.prompt_ids(text)
        self.out.write(label)
        stream = TextStream(self.tok, ids, self.out, strip_first=continuation_only)
        if not continuation_only:
            self.out.write(self.tok.decode(ids))
        steps = []
        for step in self.model.stream(
            np.array([ids]), s.max_new_tokens, s.temperature, s.top_k, self.rng, s.top_p, stop_token=self.tok.eos_id
        ):
            token = int(step.tokens[0])
            steps.append((token, step.probs[0]))
            if token == self.tok.eos_id:
                break
            stream.add(token)
        text_out = stream.finish()
        filtered = s.temperature > 0 and (s.top_k or (s.top_p or 1.0) < 1.0)
        if s.show_probs and filtered:
            self.out.write(
                f"  (the distribution drawn from: temperature {s.temperature:g}, top-k {s.top_k or 'off'}, "
                f"top-p {s.top_p or 'off'}; only tokens that can be drawn are listed)\n"
            )
        for i, (token, probs) in enumerate(steps if s.show_probs else []):
            self.out.write(f"  next token {i + 1}: {token_label(self.tok, token)}\n")
            self.out.write("\n".join(probability_lines(self.tok, probs, s.show_probs, token)) + "\n")
        self.out.flush()
        return text_out

    def command(self, line: str) -> str:
        """Apply a slash command; returns what to tell the user."""
        name, _, value = line.partition(" ")
        s = self.settings
        try:
            if name == "/help":
                return HELP
            if name == "/temperature":
                t = float(value)
                if not t >= 0 or t == float("inf"):
                    raise ValueError
                s.temperature = t
            elif name == "/top-k":
                k = int(value)
                if k < 0:
                    raise ValueError
                s.top_k = k or None
            elif name == "/top-p":
                p = float(value)
                if not 0 < p <= 1:
                    raise ValueError
                s.top_p = None if p == 1 else p
            elif name == "/probs":
                k = int(value)
                if k < 0:
                    raise ValueError
                s.show_probs = k
            else:
                return f"unknown command {name}; /help lists them"
        except ValueError:
            return f"{name} needs a valid value (see /help), not {value!r}"
        return (
            f"temperature {s.temperature:g}, top-k {s.top_k or 'off'}, top-p {s.top_p or 'off'}, "
            f"probs {s.show_probs or 'off'}"
        )

    def interact(self) -> int:
        """Read prompts until 'quit', end of input or Ctrl-C. Exit status 0."""
        while True:
            try:
                line = input(PROMPT).strip()
            except (EOFError, KeyboardInterrupt):
                self.out.write("\n")
                return 0
            if line in ("quit", "exit"):
                return 0
            if not line:
                continue
            try:
                if line.startswith("/"):
                    self.out.write(self.command(line) + "\n")
                else:
                    self.generate(line, label="Generated text: ")
            except ValueError as exc:  # a prompt this model cannot take: say so, keep the session
                print(f"simple_llm: {exc}", file=sys.stderr, flush=True)
            except KeyboardInterrupt:  # stops this answer, not the session
                self.out.write("\n")
