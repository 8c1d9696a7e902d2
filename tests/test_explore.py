"""explore: the JSON API against the model's own functions, its errors, static files, concurrency, and
the command line. The page itself is tested in a real browser in test_explore_page.py."""

from __future__ import annotations

import http.client
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
import pytest
from support import assert_one_line_error, char_model_dir, explore_process, run_cli

from simple_llm import GPT, CharTokenizer, GPTConfig
from simple_llm.explore import serve
from simple_llm.explorer_api import Explorer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = dict(n_ctx=24, n_embd=16, n_head=2, n_layer=2)
    path = char_model_dir(tmp_path_factory.mktemp("model"), "Hello world! abcdefgh", jitter=0.4, seed=2, **config)
    (path / "log.csv").write_text("step,lr,train_loss,val_loss,tokens_per_s\n0,0.001,3.2,3.3,0\n10,0.001,2.5,,100\n")
    return path


@pytest.fixture(scope="module")
def server(model_dir):
    """(host, port) of an explorer serving model_dir in this process."""
    model, tok = GPT.from_pretrained(model_dir), CharTokenizer.load(model_dir)
    httpd = serve(Explorer(model, tok, model_dir), "127.0.0.1", 0, timeout=1.0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[:2]
    httpd.shutdown()
    httpd.server_close()


def request(server, method, path, body=None, raw=None):
    conn = http.client.HTTPConnection(*server, timeout=30)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    kind = response.getheader("Content-Type", "")
    return response.status, (json.loads(payload) if kind.startswith("application/json") else payload)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_model_route(server, model_dir):
    status, info = request(server, "GET", "/api/model")
    assert status == 200
    example = info.pop("example")
    assert info == {"n_layer": 2, "n_head": 2, "n_embd": 16, "vocab_size": 15, "n_ctx": 24, "tokenizer": "char"}
    assert example == "Hello world"  # the first usual prompt that this vocabulary spells


def test_analyze_is_the_models_own_computation(server, model_dir):
    model, tok = GPT.from_pretrained(model_dir), CharTokenizer.load(model_dir)
    prompt = "Hello wor"
    body = {"prompt": prompt, "top_k": 4, "temperature": 0.5, "layers": [0, 1]}
    status, out = request(server, "POST", "/api/analyze", body)
    assert status == 200
    ids = tok.encode(prompt)
    assert [t["id"] for t in out["tokens"]] == ids and "".join(t["text"] for t in out["tokens"]) == prompt
    logits = model.forward(np.array([ids]))[0].astype(np.float64)
    p1, p_half = softmax(logits), softmax(logits / 0.5)
    for t, pos in enumerate(out["positions"]):
        want = np.argsort(-p_half[t], kind="stable")[:4]
        assert [c["id"] for c in pos["top"]] == want.tolist()
        np.testing.assert_allclose([c["prob"] for c in pos["top"]], p_half[t, want], rtol=1e-5)
        if t + 1 < len(ids):
            assert pos["prob_of_next"] == pytest.approx(p1[t, ids[t + 1]], rel=1e-5)  # at temperature 1
        else:
            assert pos["prob_of_next"] is None
    trace = dict(model.trace(np.array([ids])))
    for layer in range(2):
        att = np.array(out["attention"][layer])
        assert att.shape == (2, len(ids), len(ids))
        np.testing.assert_allclose(att, trace[f"h.{layer}.attn.softmax"][0], rtol=1e-6, atol=1e-7)
    lens = out["logit_lens"]
    assert len(lens) == 3 and all(len(layer) == len(ids) for layer in lens)
    last = [[c["id"] for c in position] for position in lens[-1]]
    assert last == np.argsort(-p1, axis=1, kind="stable")[:, :5].tolist()  # the last layer's lens: the logits
    assert lens[0] != lens[-1]
    assert {str(c["id"]) for layer in lens for position in layer for c in position} == set(out["token_texts"])


def test_analyze_returns_only_the_layers_asked_for(server):
    _, out = request(server, "POST", "/api/analyze", {"prompt": "abc", "layers": [0]})
    assert out["attention"][1] is None and len(out["attention"][0]) == 2
    _, out = request(server, "POST", "/api/analyze", {"prompt": "abc"})  # the default: the last layer
    assert out["attention"][0] is None and len(out["attention"][1]) == 2


def test_heads_positions_encoding_and_thumbnails_are_what_was_asked(server, model_dir):
    import base64

    tok = CharTokenizer.load(model_dir)
    prompt = "Hello world! abc"
    ids = tok.encode(prompt)
    T = len(ids)
    whole = request(server, "POST", "/api/analyze", {"prompt": prompt, "layers": [0, 1]})[1]
    body = {"prompt": prompt, "layers": [0], "heads": [1], "positions": [3, 15, 3], "encoding": "u8",
            "thumbnails": 5, "top_k": 3}  # fmt: skip
    status, out = request(server, "POST", "/api/analyze", body)
    assert status == 200 and out["encoding"] == "u8"
    assert out["attention"][1] is None and out["attention"][0][0] is None
    att = np.frombuffer(base64.b64decode(out["attention"][0][1]), np.uint8).reshape(T, T)
    np.testing.assert_array_equal(att, np.rint(np.array(whole["attention"][0][1]) * 255))
    assert [p["top"] is not None for p in out["positions"]] == [t in (3, 15) for t in range(T)]
    assert out["positions"][3]["top"] == whole["positions"][3]["top"][:3]
    assert [p["prob_of_next"] for p in out["positions"]] == [p["prob_of_next"] for p in whole["positions"]]
    for layer in range(3):
        assert [x is not None for x in out["logit_lens"][layer]] == [t in (3, 15) for t in range(T)]
        assert out["logit_lens"][layer][15] == whole["logit_lens"][layer][15]
    edges = np.linspace(0, T, 6).astype(int)  # 16 rows in 5 blocks: 3, 3, 3, 3, 4
    full = np.array(whole["attention"][0][1])
    pooled = [[full[a:b, c:d].mean() for c, d in pairwise(edges)] for a, b in pairwise(edges)]
    thumb = np.frombuffer(base64.b64decode(out["thumbnails"][0][1]), np.uint8).reshape(5, 5)
    np.testing.assert_array_equal(thumb, np.rint(np.array(pooled) * 255))
    assert out["thumbnails"][1] is None and len(out["thumbnails"][0]) == 2


@pytest.mark.parametrize("asked, got", [([-1], [15]), ([-16, 2], [0, 2]), ([-17, 16, 23], []), ([-2, 14], [14])])
def test_negative_positions_count_from_the_end(server, asked, got):
    _, out = request(server, "POST", "/api/analyze", {"prompt": "Hello world! abc", "positions": asked})
    assert [t for t, p in enumerate(out["positions"]) if p["top"] is not None] == got
    assert [t for t, p in enumerate(out["logit_lens"][0]) if p is not None] == got


def test_an_answer_too_large_is_refused_with_what_to_ask(model_dir, monkeypatch):
    from simple_llm import explorer_api
    from simple_llm.explorer_api import TooLarge

    explorer = Explorer(GPT.from_pretrained(model_dir), CharTokenizer.load(model_dir), model_dir)
    monkeypatch.setattr(explorer_api, "MAX_ANSWER", 20_000)
    body = {"prompt": "Hello world! abcdefgh", "layers": [0, 1]}
    with pytest.raises(TooLarge, match="ask for fewer layers, heads or positions"):
        explorer.analyze(body)
    assert explorer.analyze({**body, "layers": [1], "heads": [0], "positions": [0], "encoding": "u8"})["tokens"]


@pytest.mark.parametrize("kind", ["char", "word", "bpe", "bpe-lines"])
def test_a_long_prompt_is_tokenized_only_near_its_end(tmp_path, kind):
    """The last n_ctx tokens of a megabyte prompt, found by tokenizing a few kilobytes of its end: the
    same ids as tokenizing all of it."""
    from simple_llm import BPETokenizer, WordTokenizer

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "ab", "banana"]
    text = " ".join(rng.choice(words, 200_000)) + "\n"
    make = {
        "char": lambda: CharTokenizer.train(text),
        "word": lambda: WordTokenizer.train(text),
        "bpe": lambda: BPETokenizer.train(text[:20_000], 300),
        "bpe-lines": lambda: BPETokenizer.train(text[:20_000], 300, pattern=None),
    }
    tok = make[kind]()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_ctx=40, n_embd=8, n_head=2, n_layer=1), seed=0)
    explorer = Explorer(model, tok, tmp_path)
    seen = []
    encode = tok.encode
    tok.encode = lambda t: seen.append(len(t)) or encode(t)
    prompt = text + "ran far banana\n" * 3
    ids, cropped = explorer.tail_ids(prompt)
    assert cropped and ids == encode(prompt)[-40:]
    if kind != "bpe-lines":  # one piece per line: the line here is the whole text
        assert sum(seen) < 50_000 < len(prompt)


