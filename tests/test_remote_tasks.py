"""Your own tasks against an endpoint (issue 17), through the plugin in process against a fake
OpenAI server that records every request body: ``--system-prompt`` in chat mode and in a chat
template's system turn (``internthinker`` against its published format), the rendered prompt as the
row's ``prompt``, ``--max-retry-delay`` capping the backoff (503 with a long ``Retry-After``, the
schedule recorded), the remote options in results.json without the key; usage errors; gates on
per-file checkers at collection (fake backend)."""
from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio  # noqa: F401
import httpcore  # noqa: F401
import httpcore._backends.anyio  # noqa: F401
import pytest

# httpx imports httpcore (and anyio) on its first client. Imported here, before any in-process run:
# pytester forgets the modules first imported during a run, and later tests in this process would
# get fresh httpcore classes that httpx's cached exception map no longer recognises.
import evals.plugin  # noqa: F401  (imported once here: in-process runs must not re-import its C extensions)
import evals.test_custom  # noqa: F401
from evals.fakes import PLUGIN_CONFTEST
from evals.remote import RemoteBackend, RemoteFailures, RemoteOptions
from evals.templates import CHAT_TEMPLATES, as_sent, rwkv_chat

pytest_plugins = ["pytester"]
REPO = Path(__file__).resolve().parent.parent

# InternThinker's format as published: InternLM/InternBootcamp, examples/unittests/run_eval.py,
# TEMPLATE_MAP["internthinker"] (commit 1a8477c8), written out here as a literal
INTERNTHINKER_SYSTEM = (
    "You are an expert reasoner with extensive experience in mathematical and code competitions. You approach "
    "problems through systematic thinking and rigorous reasoning. Your response should reflect deep understanding "
    "and precise logical thinking, making your solution path and reasoning clear to others. Please put your "
    "thinking process within <think>...</think> tags.")
INTERNTHINKER = ("<|im_start|>system\n" + INTERNTHINKER_SYSTEM + "<|im_end|>\n<|im_start|>user\n{input}<|im_end|>\n"
                 "<|im_start|>assistant\n")
INTERNTHINKER_STOP = ("<|im_end|>", "<|endoftext|>")


def test_internthinker_renders_its_published_format():
    template = CHAT_TEMPLATES["internthinker"]
    question = "What is 2 + 2?\n\nAnswer briefly."
    assert template.render(question) == INTERNTHINKER.format(input=question)
    assert template.stop == INTERNTHINKER_STOP
    # --system-prompt replaces the default system message, in the same turn
    assert template.render("Q", "Be terse.") == ("<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nQ"
                                                 "<|im_end|>\n<|im_start|>assistant\n")


def test_templates_take_a_system_prompt_and_keep_their_old_rendering_without_one():
    assert CHAT_TEMPLATES["rwkv"].render("Q") == "User: Q\n\nAssistant:"
    assert CHAT_TEMPLATES["rwkv"].render("Q", "Be\n\nterse.") == "System: Be\nterse.\n\nUser: Q\n\nAssistant:"
    assert CHAT_TEMPLATES["chatml"].render("Q") == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    assert CHAT_TEMPLATES["qwen"].render("Q").startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n")
    assert CHAT_TEMPLATES["qwen"].render("Q", "S").startswith("<|im_start|>system\nS<|im_end|>\n<|im_start|>user")
    assert CHAT_TEMPLATES["r1"].render("Q", "S") == "<｜begin▁of▁sentence｜>S<｜User｜>Q<｜Assistant｜><think>\n"
    assert rwkv_chat((), "Q", "S") == "System: S\n\nUser: Q\n\nAssistant:" == CHAT_TEMPLATES["rwkv"].render("Q", "S")
    assert json.loads(as_sent("Q", "chat", None, "S")) == [{"role": "system", "content": "S"},
                                                           {"role": "user", "content": "Q"}]
    with pytest.raises(ValueError, match="needs a chat template or chat mode"):
        as_sent("Q", "completion", None, "S")


# ---------------------------------------------------------------- a fake server that records

