"""The remote backend: parity with the local engine through ``rwkveval serve``, and its behaviour
against servers that fail (a deliberately flaky one that drops connections and answers 503, one
without prompt log-probabilities, one that never comes up).
"""
from __future__ import annotations

import json
import random
import socket
import threading

import httpx
import pytest

import engine
from engine.server import ServerConfig, create_app
from engine.server.background import serve_in_thread, torch_threads
from evals.backend import GenerateRequest, LocalBackend, LoglikelihoodRequest, RollingRequest
from evals.remote import (
    CHAT_TEMPLATES, RemoteBackend, RemoteError, RemoteFailures, RemoteOptions, RemoteProtocolError, base_url,
)


class FlakyServer:
    """An HTTP/1.1 front for ``upstream`` that sabotages POST requests by plan.

    ``plan(n)`` gives, for the n-th POST (from 0), ``"drop"`` (close the connection without an
    answer), ``"503"`` (Service Unavailable with ``Retry-After: 0``) or ``"pass"`` (forward to
    ``upstream`` and relay the answer). GETs always pass. Every answer closes its connection, so
    each request meets the plan on a fresh connection. Threads and sockets are bounded by the test.
    """

    def __init__(self, upstream: str, plan):
        self.upstream, self.plan = upstream, plan
        self.posts = 0
        self.outcomes: list[str] = []
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._client = httpx.Client(timeout=60)

    def __enter__(self) -> "FlakyServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        self._client.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_request(conn: socket.socket) -> tuple[str, str, dict[str, str], bytes] | None:
        conn.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = conn.recv(65536)
            if not chunk:
                return None
            body += chunk
        return method, path, headers, body

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = self._read_request(conn)
            except OSError:
                return
            if request is None:
                return
            method, path, headers, body = request
            action = "pass"
            if method == "POST":
                with self._lock:
                    action = self.plan(self.posts)
                    self.posts += 1
                    self.outcomes.append(action)
            if action == "drop":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
                return
            if action == "503":
                content = json.dumps({"error": {"message": "flaky: try again"}}).encode()
                status, extra = 503, "Retry-After: 0\r\n"
            else:
                forward = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
                answer = self._client.request(method, self.upstream + path, content=body, headers=forward)
                status, content, extra = answer.status_code, answer.content, ""
            head = (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(content)}\r\n"
                    f"{extra}Connection: close\r\n\r\n")
            try:
                conn.sendall(head.encode() + content)
            except OSError:
                pass


@pytest.fixture(scope="module")
def model(tiny_model_path):
    return engine.load_model(tiny_model_path)


@pytest.fixture(scope="module")
def server_url(model):
    with torch_threads(1), serve_in_thread(create_app(model, ServerConfig(model_name="tiny"))) as url:
        yield url


def remote(url: str, **options) -> RemoteBackend:
    backend = RemoteBackend(RemoteOptions(url, **{"backoff": 0.01, "backoff_max": 0.05, **options}),
                            rng=random.Random(0))
    backend.wait_ready()
    return backend


LL_REQUESTS = [
    LoglikelihoodRequest("The cat sat on the", " mat"),
    LoglikelihoodRequest("The cat sat on the", " mat", bos=False),
    LoglikelihoodRequest("Ünïcödé text, ", "wörds"),
    LoglikelihoodRequest("1 2 3 4", " 5"),
]


def test_base_url_accepts_the_usual_forms():
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/completions", "http://h:1/v1/chat/completions"):
        assert base_url(url) == "http://h:1"


def test_remote_equals_local(model, server_url):
    local, backend = LocalBackend(model), remote(server_url, concurrency=3)
    for got, want in zip(backend.loglikelihood(LL_REQUESTS), local.loglikelihood(LL_REQUESTS)):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
        assert (got.is_greedy, got.context_tokens, got.continuation_tokens) == \
               (want.is_greedy, want.context_tokens, want.continuation_tokens)
    rolling = [RollingRequest("a whole text to score"), RollingRequest("another one", bos=False)]
    for got, want in zip(backend.loglikelihood_rolling(rolling), local.loglikelihood_rolling(rolling)):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4) and got.tokens == want.tokens
    generate = [GenerateRequest("Question: 1+1?\nAnswer:", ("\n",), 16), GenerateRequest("abc", (), 6, bos=False)]
    assert backend.generate(generate) == local.generate(generate)
    assert backend.count_tokens("héllo") == local.count_tokens("héllo") == 7
    info = backend.info()
    assert info["backend"] == "remote" and info["name"] == "tiny" and info["server_model"]["sha256"] == model.sha256
    assert "sha256" not in info  # the response cache must not take remote answers for the checkpoint's


def test_text_mode_finds_the_continuation_by_text_offset(model, server_url):
    backend = remote(server_url)
    backend.tokenizer_info = None  # as against a server without /tokenize: prompts go as text
    requests = [r for r in LL_REQUESTS if not r.bos]
    for got, want in zip(backend.loglikelihood(requests), LocalBackend(model).loglikelihood(requests)):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4) and got.is_greedy == want.is_greedy
    with pytest.raises(RemoteError, match="--no-bos"):
        backend.loglikelihood([LoglikelihoodRequest("x", " y", bos=True)])


