"""`toolkit serve`: Ollama's REST API (and OpenAI's /v1 routes) on the in-process llama.cpp backend.

Users without Ollama get an endpoint that the official `ollama` client and OpenAI-style clients
talk to unchanged: `/api/generate`, `/api/chat`, `/api/tags`, `/api/show`, `/api/ps`,
`/api/version`, `/api/embed`, `/api/embeddings`, `/v1/chat/completions`, `/v1/completions`,
`/v1/models`, `/v1/embeddings`. This module is the HTTP side, the standard library's stack only:
requests are parsed on parallel threads, routed (`Api`) to `ollama_routes` and `openai_routes`,
and their replies written as JSON, NDJSON streams or server-sent events; errors become
`{"error": ...}` bodies with Ollama's statuses. The models and the generation path are in
`toolkit.serve.registry`; `serve()` is the command.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from toolkit.errors import ConfigError, DataError, ToolkitError
from toolkit.serve import ollama_routes as ollama
from toolkit.serve import openai_routes as openai
from toolkit.serve.registry import Registry, ollama_name
from toolkit.serve.request import HTTPError, Reply, Request, Stream

log = logging.getLogger("toolkit.serve.server")

MAX_BODY = 64 << 20
NOT_STORED = ("/api/create", "/api/pull", "/api/push", "/api/copy", "/api/delete")
Route = Callable[[Registry, Request], dict | Reply | Stream]
ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/"): ollama.root, ("GET", "/api/version"): ollama.version, ("GET", "/api/tags"): ollama.tags,
    ("GET", "/api/ps"): ollama.ps, ("POST", "/api/show"): ollama.show, ("POST", "/api/generate"): ollama.generate,
    ("POST", "/api/chat"): ollama.chat, ("POST", "/api/embed"): ollama.embed, ("POST", "/api/embeddings"): ollama.embeddings,
    ("GET", "/v1/models"): openai.list_models, ("POST", "/v1/chat/completions"): openai.chat,
    ("POST", "/v1/completions"): openai.completions, ("POST", "/v1/embeddings"): openai.embeddings}


class Api:
    """Request -> reply for every route; the HTTP handler only moves bytes."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def handle(self, req: Request) -> dict | Reply | Stream:
        path = req.path.split("?", 1)[0].rstrip("/") or "/"
        method = "GET" if req.method == "HEAD" else req.method
        if (method, path) in ROUTES:
            return ROUTES[method, path](self.registry, req)
        if method == "GET" and path.startswith("/v1/models/"):
            return openai.show_model(self.registry, unquote(path[len("/v1/models/"):]))
        if path in NOT_STORED or path.startswith("/api/blobs/"):
            raise HTTPError(501, f"toolkit serve does not store or fetch models, so {path} is not supported: "
                                 "serve a GGUF with `toolkit serve --model PATH`")
        if any(p == path for _, p in ROUTES):
            raise HTTPError(405, "method not allowed")
        raise HTTPError(404, "404 page not found")


def _status_of(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, HTTPError):
        return exc.status, exc.message
    if isinstance(exc, (ConfigError, DataError)):  # a bad option or template: the client's to fix
        return 400, str(exc)
    if isinstance(exc, ToolkitError):
        return 500, str(exc)
    log.error("request failed", exc_info=exc)
    return 500, f"internal error: {type(exc).__name__}: {exc}"


