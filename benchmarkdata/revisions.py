"""Data revisions: which version of a benchmark file a run scored, and runs that scored different ones.

Upstream data sets change (MMLU-Pro's hub copy changed 691 of 12,030 shared questions between its
2024 and 2026 revisions), so a file is identified by its sha256, and each sha256 by a revision:

- the manifest's **known revisions** of a file: the pinned one (top-level ``sha256``/``rows``,
  named by ``revision``, default ``"pinned"``) and any listed under ``revisions`` (``id``,
  ``sha256``, ``rows``, ``hub_commit`` where the hub serves it, ``differs``: what changed);
- **accepted new revisions**: a fetched file whose sha256 the manifest does not know, kept only
  because the user passed ``--accept-new-revision``. Each data root holding such a file records
  it in its ``revisions.json`` (``{"files": {FILE: {SHA256: {revision, hub_commit, url, rows,
  fetched_at}}}}``), so the file is recognised wherever that folder goes. Its revision id is
  ``new-<first 12 hex of its sha256>``.

:func:`data_revision_warnings` compares the ``data`` blocks of two reports (``rwkveval compare``,
``--baseline``).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RECORD = "revisions.json"
NEW_PREFIX = "new-"


@dataclass(frozen=True)
class Revision:
    id: str
    sha256: str
    rows: int | None
    hub_commit: str | None = None  # the hub commit serving it; None: not fetchable by revision
    differs: str = ""  # what differs from the pinned revision
    checksum_source: str = ""  # where a sha256 not measured by this project comes from
    accepted: bool = False  # True: an accepted new revision (from a data root's revisions.json)


def new_revision_id(sha256: str) -> str:
    return NEW_PREFIX + sha256[:12]


def read_record(root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """``{file: {sha256: entry}}`` of a data root's ``revisions.json`` (empty when absent)."""
    path = Path(root) / RECORD
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read the record of fetched revisions ({error}); "
                         "delete it and fetch again") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict):
        raise ValueError(f"{path}: expected {{\"files\": {{FILE: {{SHA256: ...}}}}}}, found {str(data)[:80]!r}")
    return files


def write_record(root: Path, file: str, sha256: str, entry: Mapping[str, Any]) -> Path:
    """Add ``entry`` for ``file`` at ``sha256`` to ``root/revisions.json`` (atomically)."""
    root = Path(root)
    files = read_record(root)
    files.setdefault(file, {})[sha256] = {**entry, "fetched_at": datetime.now(timezone.utc).isoformat(
        timespec="seconds")}
    root.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile("w", dir=root, prefix=f".{RECORD}.", delete=False, encoding="utf-8")
    with handle:
        json.dump({"about": "data revisions fetched into this folder (benchmarkdata/revisions.py)", "files": files},
                  handle, indent=1, sort_keys=True)
    os.replace(handle.name, root / RECORD)
    return root / RECORD


def identify(known: Sequence[Revision], file: str, sha256: str, root: Path) -> Revision | None:
    """The revision of ``file`` with content ``sha256`` found in data root ``root``, or None."""
    recorded = read_record(root).get(file, {}).get(sha256)
    for revision in known:
        if revision.sha256 == sha256:
            if revision.hub_commit is None and recorded and recorded.get("hub_commit"):
                return replace(revision, hub_commit=recorded["hub_commit"])
            return revision
    if recorded and recorded.get("accepted"):
        return Revision(recorded.get("revision") or new_revision_id(sha256), sha256, recorded.get("rows"),
                        recorded.get("hub_commit"), "accepted with --accept-new-revision", accepted=True)
    return None


def count_rows(path: Path) -> int | None:
    """Rows of a fetched file where cheap to tell (parquet metadata, JSONL lines), else None."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows
        except Exception:  # pyarrow raises several types for a damaged file; rows stay unknown
            return None
    if path.suffix == ".jsonl":
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    return None


def _label(data: Mapping[str, Any]) -> str:
    revision = data.get("revision") or "unrecorded"
    commit = f", hub commit {data['hub_commit'][:12]}" if data.get("hub_commit") else ""
    return f"revision {revision} (sha256 {str(data.get('sha256'))[:12]}{commit})"


def data_revision_warnings(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]],
                           name_a: str = "A", name_b: str = "B", where: str = "") -> list[str]:
    """One message per data file that two runs both read but at different sha256s.

    ``a`` and ``b`` are the ``data`` lists of a report (``describe()`` dicts). Files only one run
    read are not compared (they belong to different benchmarks or cases).
    """
    by_file = {d.get("file"): d for d in b}
    warnings = []
    for da in a:
        db = by_file.get(da.get("file"))
        if db is None or da.get("sha256") == db.get("sha256"):
            continue
        prefix = f"{where}: " if where else ""
        warnings.append(f"{prefix}{da.get('file')}: {name_a} scored {_label(da)}, {name_b} scored {_label(db)}; "
                        "the two runs did not score the same questions, so their difference mixes model and data")
    return warnings
