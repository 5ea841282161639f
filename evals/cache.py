"""The response cache: every model response stored in SQLite as it arrives, so a killed run resumes.

One database file per cache directory (``<dir>/responses.sqlite``, WAL mode). A response is keyed
by the model's identity (its checkpoint sha256 and dtype, or a remote endpoint's URL, model and
API mode), the request kind, and the request itself as canonical JSON: the rendered text, the
token-0 flag and, for generation, every setting (stop strings, budget, temperature, top-p, top-k,
seed). The device and the batch size are deliberately not part of the key, so xdist workers on
different GPUs share one cache.

- :class:`CachedBackend` wraps any :class:`evals.backend.Backend`: it answers stored requests from
  the file and sends only the rest to the model in one call, storing each response as the model
  reports it (:class:`evals.backend.Listener`), in short transactions at most ``FLUSH_S`` (50 ms)
  after it arrives, so a SIGKILL loses only the requests in flight and the last 50 ms of answers.
- :class:`ReplayBackend` answers only from the file (``--rescore``): no model is loaded, and a
  request that was never stored is an error, never a silent zero.

Several processes may write at once (xdist workers): each write is one short ``BEGIN IMMEDIATE``
transaction and every connection waits up to ``busy_timeout`` for the lock. A file that is not
an rwkveval cache (another SQLite database, a corrupt file, a newer format) is a
:class:`CacheError` that names the file and how to clear it, never a silent fresh start.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evals.backend import (
    SILENT, GenerateRequest, GenerateResponse, Listener, LoglikelihoodRequest, LoglikelihoodResponse,
    RollingRequest, RollingResponse,
)

FILENAME = "responses.sqlite"
APPLICATION_ID = 0x72776B76  # "rwkv": what `PRAGMA application_id` says in every rwkveval cache
FORMAT = "rwkveval-response-cache"
VERSION = 1
BUSY_TIMEOUT_S = 120.0
FLUSH_S = 0.05  # an answer reaches the file at most this long after the model reported it
_SQL_VARIABLES = 500  # keys per SELECT ... IN (...), well under SQLite's limit

RESPONSE_TYPES: dict[str, type] = {
    "loglikelihood": LoglikelihoodResponse,
    "loglikelihood_rolling": RollingResponse,
    "generate": GenerateResponse,
}
REQUEST_TYPES: dict[str, type] = {
    "loglikelihood": LoglikelihoodRequest,
    "loglikelihood_rolling": RollingRequest,
    "generate": GenerateRequest,
}
SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE models (model_id TEXT PRIMARY KEY, info TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE responses (
    model_id TEXT NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL,
    request TEXT NOT NULL, response TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (model_id, key)
) WITHOUT ROWID;
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {VERSION};
"""


class CacheError(RuntimeError):
    """The cache file cannot be used (foreign, corrupt, newer format) or lacks a needed response."""


def cache_file(cache_dir: Path) -> Path:
    return Path(cache_dir) / FILENAME


def _how_to_clear(path: Path) -> str:
    return (f"move it away, or clear it with `rwkveval cache clear --cache-dir {path.parent}` "
            f"(or `pytest evals --clear-cache`)")


