"""Fetching data files: :func:`ensure` (fetch on first use) and ``python -m benchmarkdata fetch|list|accept``.

:func:`ensure` is what the pytest plugin calls before the first test of a benchmark: every named
file found in a data root is checked and returned; the missing ones are downloaded from their
manifest source into the user data cache, with a progress bar and the sha256 check. With
downloads off (``offline=True`` or ``HF_HUB_OFFLINE=1``) missing files are one
:class:`OfflineError` naming them all, the fetch command and ``--data-dir``.

A download from a pinned source (a plain URL, the manifest's pinned hub commit, a known revision
asked for by id) is kept only when its sha256 is that revision's; anything else is refused with
:class:`NewRevisionError` and deleted, whatever ``accept_new_revision`` says (a pinned source that
serves other bytes is a broken mirror or a rewritten upstream, never a revision to score). A
download from a moving source (a branch such as ``main``, a commit the manifest does not know, an
entry that pins nothing yet) is kept when its sha256 is a known revision; otherwise it is refused
(naming the expected and the found sha256 and ``--accept-new-revision``), or, with
``accept_new_revision=True``, kept and recorded in the data root's ``revisions.json`` with the hub
commit it came from. A download in progress lives in ``<file>.<source hash>.part``, named after its
URL, so a part begun from another source or revision is never resumed into this one.

Which revision is fetched: ``revision=None`` takes the manifest remote's ``revision`` (a hub
commit for MMLU-Pro, so a fresh machine always gets the same bytes); a known revision id
(``2024``, ``2026``) takes that revision's hub commit; anything else is a hub branch, tag or
commit (``main``), resolved to its commit through the hub's API before downloading.

A file the manifest pins no sha256 for (C-Eval's zip) and that was copied in by hand is read only
once its data root's ``revisions.json`` vouches for it: ``python -m benchmarkdata accept FILE``
(:func:`accept`) records it, and so does ``ensure(..., accept_new_revision=True)`` for a copy it
finds in a data root.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarkdata.hub import (COMMIT, OFFLINE_ENV, DownloadError, endpoint_default, fetch_part, file_info, hub_url,
                              locked, offline_default)
from benchmarkdata.loader import (DataError, DataFile, ManifestEntry, MissingDataError, UnvouchedDataError, data_cache,
                                  file_sha256, find, manifest, search_path)
from benchmarkdata.progress import ProgressFactory, silent, terminal
from benchmarkdata.revisions import Revision, count_rows, identify, new_revision_id, write_record

SHOWN = 6  # missing files named in one message before "and N more"


class OfflineError(DataError):
    """Data files missing from every data root while downloads are off."""


class NewRevisionError(DataError):
    """The source served a file whose sha256 is no known revision (and new revisions were not accepted)."""


class FetchError(DataError):
    """A download that failed: no network, an HTTP error, a corrupted transfer."""


def _names(names: Sequence[str], limit: int = SHOWN) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _known_text(entry: ManifestEntry) -> str:
    return ", ".join(f"{r.id} {r.sha256}" for r in entry.known())


@dataclass(frozen=True)
class Plan:
    """What one fetch downloads and what it expects."""

    url: str
    expected: Revision | None  # the known revision a pinned source serves; None: a moving source (a branch)
    hub_commit: str | None = None
    hub_sha256: str | None = None  # the hub's own checksum of the file (LFS), when it told us
    size: int | None = None


def _wanted(entry: ManifestEntry, revision: str | None) -> tuple[Revision | None, str | None]:
    """(the known revision asked for, the hub ref to fetch), without the network."""
    remote = entry.remote
    if not remote:
        raise MissingDataError(f"{entry.file} has no download source in the manifest; it is read from the shared "
                               f"folder only (set RWKVEVAL_SHARED, or point --data-dir at a folder holding it)")
    by_id = {r.id: r for r in entry.known()}
    if "url" in remote:  # a plain URL serves one thing: the pinned revision
        if revision not in (None, entry.revision):
            raise DataError(f"{entry.file} comes from a plain URL ({remote['url']}), which serves only revision "
                            f"{entry.revision}; --revision {revision} cannot be fetched")
        return by_id[entry.revision], None
    if revision in by_id:
        wanted = by_id[revision]
        if not wanted.hub_commit:
            fetchable = [r.id for r in entry.known() if r.hub_commit] or ["none"]
            raise DataError(f"revision {revision} of {entry.file} has no hub commit in the manifest, so it cannot be "
                            f"downloaded; it is read from the shared folder or --data-dir only (fetchable revisions: "
                            f"{', '.join(fetchable)})")
        return wanted, wanted.hub_commit
    ref = revision or remote.get("revision", "main")
    return next((r for r in entry.known() if r.hub_commit == ref), None), ref


def plan(entry: ManifestEntry, revision: str | None = None, endpoint: str | None = None,
         token: str | None = None) -> Plan:
    """Where to download ``entry`` from; asks the hub's API only for a branch or tag."""
    wanted, ref = _wanted(entry, revision)
    remote = entry.remote or {}
    if ref is None:
        return Plan(remote["url"], wanted)
    endpoint = endpoint or endpoint_default()
    repo, path, repo_type = remote["repo"], remote["path"], remote.get("repo_type", "model")
    if COMMIT.fullmatch(ref):
        return Plan(hub_url(repo, path, ref, repo_type, endpoint), wanted, ref)
    try:
        info = file_info(repo, path, ref, repo_type, endpoint, token=token)
    except DownloadError as error:
        raise FetchError(f"{entry.file}: {error}") from None
    return Plan(info.url(endpoint), wanted, info.commit, info.sha256, info.size)


