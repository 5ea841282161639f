"""Downloading pinned files (benchmark data, checkpoints) over HTTP with a sha256 check.

Used by ``python -m benchmarkdata fetch`` and by ``--model <official name>``. Files from the
Hugging Face hub are addressed as ``{endpoint}/{repo}/resolve/{revision}/{path}`` (datasets under
``{endpoint}/datasets/...``); the endpoint defaults to ``https://huggingface.co`` and can point at
a mirror or, in tests, a stand-in server on 127.0.0.1.

A download streams into a temporary file beside the destination, is hashed on the way, and is
renamed into place only when the sha256 matches, so an interrupted or corrupted download never
leaves a file that looks complete. When no sha256 is pinned, the hub's own checksum of a large
(LFS) file, sent as the ``X-Linked-Etag`` header, is the expected value.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download that failed or whose content does not match its pinned checksum."""


def hub_url(repo: str, path: str, revision: str = "main", repo_type: str = "model",
            endpoint: str = DEFAULT_ENDPOINT) -> str:
    prefix = "datasets/" if repo_type == "dataset" else ""
    quoted = urllib.parse.quote(path)
    return f"{endpoint.rstrip('/')}/{prefix}{repo}/resolve/{urllib.parse.quote(revision, safe='')}/{quoted}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _header_checksum(headers) -> str | None:
    for name in ("X-Linked-Etag", "ETag"):
        value = (headers.get(name) or "").strip().strip('"')
        if value.startswith("W/"):
            continue
        if len(value) == 64 and all(c in "0123456789abcdef" for c in value.lower()):
            return value.lower()
    return None


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 60.0,
             token: str | None = None) -> Path:
    """Download ``url`` to ``dest`` (atomically) and check its sha256; return ``dest``.

    ``sha256=None`` takes the expected value from the response's checksum header; with neither,
    the download is refused, since an unchecked checkpoint or data file cannot be trusted.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "rwkveval"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (http(s) URLs only)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"download of {url} failed: {error} (no network? a mirror can be set "
                            "with --hub-url or HF_ENDPOINT)") from None
    expected = (sha256 or _header_checksum(response.headers) or "").lower()
    if not expected:
        response.close()
        raise DownloadError(f"no sha256 pinned for {url} and the server sent none; refusing an unchecked file")
    digest = hashlib.sha256()
    handle = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part", delete=False)
    try:
        with response, handle:
            for block in iter(lambda: response.read(CHUNK), b""):
                digest.update(block)
                handle.write(block)
        found = digest.hexdigest()
        if found != expected:
            raise DownloadError(f"sha256 mismatch for {url}: expected {expected}, found {found}; "
                                "the file was not kept")
        os.replace(handle.name, dest)
    finally:
        if os.path.exists(handle.name):
            os.unlink(handle.name)
    return dest
