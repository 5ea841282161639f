"""What the server guarantees against bad peers, below the routes.

- **Slow requests.** A request's headers and body must arrive within ``receive_timeout_s`` of its
  first byte (of the connection, for a new connection), else the connection is closed with one
  info line. uvicorn's own timers do not cover this: its keep-alive timer stops at the first byte,
  and nothing bounds a request that trickles in (:class:`GuardedH11Protocol`).
- **Too many connections.** At most ``max_connections`` are open at once (default: under the
  open-file limit, :func:`engine.server.config.connection_limits`). A connection past the cap
  closes the one that has waited longest without a complete request (idle, slow headers or a slow
  body; never one whose request is being answered), so a flood of slow sockets cannot exhaust the
  file descriptors or starve ``/health`` and other clients. asyncio accepts a burst of connections
  before the cap sees them; if a burst still reaches the file limit, asyncio pauses accepting for a
  second, which is logged as one warning line (:func:`accept_errors`), not a traceback.
- **The key.** With a key configured, every path but ``/health`` needs it, the OpenAPI document
  and the documentation pages included (:class:`RequireKey`).
- **Vanishing clients.** A client that goes away before sending its whole body is one info line
  (:func:`client_gone`), not a traceback.

:func:`uvicorn_config` puts these together for ``rwkveval serve`` and for
:mod:`engine.server.background`; :class:`Server` logs the address it really listens on.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import ServerConfig, connection_limits

log = logging.getLogger("rwkveval.server")

OPEN_PATHS = frozenset({"/health"})  # answered without the key (load balancers, probes)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline to receive each request and a connection cap.

    One subclass per server (:func:`guarded_protocol`) carries the settings and the server's
    connections, all touched only from the event loop's thread.
    """

    receive_timeout: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 1024
    live: ClassVar[set[GuardedH11Protocol]]  # open connections not yet being closed
    waiting: ClassVar[OrderedDict[GuardedH11Protocol, float]]  # without a complete request, oldest first

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self.live.add(self)
        self._wait()
        self._arm()
        if len(self.live) > self.max_connections:
            victim = next(iter(self.waiting), self)
            victim._drop(f"the server is at its limit of {self.max_connections} open connections and this one "
                         "waited longest without a complete request")

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self._incomplete():  # the first bytes of a request on a kept-alive connection
            self._arm()
        super().data_received(data)
        self._progress()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._incomplete() and self in self.live:
            self._wait()  # idle until the next request (uvicorn's keep-alive timer bounds that)
        self._progress()

    # ------------------------------------------------------------------ bookkeeping

    def _incomplete(self) -> bool:
        """The current request has not fully arrived (nothing, part of the headers or of the body)."""
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def _wait(self) -> None:
        self.waiting.pop(self, None)
        self.waiting[self] = time.monotonic()

    def _progress(self) -> None:
        if not self._incomplete():  # the request is whole: it is being answered, no deadline
            self.waiting.pop(self, None)
            self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.receive_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _forget(self) -> None:
        self.live.discard(self)
        self.waiting.pop(self, None)
        self._disarm()

    def _expire(self) -> None:
        self._deadline = None
        if self._incomplete():
            part = "headers" if self.conn.their_state is h11.IDLE else "body"
            self._drop(f"its request's {part} did not arrive within {self.receive_timeout:g} s")

    def _drop(self, reason: str) -> None:
        peer = "%s:%d" % self.client if self.client else "a client"
        log.info("closed the connection from %s: %s", peer, reason)
        self._forget()
        if not self.transport.is_closing():
            self.transport.close()


def guarded_protocol(config: ServerConfig) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass for one server, with ``config``'s limits."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "receive_timeout": float(config.receive_timeout_s), "max_connections": config.connection_cap(),
        "live": set(), "waiting": OrderedDict(),
    })


def uvicorn_config(app: Any, config: ServerConfig | None = None, **options: Any) -> uvicorn.Config:
    """uvicorn's config for ``app`` with the guarded protocol and a backlog under the file limit;
    ``options`` go to :class:`uvicorn.Config` (host, port, log_level, timeout_keep_alive, ...)."""
    config = config or ServerConfig()
    options.setdefault("backlog", connection_limits()[1])
    return uvicorn.Config(app, http=guarded_protocol(config), **options)


class Server(uvicorn.Server):
    """uvicorn's server, calling ``on_started(urls)`` with the addresses it really listens on once
    it does (a port 0 resolved to the one the system chose)."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[list[str]], None] | None = None):
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: Any = None) -> None:
        asyncio.get_running_loop().set_exception_handler(accept_errors)
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started(self.urls())

    def urls(self) -> list[str]:
        out = []
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                out.append(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
        return out


def accept_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's exception handler: asyncio's "out of file descriptors" on accept (after
    which it retries in a second) as one warning line; anything else as asyncio reports it."""
    error = context.get("exception")
    if isinstance(error, OSError) and error.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM) \
            and "accept" in str(context.get("message", "")):
        log.warning("cannot accept a connection (%s): new connections wait a second while waiting ones are closed",
                    error.strerror)
        return
    loop.default_exception_handler(context)


class RequireKey:
    """Pure ASGI middleware: with ``key`` set, every path but :data:`OPEN_PATHS` needs
    ``Authorization: Bearer KEY`` (401 with an OpenAI-style body otherwise)."""

    def __init__(self, app: Any, key: str | None):
        self.app, self.key = app, key.encode() if key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or self.key is None or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        response = JSONResponse({"error": {
            "message": "missing or wrong API key: send 'Authorization: Bearer <key>'", "type": "authentication_error",
            "param": None, "code": "invalid_api_key"}}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


async def client_gone(request: Request, error: ClientDisconnect) -> Response:
    """Exception handler: the client went away while the body was being read; one info line."""
    peer = "%s:%d" % (request.client.host, request.client.port) if request.client else "a client"
    log.info("%s went away before sending the whole body of %s %s", peer, request.method, request.url.path)
    return Response(status_code=499)  # nobody reads it; /stats counts it