def part_path(target: Path, url: str) -> Path:
    """Where a download of ``target`` from ``url`` accumulates: named after the source, so a part
    begun from another URL (another revision or commit) is never resumed into this one."""
    return target.with_name(f"{target.name}.{hashlib.sha256(url.encode('utf-8')).hexdigest()[:16]}.part")


def _pinned_refusal(entry: ManifestEntry, found: str, planned: Plan, what: str) -> NewRevisionError:
    commit = f", hub commit {planned.hub_commit}" if planned.hub_commit else ""
    instead = ("; to score a newer upstream revision, fetch the branch: `python -m benchmarkdata fetch "
               f"{entry.file} --revision main --accept-new-revision`" if "repo" in (entry.remote or {}) else "")
    return NewRevisionError(
        f"{entry.file}: {what} sha256 {found} ({planned.url}{commit}), but this source is pinned to revision "
        f"{planned.expected.id} with sha256 {planned.expected.sha256}. Nothing was kept, and --accept-new-revision "
        f"cannot keep it: a pinned source serving other bytes is a broken mirror or a rewritten upstream{instead}; "
        "or point --data-dir at a folder holding a known revision")


def _refusal(entry: ManifestEntry, found: str, planned: Plan, what: str) -> NewRevisionError:
    if planned.expected is not None:
        return _pinned_refusal(entry, found, planned, what)
    if entry.sha256 is None and not entry.revisions:
        commit = f" at hub commit {planned.hub_commit}" if planned.hub_commit else ""
        return NewRevisionError(
            f"{entry.file}: {what} sha256 {found}{commit}, and the manifest pins no sha256 for this file "
            f"({entry.unpinned}). Nothing was kept. To use it, recorded in the report under its own sha256 and hub "
            f"commit, pass --accept-new-revision (pytest evals) or run `python -m benchmarkdata fetch {entry.file} "
            f"--accept-new-revision`")
    expected = f"expected one of the known revisions ({_known_text(entry)})"
    commit = f", hub commit {planned.hub_commit}" if planned.hub_commit else ""
    return NewRevisionError(
        f"{entry.file}: {what} sha256 {found} ({planned.url}{commit}), which is no known revision of this file: "
        f"{expected}. Nothing was kept. To score this revision anyway, recorded as such in the report, pass "
        f"--accept-new-revision (pytest evals) or run `python -m benchmarkdata fetch {entry.file} --revision "
        f"{planned.hub_commit or 'main'} --accept-new-revision`; to score a known revision, point --data-dir at a "
        "folder holding it")