def _error_body(path: str, status: int, message: str) -> dict:
    if not path.startswith("/v1/"):
        return {"error": message}
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _dumps(obj: Any) -> bytes:
    # compact like Go's encoder; newlines inside strings are escaped, so one object is one line
    # "replace": a lone surrogate from a request's JSON escapes must not break the reply
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and chunked streams the client reads as they come
    server_version = "toolkit-serve"
    disable_nagle_algorithm = True  # small stream chunks must not wait for a delayed ACK
    server: _HTTPServer

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_HEAD = do_DELETE = do_PUT = do_GET

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        req = Request(self.command, self.path, b"", time.perf_counter())
        try:
            req.body = self._read_body()
            result = self.server.api.handle(req)
            if isinstance(result, Stream):
                first = next(result.items, None)  # an error before the first byte gets its own status
                self._stream(result, first)
            else:
                self._send(*self._encode(result))
        except ConnectionError:
            self.close_connection = True  # the client went away; nothing left to tell it
        except Exception as exc:
            status, message = _status_of(exc)
            self._send(status, _dumps(_error_body(req.path, status, message)), "application/json; charset=utf-8")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            raise HTTPError(400, "invalid Content-Length") from None
        if length > MAX_BODY:
            self.close_connection = True  # the unread body would be taken for the next request
            raise HTTPError(413, "request body too large")
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        data = bytearray()
        while True:
            try:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            except ValueError:
                self.close_connection = True
                raise HTTPError(400, "malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline().strip():  # trailers
                    pass
                return bytes(data)
            data += self.rfile.read(size)
            self.rfile.readline()
            if len(data) > MAX_BODY:
                self.close_connection = True
                raise HTTPError(413, "request body too large")

    @staticmethod
    def _encode(result: dict | Reply) -> tuple[int, bytes, str]:
        if isinstance(result, Reply):
            return result.status, result.body, result.content_type
        return 200, _dumps(result), "application/json; charset=utf-8"

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, stream: Stream, first: Any) -> None:
        """Write a stream chunk by chunk; an error once started becomes its last line, as in Ollama."""
        chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if stream.sse else "application/x-ndjson")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        self.end_headers()
        items = stream.items
        try:
            try:
                for item in itertools.chain([] if first is None else [first], items):
                    self._write_chunk(self._frame(item, stream.sse), chunked)
            except ConnectionError:
                raise
            except Exception as exc:
                status, message = _status_of(exc)
                self._write_chunk(self._frame(_error_body(self.path, status, message), stream.sse), chunked)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            items.close()  # type: ignore[attr-defined]  # stops llama.cpp if the client left

    @staticmethod
    def _frame(item: Any, sse: bool) -> bytes:
        data = item.encode() if isinstance(item, str) else _dumps(item)
        return b"data: " + data + b"\n\n" if sse else data + b"\n"

    def _write_chunk(self, data: bytes, chunked: bool) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # clients connecting while models load wait here instead of being refused
    api: Api

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("connection from %s dropped: %s", client_address, exc)
        else:
            log.error("request from %s failed", client_address, exc_info=exc)


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class Server:
    """The HTTP server and its models. `start()` serves from a background thread, `serve_forever()`
    from this one; `close()` stops serving and frees the models."""

    def __init__(self, models: Mapping[str, str | os.PathLike], *, host: str = "127.0.0.1", port: int = 11434,
                 n_ctx: int = 2048, n_threads: int | None = None, parallel: int = 1):
        try:  # bind before loading: a taken port fails at once, not after a model load
            self.httpd = (_HTTPServer6 if ":" in host else _HTTPServer)((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                              fix="pick another --port (is Ollama already running on this one?)") from None
        try:  # clients that connect meanwhile wait in the listen backlog
            self.registry = Registry(models, n_ctx=n_ctx, n_threads=n_threads, parallel=parallel)
        except BaseException:
            self.httpd.server_close()
            raise
        self.httpd.api = Api(self.registry)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> Server:
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="toolkit-serve", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        if self._thread is not None:  # shutdown() from the serving thread itself would deadlock
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()
        self.registry.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def serve_in_thread(models: Mapping[str, str | os.PathLike] | None = None, *, host: str = "127.0.0.1",
                    port: int = 0, n_ctx: int = 2048, n_threads: int | None = None, parallel: int = 1) -> Iterator[str]:
    """Serve `models` ({name: model spec or .gguf path}; default: the embedded model) from a
    background thread on a free port: `with serve_in_thread() as url: ollama.Client(host=url)`.
    `n_threads=1` keeps a test server light on a shared machine."""
    from toolkit.models import DEFAULT_MODEL

    server = Server(models or {DEFAULT_MODEL: DEFAULT_MODEL}, host=host, port=port, n_ctx=n_ctx, n_threads=n_threads,
                    parallel=parallel).start()
    try:
        yield server.url
    finally:
        server.close()


def named_models(model: str, name: str = "") -> dict[str, Path]:
    """{Ollama name: GGUF} from comma-separated model specs and optional names (default: stems)."""
    from toolkit.models import resolve

    specs = [s.strip() for s in model.split(",") if s.strip()]
    names = [n.strip() for n in name.split(",")] if name.strip() else []
    if not specs:
        raise ConfigError("no model to serve", fix="pass --model smollm2, a .gguf file or an exported model directory")
    if names and len(names) != len(specs):
        raise ConfigError(f"--name gives {len(names)} names for {len(specs)} models", fix="give one name per model, comma-separated")
    resolved = [resolve(spec, hf=False) for spec in specs]
    out: dict[str, Path] = {}
    for i, found in enumerate(resolved):
        full = ollama_name(names[i] if names else found.name)
        if full.lower() in {k.lower() for k in out}:
            raise ConfigError(f"two models are both named {full!r}", fix="pass --name with one name per model")
        out[full] = found.require_gguf()
    return out


def env_parallel() -> int:
    """How many generations to decode together when --parallel is not given: OLLAMA_NUM_PARALLEL,
    read as Ollama reads it (unset or 0: one at a time, Ollama's default)."""
    raw = os.environ.get("OLLAMA_NUM_PARALLEL", "").strip()
    if not raw.isdigit() and raw:
        raise ConfigError(f"OLLAMA_NUM_PARALLEL={raw!r} is not a whole number", fix="set it to e.g. 4, or pass --parallel")
    return int(raw or 0) or 1


def serve(model: str = "smollm2", host: str = "127.0.0.1", port: int = 11434, name: str = "", n_ctx: int = 2048,
          parallel: int = 0) -> int:
    """Serve models over Ollama's REST API (and OpenAI's /v1 API) with llama.cpp in process.

    The official `ollama` client and OpenAI-compatible clients work unchanged: point them at the
    printed URL (OLLAMA_HOST=HOST:PORT for tools that read it, base_url URL/v1 for OpenAI's).
    Models load once at start and stay loaded. One generation runs at a time unless --parallel
    (like OLLAMA_NUM_PARALLEL) lets several clients' generations decode together. Ctrl-C stops.

    Args:
        model: model(s) to serve, comma-separated: embedded name (smollm2), a .gguf file or an exported model directory.
        host: address to listen on (0.0.0.0 for every interface).
        port: port to listen on; 11434 is Ollama's, pick another if Ollama runs here.
        name: name(s) clients use, comma-separated in --model order (default: each model's file stem); the tag defaults to :latest.
        n_ctx: context size in tokens each model is loaded with; a request's num_ctx can raise it up to the model's trained context.
        parallel: generations decoded together, each with n_ctx tokens of KV cache (requests with
            structured output, keep_alive 0 or a larger num_ctx still run one at a time); default:
            OLLAMA_NUM_PARALLEL if set, else 1.
    """
    from toolkit.console import err, status

    parallel = parallel or env_parallel()
    models = named_models(model, name)
    with status(f"Loading {', '.join(models)}"):
        server = Server(models, host=host, port=port, n_ctx=n_ctx, parallel=parallel)
    together = f", up to {parallel} generations together" if parallel > 1 else ""
    err.print(f"Serving {', '.join(models)} at {server.url} (Ollama API; OpenAI API at {server.url}/v1{together}). Ctrl-C stops.",
              highlight=False, soft_wrap=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
