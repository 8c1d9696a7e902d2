"""``python -m simple_llm explore --model DIR``: a local page that shows what a model does.

The page (simple_llm/explorer/, plain JavaScript and SVG, nothing from the network) asks this server's
JSON API, which answers with the model's own code: tokens, the next-token odds at each position,
attention weights, the logit lens, and generation streamed token by token. The server is the standard
library's ThreadingHTTPServer: requests run at once, each on its own thread, and each generation has
its own key/value cache (GPT.stream), so a long generation blocks nothing.

The API (explorer_api.py says what each route takes and returns): GET /api/model, POST /api/analyze,
POST /api/generate and /api/generate/stream, GET /api/log. Only this machine's page is answered:
requests for another Host, from another site's page (Origin) or POSTs that are not JSON get a 403.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import threading
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .cli_args import CLIError, Parser, add_model_flag, add_quantize_flag, command_parser, nonnegative_int
from .explorer_api import BadRequest, Cancelled, Explorer, TooLarge
from .modeldir import load_model, model_directory

PAGE_DIR = Path(__file__).resolve().parent / "explorer"
MAX_BODY = 1 << 20  # bytes of a request body
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css"}


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
        try:
            data = json.dumps(value, allow_nan=False).encode("utf-8")  # NaN and Infinity are not JSON
        except ValueError:
            message = "the answer holds a number that is not finite: are the model's weights finite?"
            value, status = {"error": message}, HTTPStatus.INTERNAL_SERVER_ERROR
            data = json.dumps(value).encode("utf-8")
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
                return self.send_json(self.explorer.analyze(body, self.client_left))
            if self.path == "/api/generate":
                return self.send_json(self.explorer.generate(body))
            return self.stream(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self.error(400, "the body is not JSON")
        except RecursionError:
            return self.error(400, "the body is not JSON this server reads: it is nested too deep")
        except Cancelled:  # a newer request replaced it: nobody reads an answer
            self.close_connection = True
            return None
        except TooLarge as exc:
            return self.error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(exc))
        except BadRequest as exc:
            return self.error(400, str(exc))
        except ValueError as exc:  # the model's own checks (a token id out of range, say)
            return self.error(400, str(exc).splitlines()[0])

    def client_left(self) -> bool:
        """Whether the client closed its side (the page aborts a request that a newer one replaces)."""
        try:
            ready, _, _ = select.select([self.connection], [], [], 0)
            return bool(ready) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

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
    add_model_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=nonnegative_int, default=8000, help="0 picks a free port (default 8000)")
    p.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    add_quantize_flag(p)
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    if args.port > 65535:
        raise CLIError(f"--port {args.port} is not a port number (0 to 65535)")
    directory = model_directory(args.model)
    model, tok = load_model(directory, args.quantize)
    try:
        server = serve(Explorer(model, tok, directory), args.host, args.port)
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
