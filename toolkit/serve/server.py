"""`toolkit serve`: Ollama's REST API (and OpenAI's /v1 routes) on the in-process llama.cpp backend.

Users without Ollama get an endpoint that the official `ollama` client and OpenAI-style clients
talk to unchanged: `/api/generate`, `/api/chat`, `/api/tags`, `/api/show`, `/api/ps`,
`/api/version`, `/api/embed`, `/api/embeddings`, `/v1/chat/completions`, `/v1/completions`,
`/v1/models`, `/v1/embeddings`. `Server` binds the socket, loads the models (`toolkit.serve.registry`)
and runs the Starlette app of `toolkit.serve.asgi` on uvicorn, every limit set explicitly there;
`serve()` is the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError
from toolkit.models import DEFAULT_MODEL, resolve
from toolkit.serve.asgi import Api, Limits, protocol, starlette_app
from toolkit.serve.registry import Registry, ollama_name

log = logging.getLogger("toolkit.serve.server")


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket, bound before any model loads: a taken port fails at once."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port} is outside 0..65535", fix="pick a free port such as 11435, or 0 for any free one")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP given, not left 0: asyncio turns Nagle off only on sockets that say they are TCP,
    # and with Nagle on, a reply written in two parts waits 40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          fix="pick another --port (is Ollama already running on this one?)") from None
    except (OverflowError, UnicodeError, ValueError) as exc:  # a host name that is not one
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}", fix="pass an IP address or host name as --host") from None
    sock.setblocking(False)
    return sock


def return_large_buffers() -> None:
    """Have glibc give large freed buffers (request bodies, their text) back to the system.

    glibc raises its mmap threshold each time a large mmapped block is freed, up to 32 MB, and then
    serves later blocks of that size from per-thread arenas, which keep them: a client sending
    20 MB messages grew the server by hundreds of MB. A fixed threshold (set once, for the process)
    keeps blocks over 1 MB mmapped, so they are returned when freed. Elsewhere it does nothing.
    """
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _uvicorn_server() -> type:
    """uvicorn's server without its 10 Hz tick: an idle `toolkit serve` wakes for nothing.

    Each wake of an idle process costs CPU, and on some VMs a lot: on a 2-core Xeon VM a plain
    time.sleep loop paid 2.8 ms a wake at 1 Hz, and uvicorn's tick held an idle server at 1.3-1.5%
    of a core whether it ran at 10 Hz or 1 Hz (bench/contention.py measures it). The tick refreshes
    the Date header and polls `should_exit`; here the Date header is made when a response asks for
    it, and setting `should_exit` (Ctrl-C, `close()`) wakes the loop itself.
    """
    from email.utils import formatdate

    import uvicorn
    from uvicorn.server import ServerState

    class State(ServerState):
        _extra: list[tuple[bytes, bytes]] = []
        _date: tuple[int, bytes] = (0, b"")

        @property
        def default_headers(self) -> list[tuple[bytes, bytes]]:  # read for each request, on the loop's thread
            second = int(time.time())
            if self._date[0] != second:
                self._date = (second, formatdate(second, usegmt=True).encode())
            return [(b"date", self._date[1]), *self._extra]

        @default_headers.setter
        def default_headers(self, value: list[tuple[bytes, bytes]]) -> None:  # uvicorn's on_tick
            self._extra = [(k, v) for k, v in value if k != b"date"]

    class Quiet(uvicorn.Server):
        _wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

        def __init__(self, config: uvicorn.Config):
            super().__init__(config)
            self.server_state = State()

        @property
        def should_exit(self) -> bool:
            return self.__dict__.get("_should_exit", False)

        @should_exit.setter
        def should_exit(self, value: bool) -> None:  # from a signal handler or another thread
            self.__dict__["_should_exit"] = value
            if value and self._wake is not None:
                loop, event = self._wake
                with contextlib.suppress(RuntimeError):  # the loop has closed: nothing to wake
                    loop.call_soon_threadsafe(event.set)

        async def main_loop(self) -> None:
            self._wake = (asyncio.get_running_loop(), asyncio.Event())
            while not await self.on_tick(0):  # once, unless told to exit meanwhile
                await self._wake[1].wait()

    return Quiet


class Server:
    """The HTTP server and its models. `start()` serves from a background thread, `serve_forever()`
    from this one; `close()` stops serving, cancels what still runs and frees the models.

    `limits` bounds what each client may take (`toolkit.serve.asgi.Limits`); `max_queue` is how
    many requests may wait for a generation (OLLAMA_MAX_QUEUE) before the next gets a 503.
    """

    def __init__(self, models: Mapping[str, str | os.PathLike], *, host: str = "127.0.0.1", port: int = 11434,
                 n_ctx: int = 2048, n_threads: int | None = None, parallel: int = 1, max_queue: int = 512,
                 limits: Limits | None = None):
        import uvicorn

        self.limits = limits or Limits()
        return_large_buffers()
        self.sock = _bind(host, port, self.limits.backlog)  # clients that connect meanwhile wait in the backlog
        try:
            self.registry = Registry(models, n_ctx=n_ctx, n_threads=n_threads, parallel=parallel, max_queue=max_queue)
        except BaseException:
            self.sock.close()
            raise
        app, self.app = starlette_app(Api(self.registry), self.limits)
        config = uvicorn.Config(
            app, http=protocol(self.limits.read_timeout), loop="asyncio", lifespan="off", interface="asgi3",
            limit_concurrency=self.limits.workers, backlog=self.limits.backlog,
            timeout_keep_alive=self.limits.keep_alive, timeout_graceful_shutdown=5,
            h11_max_incomplete_event_size=self.limits.max_header, proxy_headers=False, server_header=False,
            access_log=False, log_config=None, log_level="warning")
        self.uvicorn = _uvicorn_server()(config)
        self._thread: threading.Thread | None = None

    @property
    def bound(self) -> str:
        """The address the server listens on, as bound (0.0.0.0: every IPv4 interface)."""
        host, port = self.sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the server."""
        host, port = self.sock.getsockname()[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> Server:
        self._thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]},
                                        name="toolkit-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self.uvicorn.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.uvicorn.started:
            self.close()
            raise ConfigError("the HTTP server did not start", fix="see the log above")
        return self

    def serve_forever(self) -> None:
        """Serve until Ctrl-C (uvicorn shuts down, then KeyboardInterrupt is raised here)."""
        self.uvicorn.run(sockets=[self.sock])

    def close(self) -> None:
        self.app.close()  # running requests stop, so shutting down does not wait for their generations
        if self._thread is not None:
            self.uvicorn.should_exit = True
            self._thread.join(timeout=30)
            self._thread = None
        self.sock.close()
        self.registry.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def serve_in_thread(models: Mapping[str, str | os.PathLike] | None = None, *, host: str = "127.0.0.1",
                    port: int = 0, n_ctx: int = 2048, n_threads: int | None = None, parallel: int = 1,
                    max_queue: int = 512, limits: Limits | None = None) -> Iterator[str]:
    """Serve `models` ({name: model spec or .gguf path}; default: the embedded model) from a
    background thread on a free port: `with serve_in_thread() as url: ollama.Client(host=url)`.
    `n_threads=1` keeps a test server light on a shared machine."""
    server = Server(models or {DEFAULT_MODEL: DEFAULT_MODEL}, host=host, port=port, n_ctx=n_ctx, n_threads=n_threads,
                    parallel=parallel, max_queue=max_queue, limits=limits).start()
    try:
        yield server.url
    finally:
        server.close()


