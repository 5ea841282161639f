"""The SQLite response cache on its own: keys, reuse, responses stored as they arrive (also when
the call dies part way), errors on foreign, corrupt, empty or unwritable files, replay without a
model, and several processes writing at once."""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field

import pytest

from evals.backend import SILENT, GenerateRequest, Listener, LoglikelihoodRequest, RollingRequest
from evals.cache import (
    APPLICATION_ID, FILENAME, CachedBackend, CacheError, ReplayBackend, ResponseCache, choose_model, clear,
    model_identity, request_key,
)
from evals.fakes import FakeBackend
from helpers import tmpfs


@dataclass
class CountingFake(FakeBackend):
    """A fake that answers one request at a time through the listener, counts its calls, can die
    after ``fail_after`` answers and can pause after ``pause_after`` until ``resume`` is set."""

    calls: list[int] = field(default_factory=list)
    fail_after: int | None = None
    pause_after: int | None = None
    resume: threading.Event = field(default_factory=threading.Event)

    def loglikelihood(self, requests, listener=SILENT):
        self.calls.append(len(requests))
        answers = super().loglikelihood(requests)
        for i, answer in enumerate(answers):
            if i == self.fail_after:
                raise RuntimeError("simulated crash")
            if i == self.pause_after:
                assert self.resume.wait(30), "the test never resumed the backend"
            listener.on_result(i, answer)
        return answers


class Seen(Listener):
    def __init__(self):
        self.indices = []

    def on_result(self, index, response):
        self.indices.append(index)


def requests(n: int) -> list[LoglikelihoodRequest]:
    return [LoglikelihoodRequest(f"context {i}", f" word{i}") for i in range(n)]


def test_second_pass_is_served_from_the_file(tmp_path):
    inner = CountingFake()
    backend = CachedBackend(inner, ResponseCache.open(tmp_path))
    first = backend.loglikelihood(requests(7))
    assert inner.calls == [7]  # one call with everything missing
    again = CachedBackend(CountingFake(), ResponseCache.open(tmp_path))
    assert again.loglikelihood(requests(7)) == first
    assert again.stats.to_dict() == {"reused": 7, "computed": 0} and again.backend.calls == []


def test_a_crash_keeps_every_answer_that_arrived(tmp_path):
    backend = CachedBackend(CountingFake(fail_after=7), ResponseCache.open(tmp_path))
    with pytest.raises(RuntimeError, match="simulated crash"):
        backend.loglikelihood(requests(10))
    assert backend.cache.count() == 7  # each answer reported before the crash is in the file
    inner = CountingFake()
    resumed = CachedBackend(inner, ResponseCache.open(tmp_path))
    assert resumed.loglikelihood(requests(10)) == FakeBackend().loglikelihood(requests(10))
    assert inner.calls == [3] and resumed.stats.to_dict() == {"reused": 7, "computed": 3}


def test_answers_reach_the_file_while_the_call_runs(tmp_path):
    inner = CountingFake(pause_after=4)
    backend = CachedBackend(inner, ResponseCache.open(tmp_path))
    call = threading.Thread(target=backend.loglikelihood, args=(requests(9),))
    call.start()
    try:
        reader, deadline = ResponseCache.open(tmp_path), time.monotonic() + 10
        while reader.count() < 4:  # another connection sees them: committed, not buffered
            assert time.monotonic() < deadline, "answers were not committed while the call was running"
            time.sleep(0.05)
        assert reader.count() == 4 and call.is_alive()
    finally:
        inner.resume.set()
        call.join(30)
    assert reader.count() == 9


def test_duplicates_are_computed_once_and_every_request_is_reported(tmp_path):
    inner, seen = CountingFake(), Seen()
    backend = CachedBackend(inner, ResponseCache.open(tmp_path))
    batch = requests(2) * 3
    out = backend.loglikelihood(batch, seen)
    assert inner.calls == [2] and sorted(seen.indices) == list(range(6)) and out[0] == out[2] == out[4]
    again = Seen()
    CachedBackend(CountingFake(), ResponseCache.open(tmp_path)).loglikelihood(batch, again)
    assert sorted(again.indices) == list(range(6))  # answers from the file are reported too


def test_key_covers_text_bos_and_generation_settings():
    base = GenerateRequest("Q", ("\n",), 16)
    keys = {request_key("generate", r)[0] for r in (
        base, GenerateRequest("Q", ("\n",), 17), GenerateRequest("Q", (), 16), GenerateRequest("Q", ("\n",), 16, bos=False),
        GenerateRequest("Q", ("\n",), 16, temperature=0.7), GenerateRequest("Q", ("\n",), 16, seed=1))}
    assert len(keys) == 6
    assert request_key("generate", base) == request_key("generate", GenerateRequest("Q", ("\n",), 16))
    assert request_key("loglikelihood_rolling", RollingRequest("Q"))[0] != request_key("generate", base)[0]


