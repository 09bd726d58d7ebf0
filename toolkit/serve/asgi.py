"""The HTTP side of `toolkit serve`: a Starlette app served by uvicorn, configured for hostile clients.

uvicorn (h11) parses requests: chunked bodies, header size, keep-alive, the listen backlog and a
cap on concurrent connections are its. This module adds what it leaves to the app, explicitly:
a body limit (checked on Content-Length and while reading), a read timeout for each request's head
and each piece of its body, a write timeout, an optional API key, and cancellation. `Api` routes a
request to `ollama_routes`, `openai_routes` or `responses`; each request then runs on a worker thread of its
own while the event loop sends what it produces (a JSON reply, an NDJSON stream or server-sent
events) and watches the connection: a client that leaves sets the request's `cancel` event, which
stops its generation within a decode step, streaming or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from toolkit.errors import ConfigError, DataError, ToolkitError
from toolkit.serve import logprobs, responses
from toolkit.serve import ollama_routes as ollama
from toolkit.serve import openai_routes as openai
from toolkit.serve.registry import Registry
from toolkit.serve.request import Cancelled, HTTPError, Reply, Request, Stream

log = logging.getLogger("toolkit.serve.asgi")

NOT_STORED = ("/api/create", "/api/pull", "/api/push", "/api/copy", "/api/delete")
Route = Callable[[Registry, Request], dict | Reply | Stream]
ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/"): ollama.root, ("GET", "/api/version"): ollama.version, ("GET", "/api/tags"): ollama.tags,
    ("GET", "/api/ps"): ollama.ps, ("POST", "/api/show"): ollama.show, ("POST", "/api/generate"): ollama.generate,
    ("POST", "/api/chat"): ollama.chat, ("POST", "/api/embed"): ollama.embed, ("POST", "/api/embeddings"): ollama.embeddings,
    ("GET", "/v1/models"): openai.list_models, ("POST", "/v1/chat/completions"): openai.chat,
    ("POST", "/v1/completions"): openai.completions, ("POST", "/v1/embeddings"): openai.embeddings,
    ("POST", "/v1/responses"): responses.responses,
    # lm-evaluation-harness's local-completions tokenizes with the server's own tokenizer
    ("POST", "/tokenize"): logprobs.tokenize, ("POST", "/detokenize"): logprobs.detokenize,
    ("GET", "/tokenizer_info"): logprobs.tokenizer_info}
JSON_TYPE = "application/json; charset=utf-8"
GENERATION = ("/api/generate", "/api/chat", "/v1/chat/completions", "/v1/completions", "/v1/responses")


@dataclass(frozen=True)
class Limits:
    """What one client may take. Timeouts in seconds; `workers`: requests handled at once (more
    wait for a worker thread; past uvicorn's `limit_concurrency`, the same number, they get 503)."""

    max_body: int = 64 << 20
    read_timeout: float = 30.0  # for a request's head, and for each piece of its body
    write_timeout: float = 60.0  # for each piece of a reply the client does not read
    keep_alive: float = 30.0  # an idle connection between requests
    workers: int = 1024
    backlog: int = 2048  # connections waiting to be accepted (a burst of clients)
    max_header: int = 64 << 10
    api_key: str = ""


class Api:
    """Request -> reply for every route; the HTTP layer only moves bytes."""

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

    def body_limit(self, path: str) -> int | None:
        """The most bytes a generation request's body can usefully have: the longest prompt the
        served models' largest context holds, every byte JSON-escaped (6 bytes), plus room for one
        message per token. A larger body is refused on its Content-Length, unread (None: no
        limit but the server's)."""
        if (path.split("?", 1)[0].rstrip("/") or "/") not in GENERATION:
            return None
        return 6 * self.registry.prompt_bytes + 64 * self.registry.max_ctx + (64 << 10)


def status_of(exc: BaseException) -> tuple[int, str]:
    if isinstance(exc, HTTPError):
        return exc.status, exc.message
    if isinstance(exc, (ConfigError, DataError)):  # a bad option or template: the client's to fix
        return 400, str(exc)
    if isinstance(exc, ToolkitError):
        return 500, str(exc)
    log.error("request failed", exc_info=exc)
    return 500, f"internal error: {type(exc).__name__}: {exc}"


def error_body(path: str, status: int, message: str) -> dict:
    if not path.startswith("/v1/"):
        return {"error": message}
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def dumps(obj: Any) -> bytes:
    # compact like Go's encoder; newlines inside strings are escaped, so one object is one line
    # "replace": a lone surrogate, should one reach a reply, must not break it
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def _frame(item: Any, sse: bool, named: bool = False) -> bytes:
    data = item.encode() if isinstance(item, str) else dumps(item)
    if named:  # the Responses API names each event; an error mid-stream is an "error" event
        kind = item.get("type", "error") if isinstance(item, dict) else "error"
        return f"event: {kind}\n".encode() + b"data: " + data + b"\n\n"
    return b"data: " + data + b"\n\n" if sse else data + b"\n"


class App:
    """The ASGI app behind Starlette's one catch-all route: reads the body within the limits, runs
    the request on a worker thread and sends what it produces."""

    def __init__(self, api: Api, limits: Limits):
        self.api = api
        self.limits = limits
        self.pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="toolkit-request")
        self.active: set[Request] = set()  # cancelled when the server closes
        self._active_lock = threading.Lock()  # close() runs on another thread than the event loop

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        path = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.limits.api_key and not _authorized(headers.get("authorization", ""), self.limits.api_key):
            body = error_body(path, 401, "unauthorized: send the server's API key as `Authorization: Bearer KEY`")
            await self._reply(send, 401, dumps(body), JSON_TYPE, [(b"www-authenticate", b"Bearer")])
            return
        limit = min(self.limits.max_body, self.api.body_limit(path) or self.limits.max_body)
        try:
            data = await self._read_body(headers, receive, limit)
        except HTTPError as exc:  # the rest of the body is not read: the connection cannot be reused
            await self._reply(send, exc.status, dumps(error_body(path, exc.status, exc.message)), JSON_TYPE,
                              [(b"connection", b"close")])
            return
        except Cancelled:
            return
        await self._run(Request(scope["method"], path, data, started), receive, send)

    async def _read_body(self, headers: dict[str, str], receive: Callable, limit: int) -> bytearray:
        too_large = HTTPError(413, f"request body too large (the limit is {limit} bytes)")
        length = headers.get("content-length")
        if length is not None and int(length) > limit:  # h11 has checked it is a number
            raise too_large
        data = bytearray()
        while True:
            try:
                async with asyncio.timeout(self.limits.read_timeout):  # no task per piece, unlike wait_for
                    message = await receive()
            except TimeoutError:
                raise HTTPError(408, f"timed out reading the request body (no data for {self.limits.read_timeout:g} s)") from None
            if message["type"] == "http.disconnect":
                raise Cancelled()
            data += message.get("body", b"")
            if len(data) > limit:  # a chunked body has no Content-Length to check first
                raise too_large
            if not message.get("more_body"):
                return data  # json.loads reads a bytearray as it is: no copy of a large body

    async def _run(self, req: Request, receive: Callable, send: Callable) -> None:
        """Run `req` on a worker thread; send its events; cancel it when the client leaves."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def emit(event: tuple) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the server is closing
                loop.call_soon_threadsafe(events.put_nowait, event)

        watcher = asyncio.ensure_future(_watch(receive, req))
        with self._active_lock:
            self.active.add(req)
        work = loop.run_in_executor(self.pool, self._work, req, emit)
        work.add_done_callback(lambda f: f.cancelled() or f.exception())  # errors are turned into events
        try:
            await self._send_events(events, send, req)
        except (asyncio.TimeoutError, OSError):  # a client that stopped reading
            req.cancel.set()
        finally:
            with self._active_lock:
                self.active.discard(req)
            watcher.cancel()
            if not work.done():  # this task was cancelled (the server is closing) or the client left
                req.cancel.set()

    async def _send_events(self, events: asyncio.Queue, send: Callable, req: Request) -> None:
        while True:
            event = await events.get()
            kind = event[0]
            if kind == "gone":
                return
            if kind == "reply":
                await self._reply(send, *event[1:])
                return
            if kind == "head":
                kind_header = b"text/event-stream" if event[1] else b"application/x-ndjson"
                await self._send(send, {"type": "http.response.start", "status": 200,
                                        "headers": [(b"content-type", kind_header), (b"cache-control", b"no-cache")]})
            elif kind == "chunk":
                await self._send(send, {"type": "http.response.body", "body": event[1], "more_body": True})
            elif kind == "end":
                await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
                return

    def _work(self, req: Request, emit: Callable[[tuple], None]) -> None:
        """On a worker thread: the route, then its reply or stream as events for the event loop."""
        try:
            result = self.api.handle(req)
            if isinstance(result, Stream):
                self._stream(req, result, emit)
            elif isinstance(result, Reply):
                emit(("reply", result.status, result.body, result.content_type))
            else:
                emit(("reply", 200, dumps(result), JSON_TYPE))
        except Cancelled:
            emit(("gone",))
        except Exception as exc:
            status, message = status_of(exc)
            emit(("reply", status, dumps(error_body(req.path, status, message)), JSON_TYPE))

    def _stream(self, req: Request, stream: Stream, emit: Callable[[tuple], None]) -> None:
        """A stream's items as chunks; an error before the first one gets its own status (raised),
        one after it becomes the last line, as in Ollama."""
        items = stream.items
        try:
            first = [next(items)]
        except StopIteration:
            first = []
        except BaseException:
            items.close()  # type: ignore[attr-defined]
            raise
        emit(("head", stream.sse))
        try:
            for item in itertools.chain(first, items):
                emit(("chunk", _frame(item, stream.sse, stream.named)))
        except Cancelled:
            pass
        except Exception as exc:
            status, message = status_of(exc)
            emit(("chunk", _frame(error_body(req.path, status, message), stream.sse, stream.named)))
        finally:
            items.close()  # type: ignore[attr-defined]  # stops llama.cpp if the client left
            emit(("end",))

    async def _send(self, send: Callable, message: dict) -> None:
        await asyncio.wait_for(send(message), self.limits.write_timeout)

    async def _reply(self, send: Callable, status: int, body: bytes, content_type: str,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()), *(extra or [])]
        await self._send(send, {"type": "http.response.start", "status": status, "headers": headers})
        await self._send(send, {"type": "http.response.body", "body": body, "more_body": False})

    def close(self) -> None:
        """Cancel every request still running and let the worker threads go."""
        with self._active_lock:
            for req in self.active:
                req.cancel.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


async def _watch(receive: Callable, req: Request) -> None:
    """Set the request's cancel event when its client disconnects (uvicorn reports it here)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    req.cancel.set()


def _authorized(header: str, key: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), key.encode())


def starlette_app(api: Api, limits: Limits) -> tuple[Any, App]:
    """The Starlette app (one catch-all route, every method) and the `App` behind it."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    app = App(api, limits)
    return Starlette(routes=[Route("/{path:path}", app)]), app


def protocol(read_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request's head: uvicorn has none, so a
    client that connects, or sends half a request line, and waits would hold a connection forever."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._between_requests():
                self._arm()  # (part of) the next request's head: it must be complete in time
            elif self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._head_timer is None and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(read_timeout, self._head_timeout)

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._between_requests() and not self.transport.is_closing():
                self.transport.close()

    return Protocol
