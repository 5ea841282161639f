"""samples/<benchmark>-<case>.jsonl: one JSON object per document, in document order."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evals.plugin.writers.atomic import atomic_path
from evals.plugin.writers.json_writer import _finite


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(_finite(row), ensure_ascii=False, allow_nan=False) + "\n")
    return path