def fetch_file(entry: ManifestEntry, dest_root: Path, revision: str | None = None, accept_new_revision: bool = False,
               endpoint: str | None = None, progress: ProgressFactory = silent, token: str | None = None) -> DataFile:
    """Download ``entry`` into ``dest_root`` (resumable, sha256-checked) and record its revision.

    ``accept_new_revision`` keeps an unknown sha256 only from a moving source (see the module
    docstring); a pinned source must serve its revision's bytes."""
    planned = plan(entry, revision, endpoint, token)
    pinned = planned.expected
    known_shas = {r.sha256 for r in entry.known()}
    if planned.hub_sha256 and (planned.hub_sha256 != pinned.sha256 if pinned else
                               planned.hub_sha256 not in known_shas and not accept_new_revision):
        raise _refusal(entry, planned.hub_sha256, planned, "the hub reports")  # refused before downloading
    target = Path(dest_root) / entry.file
    part = part_path(target, planned.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    existed = target.exists()
    with locked(target):
        if not existed and target.is_file():  # another process fetched it while this one waited
            present = identify(entry.known(), entry.file, file_sha256(target), Path(dest_root))
            if present is not None:
                return DataFile(entry.file, target.resolve(), present.sha256, present)
        try:
            found = fetch_part(planned.url, part, planned.size, progress, entry.file, token=token)
        except DownloadError as error:
            raise FetchError(f"{entry.file}: {error}") from None
        if planned.hub_sha256 and found != planned.hub_sha256:
            part.unlink()
            raise FetchError(f"{entry.file}: the download from {planned.url} has sha256 {found}, but the hub's own "
                             f"checksum is {planned.hub_sha256}: a corrupted transfer; nothing was kept, run again")
        known = identify(entry.known(), entry.file, found, Path(dest_root))
        if (found != pinned.sha256) if pinned else (known is None and not accept_new_revision):
            part.unlink()
            raise _refusal(entry, found, planned, "the source served")
        os.replace(part, target)
        # parts begun from other sources, and one named as before parts were named by source
        for stale in [*target.parent.glob(f"{target.name}.*.part"), target.with_name(f"{target.name}.part")]:
            stale.unlink(missing_ok=True)
    record = {"hub_commit": planned.hub_commit, "url": planned.url}
    if known is None or known.accepted:
        rows = count_rows(target)
        known = Revision(new_revision_id(found), found, rows, planned.hub_commit,
                         "accepted with --accept-new-revision", accepted=True)
        write_record(dest_root, entry.file, found, {**record, "revision": known.id, "rows": rows, "accepted": True})
    else:
        write_record(dest_root, entry.file, found, {**record, "revision": known.id, "rows": known.rows,
                                                    "accepted": False})
        if known.hub_commit is None and planned.hub_commit:
            known = replace(known, hub_commit=planned.hub_commit)
    return DataFile(entry.file, target.resolve(), found, known, fetched=True)


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def ensure(names: Iterable[str], data_dir: Path | None = None, *, cache_dir: Path | None = None,
           offline: bool | None = None, accept_new_revision: bool = False, endpoint: str | None = None,
           progress: ProgressFactory = terminal, token: str | None = None) -> list[DataFile]:
    """Every file of ``names``, located in the data roots or fetched into the user data cache.

    ``offline=None`` reads ``HF_HUB_OFFLINE``. Raises (all :class:`DataError`): ``DataError`` for a
    name not in the manifest or a present file that is no known revision; :class:`MissingDataError`
    for missing files without a download source; :class:`OfflineError` for missing files with
    downloads off; :class:`NewRevisionError` and :class:`FetchError` from a download. Missing files
    are all checked for a source (and for ``offline``) before anything is downloaded.
    """
    names = _unique(names)
    entries = manifest()
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise DataError(f"unknown data files {unknown}; the manifest lists {len(entries)} files "
                        "(`python -m benchmarkdata list`)")
    located: dict[str, DataFile] = {}
    missing = []
    for name in names:
        try:
            located[name] = find(name, data_dir, cache_dir)
        except MissingDataError:
            missing.append(name)
        except UnvouchedDataError as error:  # a local copy of a file that pins nothing (C-Eval's zip)
            if not accept_new_revision:
                raise
            located[name] = record_accepted(entries[name], error.path, error.root, error.sha256)
    if missing:
        roots = ", ".join(str(r) for r in search_path(data_dir, cache_dir))
        no_source = [n for n in missing if not entries[n].remote]
        if no_source:
            raise MissingDataError(
                f"data files not found in any data root ({roots}) and without a download source: {_names(no_source)}; "
                "they come from the shared folder only: set RWKVEVAL_SHARED to it, or point --data-dir at a folder "
                "holding them")
        if offline_default() if offline is None else offline:
            unpinned = [n for n in missing if entries[n].sha256 is None]
            accept = (f" --accept-new-revision` (the manifest pins no sha256 for {_names(unpinned)} yet)"
                      if unpinned else "`")
            raise OfflineError(
                f"data files not found in any data root ({roots}) and downloads are off (--offline or "
                f"{OFFLINE_ENV}=1): {_names(missing)}. On a machine with a network run `python -m benchmarkdata "
                f"fetch {' '.join(missing)}{accept} (into {data_cache(cache_dir)}), or point --data-dir at a folder "
                "holding them")
        for name in missing:
            located[name] = fetch_file(entries[name], data_cache(cache_dir), None, accept_new_revision, endpoint,
                                       progress, token)
    return [located[name] for name in names]


def fetch(names: Sequence[str] = (), dest: Path | None = None, endpoint: str | None = None,
          revision: str | None = None, accept_new_revision: bool = False, progress: ProgressFactory = terminal,
          log: Callable[[str], None] = print) -> list[DataFile]:
    """``python -m benchmarkdata fetch``: download ``names`` (default: every file with a source,
    or with ``revision`` every file that knows that revision id) into ``dest`` (default: the user
    data cache). A file already there at the asked revision is checked, not downloaded again."""
    entries = manifest()
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise DataError(f"unknown data files {unknown}; `python -m benchmarkdata list` shows the manifest")
    if names:
        chosen = [entries[n] for n in _unique(names)]
    elif revision is not None:
        chosen = [e for e in entries.values() if e.remote and any(r.id == revision for r in e.known())]
        if not chosen:
            raise DataError(f"no file of the manifest knows a revision {revision!r}; name the files to fetch "
                            "a hub branch, tag or commit")
    else:
        chosen = [e for e in entries.values() if e.remote]
    dest = data_cache(dest)
    out = []
    for entry in chosen:
        wanted, _ = _wanted(entry, revision)
        target = dest / entry.file
        if target.is_file() and (revision is None or wanted is not None):  # a branch asked for: always look
            present = identify(entry.known(), entry.file, file_sha256(target), dest)
            if present is not None and (wanted is None or present.id == wanted.id):
                log(f"ok       {entry.file} (revision {present.id}, already in {dest})")
                out.append(DataFile(entry.file, target.resolve(), present.sha256, present))
                continue
        log(f"fetching {entry.file} into {dest}")
        got = fetch_file(entry, dest, revision, accept_new_revision, endpoint, progress)
        log(f"ok       {entry.file} (revision {got.revision.id}{', NEW: accepted' if got.revision.accepted else ''}"
            f"{', hub commit ' + got.revision.hub_commit if got.revision.hub_commit else ''})")
        out.append(got)
    return out


def record_accepted(entry: ManifestEntry, path: Path, root: Path, sha256: str) -> DataFile:
    """Record the copy of ``entry`` at ``path`` (inside data root ``root``) in ``root/revisions.json``
    as an accepted new revision; only for entries the manifest pins no sha256 for."""
    if entry.sha256 is not None:
        raise DataError(f"{path}: {entry.file} is pinned in the manifest (known revisions: {_known_text(entry)}), and "
                        f"this copy has sha256 {sha256}; only files the manifest pins no sha256 for are accepted from "
                        f"a local copy. To score a newer upstream revision fetch it: `python -m benchmarkdata fetch "
                        f"{entry.file} --revision main --accept-new-revision`")
    rows = count_rows(path)
    revision = Revision(new_revision_id(sha256), sha256, rows, None, "accepted local copy", accepted=True)
    try:
        write_record(root, entry.file, sha256, {"revision": revision.id, "rows": rows, "hub_commit": None, "url": None,
                                                "accepted": True, "source": f"local copy {path}"})
    except OSError as error:
        raise DataError(f"{path}: cannot record it in {Path(root) / 'revisions.json'} ({error}); copy it into a "
                        f"writable folder with `python -m benchmarkdata accept {path} --dest DIR` and pass "
                        "--data-dir DIR") from None
    return DataFile(entry.file, Path(path).resolve(), sha256, revision)


def _manifest_name(path: Path, entries: dict[str, ManifestEntry]) -> tuple[str, Path | None]:
    """(the manifest file ``path`` is a copy of, its data root when ``path`` sits at ROOT/<name>)."""
    for name in entries:
        if path.as_posix().endswith("/" + name):
            return name, Path(path.as_posix()[:-len(name) - 1])
    by_base = [name for name in entries if Path(name).name == path.name]
    if len(by_base) == 1:
        return by_base[0], None
    raise DataError(f"{path}: no manifest file is named {path.name!r} (`python -m benchmarkdata list` shows them); "
                    "give the path of a copy, e.g. DIR/ceval/ceval-exam.zip")


def _copy_into(path: Path, target: Path) -> Path:
    """``path`` copied to ``target`` (atomically; nothing to do when they are one file)."""
    if target != path:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False)
        handle.close()
        shutil.copyfile(path, handle.name)
        os.replace(handle.name, target)
    return target


