"""``python -m simple_llm explore --model DIR``: a local page that shows what a model does.

The page (simple_llm/explorer/, plain JavaScript and SVG, nothing from the network) asks this server's
JSON API, which answers with the model's own code: tokens, the next-token odds at each position,
attention weights, the logit lens, and generation streamed token by token. The server is the standard
library's ThreadingHTTPServer: requests run at once, each on its own thread, and each generation has
its own key/value cache (GPT.stream), so a long generation blocks nothing.

    GET  /api/model     -> {"n_layer", "n_head", "n_embd", "vocab_size", "n_ctx", "tokenizer", "example"
                        (a prompt the page opens with)}
    POST /api/analyze   {"prompt", "top_k"=10, "temperature"=1.0, "layers"?} -> tokens, positions,
                        attention [n_layer][n_head][T][T] (null for layers not asked), logit_lens
    POST /api/generate  {"prompt", "max_new_tokens"=20, "temperature"=0.0, "top_k", "top_p", "seed"=0}
                        -> {"tokens": [{"id", "text"}], "text"}; /api/generate/stream sends the same
                        tokens as they come, one JSON object per line
    GET  /api/log       -> the rows of DIR/log.csv (a training run), [] without one
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sys
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from . import kernels as K
from .cli_args import CLIError, Parser, command_parser, nonnegative_int
from .model import GPT
from .modeldir import load_model
from .run_files import LOG_FILE, read_log
from .sampling import tempered
from .tokenizers import Tokenizer

PAGE_DIR = Path(__file__).resolve().parent / "explorer"
MAX_BODY = 1 << 20  # bytes of a request body
LENS_TOP = 5
EXAMPLES = ["The meaning of life is", "ROMEO: O", "Hello world", "こんにちは世界"]  # the page's first prompt
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}


class BadRequest(ValueError):
    """A request the API refuses: status 400 with {"error": message}."""


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


class Explorer:
    """The API over one model and its tokenizer, independent of HTTP (the tests call it directly)."""

    def __init__(self, model: GPT, tok: Tokenizer, directory: Path):
        self.model, self.tok, self.directory = model, tok, directory
        self.example = self.example_prompt()

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

    def prompt_ids(self, body: dict) -> tuple[list[int], bool]:
        """The prompt's ids, cropped to the last n_ctx (and whether it was)."""
        prompt = _field(body, "prompt", str, ..., must="a string")
        try:
            ids = self.tok.encode(prompt)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        if not ids:
            raise BadRequest("the prompt has no tokens")
        n_ctx = self.model.config.n_ctx
        return ids[-n_ctx:], len(ids) > n_ctx

    def token(self, i: int) -> dict:
        return {"id": int(i), "text": self.tok.token_text(int(i))}

    def analyze(self, body: dict) -> dict:
        ids, cropped = self.prompt_ids(body)
        top_k = _field(body, "top_k", int, 10, lambda k: k >= 1, "an integer >= 1")
        temperature = _field(body, "temperature", (int, float), 1.0, lambda t: 0 < t < math.inf, "a number > 0")
        L = self.model.config.n_layer
        layers = _field(body, "layers", list, list(range(L)), must="a list of layer numbers")
        if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < L for x in layers):
            raise BadRequest(f"layers must be layer numbers in [0, {L})")
        steps = dict(self.model.trace(np.array([ids])))
        logits = steps["logits = ln_f @ wte^T"][0].astype(np.float64)  # (T, V)
        probs, probs_t = _softmax(logits), _softmax(tempered(logits.copy(), temperature))
        top_k = min(top_k, logits.shape[1])
        positions = []
        for t in range(len(ids)):
            top = np.argsort(-probs_t[t], kind="stable")[:top_k]
            positions.append(
                {
                    "top": [{**self.token(i), "prob": float(probs_t[t, i])} for i in top],
                    "prob_of_next": float(probs[t, ids[t + 1]]) if t + 1 < len(ids) else None,
                }
            )
        attention = [steps[f"h.{l}.attn.softmax"][0].tolist() if l in layers else None for l in range(L)]
        streams = [steps["wte[idx] + wpe"]] + [steps[f"h.{l}.x + mlp.c_proj"] for l in range(L)]
        lens = [  # one layer at a time: GPT-2's (n_layer + 1, T, V) logits would be gigabytes together
            [
                [{"id": int(i), "prob": float(p[i])} for i in np.argsort(-p, kind="stable")[:LENS_TOP]]
                for p in _softmax(self.model.read_off(x)[0])
            ]
            for x in streams
        ]
        lens_ids = {int(c["id"]) for layer in lens for position in layer for c in position}
        return {
            "tokens": [self.token(i) for i in ids],
            "positions": positions,
            "attention": attention,
            "logit_lens": lens,
            "token_texts": {i: self.tok.token_text(i) for i in sorted(lens_ids)},  # the lens's ids, as text
            "cropped": cropped,
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


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row softmax (T, V) in float64, through the same kernel as sampling."""
    p = np.array(z, dtype=np.float64)
    K.softmax_forward(p, p)
    return p


class Handler(BaseHTTPRequestHandler):
    """The HTTP side: only this machine's page may call it (Host and Origin checked, JSON POSTs only:
    a page on another site can neither drive the model nor, through DNS rebinding, read it); a
    request must arrive within TIMEOUT seconds."""

    explorer: Explorer  # set on the class made for each server, with hosts: the Host names served
    hosts: frozenset[str]
    server_version = "simple_llm-explore"
    timeout = 10.0  # seconds for the request line, headers and body (serve's): a stalled client lets go

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the terminal shows the URL only
        pass

    def send_json(self, value: Any, status: int = 200) -> None:
        data = json.dumps(value, allow_nan=False).encode("utf-8")  # NaN is not JSON: a bug, never sent
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: int, message: str) -> None:
        self.send_json({"error": message}, status)

    def refusal(self, post: bool) -> tuple[int, str] | None:
        """(status, message) for a request this server must not answer, else None."""
        if "\x00" in self.path or not self.path.startswith("/"):
            return 400, "the path is not a path"
        host = (self.headers.get("Host") or "").strip().lower()
        if _host_name(host) not in self.hosts:
            return 403, f"this server answers only for {', '.join(sorted(self.hosts))}, not Host {host!r}"
        origin = self.headers.get("Origin")
        if origin is not None and origin.lower() not in {f"http://{host}", f"https://{host}"}:
            return 403, f"requests from the page of another site ({origin}) are refused"
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if post and kind != "application/json":
            return 403, f"a POST must be Content-Type: application/json, not {kind or 'none'!r}"
        return None

    def do_GET(self) -> None:
        if refused := self.refusal(post=False):
            return self.error(*refused)
        path = self.path.split("?", 1)[0]
        if path == "/api/model":
            return self.send_json(self.explorer.info())
        if path == "/api/log":
            return self.send_json(self.explorer.log())
        if path.startswith("/api/"):
            return self.error(404, f"no such route: {path}")
        name = "index.html" if path == "/" else path.lstrip("/")
        target = (PAGE_DIR / name).resolve()
        if PAGE_DIR not in target.parents or not target.is_file() or target.suffix not in TYPES:
            return self.error(404, f"no such file: {path}")
        data = target.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", TYPES[target.suffix])
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        routes = {"/api/analyze", "/api/generate", "/api/generate/stream"}
        if refused := self.refusal(post=True):
            self.close_connection = True  # its body, if any, is not read
            return self.error(*refused)
        if self.path not in routes:
            self.close_connection = True
            return self.error(404, f"no such route: {self.path}")
        text = self.headers.get("Content-Length") or "0"
        if not text.isdecimal():
            self.close_connection = True
            return self.error(400, f"Content-Length must be a number of bytes, not {text!r}")
        length = int(text)
        if length > MAX_BODY:
            left = min(length, 64 * MAX_BODY)  # read it off (not keep it): the client is not cut off
            while left > 0 and (chunk := self.rfile.read(min(left, 65536))):  # while it sends
                left -= len(chunk)
            self.close_connection = True
            return self.error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {MAX_BODY} bytes")
        try:
            body = json.loads(self.rfile.read(length) or b"null")
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            if self.path == "/api/analyze":
                return self.send_json(self.explorer.analyze(body))
            if self.path == "/api/generate":
                return self.send_json(self.explorer.generate(body))
            return self.stream(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self.error(400, "the body is not JSON")
        except RecursionError:
            return self.error(400, "the body is not JSON this server reads: it is nested too deep")
        except BadRequest as exc:
            return self.error(400, str(exc))
        except ValueError as exc:  # the model's own checks (a token id out of range, say)
            return self.error(400, str(exc).splitlines()[0])

    def stream(self, body: dict) -> None:
        """One JSON object per line as each token comes; the client stops it by closing the request."""
        _, new = self.explorer.generation(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        tok = self.explorer.tok
        try:
            for t in new:
                if t == tok.eos_id:
                    break
                self.wfile.write((json.dumps(self.explorer.token(t)) + "\n").encode("utf-8"))
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # Stop: the page went away
            return
        self.close_connection = True


def _host_name(host: str) -> str:
    """The name in a Host header: 'localhost:8000' -> 'localhost', '[::1]:8000' -> '[::1]'."""
    return host[: host.find("]") + 1] if host.startswith("[") else host.split(":", 1)[0]


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: the page's requests and a few scripts' at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away gets one line on stderr, not a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            print(f"explore: {client_address[0]}: the client went away ({type(exc).__name__})", file=sys.stderr)
        else:
            super().handle_error(request, client_address)


class Server6(Server):
    address_family = socket.AF_INET6


def serve(explorer: Explorer, host: str, port: int, timeout: float = 10.0) -> ThreadingHTTPServer:
    """A server of the page and API on host:port (0: a free port), not yet started; a request must
    arrive within timeout seconds."""
    hosts = {"127.0.0.1", "localhost", "[::1]", host.lower() if ":" not in host else f"[{host.lower()}]"}
    fields = {"explorer": explorer, "hosts": frozenset(hosts), "timeout": timeout}
    handler = type("ExplorerHandler", (Handler,), fields)
    server_class = Server6 if ":" in host else Server
    return server_class((host, port), handler)


def parser(name: str) -> Parser:
    p = command_parser(name, __doc__)
    p.add_argument("--model", required=True, metavar="DIR", help="a model directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=nonnegative_int, default=8000, help="0 picks a free port (default 8000)")
    p.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    model, tok = load_model(args.model)
    if args.port > 65535:
        raise CLIError(f"--port {args.port} is not a port number (0 to 65535)")
    try:
        server = serve(Explorer(model, tok, Path(args.model)), args.host, args.port)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    host, port = str(server.server_address[0]), int(server.server_address[1])
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {args.host}: the page is reachable from the network", file=sys.stderr)
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    print(f"serving {url}", flush=True)
    if not args.no_browser:
        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