def named_models(model: str, name: str = "") -> dict[str, Path]:
    """{Ollama name: GGUF} from comma-separated model specs and optional names (default: stems). A
    model with a LoRA ADAPTER keeps its Modelfile (or export folder) instead, so the LoRA comes along."""
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
        gguf, lora = found.require_llamacpp()
        out[full] = gguf if lora is None else Path(specs[i]).expanduser().resolve()
    return out


def env_parallel() -> int:
    """How many generations to decode together when --parallel is not given: OLLAMA_NUM_PARALLEL,
    read as Ollama reads it (unset or 0: one at a time, Ollama's default)."""
    raw = os.environ.get("OLLAMA_NUM_PARALLEL", "").strip()
    if not raw.isdigit() and raw:
        raise ConfigError(f"OLLAMA_NUM_PARALLEL={raw!r} is not a whole number", fix="set it to e.g. 4, or pass --parallel")
    return int(raw or 0) or 1


def env_max_queue() -> int:
    """How many requests may wait for a generation: OLLAMA_MAX_QUEUE, read as Ollama reads it
    (default 512)."""
    raw = os.environ.get("OLLAMA_MAX_QUEUE", "").strip()
    if raw and not raw.isdigit():
        raise ConfigError(f"OLLAMA_MAX_QUEUE={raw!r} is not a whole number", fix="set it to e.g. 512")
    return int(raw or 512)