def accept(file: Path, dest: Path | None = None, log: Callable[[str], None] = print) -> DataFile:
    """``python -m benchmarkdata accept FILE [--dest DIR]``: vouch for a local copy of a file the
    manifest pins no sha256 for (C-Eval's zip downloaded by hand), recording its sha256 in its data
    root's ``revisions.json`` so runs read it (``--data-dir ROOT``). ``FILE`` is ``ROOT/<manifest
    name>``; with ``--dest DIR`` it is copied to ``DIR/<manifest name>`` first and recorded there."""
    path = Path(file).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"{file}: no such file")
    entries = manifest()
    name, root = _manifest_name(path, entries)
    entry = entries[name]
    sha256 = file_sha256(path)
    # a revision the manifest knows needs no record wherever the copy sits; an accepted one is
    # known only in its own root's revisions.json
    present = (identify(entry.known(), name, sha256, root) if root is not None
               else next((r for r in entry.known() if r.sha256 == sha256), None))
    if present is not None and (dest is None or not present.accepted):
        if dest is not None:
            path = _copy_into(path, Path(dest).expanduser().resolve() / name)
        log(f"ok       {name} (revision {present.id}, already known{f' in {root}' if present.accepted else ''}"
            f"{f'; copied to {path}' if dest is not None else ''})")
        return DataFile(name, path, sha256, present)
    if entry.sha256 is not None:
        return record_accepted(entry, path, root or path.parent, sha256)  # refused, naming the way to fetch it
    if dest is not None:
        root = Path(dest).expanduser().resolve()
        path = _copy_into(path, root / name)
    elif root is None:
        raise DataError(f"{path} does not sit at DATA_ROOT/{name}; pass --dest DIR to copy it into DIR/{name} "
                        "and record it there")
    got = record_accepted(entry, path, root, sha256)
    log(f"ok       {name} (revision {got.revision.id}, accepted, recorded in {root / 'revisions.json'}; "
        f"runs read it with --data-dir {root})")
    return got


