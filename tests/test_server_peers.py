"""The server against bad peers (engine/server/peers.py), on loopback, bounded in sockets and time:
clients that vanish mid-body (one info line), requests that never finish arriving (closed after
the receive timeout), a flood of slow sockets past the connection cap (``/health`` still answers),
the documentation paths behind the key, one context length everywhere, and ``rwkveval serve``
under a low open-file limit logging the port it really listens on.
"""
from __future__ import annotations

import logging
import re
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import engine
from engine.server import ServerConfig, create_app
from engine.server.background import serve_in_thread, torch_threads
from engine.server.config import connection_limits
from test_server_cli import interrupt

REPO = Path(__file__).resolve().parent.parent

PARTIAL_HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
PARTIAL_BODY = PARTIAL_HEAD + b"Content-Length: 1000\r\n\r\n{\"prompt\": \"ab"


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return engine.load_model(tiny_model_path)


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def slow_sockets(url: str, count: int) -> list[socket.socket]:
    """``count`` connections that each send part of a request and then nothing (half stop inside
    the headers, half inside the body)."""
    out = []
    for i in range(count):
        sock = socket.create_connection(address(url), timeout=5)
        sock.sendall(PARTIAL_HEAD if i % 2 else PARTIAL_BODY)
        out.append(sock)
    return out


def closed_by_server(sockets: list[socket.socket], at_least: int, within: float) -> int:
    """How many of ``sockets`` the server has closed, waiting (bounded) until at least ``at_least``."""
    closed: set[int] = set()
    deadline = time.monotonic() + within
    while len(closed) < at_least and time.monotonic() < deadline:
        readable, _, _ = select.select([s for i, s in enumerate(sockets) if i not in closed], [], [], 0.1)
        for sock in readable:
            try:
                data = sock.recv(4096)
            except OSError:  # reset
                data = b""
            if not data:
                closed.add(sockets.index(sock))
    return len(closed)


def test_connection_limits_stay_under_the_open_file_limit():
    assert connection_limits(256) == (192, 16)
    assert connection_limits(1024) == (896, 32)
    for open_files in (64, 256, 1024, 20000, 1 << 20):
        cap, backlog = connection_limits(open_files)
        assert cap + backlog < open_files or cap == 16  # a connection cap, plus a burst of accepts, fits
        assert 16 <= backlog <= 2048


def test_a_client_that_disconnects_mid_body_is_one_info_line(model, caplog):
    caplog.set_level(logging.INFO, logger="rwkveval.server")
    with torch_threads(1), serve_in_thread(create_app(model, ServerConfig(model_name="tiny"))) as url:
        for _ in range(3):
            with socket.create_connection(address(url), timeout=5) as sock:
                sock.sendall(PARTIAL_BODY)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum("went away" in r.getMessage() for r in caplog.records) < 3:
            time.sleep(0.05)
        stats = httpx.get(f"{url}/stats", timeout=10).json()
    records = [r for r in caplog.records if r.name == "rwkveval.server"]
    gone = [r for r in records if "went away before sending the whole body of POST /v1/completions" in r.getMessage()]
    assert len(gone) == 3 and all(r.levelno == logging.INFO and r.exc_info is None for r in gone)
    assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]
    assert stats["responses_by_status"].get("499") == 3 and "500" not in stats["responses_by_status"]


def test_a_request_that_does_not_arrive_in_time_has_its_connection_closed(model):
    config = ServerConfig(model_name="tiny", receive_timeout_s=1.0)
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        silent = socket.create_connection(address(url), timeout=5)  # connects and sends nothing
        sockets = [silent] + slow_sockets(url, 2)
        started = time.monotonic()
        assert closed_by_server(sockets, 3, within=8) == 3
        assert time.monotonic() - started < 4
        # a client sending its request promptly is unaffected
        assert httpx.post(f"{url}/v1/completions", json={"prompt": "ab", "max_tokens": 2}, timeout=30).status_code == 200
        for sock in sockets:
            sock.close()


def test_health_answers_under_a_flood_of_slow_sockets_past_the_cap(model):
    config = ServerConfig(model_name="tiny", max_connections=64)  # receive timeout 30 s: only the cap helps here
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        sockets = slow_sockets(url, 300)
        try:
            started = time.monotonic()
            health = httpx.get(f"{url}/health", timeout=5)
            assert health.status_code == 200 and time.monotonic() - started < 5
            # the cap holds: every slow socket past it was closed, oldest first
            assert closed_by_server(sockets, 300 - 64, within=10) >= 300 - 64
            out = httpx.post(f"{url}/v1/completions", json={"prompt": "ab", "max_tokens": 2}, timeout=30)
            assert out.status_code == 200
        finally:
            for sock in sockets:
                sock.close()


def test_documentation_paths_need_the_key(model):
    config = ServerConfig(model_name="tiny", api_key="s3cret")
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect", "/v1/models", "/no/such/route"):
            response = httpx.get(f"{url}{path}")
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
        for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
            assert httpx.get(f"{url}{path}", headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
        stats = httpx.get(f"{url}/stats", headers={"Authorization": "Bearer s3cret"}).json()
        assert stats["responses_by_status"]["401"] == 6  # counted like any other answer


def test_one_context_length_everywhere(model):
    config = ServerConfig(model_name="tiny", max_prompt_tokens=1000, max_tokens=50)
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        listed = httpx.get(f"{url}/v1/models").json()["data"][0]["max_model_len"]
        info = httpx.get(f"{url}/tokenizer_info").json()["model_max_length"]
        tokenized = httpx.post(f"{url}/tokenize", json={"prompt": "abc"}).json()["max_model_len"]
        assert listed == info == tokenized == 1000
        # a prompt of max_model_len tokens is accepted, one more is refused
        assert httpx.post(f"{url}/v1/completions", json={"prompt": [1] * 1000, "max_tokens": 1}, timeout=60).status_code == 200
        assert httpx.post(f"{url}/v1/completions", json={"prompt": [1] * 1001, "max_tokens": 1}).status_code == 400


def test_serve_under_a_low_file_limit_logs_its_real_port_and_outlasts_a_flood(tiny_model_path, tmp_path):
    def low_file_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    command = [sys.executable, "-m", "evals.cli", "serve", "--model", str(tiny_model_path), "--port", "0",
               "--threads", "1", "--name", "tiny"]
    log = tmp_path / "serve.log"  # a file, not a pipe: a pipe nobody drains would stall the server's logging
    with open(log, "w") as err:
        process = subprocess.Popen(command, cwd=REPO, stderr=err, stdout=subprocess.DEVNULL, preexec_fn=low_file_limit)
    sockets: list[socket.socket] = []
    try:
        pattern = re.compile(r"serving .* as 'tiny' on (http://127\.0\.0\.1:(\d+)) \(at most (\d+) connections")
        match, deadline = None, time.monotonic() + 60
        while match is None and time.monotonic() < deadline and process.poll() is None:
            match = pattern.search(log.read_text())
            time.sleep(0.05)
        assert match, "the server did not log where it listens:\n" + log.read_text()
        url, port, cap = match.group(1), int(match.group(2)), int(match.group(3))
        assert port != 0 and cap == connection_limits(256)[0] == 192
        sockets = slow_sockets(url, 300)  # more than the file limit allows open at once
        started = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200 and time.monotonic() - started < 5
        assert process.poll() is None
    finally:
        for sock in sockets:
            sock.close()
        interrupt(process)
    assert process.returncode == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()