def test_chat_mode_and_templates(model, server_url):
    backend = remote(server_url, api_mode="chat")
    (reply,) = backend.generate([GenerateRequest("Say hi", (), 8, bos=False)])
    assert reply.generated_tokens >= 1 and reply.finish_reason in ("stop", "length")
    with pytest.raises(RemoteError, match="log-likelihood"):
        backend.loglikelihood([LoglikelihoodRequest("x", " y", bos=False)])
    with pytest.raises(RemoteError, match="--no-bos"):
        backend.generate([GenerateRequest("Say hi", (), 8, bos=True)])
    templated = remote(server_url, chat_template="rwkv")
    (out,) = templated.generate([GenerateRequest("Say hi", (), 8, bos=False)])
    expected = model.generate([model.tokenizer.encode("User: Say hi\n\nAssistant:")], 8, stop=["\n\nUser:"])[0]
    assert out.text == expected.text
    assert CHAT_TEMPLATES["chatml"].render("Q") == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="chat template"):
        RemoteOptions(server_url, api_mode="chat", chat_template="rwkv")


def test_flaky_server_retries_then_succeeds(model, server_url):
    failures = {0: "drop", 1: "503", 2: "drop", 4: "503", 7: "drop"}
    with FlakyServer(server_url, lambda n: failures.get(n, "pass")) as flaky:
        backend = remote(flaky.url, concurrency=1, max_retries=3)
        responses = backend.loglikelihood(LL_REQUESTS)
        assert {"drop", "503"} <= set(flaky.outcomes)
    for got, want in zip(responses, LocalBackend(model).loglikelihood(LL_REQUESTS)):
        assert got.logprob == pytest.approx(want.logprob, abs=1e-4)
    assert backend.retries == len(failures)


def test_retries_exhausted_reports_the_failed_requests_and_scores_none(server_url):
    # every POST for the 2nd and 4th request fails; the others go through
    doomed = {"1 2 3 4", "Ünïcödé text, "}
    plan_lock = threading.Lock()
    outcome: dict[int, str] = {}

    with FlakyServer(server_url, lambda n: "pass") as flaky:
        backend = remote(flaky.url, concurrency=2, max_retries=2)
        tokens = {r.context: backend._tokenize(r.context) for r in LL_REQUESTS}  # tokenize before sabotage

        def plan(n: int) -> str:
            with plan_lock:
                outcome[n] = "503"
            return "503"

        flaky.plan = plan
        with pytest.raises(RemoteFailures) as info:
            backend.loglikelihood([r for r in LL_REQUESTS if r.context in doomed])
    failure = info.value
    assert sorted(failure.failed) == [0, 1] and failure.total == 2
    assert all("503" in reason and "gave up after 3 attempts" in reason for reason in failure.failed.values())
    assert "none of them is scored" in str(failure) and "1 2 3 4" in str(failure)
    assert len(outcome) == 2 * 3  # two requests, three attempts each
    assert tokens  # the token cache was used: no /tokenize call was sabotaged


def test_connection_refused_exhausts_retries(server_url):
    backend = remote(server_url, max_retries=1)
    backend.url = "http://127.0.0.1:9"  # nothing listens on the discard port
    with pytest.raises(RemoteFailures, match="ConnectError"):
        backend.generate([GenerateRequest("x", (), 2)])


def test_wait_ready_is_bounded_and_checks_the_model(server_url):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    nobody = RemoteBackend(RemoteOptions(f"http://127.0.0.1:{free}", wait=0.5))
    with pytest.raises(RemoteError, match="did not answer and list its model within 0.5 s"):
        nobody.wait_ready()
    wrong = RemoteBackend(RemoteOptions(server_url, model="other", wait=0.3))
    with pytest.raises(RemoteError, match="not listed"):
        wrong.wait_ready()


def test_api_key_is_sent_and_a_wrong_one_is_a_clear_error(model):
    config = ServerConfig(model_name="tiny", api_key="k")
    with torch_threads(1), serve_in_thread(create_app(model, config)) as url:
        assert remote(url, api_key="k").generate([GenerateRequest("x", (), 2)])[0].generated_tokens >= 1
        with pytest.raises(RemoteError, match="API key"):
            RemoteBackend(RemoteOptions(url, api_key="bad")).wait_ready()


def test_server_without_prompt_logprobs_is_a_clear_error():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "m", "object": "model"}]}

    @app.post("/v1/completions")
    def completions():
        return {"choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": "length"}]}

    with serve_in_thread(app) as url:
        backend = remote(url)
        assert not backend.tokenized
        with pytest.raises(RemoteProtocolError, match="cannot score log-likelihood"):
            backend.loglikelihood([LoglikelihoodRequest("a", " b", bos=False)])
        with pytest.raises(RemoteError, match="--no-bos"):
            backend.loglikelihood([LoglikelihoodRequest("a", " b")])
