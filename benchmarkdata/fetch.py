"""``python -m benchmarkdata fetch [FILE ...]``: download the pinned data files for users with a network.

Every manifest entry with a ``remote`` (a hub repository and path, or a plain URL) is downloaded
into a destination folder (default: this package's folder, the loader's second search place) and
checked against the manifest's sha256. Files already present with the right checksum are skipped.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarkdata.hub import DEFAULT_ENDPOINT, download, hub_url, sha256_file
from benchmarkdata.loader import PACKAGE_DIR, ManifestEntry, manifest


def remote_url(entry: ManifestEntry, endpoint: str) -> str:
    remote = entry.remote or {}
    if "url" in remote:
        return remote["url"]
    if "repo" in remote:
        return hub_url(remote["repo"], remote["path"], remote.get("revision", "main"),
                       remote.get("repo_type", "model"), endpoint)
    raise ValueError(f"{entry.file} has no remote source in the manifest; it is read from the shared folder only")


def fetch(names: Sequence[str] = (), dest: Path = PACKAGE_DIR, endpoint: str = DEFAULT_ENDPOINT,
          log=print) -> list[Path]:
    """Download ``names`` (default: every fetchable file) into ``dest``; returns the paths."""
    entries = manifest()
    unknown = [n for n in names if n not in entries]
    if unknown:
        raise ValueError(f"unknown data files {unknown}; the manifest lists {sorted(entries)}")
    chosen = [entries[n] for n in names] if names else [e for e in entries.values() if e.remote]
    paths = []
    for entry in chosen:
        target = Path(dest) / entry.file
        if target.is_file() and sha256_file(target) == entry.sha256:
            log(f"ok       {entry.file} (already present)")
        else:
            url = remote_url(entry, endpoint)
            log(f"fetching {entry.file} <- {url}")
            download(url, target, sha256=entry.sha256)
        paths.append(target)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarkdata", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("fetch", help="download pinned data files and check their sha256")
    cmd.add_argument("files", nargs="*", help="manifest paths (default: every file with a remote source)")
    cmd.add_argument("--dest", type=Path, default=PACKAGE_DIR, help="destination folder (default: %(default)s)")
    cmd.add_argument("--hub-url", default=os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT),
                     help="Hugging Face hub endpoint or mirror (default: $HF_ENDPOINT or %(default)s)")
    sub.add_parser("list", help="list the manifest")
    args = parser.parse_args(argv)
    if args.command == "list":
        for entry in manifest().values():
            where = "fetchable" if entry.remote else "shared only"
            print(f"{entry.file:50s} {entry.rows:>7d} rows  {where:12s} {entry.licence}")
        return 0
    try:
        fetch(args.files, args.dest, args.hub_url)
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
