"""Atomic file writes: write a temporary file beside the target, fsync, then rename over it.

A crash (or a killed run) therefore leaves either the old file or the complete new one, never a
half-written report.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _process_umask() -> int:
    """The umask, read without changing it where the kernel says it (Linux); elsewhere set and put
    back at once, at import, before the run starts threads that write files."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


UMASK = _process_umask()


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(name, 0o666 & ~UMASK)  # mkstemp makes 0600; a report is as readable as any file
    try:
        yield Path(name)
        with open(name, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(name, target)
    finally:
        if os.path.exists(name):
            os.unlink(name)


def atomic_symlink(link: Path, target: str) -> None:
    """Point ``link`` at ``target`` (relative), replacing an existing link in one rename."""
    tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
