"""The explorer's JSON API over one model and its tokenizer, without HTTP: explore.py serves it, the
tests call it directly.

A prompt is read once: one forward pass (GPT.walk) keeps the residual stream after the embedding and
after every block, (L + 1, T, C), for the last few prompts. Everything the page asks about that
prompt then comes from those streams: the next-token odds at a position (ln_f and the output layer
over one row), the logit lens (the same over every layer's stream at that position), a layer's
attention (recomputed from the stream entering the block: ln_1, c_attn, the softmax). Choosing a
position, a layer or a head costs milliseconds even for GPT-2 at 1024 tokens, and memory holds one
block's buffers and the streams (40 MB there), never every layer's activations (gigabytes).

    GET  /api/model     -> {"n_layer", "n_head", "n_embd", "vocab_size", "n_ctx", "tokenizer", "example"
                        (a prompt the page opens with)}
    POST /api/analyze   {"prompt", "top_k"=10, "temperature"=1.0, "layers"=[n_layer - 1], "heads"=all,
                        "positions"=all, "encoding"="json", "thumbnails"=0} -> {"tokens", "positions",
                        "attention", "thumbnails", "logit_lens", "token_texts", "cropped", "encoding"}
    POST /api/generate  {"prompt", "max_new_tokens"=20, "temperature"=0.0, "top_k", "top_p", "seed"=0}
                        -> {"tokens": [{"id", "text"}], "text"}; /api/generate/stream sends the same
                        tokens as they come, one JSON object per line
    GET  /api/log       -> the rows of DIR/log.csv (a training run), [] without one

/api/analyze, field by field: ``attention`` has one entry per layer, null for the layers not asked
(by default only the last layer is sent), and for an asked layer one entry per head, null for the heads
not asked: the head's (T, T) weights, as nested lists (``encoding`` "json") or as T * T bytes
round(255 w), row by row, in base64 ("u8": 1.33 bytes a weight instead of about 10). ``thumbnails``
(N > 0) gives every head of the asked layers averaged down to at most N x N, as u8. The body's
``positions`` count from the end when negative (-1: the last token). The answer's ``positions`` has
one entry per token: ``prob_of_next``, the probability the model gave the next token (at temperature
1), and ``top``, the top_k candidates at the temperature, only at the positions asked (null
elsewhere); ``logit_lens`` likewise per layer (embedding first) and position. An answer that would be
over MAX_ANSWER bytes is refused (413) with a line that says what to ask for less.
"""

from __future__ import annotations

import base64
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import kernels as K
from .cli_args import CLIError
from .model import GPT
from .run_files import LOG_FILE, read_log
from .sampling import tempered
from .tokenizers import Tokenizer

LENS_TOP = 5
EXAMPLES = ["The meaning of life is", "ROMEO: O", "Hello world", "こんにちは世界"]  # the page's first prompt
MAX_ANSWER = 16 << 20  # bytes of an /api/analyze answer
READINGS = 2  # prompts whose streams are kept
ROWS = 64  # rows of logits at once: (64, V) float64 is 26 MB for GPT-2


class BadRequest(ValueError):
    """A request the API refuses: status 400 with {"error": message}."""


class TooLarge(BadRequest):
    """An answer over MAX_ANSWER: status 413."""


class Cancelled(Exception):
    """The client went away while its prompt was being read: nobody is waiting for the answer."""