def test_generate_is_greedy_generation(server, model_dir):
    model, tok = GPT.from_pretrained(model_dir), CharTokenizer.load(model_dir)
    status, out = request(server, "POST", "/api/generate", {"prompt": "Hello", "max_new_tokens": 7})
    assert status == 200
    expected = model.generate(np.array([tok.encode("Hello")]), 7)[0, 5:].tolist()
    assert [t["id"] for t in out["tokens"]] == expected and out["text"] == tok.decode(expected)
    _, streamed = request(server, "POST", "/api/generate/stream", {"prompt": "Hello", "max_new_tokens": 7})
    assert [json.loads(line)["id"] for line in streamed.decode().splitlines()] == expected
    _, sampled = request(
        server, "POST", "/api/generate", {"prompt": "Hello", "max_new_tokens": 7, "temperature": 1.5, "seed": 4}
    )
    _, again = request(
        server, "POST", "/api/generate", {"prompt": "Hello", "max_new_tokens": 7, "temperature": 1.5, "seed": 4}
    )
    assert sampled == again


@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        ("/api/analyze", b"{not json", 400, "not JSON"),
        ("/api/analyze", b"[1, 2]", 400, "JSON object"),
        ("/api/analyze", b"{}", 400, "prompt is missing"),
        ("/api/analyze", b'{"prompt": 5}', 400, "prompt must be a string"),
        ("/api/analyze", b'{"prompt": ""}', 400, "no tokens"),
        ("/api/analyze", b'{"prompt": "zzz"}', 400, "not in this tokenizer"),
        ("/api/analyze", b'{"prompt": "abc", "top_k": 0}', 400, "top_k must be"),
        ("/api/analyze", b'{"prompt": "abc", "top_k": true}', 400, "top_k must be"),
        ("/api/analyze", b'{"prompt": "abc", "temperature": -1}', 400, "temperature must be"),
        ("/api/analyze", b'{"prompt": "abc", "layers": [9]}', 400, "layers must be"),
        ("/api/generate", b'{"prompt": "abc", "max_new_tokens": 0}', 400, "max_new_tokens must be"),
        ("/api/generate", b'{"prompt": "abc", "top_p": 2}', 400, "top_p must be"),
        ("/api/generate", b'{"prompt": "abc", "seed": -1}', 400, "seed must be"),
        ("/api/generate", b'{"prompt": "abc", "seed": 1.5}', 400, "seed must be"),
        ("/api/analyze", b"[" * 100_000 + b"]" * 100_000, 400, "nested too deep"),
        ("/api/analyze", b'{"prompt": {"a": ' * 50_000 + b"1" + b"}" * 50_000, 400, "nested too deep"),
        ("/api/nothing", b"{}", 404, "no such route"),
        ("/api/analyze", b'{"prompt": "' + b"a" * (1 << 20) + b'"}', 413, "over"),
    ],
)
def test_bad_requests_are_one_line_errors(server, path, body, status, fragment):
    got, out = request(server, "POST", path, raw=body)
    assert got == status and fragment in out["error"] and "\n" not in out["error"]


