"""`toolkit serve` under hostile or careless clients, over loopback only (issue 15, cases 1-7).

Every loop here is bounded in count and time. The servers run one llama.cpp thread each, with
short timeouts so that the timeout cases take seconds.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from email.utils import parsedate_to_datetime
from pathlib import Path
from types import SimpleNamespace

import httpx
import ollama
import pytest

from toolkit.errors import ConfigError
from toolkit.params import DecodingParams
from toolkit.serve.asgi import Limits
from toolkit.serve.server import Server, banner

pytestmark = pytest.mark.slow

MODEL = "smollm2"
LONG = {"model": MODEL, "prompt": "Count from 1 to 1000, separated by commas.",
        "options": {"temperature": 0, "num_predict": 1000}}
TIGHT = Limits(read_timeout=1.0, keep_alive=1.0, max_body=24 << 20)


@pytest.fixture(scope="module")
def gguf() -> Path:
    from toolkit.models import resolve

    return resolve(MODEL, hf=False).gguf


@pytest.fixture(scope="module")
def server(gguf):
    """One generation at a time, at most one waiting (OLLAMA_MAX_QUEUE=1), timeouts of a second."""
    with Server({MODEL: gguf}, port=0, n_ctx=1024, n_threads=1, max_queue=1, limits=TIGHT) as srv:
        yield srv.start()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def _port(server: Server) -> int:
    return server.sock.getsockname()[1]


def _post_raw(server: Server, path: str, body: dict, *, timeout: float = 120) -> socket.socket:
    """A POST sent over a socket of its own, so the test can hang up whenever it likes."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=timeout)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


def _read_until(sock: socket.socket, marker: bytes, limit: float = 120) -> bytes:
    got, deadline = b"", time.monotonic() + limit
    while marker not in got and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _wait(predicate, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def decodes(monkeypatch) -> list:
    """Every llama_decode call, on either path (the high-level Llama and the batched engine)."""
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    calls: list = []
    real = bindings.llama_decode

    def spy(*args):
        calls.append(time.monotonic())
        return real(*args)

    monkeypatch.setattr(llama_cpp, "llama_decode", spy)
    monkeypatch.setattr(bindings, "llama_decode", spy)
    return calls


# -- 1. work for one request never holds the generation lock ---------------------------------------

ABUSIVE = [  # (body, what the 400 names); each held the lock 12-46 s before
    ({"model": MODEL, "prompt": "hi", "template": "{{range 6000}}{{range 6000}}{{end}}{{end}}"}, "more than 6000 steps"),
    ({"model": MODEL, "prompt": "hi", "template": '{{printf "%10000000s" .Prompt}}'}, "template output is over 82944 characters"),
    ({"model": MODEL, "prompt": "hi", "template": "{{.Prompt}}" + " " * 70_000}, "over the 65536-byte limit"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}, "over the 82944-byte limit of a 1024-token context"),
]


def test_prompt_work_runs_outside_the_generation_lock_and_within_bounds(server, http):
    stream = _post_raw(server, "/api/generate", LONG)  # holds the lock, one token at a time
    try:
        assert b'"done":false' in _read_until(stream, b'"done":false')
        for body, bound in ABUSIVE:
            start = time.monotonic()
            r = http.post("/api/chat" if "messages" in body else "/api/generate", json=body)
            assert r.status_code == 400 and bound in r.json()["error"], r.text[:300]
            assert time.monotonic() - start < 15, bound  # answered while the generation runs
        # a body larger than any served context could hold is refused on its Content-Length, unread
        huge = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (20 << 20)}]}).encode()
        with socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock:
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(huge) + huge[:1000])
            reply = _read_until(sock, b"}", 15)
        assert reply.startswith(b"HTTP/1.1 413 ") and b"request body too large (the limit is" in reply
        assert server.registry.lock.locked(), "the long generation should still be running"
    finally:
        stream.close()


def test_printf_width_is_capped_as_in_go_and_templates_are_bounded():
    from toolkit.serve.prompt import HTTPError, render_go

    msgs = [{"role": "user", "content": "hi"}]
    assert render_go('{{printf "%100000000s" .Prompt}}', msgs, 10**7) == "%!(NOVERB)%!(EXTRA string=hi)"  # 9 digits: Go gives up
    assert len(render_go('{{printf "%1000000s" .Prompt}}', msgs, 10**7)) == 1_000_000
    doubling = '{{$x := printf "%1000s" ""}}{{range 40}}{{$x = printf "%s%s" $x $x}}{{end}}{{$x}}'
    for template, bound in [(doubling, "over 100000 characters"), ("{{range 100000000}}{{end}}", "more than 6000 steps")]:
        start = time.monotonic()
        with pytest.raises(HTTPError, match=bound):
            render_go(template, msgs, 100_000)
        assert time.monotonic() - start < 1


