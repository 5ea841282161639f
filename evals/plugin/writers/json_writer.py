"""results.json: the run's envelope and every aggregate, as indented JSON."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from evals.plugin.writers.atomic import atomic_path


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity; write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                       encoding="utf-8")
    return path
