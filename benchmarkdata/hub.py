"""Downloading files (benchmark data, checkpoints) over HTTP: resumable, locked, sha256-checked.

Used by :mod:`benchmarkdata.fetch` (data files) and :mod:`evals.models` (``--model <official
name>``). Files on the Hugging Face hub are addressed as ``{endpoint}/{repo}/resolve/{revision}/
{path}`` (datasets under ``{endpoint}/datasets/...``); the endpoint defaults to
``https://huggingface.co`` and can point at a mirror or, in tests, a stand-in server on 127.0.0.1.

What the hub says about a file comes from its API, ``{endpoint}/api/{models|datasets}/{repo}/
revision/{revision}?blobs=true``: the commit the revision (branch, tag or commit) stands for
(``sha``) and, per file, its size and, for a large (LFS) file, its sha256 (``siblings[].lfs``).
The download then addresses that commit, so the bytes are known to come from it.

A download streams into ``<dest>.part``, hashing on the way. An interrupted download leaves the
``.part`` file; the next call asks only for the rest (an HTTP ``Range: bytes=N-`` request) and
starts over if the server ignores the range. The file is renamed into place only when its sha256
is the expected one; a complete download with another sha256 is deleted, never resumed. A lock
on the destination folder keeps two processes (pytest-xdist workers) from writing one ``.part``.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarkdata.progress import ProgressFactory, silent

try:  # POSIX only; elsewhere concurrent downloads of one file are not guarded
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

DEFAULT_ENDPOINT = "https://huggingface.co"
OFFLINE_ENV = "HF_HUB_OFFLINE"
CHUNK = 1 << 20
COMMIT = re.compile(r"[0-9a-f]{40}")


class DownloadError(RuntimeError):
    """A download that failed or whose content does not match its expected checksum."""


def endpoint_default() -> str:
    return os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT


def offline_default() -> bool:
    """``HF_HUB_OFFLINE`` set to 1/true/yes/on, as huggingface_hub reads it: downloads are off."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def hub_url(repo: str, path: str, revision: str = "main", repo_type: str = "model",
            endpoint: str = DEFAULT_ENDPOINT) -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    quoted = urllib.parse.quote(path)
    return f"{endpoint.rstrip('/')}/{prefix}{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{quoted}"


def api_url(repo: str, revision: str = "main", repo_type: str = "model", endpoint: str = DEFAULT_ENDPOINT) -> str:
    kind = "datasets" if repo_type == "dataset" else "models"
    return f"{endpoint.rstrip('/')}/api/{kind}/{repo}/revision/{urllib.parse.quote(revision, safe='')}?blobs=true"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repository at one commit, as the hub's API describes it."""

    repo: str
    path: str
    repo_type: str
    commit: str  # the 40-hex commit the asked revision resolved to
    size: int | None
    sha256: str | None  # LFS files only; a small file in plain git has no sha256 in the API

    def url(self, endpoint: str) -> str:
        return hub_url(self.repo, self.path, self.commit, self.repo_type, endpoint)


def _open(request: urllib.request.Request, url: str, timeout: float):
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) URLs only)
    except urllib.error.HTTPError as error:
        if error.code == 416:  # the caller decides what an unsatisfiable range means
            return error
        raise DownloadError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"download of {url} failed: {error} (no network? a mirror can be set "
                            "with --hub-url or HF_ENDPOINT)") from None


def _request(url: str, token: str | None) -> urllib.request.Request:
    request = urllib.request.Request(url, headers={"User-Agent": "rwkveval"})
    if token:  # never forwarded on a redirect to the storage host
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    return request