# -- 2. a client that hangs up stops its generation, streaming or not, batched or not --------------


@pytest.mark.parametrize("parallel", [1, 2], ids=["one-at-a-time", "batched"])
def test_a_client_that_hangs_up_stops_its_non_streaming_generation(gguf, decodes, parallel):
    with Server({MODEL: gguf}, port=0, n_ctx=1024, n_threads=1, parallel=parallel) as srv:
        srv.start()
        sock = _post_raw(srv, "/api/generate", LONG | {"stream": False})
        assert _wait(lambda: len(decodes) >= 5, 120), "the generation did not start"
        sock.close()  # the client leaves; 1000 tokens would take a minute or more
        left_at = time.monotonic()
        assert _wait(lambda: srv.registry.waiting == 0, 10), "the generation kept running"
        assert len([t for t in decodes if t > left_at]) < 20  # stopped within a few decode steps
        left = len(decodes)
        time.sleep(1.0)
        assert len(decodes) == left, "llama.cpp still decodes for a client that left"
        with httpx.Client(base_url=srv.url, timeout=60) as client:  # and the server serves the next one
            assert client.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                                      "options": {"num_predict": 2}}).json()["done"]


def test_a_request_that_waits_for_the_lock_gives_up_its_place_when_its_client_leaves(server):
    first = _post_raw(server, "/api/generate", LONG)
    try:
        assert b'"done":false' in _read_until(first, b'"done":false')
        waiting = _post_raw(server, "/api/generate", LONG | {"stream": False})
        assert _wait(lambda: server.registry.waiting == 2, 10)
        waiting.close()
        assert _wait(lambda: server.registry.waiting == 1, 10)
    finally:
        first.close()
    assert _wait(lambda: server.registry.waiting == 0, 10)


# -- 3. chunked bodies cannot get past the body limit ----------------------------------------------


def _chunked(server: Server, size_line: bytes, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\n")
        try:
            sock.sendall(data)
        except OSError:  # the server answered and closed before reading it all
            pass
        return _read_until(sock, b"\r\n\r\n", 30)


def test_chunked_bodies_are_bounded(server):
    assert _chunked(server, b"-1", b"x" * 100_000).startswith(b"HTTP/1.1 400 ")
    reply = _chunked(server, b"ffffffffffff", b"x" * (25 << 20))  # over this server's 24 MiB limit
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:200]


def test_a_content_length_over_the_limit_is_refused_before_reading(server):
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n{")
        reply = _read_until(sock, b"}", 10)
    assert reply.startswith(b"HTTP/1.1 413 ") and b"request body too large" in reply


# -- 4. one numeric rule on every path; lone surrogates replaced as Go's decoder does ----------------


@pytest.mark.parametrize("path, raw, field", [
    ("/api/generate", b'{"model":"smollm2","prompt":"x","options":{"temperature":NaN}}', "options.temperature"),
    ("/api/generate", b'{"model":"smollm2","prompt":"x","options":{"top_p":NaN}}', "options.top_p"),
    ("/api/generate", b'{"model":"smollm2","prompt":"x","options":{"seed":NaN}}', "options.seed"),
    ("/api/chat", b'{"model":"smollm2","messages":[{"role":"user","content":"x"}],"options":{"seed":Infinity}}', "options.seed"),
    ("/api/generate", b'{"model":"smollm2","prompt":"x","options":{"num_predict":-Infinity}}', "options.num_predict"),
    ("/api/generate", b'{"model":"smollm2","prompt":"x","options":{"temperature":1e400}}', "options.temperature"),
    ("/v1/chat/completions", b'{"model":"smollm2","messages":[{"role":"user","content":"x"}],"max_tokens":1e400}', "max_tokens"),
    ("/v1/completions", b'{"model":"smollm2","prompt":"x","seed":NaN}', "seed"),
])
def test_numbers_that_are_not_finite_are_400s_naming_the_field(http, path, raw, field):
    r = http.post(path, content=raw)
    message = r.json()["error"]["message"] if path.startswith("/v1/") else r.json()["error"]
    assert r.status_code == 400 and f'"{field}"' in message and "finite" in message


@pytest.mark.parametrize("path, body", [
    ("/api/generate", {"model": MODEL, "prompt": "\ud800 hi", "options": {"num_predict": 2}}),
    ("/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "a \udfff b"}], "options": {"num_predict": 2}}),
    ("/api/generate", {"model": MODEL, "prompt": "hi", "options": {"num_predict": 2, "stop": ["\ud800"]}}),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "\udc00"}], "max_tokens": 2}),
    ("/api/embed", {"model": MODEL, "input": ["\ud800", "fine"]}),
])
def test_lone_surrogates_become_the_replacement_character_as_in_ollama(http, path, body):
    r = http.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    text = r.text
    assert r.status_code == 200, text[:300]
    if path == "/api/embed":
        assert len(r.json()["embeddings"]) == 2


