"""Finding, checking and reading the pinned benchmark files listed in ``manifest.json``.

A file named in the manifest (``"lambada_openai/lambada_test.jsonl"``) is looked for in, in order:
the ``--data-dir`` given by the user, this package's folder (where ``python -m benchmarkdata
fetch`` puts downloads), and the shared folder (``$RWKVEVAL_SHARED/benchmarkdata``). The first
copy found must have the manifest's sha256, or loading fails naming the file, the expected and
the found checksum. A malformed JSONL line (bytes that are not UTF-8, bad JSON, a string holding a
lone surrogate escape such as ``"\\ud800"``) is an error naming the file and the line.
"""
from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarkdata import shared_root
from benchmarkdata.hub import sha256_file

PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "manifest.json"


class DataError(ValueError):
    """A data file that is missing, altered or malformed; the message names file and line."""


@dataclass(frozen=True)
class ManifestEntry:
    file: str
    sha256: str
    rows: int
    licence: str
    source: str
    fidelity: str
    remote: dict[str, str] | None = None


@functools.cache
def manifest() -> dict[str, ManifestEntry]:
    data = json.loads(MANIFEST.read_text(encoding="utf-8"))
    return {entry["file"]: ManifestEntry(**entry) for entry in data["files"]}


def search_path(data_dir: Path | None = None) -> list[Path]:
    roots = [Path(data_dir)] if data_dir else []
    return roots + [PACKAGE_DIR, shared_root() / "benchmarkdata"]


@functools.cache
def _checked(path: Path, expected: str) -> str:
    found = sha256_file(path)
    if found != expected:
        raise DataError(f"{path}: sha256 mismatch: expected {expected} (manifest.json), found {found}; "
                        "the file was altered or is another revision")
    return found


def locate(name: str, data_dir: Path | None = None, verify: bool = True) -> Path:
    """The checked path of manifest file ``name``, searching ``search_path(data_dir)``."""
    entries = manifest()
    if name not in entries:
        raise DataError(f"{name!r} is not in {MANIFEST}; known files: {sorted(entries)}")
    roots = search_path(data_dir)
    for root in roots:
        path = (root / name).resolve()
        if path.is_file():
            if verify:
                _checked(path, entries[name].sha256)
            return path
    raise DataError(f"data file {name} not found in {[str(r) for r in roots]}; get it with "
                    f"`python -m benchmarkdata fetch {name}` or point --data-dir at a folder holding it")


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
    """What a report records about a data file: where it was read from and its pinned identity."""
    entry = manifest()[name]
    return {"file": name, "path": str(locate(name, data_dir)), "sha256": entry.sha256, "rows": entry.rows,
            "source": entry.source, "licence": entry.licence}