def model_identity(info: Mapping[str, Any]) -> str:
    """What the responses depend on, from a backend's ``info()``.

    A checkpoint: its sha256 and dtype (not the device, so workers on several GPUs share entries),
    and the adapters merged into it, if any (kind, file sha256, scale, PiSSA init sha256, in order).
    A remote endpoint: URL, model and the options that change what it answers (the system prompt
    the backend sends among them). Anything else (a
    test fake): its backend kind and name.
    """
    if info.get("sha256"):
        identity = f"sha256:{info['sha256']}|dtype:{info.get('dtype')}"
        adapters = info.get("adapters") or []
        if adapters:  # absent for a plain checkpoint: its identity (and cached responses) stay as they were
            identity += "|adapters:" + ",".join(
                f"{a['kind']}:{a['sha256']}:scale={a.get('scale')}" + (f":init={a['init']['sha256']}" if a.get("init") else "")
                for a in adapters)
        return identity
    if info.get("endpoint"):
        parts = [f"endpoint:{info['endpoint']}"] + [f"{k}:{info.get(k)}" for k in
                                                   ("model", "api_mode", "chat_template", "token_ids")]
        if info.get("system_prompt") is not None:  # --system-prompt sent by the backend (chat mode, templates)
            parts.append("system_prompt_sha256:" + hashlib.sha256(info["system_prompt"].encode("utf-8")).hexdigest())
        return "|".join(parts)
    if info.get("backend") and info.get("name"):
        return f"backend:{info['backend']}|name:{info['name']}"
    raise CacheError(f"cannot key cached responses: the backend's info() has no sha256, endpoint or "
                     f"backend name ({sorted(info)}); run with --no-cache")


