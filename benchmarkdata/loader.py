"""Finding, checking and reading the pinned benchmark files listed in ``manifest.json``.

A file named in the manifest (``"lambada_openai/lambada_test.jsonl"``) is looked for in the data
roots, in order: the ``--data-dir`` given by the user, this package's folder, the user data
cache (:func:`data_cache`: ``$RWKVEVAL_DATA_CACHE``, else ``$XDG_CACHE_HOME/rwkveval/data``,
else ``~/.cache/rwkveval/data``; where ``python -m benchmarkdata fetch`` and fetch-on-first-use
put downloads), and the shared folder (``$RWKVEVAL_SHARED/benchmarkdata``). The first copy found
must be a known revision of the file (see :mod:`benchmarkdata.revisions`) or loading fails
naming the file, the known and the found checksum. A malformed JSONL line (bytes that are not
UTF-8, bad JSON, a string holding a lone surrogate escape such as ``"\\ud800"``) is an error
naming the file and the line.
"""
from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarkdata import shared_root
from benchmarkdata.hub import sha256_file
from benchmarkdata.revisions import Revision, identify

PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "manifest.json"
DATA_CACHE_ENV = "RWKVEVAL_DATA_CACHE"


class DataError(ValueError):
    """A data file that is missing, altered or malformed; the message names file and line."""


class MissingDataError(DataError):
    """A manifest file found in none of the data roots."""


class UnvouchedDataError(DataError):
    """A present copy of a file the manifest pins no sha256 for, and no ``revisions.json`` of its
    data root vouches for (accept it with ``python -m benchmarkdata accept``)."""

    def __init__(self, message: str, path: Path, root: Path, sha256: str):
        super().__init__(message)
        self.path, self.root, self.sha256 = path, root, sha256


@dataclass(frozen=True)
class ManifestEntry:
    file: str
    sha256: str | None  # None: no checksum pinned yet (``unpinned`` says why); every copy is a new revision
    rows: int
    licence: str
    source: str
    fidelity: str
    remote: dict[str, str] | None = None
    revision: str = "pinned"  # the id of the top-level (pinned) revision
    hub_commit: str | None = None  # the hub commit serving the pinned revision, where known
    revisions: tuple[Revision, ...] = ()  # further known revisions
    unpinned: str = ""  # why the manifest pins no sha256 (entries with sha256 None), and how to fetch one

    def known(self) -> tuple[Revision, ...]:
        """Every known revision, the pinned one first (none pinned when ``sha256`` is None)."""
        pinned = (Revision(self.revision, self.sha256, self.rows, self.hub_commit),) if self.sha256 else ()
        return (*pinned, *self.revisions)


@functools.cache
def manifest() -> dict[str, ManifestEntry]:
    data = json.loads(MANIFEST.read_text(encoding="utf-8"))
    entries = {}
    for entry in data["files"]:
        revisions = tuple(Revision(**r) for r in entry.pop("revisions", ()))
        entries[entry["file"]] = ManifestEntry(**entry, revisions=revisions)
    return entries


