"""Run an ASGI app with uvicorn on a loopback port, in a background thread.

For tests and benchmarks: ``with serve_in_thread(app) as url: ...`` starts the server on
127.0.0.1 at a free port, waits (bounded) until it accepts connections, and shuts it down (also
bounded) on exit, running the app's lifespan so its scheduler starts and stops with it. The
connections are guarded as in ``rwkveval serve`` (:mod:`engine.server.peers`), with the limits of
the app's :class:`engine.server.ServerConfig` (defaults for an app without one).
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from .peers import Server, uvicorn_config


class BackgroundServer:
    """uvicorn in a daemon thread. ``url`` is ``http://127.0.0.1:PORT`` once started."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, **uvicorn_options):
        # a long keep-alive: a client that reuses a connection just as the server times it out gets
        # a reset (uvicorn's default is 5 s, shorter than some test phases)
        options = {"log_level": "warning", "lifespan": "on", "timeout_graceful_shutdown": 2,
                   "timeout_keep_alive": 60, **uvicorn_options}
        server_config = getattr(getattr(getattr(app, "state", None), "server", None), "config", None)
        self.server = Server(uvicorn_config(app, server_config, host=host, port=port, **options))
        self.thread = threading.Thread(target=self.server.run, name="rwkveval-uvicorn", daemon=True)
        self.host = host
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server thread exited before it started (see its log)")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)


@contextlib.contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, **uvicorn_options) -> Iterator[str]:
    """Serve ``app`` for the duration of the block; yields the base URL."""
    server = BackgroundServer(app, host, port, **uvicorn_options)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous count.

    On a small shared CPU one thread is much faster for small batches than two threads that
    compete with other processes (measured on the 2-core CI machine: 25 ms against 250 ms for a
    decoding step of 32 sequences of the tiny model).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