def _field(body: dict, name: str, kind: type | tuple, default: Any = None, check=None, must: str = "") -> Any:
    """body[name] of the given JSON type (default when absent); a BadRequest names what is wrong."""
    if name not in body or body[name] is None:
        if default is ...:
            raise BadRequest(f"{name} is missing")
        return default
    value = body[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise BadRequest(f"{name} must be {must or kind}, not {value!r}")
    if not isinstance(value, kind) or (check is not None and not check(value)):
        raise BadRequest(f"{name} must be {must or kind}, not {value!r}")
    return value


def _indices(body: dict, name: str, count: int, default: list[int], low: int = 0) -> list[int]:
    """body[name]: a list of whole numbers in [low, count) (default when absent)."""
    value = _field(body, name, list, default, must=f"a list of numbers in [{low}, {count})")
    if not all(isinstance(i, int) and not isinstance(i, bool) and low <= i < count for i in value):
        raise BadRequest(f"{name} must be a list of numbers in [{low}, {count})")
    return value


def _u8(weights: np.ndarray) -> str:
    """Weights in [0, 1] as round(255 w) bytes, row by row, in base64."""
    return base64.b64encode(np.rint(np.asarray(weights, np.float64) * 255).astype(np.uint8).tobytes()).decode()


def _pooled(att: np.ndarray, n: int) -> np.ndarray:
    """(T, T) averaged over blocks down to at most (n, n)."""
    T = att.shape[0]
    edges = np.linspace(0, T, min(n, T) + 1).astype(int)
    rows = np.add.reduceat(att, edges[:-1], axis=0) / np.diff(edges)[:, None]
    return np.add.reduceat(rows, edges[:-1], axis=1) / np.diff(edges)[None, :]


@dataclass
class Reading:
    """What one forward pass over a prompt leaves for the questions the page asks about it."""

    streams: np.ndarray  # (L + 1, T, C): the residual stream after the embedding and after each block
    prob_of_next: list[float | None]  # the probability given to each next token; None at the last


class Explorer:
    """The API over one model and its tokenizer."""

    def __init__(self, model: GPT, tok: Tokenizer, directory: Path):
        self.model, self.tok, self.directory = model, tok, directory
        self.longest = max(len(tok.token_text(i)) for i in range(tok.vocab_size))  # characters of a token
        self.example = self.example_prompt()
        self._readings: OrderedDict[tuple[int, ...], Reading] = OrderedDict()
        self._lock = threading.Lock()

    def info(self) -> dict:
        c = self.model.config
        return dict(
            n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size, n_ctx=c.n_ctx,
            tokenizer=self.tok.kind, example=self.example,
        )  # fmt: skip

    def example_prompt(self) -> str:
        """A prompt the page opens with: a usual one this tokenizer reads as it is, else the model's own
        greedy text from its first token."""
        for text in EXAMPLES:
            try:
                if self.tok.decode(self.tok.encode(text)) == text:
                    return text
            except ValueError:  # a character or word this vocabulary lacks
                continue
        start = self.tok.eos_id if self.tok.eos_id is not None else 0
        out = self.model.generate(np.array([[start]]), 16, temperature=0.0)[0, 1:]
        return self.tok.decode([int(t) for t in out if t != self.tok.eos_id]) or self.tok.token_text(0)

    # the prompt ------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        try:
            return self.tok.encode(text)
        except ValueError as exc:
            raise BadRequest(f"prompt: {exc}") from None

    def tail_ids(self, text: str) -> tuple[list[int], bool]:
        """The last n_ctx token ids of text and whether there were more, tokenizing only as much of
        its end as that takes: a megabyte of prompt costs what a page of it costs. Two ends of
        different lengths that agree on their last n_ctx tokens are past any effect of where they
        were cut (a word or a BPE piece cut in two changes only the tokens near the cut)."""
        n = self.model.config.n_ctx
        size = (n + 1) * self.longest
        while 2 * size < len(text):
            near = self.encode(text[-size:])
            if len(near) > n and near[-n:] == self.encode(text[-2 * size :])[-n:]:
                return near[-n:], True
            size *= 2
        ids = self.encode(text)
        return ids[-n:], len(ids) > n

    def prompt_ids(self, body: dict) -> tuple[list[int], bool]:
        """The prompt's ids, cropped to the last n_ctx (and whether it was)."""
        ids, cropped = self.tail_ids(_field(body, "prompt", str, ..., must="a string"))
        if not ids:
            raise BadRequest("the prompt has no tokens")
        return ids, cropped

    def token(self, i: int) -> dict:
        return {"id": int(i), "text": self.tok.token_text(int(i))}

    # reading a prompt ------------------------------------------------------------------------

    def logits(self, rows: np.ndarray) -> np.ndarray:
        """Logits (N, V), float64, that ln_f and the output layer give for residual-stream rows (N, C)."""
        out = np.empty((len(rows), self.model.config.vocab_size))
        for i in range(0, len(rows), ROWS):
            out[i : i + ROWS] = self.model.read_off(rows[None, i : i + ROWS])[0]
        return out

    def reading(self, ids: list[int], cancelled: Callable[[], bool] = lambda: False) -> Reading:
        """The streams of ids, from the last READINGS prompts or from one forward pass (GPT.walk)."""
        key = tuple(ids)
        with self._lock:
            if key in self._readings:
                self._readings.move_to_end(key)
                return self._readings[key]
        cfg = self.model.config
        streams = np.empty((cfg.n_layer + 1, len(ids), cfg.n_embd), self.model.dtype)
        for l, x in enumerate(self.model.walk(np.array([ids]))):
            if cancelled():
                raise Cancelled
            streams[l] = x[0]
        prob_of_next: list[float | None] = []
        for i in range(0, len(ids), ROWS):
            z = self.logits(streams[-1, i : i + ROWS])
            K.softmax_forward(z, z)
            prob_of_next += [float(z[t - i, ids[t + 1]]) if t + 1 < len(ids) else None for t in range(i, i + len(z))]
        reading = Reading(streams, prob_of_next)
        with self._lock:
            self._readings[key] = reading
            while len(self._readings) > READINGS:
                self._readings.popitem(last=False)
        return reading

    # the answers -----------------------------------------------------------------------------

    def answer_size(self, T: int, n_top: int, n_positions: int, n_maps: int, encoding: str, thumbs: int) -> int:
        """Bytes of an /api/analyze answer, roughly from above."""
        cfg = self.model.config
        per_weight = 4 / 3 if encoding == "u8" else 11  # base64; or "0.0123456789, "
        return int(
            T * (40 + 4 * self.longest)  # tokens, prob_of_next
            + n_positions * (n_top + (cfg.n_layer + 1) * LENS_TOP) * (60 + 4 * self.longest)
            + n_maps * T * T * per_weight
            + thumbs * thumbs * 4 / 3 * cfg.n_head * cfg.n_layer
        )

    def analyze(self, body: dict, cancelled: Callable[[], bool] = lambda: False) -> dict:
        ids, cropped = self.prompt_ids(body)
        cfg, T = self.model.config, len(ids)
        top_k = min(_field(body, "top_k", int, 10, lambda k: k >= 1, "an integer >= 1"), cfg.vocab_size)
        temperature = _field(body, "temperature", (int, float), 1.0, lambda t: 0 < t < math.inf, "a number > 0")
        layers = sorted(set(_indices(body, "layers", cfg.n_layer, [cfg.n_layer - 1])))
        heads = sorted(set(_indices(body, "heads", cfg.n_head, list(range(cfg.n_head)))))
        asked = _indices(body, "positions", cfg.n_ctx, list(range(T)), low=-cfg.n_ctx)  # -1: the last token
        positions = sorted({p % T for p in asked if -T <= p < T})
        encoding = _field(body, "encoding", str, "json", lambda e: e in ("json", "u8"), '"json" or "u8"')
        thumbs = _field(body, "thumbnails", int, 0, lambda n: 0 <= n <= 64, "an integer in [0, 64]")
        size = self.answer_size(T, top_k, len(positions), len(layers) * len(heads), encoding, thumbs)
        if size > MAX_ANSWER:
            raise TooLarge(
                f"the answer would be about {size / 2**20:.0f} MB, over the {MAX_ANSWER >> 20} MB this server "
                f'sends: ask for fewer layers, heads or positions (each a list), or encoding "u8"'
            )
        reading = self.reading(ids, cancelled)
        streams = reading.streams
        top: dict[int, list[dict]] = {}
        for start in sorted({p - p % ROWS for p in positions}):
            # whole blocks of ROWS positions, as reading() computes them: the same rows give the same
            # float32 products, so an answer does not depend on which other positions were asked
            z = self.logits(streams[-1, start : start + ROWS])
            K.softmax_forward(z, tempered(z, temperature))
            for p in positions:
                if start <= p < start + ROWS:
                    best = np.argsort(-z[p - start], kind="stable")[:top_k]
                    top[p] = [{**self.token(j), "prob": float(z[p - start, j])} for j in best]
        attention: list[Any] = [None] * cfg.n_layer
        thumbnails: list[Any] = [None] * cfg.n_layer
        for l in layers:
            att = self.model.attention_of(l, streams[l][None])[0]  # (NH, T, T)
            pack = _u8 if encoding == "u8" else (lambda a: a.tolist())
            attention[l] = [pack(att[h]) if h in heads else None for h in range(cfg.n_head)]
            if thumbs:
                thumbnails[l] = [_u8(_pooled(att[h], thumbs)) for h in range(cfg.n_head)]
        lens: list[list[Any]] = [[None] * T for _ in range(cfg.n_layer + 1)]
        for p in positions:
            z = self.logits(streams[:, p])  # (L + 1, V): each layer's stream read off at p
            K.softmax_forward(z, z)
            for l, probs in enumerate(z):
                lens[l][p] = [
                    {"id": int(j), "prob": float(probs[j])} for j in np.argsort(-probs, kind="stable")[:LENS_TOP]
                ]
        lens_ids = {c["id"] for layer in lens for at in layer if at for c in at}
        return {
            "tokens": [self.token(i) for i in ids],
            "positions": [{"prob_of_next": reading.prob_of_next[t], "top": top.get(t)} for t in range(T)],
            "attention": attention,
            "thumbnails": thumbnails,
            "logit_lens": lens,
            "token_texts": {i: self.tok.token_text(i) for i in sorted(lens_ids)},  # the lens's ids, as text
            "cropped": cropped,
            "encoding": encoding,
        }

    def generation(self, body: dict):
        """(prompt ids, the stream of new token ids) for a generate request."""
        ids, _ = self.prompt_ids(body)
        n = _field(body, "max_new_tokens", int, 20, lambda k: 1 <= k <= 10_000, "an integer in [1, 10000]")
        temperature = _field(body, "temperature", (int, float), 0.0, lambda t: 0 <= t < math.inf, "a number >= 0")
        top_k = _field(body, "top_k", int, None, lambda k: k >= 1, "an integer >= 1")
        top_p = _field(body, "top_p", (int, float), None, lambda p: 0 < p <= 1, "a number in (0, 1]")
        seed = _field(body, "seed", int, 0, lambda s: 0 <= s < 2**128, "an integer in [0, 2**128)")
        steps = self.model.stream(np.array([ids]), n, temperature, top_k, seed, top_p, stop_token=self.tok.eos_id)
        return ids, (int(step.tokens[0]) for step in steps)

    def generate(self, body: dict) -> dict:
        _, new = self.generation(body)
        tokens = [t for t in new if t != self.tok.eos_id]
        return {"tokens": [self.token(t) for t in tokens], "text": self.tok.decode(tokens)}

    def log(self) -> list[dict]:
        try:
            return read_log(self.directory / LOG_FILE, math.inf)
        except CLIError:
            return []  # a run still writing it, or a damaged file: no chart rather than an error
