"""The remote backend: parity with the local engine through ``rwkveval serve``, and its behaviour
against servers that fail (a deliberately flaky one that drops connections and answers 503, one
without prompt log-probabilities, one that never comes up, one that trickles its answer) and
servers that answer what cannot be right (NaN, infinite or positive log-probabilities, garbage
alternatives, extra echoed tokens): those requests fail and nothing of them is scored.
"""
from __future__ import annotations

import json
import math
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

import engine
from engine.server import ServerConfig, create_app
from engine.server.background import serve_in_thread, torch_threads
from evals.backend import (
    FailedRequests, GenerateRequest, InvalidResponse, LocalBackend, LoglikelihoodRequest, RollingRequest,
)
from evals.remote import (
    CHAT_TEMPLATES, RemoteBackend, RemoteError, RemoteFailures, RemoteOptions, RemoteProtocolError, base_url,
    validate_echo,
)


class FlakyServer:
    """An HTTP/1.1 front for ``upstream`` that sabotages POST requests by plan.

    ``plan(n)`` gives, for the n-th POST (from 0), ``"drop"`` (close the connection without an
    answer), ``"503"`` (Service Unavailable with ``Retry-After: 0``), ``"trickle"`` /
    ``"trickle_head"`` (the answer's body / its status line and headers one byte every 0.2 s, until
    the client hangs up) or ``"pass"`` (forward to ``upstream`` and relay the answer, its JSON
    rewritten by ``rewrite(path, body)`` when given). GETs always pass. Every answer closes its
    connection, so each request meets the plan on a fresh connection. Threads and sockets are
    bounded by the test.
    """

    def __init__(self, upstream: str, plan, rewrite=None):
        self.upstream, self.plan, self.rewrite = upstream, plan, rewrite
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
            elif action.startswith("trickle"):
                content, status, extra = b"{}" * 1000, 200, ""
            else:
                forward = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
                answer = self._client.request(method, self.upstream + path, content=body, headers=forward)
                status, content, extra = answer.status_code, answer.content, ""
                if self.rewrite and method == "POST" and status == 200:
                    content = json.dumps(self.rewrite(path, json.loads(content))).encode()
            head = (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(content)}\r\n"
                    f"{extra}Connection: close\r\n\r\n").encode()
            try:
                if action.startswith("trickle"):
                    self._trickle(conn, head, content, slow_head=action == "trickle_head")
                else:
                    conn.sendall(head + content)
            except OSError:
                pass

    def _trickle(self, conn: socket.socket, head: bytes, content: bytes, slow_head: bool) -> None:
        if not slow_head:
            conn.sendall(head)
        for byte in (head + content if slow_head else content):
            if self._stop.wait(0.2):
                return
            conn.sendall(bytes([byte]))


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


# ---------------------------------------------------------------------- answers that cannot be right