def file_info(repo: str, path: str, revision: str = "main", repo_type: str = "model",
              endpoint: str = DEFAULT_ENDPOINT, timeout: float = 60.0, token: str | None = None) -> HubFile:
    """The commit ``revision`` stands for and ``path``'s size and sha256 there, from the hub's API."""
    url = api_url(repo, revision, repo_type, endpoint)
    with _open(_request(url, token), url, timeout) as response:
        try:
            info = json.loads(response.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DownloadError(f"{url}: the hub's answer is not JSON ({error})") from None
    commit = str(info.get("sha") or "")
    if not COMMIT.fullmatch(commit):
        raise DownloadError(f"{url}: expected the revision's 40-hex commit in 'sha', found {commit!r}")
    for sibling in info.get("siblings") or []:
        if sibling.get("rfilename") == path:
            lfs = sibling.get("lfs") or {}
            size = lfs.get("size", sibling.get("size"))
            return HubFile(repo, path, repo_type, commit, size, (lfs.get("sha256") or "").lower() or None)
    raise DownloadError(f"{repo} ({repo_type}) has no file {path!r} at revision {revision} (commit {commit})")


@contextlib.contextmanager
def locked(dest: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    # The folder itself is locked (no lock file is left behind); downloads into one folder take turns.
    fd = os.open(dest.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when the descriptor closes
        yield
    finally:
        os.close(fd)


def _content_range_start(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (value or "").strip())
    return int(match.group(1)) if match else None


def fetch_part(url: str, part: Path, size: int | None = None, progress: ProgressFactory = silent,
               label: str | None = None, timeout: float = 60.0, token: str | None = None) -> str:
    """Bring ``part`` to the complete content of ``url``, resuming what it holds; its sha256.

    Raises :class:`DownloadError` (keeping ``part`` for the next call) when the connection ends
    before the announced length.
    """
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    if size is not None and have > size:  # longer than the file: not a prefix of it
        part.unlink()
        have = 0
    request = _request(url, token)
    if have:
        request.add_header("Range", f"bytes={have}-")
    response = _open(request, url, timeout)
    with response:
        status = getattr(response, "status", None) or response.getcode()
        if status == 416:  # nothing left to send: the part is the whole file, or garbage
            if size is None or have != size:
                part.unlink()
                raise DownloadError(f"download of {url}: the server refused the range after byte {have}; "
                                    "the partial file was removed, run again to start over")
            return sha256_file(part)
        digest = hashlib.sha256()
        if status == 206 and _content_range_start(response.headers.get("Content-Range")) != have:
            part.unlink()
            raise DownloadError(f"download of {url}: asked for bytes {have}- and got "
                                f"{response.headers.get('Content-Range')!r}; the partial file was removed, run again")
        if status == 206:
            with open(part, "rb") as handle:  # hash the part already on disk, then append
                for block in iter(lambda: handle.read(CHUNK), b""):
                    digest.update(block)
            mode, start = "ab", have
        else:  # a 200: the server sends the whole file
            mode, start = "wb", 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else size
        bar = progress(label or Path(urllib.parse.urlparse(url).path).name, total, start)
        received = start
        try:
            with open(part, mode) as handle:
                for block in iter(lambda: response.read(CHUNK), b""):
                    digest.update(block)
                    handle.write(block)
                    received += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as error:  # a reset connection: keep what arrived
            raise DownloadError(f"download of {url} interrupted after {received} bytes ({error}); "
                                f"run again to resume from {part}") from None
        finally:
            bar.close()
    if total is not None and received < total:
        raise DownloadError(f"download of {url} interrupted after {received} of {total} bytes; "
                            f"run again to resume from {part}")
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str, size: int | None = None, progress: ProgressFactory = silent,
             timeout: float = 60.0, token: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (resumable, atomic) and check its sha256; return ``dest``."""
    if not sha256:
        raise DownloadError(f"no sha256 known for {url}; refusing an unchecked file")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with locked(dest):
        if dest.is_file() and sha256_file(dest) == sha256.lower():  # another process finished it
            return dest
        found = fetch_part(url, part, size, progress, dest.name, timeout, token)
        if found != sha256.lower():
            part.unlink()
            raise DownloadError(f"sha256 mismatch for {url}: expected {sha256.lower()}, found {found}; "
                                "the file was not kept")
        os.replace(part, dest)
    return dest