def request_key(kind: str, request: Any) -> tuple[str, str]:
    """(sha256 key, canonical JSON) of one request of ``kind``: a request dataclass or a mapping
    (the token counts here, the searches and rewards of :mod:`evals.ttc.store`)."""
    fields = request if isinstance(request, Mapping) else asdict(request)
    text = json.dumps({"kind": kind, **fields}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest(), text


def _count_key(text: str, bos: bool) -> tuple[str, str]:
    return request_key("count_tokens", {"text": text, "bos": bos})


class ResponseCache:
    """One SQLite cache file. Open it with :meth:`open`; every method is safe across processes."""

    def __init__(self, path: Path, connection: sqlite3.Connection):
        self.path = path
        self._db = connection
        self._lock = threading.RLock()  # one connection; the server's threads may share it

    @classmethod
    def open(cls, cache_dir: Path, create: bool = True) -> ResponseCache:
        path = cache_file(cache_dir)
        if not path.exists() and not create:
            raise CacheError(f"no response cache at {path} (nothing was stored there; run without --rescore first)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CacheError(f"cannot make the cache folder {path.parent}: {error}; pass --cache-dir to a "
                             f"writable folder, or --no-cache") from None
        if create and not os.access(path.parent, os.W_OK):
            raise CacheError(f"the cache folder {path.parent} is not writable; pass --cache-dir to a writable "
                             f"folder, or --no-cache")
        if path.exists() and path.stat().st_size == 0:
            # a cache file is created whole (see _create), so an empty one was truncated or made by
            # something else; starting it over would hide that
            raise CacheError(f"{path} is empty (0 bytes), not an rwkveval response cache; {_how_to_clear(path)}")
        if not path.exists():
            _create(path)
        try:
            db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as error:
            raise CacheError(f"cannot open the response cache {path}: {error}") from None
        cache = cls(path, db)
        try:
            cache._initialise()
        except sqlite3.DatabaseError as error:
            db.close()
            if isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
                raise CacheError(f"response cache {path} stayed locked for {BUSY_TIMEOUT_S:.0f} s: {error}") from None
            raise CacheError(f"{path} is not a readable SQLite file ({error}): it is corrupt or not an "
                             f"rwkveval response cache; {_how_to_clear(path)}") from None
        except CacheError:
            db.close()
            raise
        return cache

    def _initialise(self) -> None:
        """Check the header and format (and write the schema into a new, empty file)."""
        db = self._db
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # Reading the header first: a foreign or corrupt file fails here, before anything is written.
        application_id = db.execute("PRAGMA application_id").fetchone()[0]
        if application_id not in (0, APPLICATION_ID):
            raise CacheError(f"{self.path} is an SQLite file of another application (application_id "
                             f"{application_id:#x}, expected {APPLICATION_ID:#x}); {_how_to_clear(self.path)}")
        if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: a commit survives a killed process
        db.execute("BEGIN IMMEDIATE")
        try:
            application_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if application_id == 0:
                if tables:
                    raise CacheError(f"{self.path} is an SQLite database of another application (tables "
                                     f"{sorted(tables)}, no rwkveval application id); {_how_to_clear(self.path)}")
                # statement by statement inside the transaction (executescript would commit first and
                # let another worker see half a schema)
                for statement in filter(str.strip, SCHEMA.split(";")):
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?), ('version', ?)", (FORMAT, str(VERSION)))
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version != VERSION:
                raise CacheError(f"{self.path} is an rwkveval response cache of format version {version}; this "
                                 f"rwkveval reads version {VERSION}; {_how_to_clear(self.path)}")
            fmt = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if fmt is None or fmt[0] != FORMAT:
                raise CacheError(f"{self.path}: the meta table says format {fmt and fmt[0]!r}, expected {FORMAT!r}; "
                                 f"{_how_to_clear(self.path)}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    def _guard(self, what: str, action: Callable[[], Any]) -> Any:
        with self._lock:
            try:
                return action()
            except sqlite3.DatabaseError as error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise CacheError(f"response cache {self.path}: {what} failed ({error}); "
                                 f"{_how_to_clear(self.path)}") from None

    # ------------------------------------------------------------------ models

    def register_model(self, model_id: str, info: Mapping[str, Any]) -> None:
        """Remember what ``model_id`` is (its ``info()`` and how it was named), for ``--rescore``."""
        text = json.dumps(dict(info), sort_keys=True, default=str)
        self._write("register the model", "INSERT OR REPLACE INTO models VALUES (?, ?, ?)",
                    [(model_id, text, time.time())])

    def models(self) -> dict[str, dict[str, Any]]:
        rows = self._guard("list the models", lambda: self._db.execute(
            "SELECT model_id, info FROM models ORDER BY created").fetchall())
        return {model_id: json.loads(info) for model_id, info in rows}

    # ------------------------------------------------------------------ responses

    def get_many(self, model_id: str, keys: Sequence[str]) -> dict[str, tuple[str, str]]:
        """{key: (kind, response JSON)} for the stored ones among ``keys``."""
        found: dict[str, tuple[str, str]] = {}
        unique = list(dict.fromkeys(keys))

        def read() -> None:
            for start in range(0, len(unique), _SQL_VARIABLES):
                part = unique[start:start + _SQL_VARIABLES]
                marks = ",".join("?" * len(part))
                for key, kind, response in self._db.execute(
                        f"SELECT key, kind, response FROM responses WHERE model_id = ? AND key IN ({marks})",
                        [model_id, *part]):
                    found[key] = (kind, response)

        self._guard("reading responses", read)
        return found

    def put_many(self, model_id: str, entries: Iterable[tuple[str, str, str, str]]) -> None:
        """Store ``(key, kind, request JSON, response JSON)`` entries in one short transaction."""
        now = time.time()
        rows = [(model_id, key, kind, request, response, now) for key, kind, request, response in entries]
        if rows:
            self._write("storing responses", "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?, ?, ?)", rows)

    def _write(self, what: str, sql: str, rows: list[tuple]) -> None:
        def write() -> None:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")

        self._guard(what, write)

    def count(self, model_id: str | None = None, kind: str | None = None) -> int:
        sql, args = "SELECT count(*) FROM responses WHERE 1", []
        if model_id is not None:
            sql, args = sql + " AND model_id = ?", args + [model_id]
        if kind is not None:
            sql, args = sql + " AND kind = ?", args + [kind]
        return self._guard("counting responses", lambda: self._db.execute(sql, args).fetchone()[0])


def _create(path: Path) -> None:
    """Make ``path`` a new, complete cache file: the schema is written into a file beside it, which
    is then linked into place (an atomic create-if-absent), so no process ever sees a half-made or
    empty cache; when another process got there first, its file is kept."""
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{threading.get_ident()}")
    try:
        db = sqlite3.connect(tmp, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('format', ?), ('version', ?)", (FORMAT, str(VERSION)))
            db.execute("COMMIT")
        finally:
            db.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    except (OSError, sqlite3.Error) as error:
        raise CacheError(f"cannot create the response cache {path}: {error}; pass --cache-dir to a writable "
                         f"folder, or --no-cache") from None
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            if leftover.exists():
                leftover.unlink()


def clear(cache_dir: Path) -> list[Path]:
    """Delete the cache file of ``cache_dir`` (and its WAL/shared-memory files); the removed paths."""
    base = cache_file(cache_dir)
    removed = []
    for path in (base, base.with_name(base.name + "-wal"), base.with_name(base.name + "-shm")):
        if path.exists():
            path.unlink()
            removed.append(path)
    return removed


def _decode(kind: str, key: str, text: str, path: Path) -> Any:
    try:
        return RESPONSE_TYPES[kind](**json.loads(text))
    except (KeyError, TypeError, ValueError) as error:
        raise CacheError(f"response cache {path}: entry {key} ({kind}) cannot be read ({error}); "
                         f"{_how_to_clear(path)}") from None


@dataclass
class CacheStats:
    reused: int = 0  # requests answered from the file
    computed: int = 0  # requests the model answered (and that were then stored)

    def to_dict(self) -> dict[str, int]:
        return {"reused": self.reused, "computed": self.computed}


class _Pending:
    """Answers on their way to the file, committed in small transactions: an answer that comes at
    least ``interval`` seconds after the last commit is committed at once (with whatever waits);
    one that comes sooner (a scored batch reports its answers together) waits for a timer that
    commits it at most ``interval`` seconds later. So every answer is in the file within
    ``interval`` of arriving, at a commit per batch rather than per answer (one commit costs
    ~0.4 ms, see tests/test_cache_overhead.py). An error in the timer's commit is kept and raised
    by the next :meth:`add` or :meth:`flush`, never lost."""

    def __init__(self, cache: ResponseCache, model_id: str, interval: float):
        self.cache, self.model_id, self.interval = cache, model_id, interval
        self._rows: list[tuple[str, str, str, str]] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._last = 0.0
        self._error: BaseException | None = None

    def add(self, entry: tuple[str, str, str, str]) -> None:
        self._raise_error()
        with self._lock:
            self._rows.append(entry)
            due = time.monotonic() - self._last >= self.interval
            if not due and self._timer is None:
                self._timer = threading.Timer(self.interval, self._from_timer)
                self._timer.daemon = True
                self._timer.start()
        if due:
            self.flush()

    def _take(self) -> list[tuple[str, str, str, str]]:
        with self._lock:
            rows, self._rows = self._rows, []
            timer, self._timer = self._timer, None
            self._last = time.monotonic()
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
        return rows

    def _from_timer(self) -> None:
        try:
            self.cache.put_many(self.model_id, self._take())
        except BaseException as error:  # noqa: BLE001 - handed to the caller's thread by _raise_error
            self._error = error

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def flush(self) -> None:
        self.cache.put_many(self.model_id, self._take())
        self._raise_error()


class _Storing(Listener):
    """Stores each response the model reports, then passes it on under its caller-side indices."""

    def __init__(self, kind: str, keys: list[str], todo: dict[str, list[int]], keyed: list[tuple[str, str]],
                 out: list[Any], pending: _Pending, outer: Listener, stats: CacheStats):
        self.kind, self.keys, self.todo, self.keyed = kind, keys, todo, keyed
        self.out, self.pending, self.outer, self.stats = out, pending, outer, stats

    def on_result(self, index: int, response: Any) -> None:
        key = self.keys[index]
        positions = self.todo[key]
        if self.out[positions[0]] is not None:
            return  # already reported
        self.pending.add((key, self.kind, self.keyed[positions[0]][1], json.dumps(asdict(response))))
        for i in positions:
            self.out[i] = response
            self.outer.on_result(i, response)
        self.stats.computed += len(positions)

    def on_tokens(self, prompt: int, generated: int) -> None:
        self.outer.on_tokens(prompt, generated)


@dataclass
class CachedBackend:
    """``backend`` behind the cache: stored responses are reused, the rest computed and stored.

    The missing requests go to the model in one call; each response is committed within
    ``flush_s`` seconds of the model reporting it (and at the end of the call, also when the call
    fails part way), so a killed run loses only the requests in flight and the last ``flush_s``.
    """

    backend: Any
    cache: ResponseCache
    registration: Mapping[str, Any] = field(default_factory=dict)  # extra naming kept for --rescore
    stats: CacheStats = field(default_factory=CacheStats)
    flush_s: float = FLUSH_S

    def __post_init__(self) -> None:
        self._info = self.backend.info()
        self.model_id = model_identity(self._info)
        self.cache.register_model(self.model_id, {"info": self._info, **self.registration})

    def info(self) -> dict[str, Any]:
        return self._info

    def count_tokens(self, text: str, bos: bool = True) -> int:
        key, canonical = _count_key(text, bos)
        found = self.cache.get_many(self.model_id, [key])
        if key in found:
            return int(json.loads(found[key][1]))
        value = int(self.backend.count_tokens(text, bos))
        self.cache.put_many(self.model_id, [(key, "count_tokens", canonical, json.dumps(value))])
        return value

    def _answer(self, kind: str, requests: Sequence[Any], listener: Listener) -> list[Any]:
        keyed = [request_key(kind, r) for r in requests]
        found = self.cache.get_many(self.model_id, [k for k, _ in keyed])
        out: list[Any] = [None] * len(requests)
        todo: dict[str, list[int]] = {}
        for i, (key, _) in enumerate(keyed):
            if key in found:
                out[i] = _decode(kind, key, found[key][1], self.cache.path)
                self.stats.reused += 1
                listener.on_result(i, out[i])
            else:
                todo.setdefault(key, []).append(i)
        if not todo:
            return out
        keys = list(todo)
        pending = _Pending(self.cache, self.model_id, self.flush_s)
        storing = _Storing(kind, keys, todo, keyed, out, pending, listener, self.stats)
        try:
            responses = getattr(self.backend, kind)([requests[todo[k][0]] for k in keys], storing)
            if len(responses) != len(keys):
                raise RuntimeError(f"backend answered {len(responses)} of {len(keys)} {kind} requests")
            for index, response in enumerate(responses):  # a backend that did not report them as it went
                storing.on_result(index, response)
        finally:
            pending.flush()  # what arrived is kept, also when the call failed part way
        return out

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest],
                      listener: Listener = SILENT) -> list[LoglikelihoodResponse]:
        return self._answer("loglikelihood", requests, listener)

    def loglikelihood_rolling(self, requests: Sequence[RollingRequest],
                              listener: Listener = SILENT) -> list[RollingResponse]:
        return self._answer("loglikelihood_rolling", requests, listener)

    def generate(self, requests: Sequence[GenerateRequest],
                 listener: Listener = SILENT) -> list[GenerateResponse]:
        return self._answer("generate", requests, listener)