def data_cache(cache_dir: Path | None = None) -> Path:
    """The user data cache: ``cache_dir``, ``$RWKVEVAL_DATA_CACHE``, or ``$XDG_CACHE_HOME/rwkveval/data``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(DATA_CACHE_ENV):
        return Path(os.environ[DATA_CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rwkveval" / "data"


def search_path(data_dir: Path | None = None, cache_dir: Path | None = None) -> list[Path]:
    roots = [Path(data_dir)] if data_dir else []
    return roots + [PACKAGE_DIR, data_cache(cache_dir), shared_root() / "benchmarkdata"]


@functools.cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def file_sha256(path: Path) -> str:
    """The sha256 of ``path``, hashed once per (size, modification time)."""
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True)
class DataFile:
    """A located, checked data file: where it is and which revision it holds."""

    name: str
    path: Path
    sha256: str
    revision: Revision
    fetched: bool = False  # True: downloaded by this call of ensure()


def find(name: str, data_dir: Path | None = None, cache_dir: Path | None = None) -> DataFile:
    """The first copy of manifest file ``name`` in the data roots, with its revision."""
    entries = manifest()
    if name not in entries:
        raise DataError(f"{name!r} is not in {MANIFEST}; known files: {sorted(entries)}")
    entry = entries[name]
    roots = search_path(data_dir, cache_dir)
    for root in roots:
        path = (root / name).resolve()
        if not path.is_file():
            continue
        found = file_sha256(path)
        try:
            revision = identify(entry.known(), name, found, root)
        except ValueError as error:
            raise DataError(str(error)) from None
        if revision is None and entry.sha256 is None:
            raise UnvouchedDataError(
                f"{path}: sha256 {found} is no recorded revision of {name}: the manifest pins no sha256 for it "
                f"({entry.unpinned}); to score this copy, record it with `python -m benchmarkdata accept {path}` "
                f"(or pass --accept-new-revision to the run); or fetch it with `python -m benchmarkdata fetch {name} "
                "--accept-new-revision`, which records the copy it downloads", path, root, found)
        if revision is None:
            known = ", ".join(f"{r.id} {r.sha256}" for r in entry.known())
            raise DataError(f"{path}: sha256 mismatch: expected a known revision ({known}; manifest.json), "
                            f"found {found}; the file was altered or is another revision (to keep a new upstream "
                            f"revision: `python -m benchmarkdata fetch {name} --revision main --accept-new-revision`)")
        return DataFile(name, path, found, revision)
    raise MissingDataError(f"data file {name} not found in {[str(r) for r in roots]}; get it with "
                           f"`python -m benchmarkdata fetch {name}` or point --data-dir at a folder holding it")


def locate(name: str, data_dir: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The checked path of manifest file ``name``, searching ``search_path(data_dir)``."""
    return find(name, data_dir, cache_dir).path


# a JSON escape of a UTF-16 surrogate: only these can put a lone surrogate into a decoded string
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every non-blank line of a UTF-8 file (a leading byte-order mark is
    dropped); bytes that are not UTF-8 are a :class:`DataError` naming the file, line and column."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{path}:{number}: not UTF-8 text (byte {raw[error.start]:#04x} at column "
                                f"{error.start + 1}); save the file as UTF-8") from None
            if line.strip():
                yield number, line


def iter_json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value) of every non-blank line of a JSONL file, each line checked: UTF-8,
    valid JSON, and no string holding a lone surrogate (``"\\ud800"`` is valid JSON but not text)."""
    for number, line in iter_lines(path):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: malformed JSON ({error.msg} at column {error.colno})") from None
        except RecursionError:
            raise DataError(f"{path}:{number}: JSON nested too deeply") from None
        if _SURROGATE_ESCAPE.search(line):
            try:
                json.dumps(value, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as error:
                raise DataError(f"{path}:{number}: a string holds a lone surrogate escape "
                                f"({error.object[error.start]!r}), which is not valid Unicode text") from None
        yield number, value


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; blank lines are skipped, anything else must be a JSON object."""
    for number, row in iter_json_lines(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, found {type(row).__name__}")
        yield row


def read_jsonl(name: str, data_dir: Path | None = None) -> list[dict[str, Any]]:
    return list(iter_jsonl(locate(name, data_dir)))


def read_parquet(name: str, data_dir: Path | None = None) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq  # only the parquet benchmarks pay for the import

    path = locate(name, data_dir)
    try:
        return pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read parquet: {error}") from None


def describe(name: str, data_dir: Path | None = None) -> dict[str, Any]:
    """What a report records about a data file: where it was read from and which revision it is."""
    entry = manifest()[name]
    found = find(name, data_dir)
    out = {"file": name, "path": str(found.path), "sha256": found.sha256, "revision": found.revision.id,
           "rows": found.revision.rows, "source": entry.source, "licence": entry.licence}
    if found.revision.hub_commit:
        out["hub_commit"] = found.revision.hub_commit
    if found.revision.accepted:
        out["accepted_new_revision"] = True
    return out