def test_decoding_params_refuse_non_finite_numbers_everywhere(tmp_path):
    nan, inf = float("nan"), float("inf")
    for field, value in [("temperature", nan), ("top_p", nan), ("min_p", inf), ("top_k", inf), ("seed", -inf),
                         ("max_tokens", nan), ("repeat_penalty", nan)]:
        with pytest.raises(ConfigError, match=f"{field} must be a finite number"):
            DecodingParams(**{field: value})
    from toolkit.cli import main
    from toolkit.evaluate.sweep.config import parse_sweep
    from toolkit.modelfile.values import parse_value

    assert main(["generate", "hi", "--temperature", "nan"]) == 2
    assert main(["generate", "hi", "--top-p", "inf"]) == 2
    for raw in [{"space": {"temperature": {"low": nan, "high": 1.0}}},
                {"space": {"top_k": {"values": [inf, 3]}}},
                {"space": {"temperature": {"low": 0.1, "high": 1.0}}, "fixed": {"top_p": nan}}]:
        with pytest.raises(ConfigError, match="finite"):
            parse_sweep(raw)
    for value in ("nan", "NaN", "inf", "-Inf", "1e400"):
        with pytest.raises(ValueError, match="invalid float value"):
            parse_value("temperature", value)


# -- 5. read timeouts, idle connections, bursts, the queue bound -----------------------------------


def test_a_client_that_sends_part_of_a_request_and_waits_is_answered_or_dropped(server):
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"model\":")
        start = time.monotonic()
        reply = _read_until(sock, b"}", 15)
    assert reply.startswith(b"HTTP/1.1 408 ") and time.monotonic() - start < 10
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=30) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\n")  # half a head
        start = time.monotonic()
        assert sock.recv(100) == b"" and time.monotonic() - start < 10  # closed by the server


def test_idle_connections_hold_no_thread_and_are_closed(server):
    before = threading.active_count()
    socks = [socket.create_connection(("127.0.0.1", _port(server)), timeout=30) for _ in range(300)]
    try:
        time.sleep(0.3)
        assert threading.active_count() - before < 20  # the old server ran a thread per connection
        for sock in socks:  # each is closed after the read timeout (1 s here)
            assert sock.recv(1) == b""
    finally:
        for sock in socks:
            sock.close()


def test_replies_are_not_held_back_by_nagle(server, http):
    """A reply goes out in two writes (head, body): with Nagle on, the second waits ~40 ms for
    the client's delayed ACK. asyncio turns it off only on a socket created as IPPROTO_TCP."""
    assert server.sock.proto == socket.IPPROTO_TCP
    times = []
    for _ in range(21):
        start = time.perf_counter()
        http.get("/api/version").raise_for_status()
        times.append(time.perf_counter() - start)
    assert sorted(times)[10] < 0.035


# 200 clients, each connecting and sending at once, from a process of their own as real clients are:
# from a thread of this process the sends waited for the server thread's GIL and took up to 2.3 s
# on a 2-core VM, past TIGHT's 1 s deadline for a request's head, so the server rightly closed them
BURST = r"""
import socket, sys
port, body = int(sys.argv[1]), sys.argv[2].encode()
request = (b"POST /api/show HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
socks = []
for _ in range(200):
    socks.append(socket.create_connection(("127.0.0.1", port), timeout=60))
    socks[-1].sendall(request)
for sock in socks:
    got = b""
    while b"\r\n" not in got and (chunk := sock.recv(65536)):
        got += chunk
    print(got.split(b"\r\n")[0].decode())
"""


def test_a_burst_of_connections_is_all_served(server):
    burst = subprocess.run([sys.executable, "-c", BURST, str(_port(server)), json.dumps({"model": MODEL})],
                           capture_output=True, text=True, timeout=120)
    assert burst.returncode == 0, burst.stderr
    assert burst.stdout.splitlines() == ["HTTP/1.1 200 OK"] * 200


def test_an_idle_server_does_not_wake_and_still_dates_its_replies(server, http):
    """uvicorn's main loop ticks ten times a second to refresh the Date header and poll for exit;
    on a 2-core VM that alone held an idle server at 1.5% of a core. Ours sleeps until work comes."""
    stat = Path(f"/proc/self/task/{server._thread.native_id}/schedstat")
    if not stat.exists():
        pytest.skip("needs Linux's per-thread /proc/self/task/<tid>/schedstat")
    time.sleep(1.5)  # earlier tests' connections time out (1 s here), ending their timers
    slices = int(stat.read_text().split()[2])  # times the thread was scheduled in
    time.sleep(2)
    assert int(stat.read_text().split()[2]) - slices <= 1  # uvicorn's tick: 20
    dated = parsedate_to_datetime(http.get("/api/version").headers["date"])
    assert abs(dated.timestamp() - time.time()) < 3