@dataclass
class ReplayBackend:
    """Answers only from the cache (``--rescore``): no model, and a missing response is an error."""

    cache: ResponseCache
    model_id: str
    stored_info: Mapping[str, Any]
    stats: CacheStats = field(default_factory=CacheStats)

    def info(self) -> dict[str, Any]:
        return dict(self.stored_info)

    def _missing(self, what: str, count: int, total: int, example: str) -> CacheError:
        return CacheError(f"--rescore: {count} of {total} {what} were never stored in {self.cache.path} for "
                          f"{self.model_id} (first: {example[:200]}); run without --rescore to compute them")

    def count_tokens(self, text: str, bos: bool = True) -> int:
        key, canonical = _count_key(text, bos)
        found = self.cache.get_many(self.model_id, [key])
        if key not in found:
            raise self._missing("token counts", 1, 1, canonical)
        return int(json.loads(found[key][1]))

    def _answer(self, kind: str, requests: Sequence[Any], listener: Listener) -> list[Any]:
        keyed = [request_key(kind, r) for r in requests]
        found = self.cache.get_many(self.model_id, [k for k, _ in keyed])
        missing = [text for key, text in keyed if key not in found]
        if missing:
            raise self._missing(f"{kind} requests", len(missing), len(requests), missing[0])
        out = [_decode(kind, key, found[key][1], self.cache.path) for key, _ in keyed]
        self.stats.reused += len(requests)
        for i, response in enumerate(out):
            listener.on_result(i, response)
        return out

    def loglikelihood(self, requests, listener: Listener = SILENT):
        return self._answer("loglikelihood", requests, listener)

    def loglikelihood_rolling(self, requests, listener: Listener = SILENT):
        return self._answer("loglikelihood_rolling", requests, listener)

    def generate(self, requests, listener: Listener = SILENT):
        return self._answer("generate", requests, listener)