def test_model_identity():
    assert model_identity({"sha256": "ab", "dtype": "float32", "device": "cuda:3"}) == "sha256:ab|dtype:float32"
    remote = model_identity({"endpoint": "http://h/v1", "model": "m", "api_mode": "chat", "chat_template": None,
                             "token_ids": True})
    assert remote.startswith("endpoint:http://h/v1|model:m|api_mode:chat")
    assert model_identity(FakeBackend().info()) == "backend:fake|name:fake"
    with pytest.raises(CacheError, match="--no-cache"):
        model_identity({"dtype": "float32"})


def test_all_kinds_and_token_counts_round_trip(tmp_path):
    backend = CachedBackend(FakeBackend(), ResponseCache.open(tmp_path))
    gen = [GenerateRequest("Question: 2+2?", ("\n",), 8)]
    roll = [RollingRequest("some text")]
    answers = (backend.generate(gen), backend.loglikelihood_rolling(roll), backend.count_tokens("abc", False))
    model_id, entry = choose_model(backend.cache.models(), None, None, backend.cache.path)
    replay = ReplayBackend(ResponseCache.open(tmp_path), model_id, entry["info"])
    assert (replay.generate(gen), replay.loglikelihood_rolling(roll), replay.count_tokens("abc", False)) == answers
    with pytest.raises(CacheError, match="1 of 1 loglikelihood requests were never stored.*without --rescore"):
        replay.loglikelihood(requests(1))


def test_corrupt_file_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / FILENAME).write_bytes(b"\x00garbage" * 512)
    with pytest.raises(CacheError, match="not a readable SQLite file.*rwkveval cache clear"):
        ResponseCache.open(tmp_path)
    assert (tmp_path / FILENAME).read_bytes().startswith(b"\x00garbage")  # left as it was


def test_empty_file_is_an_error_not_a_fresh_start(tmp_path):
    (tmp_path / FILENAME).write_bytes(b"")
    with pytest.raises(CacheError, match=r"is empty \(0 bytes\).*rwkveval cache clear"):
        ResponseCache.open(tmp_path)
    assert (tmp_path / FILENAME).stat().st_size == 0  # left as it was


def test_read_only_folder_is_an_error(tmp_path):
    folder = tmp_path / "ro"
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:  # root writes through permission bits: a read-only file system instead
            stack.enter_context(tmpfs(folder, read_only=True))
        else:
            folder.mkdir()
            folder.chmod(0o555)
            stack.callback(folder.chmod, 0o755)
        with pytest.raises(CacheError, match="not writable.*--cache-dir"):
            ResponseCache.open(folder)


def test_foreign_database_is_an_error(tmp_path):
    db = sqlite3.connect(tmp_path / FILENAME)
    db.execute("CREATE TABLE notes (text)")
    db.commit()
    db.close()
    with pytest.raises(CacheError, match="another application"):
        ResponseCache.open(tmp_path)
    db = sqlite3.connect(tmp_path / FILENAME)
    db.execute("PRAGMA application_id = 1234")
    db.commit()
    db.close()
    with pytest.raises(CacheError, match=r"application_id 0x4d2"):
        ResponseCache.open(tmp_path)


def test_newer_format_is_an_error_and_clear_removes_the_files(tmp_path):
    ResponseCache.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / FILENAME)
    assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(CacheError, match="format version 99"):
        ResponseCache.open(tmp_path)
    assert (tmp_path / FILENAME) in clear(tmp_path)
    assert not (tmp_path / FILENAME).exists()
    ResponseCache.open(tmp_path).close()


def _writer(directory: str, worker: int, n: int) -> None:
    backend = CachedBackend(FakeBackend(), ResponseCache.open(directory))
    # overlapping request sets: every worker stores half its requests that another one also stores
    backend.loglikelihood([LoglikelihoodRequest(f"c{i}", f" w{i}") for i in range(worker * n // 2, worker * n // 2 + n)])


def test_concurrent_writers(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    processes = [ctx.Process(target=_writer, args=(str(tmp_path), w, 40)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    cache = ResponseCache.open(tmp_path)
    assert cache.count() == 40 // 2 * 3 + 40  # the union of the four overlapping ranges
    stored = CachedBackend(FakeBackend(), cache).loglikelihood([LoglikelihoodRequest(f"c{i}", f" w{i}") for i in range(100)])
    assert stored == FakeBackend().loglikelihood([LoglikelihoodRequest(f"c{i}", f" w{i}") for i in range(100)])
