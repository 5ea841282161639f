"""A run's folder, ``<report-dir>/<YYYYmmdd-HHMMSS>-<model>/``, and everything written into it.

- The folder is made with an exclusive create (a suffix ``-2``, ``-3``, ... when another run took
  the name in the same second), so two runs never write into one folder.
- Every file is written atomically (a temporary file, then a rename): ``samples/<bench>-<case>.jsonl``
  as each case finishes, ``results.json`` after every case (status ``running``) and at the end,
  ``summary.xlsx`` and ``report.html`` at the end.
- A write that fails (a full disk, a value the format cannot hold, a page template's error) does
  not stop the run: it is remembered and reported once per file at the end
  (:attr:`RunFolder.errors`); the response cache lives elsewhere and stays usable.
- At the end a link points at the run: ``latest`` for a complete run, ``last-interrupted`` or
  ``last-failed`` otherwise (``latest`` then stays on the last complete run).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from evals.plugin.report import safe_name
from evals.plugin.writers import write_json, write_jsonl, write_xlsx
from evals.plugin.writers.atomic import atomic_symlink

LINKS = {"complete": "latest", "interrupted": "last-interrupted", "failed": "last-failed"}
PROGRESS_DIR = ".progress"  # xdist workers' progress status files (removed at the end)


class RunFolderError(OSError):
    """The report folder cannot be made or written (read-only, missing permissions)."""


def make_run_dir(root: Path, model_name: str, now: datetime | None = None) -> Path:
    """Create and return a new run folder under ``root`` (never one that exists)."""
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{safe_name(model_name)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunFolderError(f"cannot make the report folder {root}: {error}") from None
    for k in range(1, 1000):
        path = root / (base if k == 1 else f"{base}-{k}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as error:
            raise RunFolderError(f"cannot make a run folder in {root}: {error}") from None
        if not os.access(path, os.W_OK):
            path.rmdir()
            raise RunFolderError(f"the run folder {path} is not writable")
        return path
    raise RunFolderError(f"{root}: 999 runs named {base} already")


@dataclass
class RunFolder:
    path: Path
    errors: dict[str, str] = field(default_factory=dict)  # file -> the first error writing it

    def _write(self, name: str, write: Callable[[Path], Any]) -> bool:
        try:
            write(self.path / name)
        except Exception as error:  # noqa: BLE001 - one bad file (a disk, a value, a template) must not end the run
            self.errors.setdefault(name, f"{type(error).__name__}: {error}")
            return False
        return True

    def samples(self, name: str, rows: list[dict[str, Any]]) -> bool:
        return self._write(name, lambda p: write_jsonl(p, rows))

    def results(self, results: Mapping[str, Any]) -> bool:
        return self._write("results.json", lambda p: write_json(p, dict(results)))

    def workbook(self, results: Mapping[str, Any]) -> bool:
        return self._write("summary.xlsx", lambda p: write_xlsx(p, results))

    def page(self, results: Mapping[str, Any], samples: Mapping[tuple[str, str], list[dict[str, Any]]]) -> bool:
        """report.html; an installation without jinja2 or matplotlib (both are dependencies) is
        reported like a failed write, since results.json and the workbook are already on disk."""
        from evals.plugin.writers.html_writer import write_report_html

        try:
            import jinja2  # noqa: F401
            import matplotlib  # noqa: F401
        except ImportError as error:
            self.errors.setdefault("report.html", f"needs the package {error.name} (pip install -e . installs it)")
            return False
        return self._write("report.html", lambda p: write_report_html(p, results, samples))

    def link(self, status: str) -> Path | None:
        """Point ``latest`` (complete) or ``last-<status>`` at this run; the link's path."""
        link = self.path.parent / LINKS[status]
        try:
            atomic_symlink(link, self.path.name)
        except OSError as error:
            self.errors.setdefault(link.name, f"{type(error).__name__}: {error}")
            return None
        return link

    def tidy(self) -> None:
        shutil.rmtree(self.path / PROGRESS_DIR, ignore_errors=True)

    def remove_if_unused(self) -> None:
        """A run that stopped before any test ran (a usage error) leaves no folder behind."""
        if self.path.is_dir() and not (self.path / "results.json").exists():
            shutil.rmtree(self.path, ignore_errors=True)
