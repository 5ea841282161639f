"""``--model``: a checkpoint path, or an official checkpoint downloaded from the Hugging Face hub on first use.

Accepted forms:

- a path to a ``.pth`` or ``.safetensors`` file;
- an official name such as ``rwkv7-g1-0.1b`` (see :data:`OFFICIAL`, one row per release with
  its date), or the release's full file name, downloaded from the ``BlinkDL/rwkv7-g1`` hub
  repository;
- ``hf:OWNER/REPO/FILE.pth`` for any other checkpoint on the hub, such as a newer official
  series not yet in the table.

A download goes to a cache folder (``--model-cache``, default ``$XDG_CACHE_HOME/rwkveval/models``,
as ``<cache>/<OWNER>/<REPO>/<FILE>``). The hub's API names the commit ``main`` stands for and the
file's size and sha256; the file is fetched from that commit into ``<FILE>.part`` with a progress
bar, resumed with an HTTP range request when a previous download was cut off, and renamed into
place only when its sha256 is the pinned one (where :data:`OFFICIAL` pins one) or the hub's. A
sidecar ``<FILE>.sha256.json`` (sha256, size, modification time, hub commit) lets later runs skip
re-hashing a multi-gigabyte file whose size and modification time are unchanged; with downloads
off (``offline=True`` or ``HF_HUB_OFFLINE=1``) only the cache is consulted, and a checkpoint
copied into it by hand (no sidecar) is hashed once, checked against the pinned sha256 where
:data:`OFFICIAL` pins one, and given its sidecar.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from benchmarkdata.hub import DEFAULT_ENDPOINT, OFFLINE_ENV, DownloadError, download, file_info, offline_default, sha256_file
from benchmarkdata.progress import ProgressFactory, terminal

SUFFIXES = (".pth", ".safetensors")
HOW_TO_GET_ONE = (
    "pass --model PATH (a .pth or .safetensors RWKV-7 checkpoint) or set RWKV_MODEL; or name an official "
    "checkpoint to download it from the Hugging Face hub, e.g. --model rwkv7-g1-0.1b (known: {names}); "
    "or use the tiny test model: --model ../shared/models/tiny-rwkv7-834K/tiny-rwkv7-834K.pth"
)


@dataclass(frozen=True)
class Official:
    repo: str
    filename: str
    released: str = ""  # the release date, as in the file name
    sha256: str | None = None  # None: checked against the sha256 the hub's API reports


# The BlinkDL/rwkv7-g1 releases, one row each. The sha256 values are not pinned here (they could not
# be verified without a network); downloads are checked against the hub's own LFS sha256 instead.
# A newer series (rwkv7-g1a, rwkv7-g1b, ...) works as hf:OWNER/REPO/FILE.pth until a row is added.
OFFICIAL: dict[str, Official] = {
    "rwkv7-g1-0.1b": Official("BlinkDL/rwkv7-g1", "rwkv7-g1-0.1b-20250307-ctx4096.pth", "2025-03-07"),
    "rwkv7-g1-0.4b": Official("BlinkDL/rwkv7-g1", "rwkv7-g1-0.4b-20250324-ctx4096.pth", "2025-03-24"),
    "rwkv7-g1-1.5b": Official("BlinkDL/rwkv7-g1", "rwkv7-g1-1.5b-20250429-ctx4096.pth", "2025-04-29"),
    "rwkv7-g1-2.9b": Official("BlinkDL/rwkv7-g1", "rwkv7-g1-2.9b-20250519-ctx4096.pth", "2025-05-19"),
}


class ModelSpecError(ValueError):
    """A --model value that is neither an existing checkpoint file nor a known name."""


class ModelOfflineError(ModelSpecError):
    """An official checkpoint not in the model cache while downloads are off."""


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user typed
    name: str  # the name thresholds are keyed by: the official name or the file's stem
    path: Path
    source: str  # "file" | "hub"
    hub_commit: str | None = None  # the hub commit a downloaded checkpoint came from, where recorded


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rwkveval" / "models"


def _official(spec: str) -> Official | None:
    if spec in OFFICIAL:
        return OFFICIAL[spec]
    for entry in OFFICIAL.values():  # the full file name (with or without .pth) also works
        if spec in (entry.filename, entry.filename.removesuffix(".pth")):
            return entry
    if spec.startswith("hf:"):
        parts = spec[3:].split("/", 2)
        if len(parts) != 3 or not all(parts) or not parts[2].endswith(SUFFIXES):
            raise ModelSpecError(f"--model {spec!r}: expected hf:OWNER/REPO/FILE.pth (or .safetensors)")
        return Official(f"{parts[0]}/{parts[1]}", parts[2])
    return None


def looks_like_path(spec: str) -> bool:
    return spec.endswith(SUFFIXES) or os.sep in spec or spec.startswith(".")


def check_spec(spec: str) -> None:
    """Validate ``spec`` without downloading anything (for option parsing and --collect-only)."""
    if _official(spec) is not None:
        return
    path = Path(spec).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(OFFICIAL))
        raise ModelSpecError(f"--model {spec!r}: no such checkpoint file and not a known official name; "
                             + HOW_TO_GET_ONE.format(names=names))
    if path.suffix not in SUFFIXES:
        raise ModelSpecError(f"--model {spec!r}: expected a .pth or .safetensors file, found suffix {path.suffix!r}")


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _cached(path: Path, expected: str | None) -> dict | None:
    """The sidecar record of a cached checkpoint still matching it, else None."""
    sidecar = _sidecar(path)
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        record = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # a damaged sidecar: hash the file again
    stat = path.stat()
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        return None
    return record if expected is None or record.get("sha256") == expected else None


def _hash_copied(path: Path, entry: Official, spec: str) -> dict:
    """The sidecar record of a checkpoint found in the cache without a current sidecar while
    downloads are off: its sha256 (checked against a pinned one), written beside it."""
    sha256 = sha256_file(path)
    if entry.sha256 and sha256 != entry.sha256:
        raise ModelOfflineError(f"--model {spec}: {path} has sha256 {sha256}, expected {entry.sha256} (pinned); "
                                "the copy is another file or damaged: replace it, or download it again online")
    stat = path.stat()
    record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "hub_commit": None,
              "hashed_offline": True}
    try:
        _sidecar(path).write_text(json.dumps(record))
    except OSError:  # a read-only cache: the file is hashed again next time
        pass
    return record


def checkpoint_sha256(path: Path) -> str:
    """The checkpoint's sha256: from the download's sidecar when it is current, else read."""
    record = _cached(path, None)
    return record["sha256"] if record and record.get("sha256") else sha256_file(path)


def resolve(spec: str, cache_dir: Path | None = None, endpoint: str = DEFAULT_ENDPOINT, offline: bool | None = None,
            progress: ProgressFactory = terminal, token: str | None = None) -> ResolvedModel:
    """The local checkpoint for ``spec``, downloading an official one into the cache if needed.

    Raises :class:`ModelSpecError` for a bad spec, :class:`ModelOfflineError` for a checkpoint
    not cached while ``offline`` (default: ``HF_HUB_OFFLINE``), and ``DownloadError`` from the hub.
    """
    check_spec(spec)
    entry = _official(spec)
    if entry is None:
        path = Path(spec).expanduser().resolve()
        return ResolvedModel(spec, path.stem, path, "file")
    name = next((n for n, e in OFFICIAL.items() if e == entry), Path(entry.filename).stem)
    target = (cache_dir or default_cache()) / entry.repo / entry.filename
    record = _cached(target, entry.sha256)
    if record is None:
        if offline_default() if offline is None else offline:
            if target.is_file():  # copied in by hand: hashed once, then known by its sidecar
                return ResolvedModel(spec, name, target, "hub", _hash_copied(target, entry, spec).get("hub_commit"))
            raise ModelOfflineError(
                f"--model {spec}: {entry.filename} is not in the model cache ({target.parent}) and downloads are off "
                f"(--offline or {OFFLINE_ENV}=1); download it on a machine with a network (the same --model without "
                "--offline), copy the file into that folder (it is hashed on first use), or pass --model PATH to a "
                "local checkpoint")
        info = file_info(entry.repo, entry.filename, "main", "model", endpoint, token=token)
        expected = entry.sha256 or info.sha256
        if not expected:
            raise DownloadError(f"the hub reports no sha256 for {entry.repo}/{entry.filename} (not an LFS file) and "
                                "none is pinned; refusing an unchecked checkpoint")
        download(info.url(endpoint), target, expected, info.size, progress, token=token)
        stat = target.stat()
        record = {"sha256": expected, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                  "hub_commit": info.commit}
        _sidecar(target).write_text(json.dumps(record))
    return ResolvedModel(spec, name, target, "hub", record.get("hub_commit"))