def test_a_prompt_longer_than_the_context_is_cropped_and_says_so(server):
    _, out = request(server, "POST", "/api/analyze", {"prompt": "abcdefgh" * 4})
    assert out["cropped"] is True and len(out["tokens"]) == 24
    _, out = request(server, "POST", "/api/analyze", {"prompt": "abcdefgh" * 3})  # exactly n_ctx
    assert out["cropped"] is False and len(out["tokens"]) == 24


def test_static_files_come_only_from_the_package(server):
    assert request(server, "GET", "/")[0] == 200
    assert request(server, "GET", "/app.js")[0] == 200
    for path in ("/../explore.py", "/..%2Fexplore.py", "/explorer/../../model.py", "/api/missing", "/nothing.js"):
        assert request(server, "GET", path)[0] == 404, path


def test_the_training_log(server):
    _, rows = request(server, "GET", "/api/log")
    assert rows == [
        {"step": 0.0, "lr": 0.001, "train_loss": 3.2, "val_loss": 3.3, "tokens_per_s": 0.0},
        {"step": 10.0, "lr": 0.001, "train_loss": 2.5, "val_loss": None, "tokens_per_s": 100.0},
    ]


def test_concurrent_requests_give_what_they_give_alone(server):
    bodies = [
        {"prompt": p, "max_new_tokens": 12, "temperature": 1.0, "seed": i}
        for i, p in enumerate(["Hel", "abc", "wor", "dd"] * 2)
    ]
    alone = [request(server, "POST", "/api/generate", b)[1] for b in bodies]
    analysis = request(server, "POST", "/api/analyze", {"prompt": "Hello"})[1]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda b: request(server, "POST", "/api/generate", b)[1], bodies))
        analyses = list(pool.map(lambda _: request(server, "POST", "/api/analyze", {"prompt": "Hello"})[1], range(4)))
    assert together == alone and all(a == analysis for a in analyses)