def list_lines() -> list[str]:
    lines = []
    for entry in manifest().values():
        where = "fetchable" if entry.remote else "shared only"
        revisions = ", ".join(r.id + ("" if r.hub_commit or "url" in (entry.remote or {}) else " (not fetchable)")
                              for r in entry.known()) if entry.remote else entry.revision
        if entry.sha256 is None:
            revisions = (revisions + ", " if revisions else "") + "none pinned (fetch with --accept-new-revision)"
        lines.append(f"{entry.file:50s} {entry.rows:>7d} rows  {where:12s} revisions: {revisions}  {entry.licence}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarkdata", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("fetch", help="download data files into the user data cache and check their sha256")
    cmd.add_argument("files", nargs="*", help="manifest paths (default: every file with a download source)")
    cmd.add_argument("--dest", type=Path, default=None,
                     help=f"destination folder (default: ${'RWKVEVAL_DATA_CACHE'} or $XDG_CACHE_HOME/rwkveval/data, "
                          f"now {data_cache()})")
    cmd.add_argument("--revision", default=None, metavar="REV",
                     help="a known revision id of the files (see `list`: 2024, 2026 for MMLU-Pro) or a hub branch, "
                          "tag or commit such as main (default: the manifest's pinned source)")
    cmd.add_argument("--accept-new-revision", action="store_true",
                     help="keep a file whose sha256 is no known revision, recorded with the hub commit it came from")
    cmd.add_argument("--hub-url", default=endpoint_default(),
                     help="Hugging Face hub endpoint or mirror (default: $HF_ENDPOINT or %(default)s)")
    sub.add_parser("list", help="list the manifest with each file's known revisions")
    cmd = sub.add_parser("accept", help="record a local copy of a file the manifest pins no sha256 for (C-Eval's "
                                        "zip) in its data root's revisions.json, so runs read it")
    cmd.add_argument("file", type=Path,
                     help="the copy, as DATA_ROOT/<manifest path> (e.g. mydata/ceval/ceval-exam.zip)")
    cmd.add_argument("--dest", type=Path, default=None,
                     help="copy the file to DEST/<manifest path> and record it there (default: record it where it is)")
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(list_lines()))
        return 0
    try:
        if args.command == "accept":
            accept(args.file, args.dest)
            return 0
        fetch(args.files, args.dest, args.hub_url, args.revision, args.accept_new_revision)
    except ValueError as error:  # DataError, or an unreadable revisions.json
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
