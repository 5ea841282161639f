"""``--model``: a checkpoint path, or a known official checkpoint fetched from the Hugging Face hub.

Accepted forms:

- a path to a ``.pth`` or ``.safetensors`` file;
- an official name such as ``rwkv7-g1-0.1b`` (see :data:`OFFICIAL`), downloaded from the
  ``BlinkDL/rwkv7-g1`` hub repository;
- ``hf:OWNER/REPO/FILE.pth`` for any other checkpoint on the hub.

Downloads go to a cache folder (``--model-cache``, default ``$XDG_CACHE_HOME/rwkveval/models``)
and are checked against a sha256 (pinned here when known, otherwise the hub's LFS checksum), then
a sidecar ``.sha256.json`` lets later runs skip re-hashing a multi-gigabyte file whose size and
modification time are unchanged.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from benchmarkdata.hub import DEFAULT_ENDPOINT, download, hub_url, sha256_file

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
    sha256: str | None = None  # None: verified against the hub's LFS checksum header


# File names of the BlinkDL/rwkv7-g1 releases. The sha256 values are not pinned here (they could not
# be verified offline); downloads are checked against the hub's own LFS sha256 instead.
OFFICIAL: dict[str, Official] = {
    "rwkv7-g1-0.1b": Official("BlinkDL/rwkv7-g1", "rwkv7-g1-0.1b-20250307-ctx4096.pth"),
    "rwkv7-g1-0.4b": Official("BlinkDL/rwkv7-g1", "rwkv7-g1-0.4b-20250324-ctx4096.pth"),
    "rwkv7-g1-1.5b": Official("BlinkDL/rwkv7-g1", "rwkv7-g1-1.5b-20250429-ctx4096.pth"),
    "rwkv7-g1-2.9b": Official("BlinkDL/rwkv7-g1", "rwkv7-g1-2.9b-20250519-ctx4096.pth"),
}


class ModelSpecError(ValueError):
    """A --model value that is neither an existing checkpoint file nor a known name."""


@dataclass(frozen=True)
class ResolvedModel:
    spec: str  # what the user typed
    name: str  # the name thresholds are keyed by: the official name or the file's stem
    path: Path
    source: str  # "file" | "hub"


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
        if len(parts) != 3 or not parts[2].endswith(SUFFIXES):
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


def _cached_ok(path: Path, expected: str | None) -> bool:
    sidecar = path.with_name(path.name + ".sha256.json")
    if not (path.is_file() and sidecar.is_file()):
        return False
    record = json.loads(sidecar.read_text())
    stat = path.stat()
    if record.get("size") != stat.st_size or record.get("mtime_ns") != stat.st_mtime_ns:
        return False
    return expected is None or record.get("sha256") == expected


def checkpoint_sha256(path: Path) -> str:
    """The checkpoint's sha256: from the download's sidecar when it is current, else read."""
    sidecar = path.with_name(path.name + ".sha256.json")
    if _cached_ok(path, None):
        return json.loads(sidecar.read_text())["sha256"]
    return sha256_file(path)


def resolve(spec: str, cache_dir: Path | None = None, endpoint: str = DEFAULT_ENDPOINT) -> ResolvedModel:
    """The local checkpoint for ``spec``, downloading an official one into the cache if needed."""
    check_spec(spec)
    entry = _official(spec)
    if entry is None:
        path = Path(spec).expanduser().resolve()
        return ResolvedModel(spec, path.stem, path, "file")
    name = next((n for n, e in OFFICIAL.items() if e == entry), Path(entry.filename).stem)
    target = (cache_dir or default_cache()) / entry.repo / entry.filename
    if not _cached_ok(target, entry.sha256):
        download(hub_url(entry.repo, entry.filename, endpoint=endpoint), target, sha256=entry.sha256)
        stat = target.stat()
        sidecar = target.with_name(target.name + ".sha256.json")
        sidecar.write_text(json.dumps({"sha256": sha256_file(target), "size": stat.st_size,
                                       "mtime_ns": stat.st_mtime_ns}))
    return ResolvedModel(spec, name, target, "hub")