def test_a_long_generation_does_not_block_the_model_route(server):
    conn = http.client.HTTPConnection(*server, timeout=30)
    body = json.dumps({"prompt": "a", "max_new_tokens": 5000})
    conn.request("POST", "/api/generate/stream", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.readline()  # the generation is running
    assert request(server, "GET", "/api/model")[0] == 200
    conn.close()  # Stop: the server notices on its next write


def test_the_command_prints_where_it_serves_and_refuses_bad_input(model_dir, tmp_path):
    with explore_process(model_dir) as (address, proc):
        assert request(address, "GET", "/api/model")[0] == 200
    assert proc.returncode == 0 and "Traceback" not in proc.stderr.read()
    assert_one_line_error(run_cli("explore", "--model", tmp_path / "none"), "simple_llm explore: error:")
    assert_one_line_error(run_cli("explore", "--model", model_dir, "--port", "70000"), "not a port number")


def test_analyze_matches_transformers(tmp_path):
    """Attention weights (output_attentions), logits, and the lens from transformers' hidden states."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_head=2, n_layer=2)
    ref = transformers.GPT2LMHeadModel(config).eval()
    ref.save_pretrained(tmp_path)
    tok = CharTokenizer.train("abcdefghijklmnopqrst")
    tok.save(tmp_path)
    explorer = Explorer(GPT.from_pretrained(tmp_path, dtype=np.float64), tok, tmp_path)
    prompt = "abcabcdab"
    out = explorer.analyze({"prompt": prompt, "top_k": 5, "layers": [0, 1]})
    with torch.no_grad():  # eager attention: the fused kernel returns no weights
        ref64 = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").to(torch.float64)
        result = ref64(torch.tensor([tok.encode(prompt)]), output_attentions=True, output_hidden_states=True)
    for layer in range(2):
        np.testing.assert_allclose(out["attention"][layer], result.attentions[layer][0].numpy(), atol=1e-10)
    with torch.no_grad():
        lens_logits = [ref64.lm_head(ref64.transformer.ln_f(h)) for h in result.hidden_states[:-1]] + [result.logits]
    for got, logits in zip(out["logit_lens"], lens_logits):
        p = softmax(logits[0].numpy())
        for position, probs in zip(got, p):
            top = np.argsort(-probs, kind="stable")[:5]
            assert [c["id"] for c in position] == top.tolist()
            np.testing.assert_allclose([c["prob"] for c in position], probs[top], rtol=1e-9)
    p = softmax(result.logits[0].numpy())
    np.testing.assert_allclose([c["prob"] for c in out["positions"][-1]["top"]], np.sort(p[-1])[::-1][:5], rtol=1e-9)


def raw_exchange(server, data: bytes, wait: float = 5.0) -> bytes:
    """Send bytes as they are; what comes back until the server closes (or wait seconds)."""
    import socket

    with socket.create_connection(server, timeout=wait) as sock:
        sock.sendall(data)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except TimeoutError:
            pass
    return got


def post_headers(path, length, **extra):
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", f"Content-Length: {length}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    "method, headers, status, fragment",
    [
        ("GET", {"Host": "evil.example"}, 403, "not Host 'evil.example'"),
        ("GET", {"Host": "evil.example:8000"}, 403, "not Host"),
        ("GET", {"Host": "127.0.0.1.evil.example"}, 403, "not Host"),
        ("POST", {"Host": "evil.example", "Content-Type": "application/json"}, 403, "not Host"),
        ("POST", {"Origin": "http://evil.example", "Content-Type": "application/json"}, 403, "another site"),
        ("POST", {"Origin": "null", "Content-Type": "application/json"}, 403, "another site"),
        ("POST", {"Content-Type": "text/plain"}, 403, "application/json, not 'text/plain'"),
        ("POST", {"Content-Type": "application/x-www-form-urlencoded"}, 403, "application/json"),
        ("POST", {}, 403, "not 'none'"),
    ],
)
def test_only_this_machines_page_is_answered(server, method, headers, status, fragment):
    """A page on any web site could otherwise drive the model (a form or a text/plain fetch needs no
    permission), and read its answers through DNS rebinding."""
    conn = http.client.HTTPConnection(*server, timeout=10)
    body = json.dumps({"prompt": "abc", "max_new_tokens": 2}).encode() if method == "POST" else None
    conn.putrequest(method, "/api/generate" if method == "POST" else "/api/model", skip_host="Host" in headers)
    for k, v in headers.items():
        conn.putheader(k, v)
    if body:
        conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    out = json.loads(response.read())
    conn.close()
    assert response.status == status and fragment in out["error"] and "\n" not in out["error"], out


def test_the_page_own_host_and_origin_are_answered(server):
    host, port = server
    for name in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        body = json.dumps({"prompt": "abc", "max_new_tokens": 2})
        conn.putrequest("POST", "/api/generate", skip_host=True)
        for k, v in {"Host": name, "Origin": f"http://{name}", "Content-Type": "application/json; charset=utf-8",
                     "Content-Length": str(len(body))}.items():  # fmt: skip
            conn.putheader(k, v)
        conn.endheaders(body.encode())
        assert conn.getresponse().status == 200, name
        conn.close()


def test_misbehaving_clients_get_a_400_or_are_let_go_in_bounded_time(server):
    import time

    got = raw_exchange(server, post_headers("/api/analyze", -1))
    assert b" 400 " in got.split(b"\r\n")[0] and b"Content-Length must be a number" in got
    got = raw_exchange(server, post_headers("/api/analyze", "12abc"))
    assert b" 400 " in got.split(b"\r\n")[0]
    got = raw_exchange(server, b"GET /a\x00b HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert b" 400 " in got.split(b"\r\n")[0] and b"not a path" in got
    start = time.monotonic()  # a body that never comes: the server lets go after its timeout (1 s here)
    got = raw_exchange(server, post_headers("/api/analyze", 100) + b'{"prompt"', wait=10)
    assert time.monotonic() - start < 5
    start = time.monotonic()  # headers that never end, likewise
    raw_exchange(server, b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\n", wait=10)
    assert time.monotonic() - start < 5


def test_fifty_clients_at_once_are_all_answered(server):
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda _: request(server, "GET", "/api/model")[0], range(50)))
    assert statuses == [200] * 50


def test_a_client_that_went_away_is_one_line_not_a_traceback(capsys):
    from simple_llm.explore import Server

    server = Server.__new__(Server)  # handle_error reads nothing of the server's own
    try:
        raise BrokenPipeError(32, "Broken pipe")
    except BrokenPipeError:
        server.handle_error(None, ("127.0.0.1", 5555))
    err = capsys.readouterr().err
    assert err == "explore: 127.0.0.1: the client went away (BrokenPipeError)\n"


def test_a_tiny_temperature_answers_finite_json(server):
    for t in (1e-310, 5e-324):
        status, out = request(server, "POST", "/api/analyze", {"prompt": "Hello", "temperature": t, "top_k": 3})
        assert status == 200
        probs = [c["prob"] for position in out["positions"] for c in position["top"]]
        assert all(p in (0.0, 1.0) for p in probs) and 1.0 in probs


def test_a_model_with_nan_weights_answers_an_error_never_nan(model_dir):
    """JSON has no NaN: an answer holding one is a 500 that says why, not invalid JSON."""
    model, tok = GPT.from_pretrained(model_dir), CharTokenizer.load(model_dir)
    model.params["ln_f.weight"][0] = np.nan
    httpd = serve(Explorer(model, tok, model_dir), "127.0.0.1", 0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        status, out = request(httpd.server_address[:2], "POST", "/api/analyze", {"prompt": "Hello"})
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert status == 500 and "not finite" in out["error"]