class RecordingServer:
    """An OpenAI-shaped server on 127.0.0.1: lists one model, has no tokenizer endpoints, answers
    every generation with ``answer`` and records each POST (path, body, arrival time). ``plan(n)``
    may answer the n-th POST (from 0) with ``(status, retry_after)`` instead."""

    def __init__(self, answer: str = "Paris", plan=lambda n: None, usage: bool = True):
        self.answer, self.plan = answer, plan
        self.posts: list[tuple[str, dict, float]] = []
        self.usage = usage
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                                   **(headers or {})}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "no such route"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    n = len(outer.posts)
                    outer.posts.append((self.path, body, time.monotonic()))
                planned = outer.plan(n)
                if planned is not None:
                    status, retry_after = planned
                    self._send(status, {"error": {"message": "busy"}}, {"Retry-After": str(retry_after)})
                    return
                usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
                if self.path == "/v1/chat/completions":
                    choice = {"index": 0, "message": {"role": "assistant", "content": outer.answer},
                              "finish_reason": "stop"}
                else:
                    choice = {"index": 0, "text": outer.answer, "finish_reason": "stop"}
                self._send(200, {"choices": [choice], **({"usage": usage} if outer.usage else {})})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester folder running the real plugin (its remote backend) on a task folder."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest('pytest_plugins = ["evals.plugin"]\n')
    pytester.makepyfile(test_custom_suite="from evals.test_custom import custom_selection, pytest_generate_tests, "
                                          "test_custom\n")
    tasks = pytester.path / "tasks"
    tasks.mkdir()
    (tasks / "capitals.jsonl").write_text("".join(json.dumps({"index": i, "input": q, "target": a}) + "\n" for i, (q, a)
                                                  in enumerate([("Capital of France?", "Paris"),
                                                                ("Capital of Spain?", "Madrid")])))
    (pytester.path / "system.txt").write_text("You are a geographer.\nAnswer with one word.\n")
    return pytester


def results_of(root: Path) -> dict:
    return json.loads((root / "reports" / "latest" / "results.json").read_text())


def rows_of(root: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (root / "reports" / "latest" / "samples" / name).read_text().splitlines()]


BASE = ("-p", "no:cacheprovider", "--no-cache", "--data-file", "tasks", "--field-map",
        "prompt=input,answer=target,id=index", "--no-bos", "--sample-prompts", "-1", "--endpoint-wait", "10")


def test_system_prompt_in_chat_mode_is_a_system_message_the_server_sees(suite):
    with RecordingServer() as server:
        result = suite.runpytest(*BASE, "--endpoint", server.url, "--api-mode", "chat",
                                 "--system-prompt=@system.txt", "--api-key", "s3cret-key")
    assert result.ret == 0, result.stdout.str()
    assert len(server.posts) == 2
    for path, body, _ in server.posts:
        assert path == "/v1/chat/completions" and "stop" not in body  # chat mode: the server ends the turn
        assert body["messages"][0] == {"role": "system", "content": "You are a geographer.\nAnswer with one word."}
        assert body["messages"][1]["role"] == "user" and body["temperature"] == 0
    rows = rows_of(suite.path, "custom_exact_match-capitals.jsonl")
    sent = {json.dumps(body["messages"], ensure_ascii=False) for _, body, _ in server.posts}
    assert {row["prompt"] for row in rows} == sent  # the row records what was sent
    assert [row["scores"]["exact_match"] for row in rows] == [1.0, 0.0] and rows[0]["output_len"] == 3
    results = results_of(suite.path)
    assert results["options"]["system_prompt"] == "You are a geographer.\nAnswer with one word."
    assert results["options"]["api_key"] is True and results["options"]["max_retry_delay"] == 30.0
    assert "s3cret-key" not in (suite.path / "reports" / "latest" / "results.json").read_text()
    assert "<redacted>" in results["command"]
    assert results["benchmarks"]["custom_exact_match"]["protocol"]["sent_as"] == "chat messages"


def test_system_prompt_in_the_internthinker_template_and_the_rendered_prompt_recorded(suite):
    with RecordingServer(answer="Paris<|im_end|>ignored") as server:
        result = suite.runpytest(*BASE, "--endpoint", server.url, "--chat-template", "internthinker",
                                 "--system-prompt", "Be terse.")
    assert result.ret == 0, result.stdout.str()
    prompts = [body["prompt"] for _, body, _ in server.posts]
    assert sorted(prompts) == sorted(CHAT_TEMPLATES["internthinker"].render(q, "Be terse.")
                                     for q in ("Capital of France?", "Capital of Spain?"))
    assert all(set(INTERNTHINKER_STOP) <= set(body["stop"]) for _, body, _ in server.posts)
    rows = rows_of(suite.path, "custom_exact_match-capitals.jsonl")
    assert sorted(row["prompt"] for row in rows) == sorted(prompts)
    assert rows[0]["output"] == "Paris" and rows[0]["scores"]["exact_match"] == 1.0  # cut at the template's stop