def banner(server: Server, models: Mapping[str, Path], parallel: int, api_key: str) -> list[str]:
    """What `toolkit serve` prints once it listens: where, and a warning when others can reach it."""
    together = f", up to {parallel} generations together" if parallel > 1 else ""
    lines = [f"Serving {', '.join(models)} at {server.bound} (Ollama API; OpenAI API at {server.bound}/v1{together}). Ctrl-C stops."]
    host = server.sock.getsockname()[0]
    if not is_loopback(host):
        everywhere = host in ("0.0.0.0", "::")
        where = "every network interface" if everywhere else host
        lines.append(f"warning: listening on {where}: anyone who can reach this machine on port "
                     f"{server.sock.getsockname()[1]} can use these models"
                     + ("; they must send the API key." if api_key else
                        "; set TOOLKIT_API_KEY (or pass --api-key) to require a key, or use --host 127.0.0.1."))
        if everywhere:
            lines.append(f"  from this machine: {server.url}")
    return lines


def serve(model: str = "smollm2", host: str = "127.0.0.1", port: int = 11434, name: str = "", n_ctx: int = 2048,
          parallel: int = 0, api_key: str = "") -> int:
    """Serve models over Ollama's REST API (and OpenAI's /v1 API) with llama.cpp in process.

    The official `ollama` client and OpenAI-compatible clients work unchanged: point them at the
    printed URL (OLLAMA_HOST=HOST:PORT for tools that read it, base_url URL/v1 for OpenAI's).
    Models load once at start and stay loaded. One generation runs at a time unless --parallel
    (like OLLAMA_NUM_PARALLEL) lets several clients' generations decode together; up to
    OLLAMA_MAX_QUEUE (512) requests wait, later ones get 503. Ctrl-C stops.

    Args:
        model: model(s) to serve, comma-separated: embedded name (smollm2), a .gguf file or an exported model directory.
        host: address to listen on (0.0.0.0 for every interface).
        port: port to listen on; 11434 is Ollama's, pick another if Ollama runs here.
        name: name(s) clients use, comma-separated in --model order (default: each model's file stem); the tag defaults to :latest.
        n_ctx: context size in tokens each model is loaded with; a request's num_ctx can raise it up to the model's trained context.
        parallel: generations decoded together, each with n_ctx tokens of KV cache (requests with
            structured output, keep_alive 0 or a larger num_ctx still run one at a time); default:
            OLLAMA_NUM_PARALLEL if set, else 1.
        api_key: require every request to send `Authorization: Bearer KEY` (default: the
            TOOLKIT_API_KEY environment variable, which keeps the key out of the process list; unset: no key).
    """
    from toolkit.console import err, status

    api_key = api_key or os.environ.get("TOOLKIT_API_KEY", "")
    parallel = parallel or env_parallel()
    max_queue = env_max_queue()
    models = named_models(model, name)
    with status(f"Loading {', '.join(models)}"):
        server = Server(models, host=host, port=port, n_ctx=n_ctx, parallel=parallel, max_queue=max_queue,
                        limits=Limits(api_key=api_key))
    for line in banner(server, models, parallel, api_key):
        err.print(line, highlight=False, soft_wrap=True, markup=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