def echo_answer(**changes) -> dict:
    """A well-formed answer to the token-id prompt [0, 5, 6] (echo, logprobs 1, one generated token)."""
    logprobs = {"tokens": ["", "a", "b", "c"], "token_logprobs": [None, -1.0, -0.5, -2.0],
                "top_logprobs": [None, {"a": -1.0}, {"x": -0.25, "b": -0.5}, {"c": -2.0}], "text_offset": [0, 0, 1, 2]}
    logprobs.update(changes)
    return {"choices": [{"logprobs": logprobs}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


def test_validate_echo_accepts_a_good_answer_and_sums_it():
    echo = validate_echo(echo_answer(), [0, 5, 6])
    assert echo.n_prompt == 3 and echo.sum(1, 3) == (-1.5, False) and echo.sum(1, 2) == (-1.0, True)
    rounding = echo_answer(token_logprobs=[None, 5e-5, -0.5, -2.0], top_logprobs=[None, {"a": 5e-5}, {"b": -0.5}, {"c": -2.0}])
    assert validate_echo(rounding, [0, 5, 6]).sum(1, 2) == (5e-5, True)  # float rounding above 0 is tolerated


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("answer, prompt, message", [
    (echo_answer(top_logprobs=[None] * 4), [0, 5, 6], r"top_logprobs\[1\] is None, expected a mapping"),
    (echo_answer(top_logprobs=[None, "a", "b", "c"]), [0, 5, 6], r"top_logprobs\[1\] is 'a', expected a mapping"),
    (echo_answer(top_logprobs=[None, {}, {"b": -0.5}, {"c": -2.0}]), [0, 5, 6], r"top_logprobs\[1\] is \{\}"),
    (echo_answer(top_logprobs=[None, {"a": NAN}, {"b": -0.5}, {"c": -2.0}]), [0, 5, 6],
     r"top_logprobs\[1\]\['a'\] is nan, expected a finite number <= 0"),
    (echo_answer(top_logprobs=[None, {"a": "-1"}, {"b": -0.5}, {"c": -2.0}]), [0, 5, 6], "expected a number"),
    (echo_answer(token_logprobs=[None, NAN, NAN, NAN]), [0, 5, 6], r"token_logprobs\[1\] is nan"),
    (echo_answer(token_logprobs=[None, -INF, -0.5, -2.0]), [0, 5, 6], r"token_logprobs\[1\] is -inf"),
    (echo_answer(token_logprobs=[None, 5.0, 5.0, 5.0]), [0, 5, 6], r"token_logprobs\[1\] is 5.0, expected a finite"),
    (echo_answer(token_logprobs=[None, None, -0.5, -2.0]), [0, 5, 6], r"token_logprobs\[1\] is None"),
    (echo_answer(token_logprobs=[None, True, -0.5, -2.0]), [0, 5, 6], r"token_logprobs\[1\] is True, expected a number"),
    (echo_answer(tokens=["", "a", "b", "c", "x", "y", "z"], token_logprobs=[None, -1.0, -0.5, -2.0, -1.0, -1.0, -1.0],
                 top_logprobs=[None] + [{"a": -0.1}] * 6, text_offset=[0, 0, 1, 2, 3, 4, 5]),
     [0, 5, 6], "7 log-probabilities were echoed for a prompt of 3 tokens"),
    (echo_answer(text_offset=[0, 0, 1]), [0, 5, 6], "text_offset has 3 entries where token_logprobs has 4"),
    (echo_answer(text_offset=[0, 2, 1, 3]), [0, 5, 6], "non-decreasing"),
    (echo_answer(tokens=["token_id:0", "token_id:5", "token_id:7", "token_id:9"]), [0, 5, 6],
     "echoed token 2 is 'token_id:7', but the request sent token id 6"),
    ({**echo_answer(), "usage": {"prompt_tokens": 4}}, [0, 5, 6], "usage.prompt_tokens is 4, but the request sent 3"),
    ({**echo_answer(), "usage": {"prompt_tokens": 2}}, "abc", "4 log-probabilities were echoed for a prompt of 2"),
])
def test_validate_echo_rejects_what_cannot_be_right(answer, prompt, message):
    with pytest.raises(InvalidResponse, match=message):
        validate_echo(answer, prompt)


def test_validate_echo_without_prompt_logprobs_is_a_protocol_error():
    with pytest.raises(RemoteProtocolError, match="cannot score"):
        validate_echo({"choices": [{"logprobs": None}]}, [0, 5])
    with pytest.raises(RemoteProtocolError, match="does not support echo"):
        validate_echo({"choices": echo_answer()["choices"]}, [0, 5, 6, 7, 8])  # 4 entries for 5 tokens


def sabotage(mode: str):
    """A rewrite for :class:`FlakyServer`: the server's scoring answers made impossible in one way."""
    def rewrite(path: str, body: dict) -> dict:
        for choice in body.get("choices", []):
            logprobs = choice.get("logprobs")
            if not logprobs:
                continue
            n = len(logprobs["token_logprobs"])
            if mode == "null_top":
                logprobs["top_logprobs"] = [None] * n
            elif mode == "string_top":
                logprobs["top_logprobs"] = [None] + ["x"] * (n - 1)
            elif mode in ("nan", "-inf", "+5"):
                value = {"nan": math.nan, "-inf": -math.inf, "+5": 5.0}[mode]
                logprobs["token_logprobs"] = [None] + [value] * (n - 1)
            elif mode == "extra":
                for key, filler in (("tokens", "x"), ("token_logprobs", -1.0), ("top_logprobs", {"x": -1.0}),
                                    ("text_offset", logprobs["text_offset"][-1])):
                    logprobs[key] = logprobs[key] + [filler] * 3
        return body
    return rewrite


@pytest.mark.parametrize("mode, reason", [
    ("null_top", "expected a mapping"), ("string_top", "expected a mapping"), ("nan", "is nan"),
    ("-inf", "is -inf"), ("+5", "is 5.0"), ("extra", "does not line up with the prompt"),
])
def test_impossible_answers_fail_every_request_and_score_none(server_url, mode, reason):
    with FlakyServer(server_url, lambda n: "pass", rewrite=sabotage(mode)) as fake:
        for tokenized in (True, False):
            backend = remote(fake.url, concurrency=2)
            requests = LL_REQUESTS if tokenized else [r for r in LL_REQUESTS if not r.bos]
            if not tokenized:
                backend.tokenizer_info = None  # prompts as text, the continuation found by text_offset
            with pytest.raises(RemoteFailures) as info:
                backend.loglikelihood(requests)
            assert sorted(info.value.failed) == list(range(len(requests)))
            assert all(r.startswith("invalid answer:") and reason in r for r in info.value.failed.values())
            if tokenized:
                with pytest.raises(RemoteFailures, match=reason):
                    backend.loglikelihood_rolling([RollingRequest("a whole text to score")])
            backend.close()
    assert backend.retries == 0  # a wrong answer is not retried


def test_local_engine_non_finite_loglikelihood_is_a_failed_request(model):
    class Overflowing:  # the engine's interface, answering one request with NaN and one with +inf
        tokenizer = model.tokenizer

        def loglikelihood(self, pairs, batch_size, on_result, on_tokens):
            answers = [(-1.0, True), (math.nan, True), (-2.0, False)][:len(pairs)]
            for i, answer in enumerate(answers):
                on_result(i, answer)
            return answers

        def loglikelihood_rolling(self, token_lists, bos, batch_size, on_result, on_tokens):
            for i in range(len(token_lists)):
                on_result(i, math.inf)
            return [math.inf] * len(token_lists)

    backend = LocalBackend(Overflowing())
    with pytest.raises(FailedRequests) as info:
        backend.loglikelihood([LoglikelihoodRequest("a", " b"), LoglikelihoodRequest("c", " d"),
                               LoglikelihoodRequest("e", " f")])
    assert list(info.value.failed) == [1] and "the log-likelihood is nan" in info.value.failed[1]
    assert "context ending 'c', continuation ' d'" in str(info.value) and "none of them is scored" in str(info.value)
    with pytest.raises(FailedRequests, match="the rolling log-likelihood is inf"):
        backend.loglikelihood_rolling([RollingRequest("abc")])


# ---------------------------------------------------------------------- the total deadline


@pytest.mark.parametrize("action", ["trickle", "trickle_head"])
def test_timeout_bounds_the_whole_request_against_a_trickling_server(server_url, action):
    with FlakyServer(server_url, lambda n: action) as slow:
        backend = remote(slow.url, timeout=1.0, max_retries=1)
        started = time.monotonic()
        pool = ThreadPoolExecutor(1)  # the test stays bounded even where the deadline does not hold
        attempt = pool.submit(backend.generate, [GenerateRequest("x", (), 2, bos=False)])
        try:
            with pytest.raises(RemoteFailures) as info:
                attempt.result(timeout=10)
        finally:
            pool.shutdown(wait=False)
        elapsed = time.monotonic() - started
        backend.close()
    # two attempts of at most 1 s each (plus the short test backoff); one byte every 0.2 s would take 400 s
    assert elapsed < 4.0, elapsed
    assert "DeadlineExceeded: no complete answer within 1 s" in info.value.failed[0]
    assert slow.outcomes == [action, action]


# ---------------------------------------------------------------------- answers as they arrive


def counting_app(handle):
    """A completions server whose ``/v1/completions`` answers ``handle(prompt)`` (a text) and
    counts the requests it got (``app.state.posts``)."""
    from fastapi import FastAPI

    app = FastAPI()
    app.state.posts = 0
    lock = threading.Lock()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "m", "object": "model"}]}

    @app.post("/v1/completions")
    def completions(body: dict):  # a plain def: FastAPI runs it in a thread, so one may block
        with lock:
            app.state.posts += 1
        text = handle(body["prompt"])
        return {"choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    return app


def test_answers_reach_the_cache_while_others_are_still_being_answered(tmp_path):
    from evals.backend import Listener
    from evals.cache import CachedBackend, ResponseCache

    release = threading.Event()

    def handle(prompt: str) -> str:
        if prompt == "slow":
            release.wait(30)
        return f"answer to {prompt}"

    class TwoArrived(Listener):
        def __init__(self):
            self.seen, self.event = 0, threading.Event()

        def on_result(self, index, response):
            self.seen += 1
            if self.seen == 2:
                self.event.set()

    requests = [GenerateRequest(p, (), 4, bos=False) for p in ("slow", "fast one", "fast two")]
    with serve_in_thread(counting_app(handle)) as url:
        cache = ResponseCache.open(tmp_path)
        cached = CachedBackend(remote(url, concurrency=3), cache, flush_s=0.0)
        arrived = TwoArrived()
        pool = ThreadPoolExecutor(1)
        call = pool.submit(cached.generate, requests, arrived)
        try:
            assert arrived.event.wait(10), "the fast answers did not reach the listener before the slow one"
            assert not call.done()  # the slow request is still being answered
            reader = ResponseCache.open(tmp_path, create=False)
            assert reader.count(cached.model_id, "generate") == 2  # stored, not held until the batch ends
            reader.close()
        finally:
            release.set()
            out = call.result(timeout=30)
            pool.shutdown()
    assert [r.text for r in out] == ["answer to slow", "answer to fast one", "answer to fast two"]
    assert cache.count(cached.model_id, "generate") == 3


def test_ctrl_c_does_not_wait_for_the_queued_requests():
    from evals.backend import Listener

    class Interrupting(Listener):
        def on_result(self, index, response):
            raise KeyboardInterrupt

    app = counting_app(lambda prompt: "x")
    with serve_in_thread(app) as url:
        backend = remote(url, concurrency=1)
        with pytest.raises(KeyboardInterrupt):
            backend.generate([GenerateRequest(f"p{i}", (), 2, bos=False) for i in range(20)], Interrupting())
        backend.close()
    # the first answer, and at most the one request in flight when Ctrl-C came; not the 18 queued
    assert app.state.posts <= 2


def test_a_closed_backend_fails_requests_at_once_instead_of_waiting():
    """After close() (Ctrl-C's cleanup) nothing is sent and no thread waits on the stopped loop."""
    import time

    from evals.remote import RemoteFailures

    app = counting_app(lambda prompt: "x")
    with serve_in_thread(app) as url:
        backend = remote(url, concurrency=2)
        backend.close()
        started = time.monotonic()
        with pytest.raises(RemoteFailures, match="the remote backend was closed"):
            backend.generate([GenerateRequest("p", (), 2, bos=False)])
        assert time.monotonic() - started < 2.0 and app.state.posts == 0