def test_system_prompt_in_rwkv_turns_rendered_by_the_suite(suite):
    (suite.path / "s.txt").write_text("S.\n")
    with RecordingServer() as server:
        result = suite.runpytest(*BASE, "--endpoint", server.url, "--template", "rwkv", "--system-prompt-file", "s.txt")
    assert result.ret == 0, result.stdout.str()
    assert sorted(body["prompt"] for _, body, _ in server.posts) == [
        "System: S.\n\nUser: Capital of France?\n\nAssistant:", "System: S.\n\nUser: Capital of Spain?\n\nAssistant:"]


def test_sampled_main_answer_settings_reach_the_server_and_the_report(suite):
    with RecordingServer() as server:
        result = suite.runpytest(*BASE, "--endpoint", server.url, "--api-mode", "chat", "--answer-temperature", "0.7",
                                 "--answer-top-p", "0.9", "--answer-seed", "11")
    assert result.ret == 0, result.stdout.str()
    assert {(b["temperature"], b["top_p"], b["seed"]) for _, b, _ in server.posts} == {(0.7, 0.9, 11)}
    protocol = results_of(suite.path)["benchmarks"]["custom_exact_match"]["protocol"]
    assert protocol["greedy"] is False and protocol["answer_sampling"] == {"temperature": 0.7, "top_p": 0.9, "seed": 11}


def test_output_len_without_the_servers_count_comes_from_rwkvs_tokenizer(suite):
    """A server that reports no usage and has no /tokenize: the row says how its length was counted."""
    with RecordingServer(answer="Paris is nice", usage=False) as server:
        result = suite.runpytest(*BASE, "--endpoint", server.url, "--api-mode", "chat")
    assert result.ret == 0, result.stdout.str()
    from engine.tokenizer import WorldTokenizer

    row = rows_of(suite.path, "custom_exact_match-capitals.jsonl")[0]
    assert row["output_len"] == len(WorldTokenizer().encode("Paris is nice")) and row["output_len"] > 0
    assert row["output_len_from"] == "rwkv world tokenizer"


# ---------------------------------------------------------------- --max-retry-delay

def test_max_retry_delay_caps_the_backoff_schedule():
    """503 with Retry-After: 60 four times, then an answer: every recorded wait is at most the cap."""
    delays: list[float] = []
    with RecordingServer(plan=lambda n: (503, 60) if n < 4 else None) as server:
        backend = RemoteBackend(RemoteOptions(server.url, api_mode="chat", max_retries=5, backoff_max=0.2),
                                rng=random.Random(0), sleep=lambda s: (delays.append(s), time.sleep(s)))
        try:
            from evals.backend import GenerateRequest

            (answer,) = backend.generate([GenerateRequest("Q", (), 8, bos=False)])
        finally:
            backend.close()
    assert answer.text == "Paris" and len(server.posts) == 5 and backend.retries == 4
    assert len(delays) == 4 and all(0 < d <= 0.2 for d in delays)
    assert all(d == 0.2 for d in delays)  # Retry-After (60 s) is honoured up to the cap, no further
    gaps = [b[2] - a[2] for a, b in zip(server.posts, server.posts[1:])]
    assert all(g < 5 for g in gaps)  # the server saw the retries come at the capped pace, not after 60 s


def test_exponential_backoff_below_the_cap_and_giving_up():
    delays: list[float] = []
    with RecordingServer(plan=lambda n: (503, "soon")) as server:  # an unreadable Retry-After: plain backoff
        backend = RemoteBackend(RemoteOptions(server.url, api_mode="chat", max_retries=6, backoff_max=2.0),
                                rng=random.Random(0), sleep=delays.append)
        try:
            from evals.backend import GenerateRequest

            with pytest.raises(RemoteFailures, match="gave up after 7 attempts"):
                backend.generate([GenerateRequest("Q", (), 8, bos=False)])
        finally:
            backend.close()
    # attempt a waits min(2, 0.5 * 2**a), half of it jitter: [d/2, d]
    bounds = [min(2.0, 0.5 * 2 ** a) for a in range(6)]
    assert len(delays) == 6 and all(b / 2 <= d <= b for d, b in zip(delays, bounds)), delays
    assert max(delays) <= 2.0 and len(server.posts) == 7


def test_max_retry_delay_through_the_plugin(suite):
    with RecordingServer(plan=lambda n: (503, 60) if n < 2 else None) as server:
        started = time.monotonic()
        result = suite.runpytest(*BASE, "--endpoint", server.url, "--api-mode", "chat", "--max-retry-delay", "0.1",
                                 "--concurrency", "1")
        elapsed = time.monotonic() - started
    assert result.ret == 0, result.stdout.str()
    assert len(server.posts) == 4 and elapsed < 45  # the default cap (30 s) would have waited 60 s for two 503s
    assert results_of(suite.path)["options"]["max_retry_delay"] == 0.1