def choose_model(models: Mapping[str, Mapping[str, Any]], spec: str | None, dtype: str | None,
                 path: Path, adapters: Sequence[str] = ()) -> tuple[str, dict[str, Any]]:
    """The stored model ``--rescore`` replays: the one matching ``--model`` (by spec, name, path or
    a sha256 prefix), ``--dtype`` and the ``--adapter`` files (their sha256s, ``adapters``), or the
    only one stored when ``--model`` is not given."""
    def matches(entry: Mapping[str, Any]) -> bool:
        info, named = entry.get("info", {}), entry.get("resolved", {})
        if dtype and info.get("dtype") not in (None, dtype):
            return False
        stored_adapters = sorted(a.get("sha256") for a in info.get("adapters") or [])
        if (spec is not None or adapters) and stored_adapters != sorted(adapters):
            return False
        if spec is None:
            return True
        names = {named.get("spec"), named.get("name"), named.get("path"), info.get("name"), info.get("path")}
        resolved = str(Path(spec).expanduser().resolve()) if spec else None
        return spec in names or resolved in names or bool(info.get("sha256") and info["sha256"].startswith(spec))

    chosen = [(model_id, dict(entry)) for model_id, entry in models.items() if matches(entry)]
    if len(chosen) == 1:
        return chosen[0]
    stored = "; ".join(f"{m} ({e.get('resolved', {}).get('spec') or e.get('info', {}).get('name')})"
                       for m, e in models.items()) or "none"
    what = f"--model {spec!r}" if spec else "no --model"
    if not chosen:
        raise CacheError(f"--rescore: {what} (dtype {dtype}) matches no model stored in {path}; stored: {stored}")
    raise CacheError(f"--rescore: {what} matches {len(chosen)} models stored in {path}; name one with --model "
                     f"(a spec, name, path or sha256 prefix); stored: {stored}")


# ---------------------------------------------------------------------- `rwkveval cache`

def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("cache", help="inspect or clear a response cache",
                                   description="Inspect (info) or delete (clear) the response cache of a directory.")
    parser.add_argument("action", choices=("info", "clear"))
    parser.add_argument("--cache-dir", type=Path, default=Path("reports/cache"),
                        help="the cache directory (default: %(default)s, pytest's --cache-dir default)")
    parser.set_defaults(run=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    if args.action == "clear":
        removed = clear(args.cache_dir)
        print(f"removed {', '.join(map(str, removed))}" if removed else f"no cache at {cache_file(args.cache_dir)}")
        return 0
    try:
        cache = ResponseCache.open(args.cache_dir, create=False)
    except CacheError as error:
        print(f"rwkveval cache: {error}")
        return 2
    with_models = cache.models()
    print(f"{cache.path}: {cache.count()} entries")
    for model_id, entry in with_models.items():
        print(f"  {model_id}: {cache.count(model_id)} entries ({entry.get('resolved', {}).get('spec', '')})")
    cache.close()
    return 0