def test_an_idle_server_stops_as_soon_as_it_is_told(gguf):
    with Server({MODEL: gguf}, port=0, n_ctx=256, n_threads=1, limits=TIGHT) as srv:
        srv.start()
        thread = srv._thread
        srv.uvicorn.should_exit = True  # what Ctrl-C's handler and close() do
        thread.join(5)  # no tick polls for it: the setter wakes the loop
        assert not thread.is_alive()


def test_past_the_queue_bound_requests_get_ollamas_503(server, http):
    running = _post_raw(server, "/api/generate", LONG)
    waiting = None
    try:
        assert b'"done":false' in _read_until(running, b'"done":false')
        waiting = _post_raw(server, "/api/generate", LONG)
        assert _wait(lambda: server.registry.waiting == 2, 10)
        r = http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False})
        assert (r.status_code, r.json()) == (503, {"error": "server busy, please try again.  maximum pending requests exceeded"})
    finally:
        running.close()
        if waiting is not None:
            waiting.close()
    assert _wait(lambda: server.registry.waiting == 0, 15)


# -- 6. exposure: the real bound address, a warning, an API key, no server paths -------------------


def _fake(host: str, port: int = 11434) -> SimpleNamespace:
    sock = SimpleNamespace(getsockname=lambda: (host, port))
    shown = f"http://{host}:{port}"
    return SimpleNamespace(sock=sock, bound=shown, url=shown.replace("0.0.0.0", "127.0.0.1"))


def test_the_banner_shows_the_bound_address_and_warns_when_others_can_reach_it():
    lines = banner(_fake("0.0.0.0"), {"smollm2:latest": Path("x.gguf")}, 1, "")
    assert "http://0.0.0.0:11434" in lines[0] and lines[1].startswith("warning: listening on every network interface")
    assert "TOOLKIT_API_KEY" in lines[1] and "http://127.0.0.1:11434" in lines[2]
    assert "must send the API key" in banner(_fake("192.168.1.5"), {"m:latest": Path("x.gguf")}, 1, "k")[1]
    assert banner(_fake("127.0.0.1"), {"m:latest": Path("x.gguf")}, 1, "") == [
        "Serving m:latest at http://127.0.0.1:11434 (Ollama API; OpenAI API at http://127.0.0.1:11434/v1). Ctrl-C stops."]


def test_an_api_key_is_required_by_every_route(gguf, monkeypatch):
    with Server({MODEL: gguf}, port=0, n_ctx=512, n_threads=1, limits=Limits(api_key="s3cret")) as srv:
        srv.start()
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            for method, path in [("GET", "/"), ("HEAD", "/"), ("GET", "/api/tags"), ("POST", "/api/show"), ("POST", "/api/chat"),
                                 ("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/nothing")]:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                    r = client.request(method, path, headers=headers, json={"model": MODEL} if method == "POST" else None)
                    assert r.status_code == 401, (method, path, headers)
            assert client.get("/api/tags", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert "unauthorized" in client.get("/v1/models").json()["error"]["message"]
        keyed = ollama.Client(host=srv.url, headers={"Authorization": "Bearer s3cret"})
        assert keyed.generate(MODEL, "Hi", options={"num_predict": 2}).done
    # `toolkit serve` takes the key from TOOLKIT_API_KEY when --api-key is not given
    from toolkit.serve import server as module

    seen = {}
    monkeypatch.setenv("TOOLKIT_API_KEY", "from-env")
    monkeypatch.setattr(module.Server, "serve_forever", lambda self: seen.setdefault("key", self.limits.api_key))
    assert module.serve(model=str(gguf), port=0, n_ctx=512) == 0 and seen["key"] == "from-env"


def test_show_does_not_reveal_where_the_server_keeps_its_files(http, gguf):
    text = http.post("/api/show", json={"model": MODEL}).text
    assert str(gguf.parent) not in text and gguf.name in text


# -- 7. command-line mistakes are one-line errors --------------------------------------------------


def test_command_line_mistakes_are_one_line_errors(tmp_path, capsys):
    from toolkit.cli import main

    binary = tmp_path / "x.gguf"
    binary.write_bytes(b"GGUF\x03\x00\x00\x00\xff\xfe\x00\x01" * 64)
    table = tmp_path / "qa.csv"
    table.write_text("question,answer\nq,a\n")
    cases = [(["serve", "--port", "70000"], "--port 70000 is outside 0..65535"),
             (["serve", "--port", "-1"], "--port -1 is outside 0..65535"),
             (["sweep", str(binary)], "not a sweep file: it is not UTF-8 text"),
             (["generate", "hi", "--model", str(table)], "is a file but not a model")]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