# ---------------------------------------------------------------- usage errors and gates (fake backend)

@pytest.mark.parametrize("args, message", [
    (("--system-prompt", "S"), "--system-prompt needs a turn to go in"),
    (("--system-prompt=@missing.txt",), "--system-prompt @missing.txt: cannot read the file"),
    (("--system-prompt-file", "missing.txt"), "--system-prompt-file missing.txt: cannot read the file"),
    (("--system-prompt", "S", "--system-prompt-file", "s.txt"), "not both"),
    (("--template", "rwkv", "--system-prompt", "  "), "the system prompt is empty"),
    (("--answer-seed", "3"), "--answer-seed applies to a sampled main answer"),
    (("--answer-top-p", "0.5"), "--answer-top-p applies to a sampled main answer"),
    (("--max-retry-delay", "5"), "--max-retry-delay only applies with --endpoint"),
    (("--checker-path", "no_such_dir"), "--checker-path no_such_dir: no such directory"),
    (("--custom-metric", "fuzzy"), "unknown checker 'fuzzy'"),
    (("--field-map", "question=input"), "unknown field question"),
    (("--endpoint", "http://127.0.0.1:9", "--api-mode", "chat", "--template", "rwkv"), "would wrap it twice"),
])
def test_usage_errors(pytester, monkeypatch, args, message):
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(PLUGIN_CONFTEST)
    (pytester.path / "fake.pth").write_bytes(b"x")
    (pytester.path / "q.jsonl").write_text('{"prompt": "p", "answer": "a"}\n')
    model = () if "--endpoint" in args else ("--model", "fake.pth")
    result = pytester.runpytest("-p", "no:cacheprovider", *model, "--data-file", "q.jsonl", *args)
    assert result.ret == 4, result.stdout.str() + result.stderr.str()
    assert message in result.stderr.str()


@pytest.fixture
def fake_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("RWKV_MODEL", raising=False)
    pytester.makeconftest(PLUGIN_CONFTEST.replace("FakeBackend()", "FakeBackend(answers=('7',))"))
    pytester.makepyfile(test_custom_suite="from evals.test_custom import custom_selection, pytest_generate_tests, "
                                          "test_custom\n")
    (pytester.path / "fake.pth").write_bytes(b"not loaded: the backend is a fake")
    tasks = pytester.path / "tasks"
    tasks.mkdir()
    (tasks / "nums.jsonl").write_text('{"prompt": "3 + 4?", "answer": "7"}\n{"prompt": "2 + 2?", "answer": 4}\n')
    (tasks / "nums.task.toml").write_text('checker = "numeric"\n')
    (tasks / "qa.jsonl").write_text('{"prompt": "p", "answer": "7"}\n')
    (tasks / "more.jsonl").write_text('{"prompt": "q", "answer": "7"}\n')
    return pytester


def test_gates_on_per_file_checkers_are_checked_at_collection(fake_suite):
    run = ("-p", "no:cacheprovider", "--model", "fake.pth", "--data-file", "tasks")
    result = fake_suite.runpytest(*run, "--threshold", "custom_numeric/nums.numeric>=0.5",
                                  "--threshold", "custom_exact_match.exact_match>=1")
    assert result.ret == 0, result.stdout.str()
    results = results_of(fake_suite.path)
    assert results["benchmarks"]["custom_numeric"]["cases"]["nums"]["metrics"]["numeric"]["value"] == 0.5
    assert results["gates"]["passed"] == 2
    import hashlib

    data = results["benchmarks"]["custom_exact_match"]["data"]  # both files of the benchmark, each once
    assert [(Path(d["file"]).name, d["sha256"]) for d in data] == [
        (name, hashlib.sha256((fake_suite.path / "tasks" / name).read_bytes()).hexdigest())
        for name in ("more.jsonl", "qa.jsonl")]
    assert results["benchmarks"]["custom_numeric"]["data"][0]["sidecar_sha256"] == hashlib.sha256(
        (fake_suite.path / "tasks" / "nums.task.toml").read_bytes()).hexdigest()
    result = fake_suite.runpytest(*run, "--threshold", "custom_numeric.exact_match>=0")
    assert result.ret == 4 and "custom_numeric does not report 'exact_match'" in result.stderr.str()
    (fake_suite.path / "tasks" / "qa.task.toml").write_text('checker = "nope"\n')
    result = fake_suite.runpytest(*run)
    assert result.ret == 4 and "qa.task.toml: unknown checker 'nope'" in result.stderr.str()
