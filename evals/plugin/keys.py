"""``config.stash`` keys shared by the plugin's modules."""
from __future__ import annotations

from pathlib import Path

import pytest

from evals.models import ResolvedModel
from evals.plugin.options import EvalConfig

CONFIG_KEY = pytest.StashKey[EvalConfig]()
MODEL_KEY = pytest.StashKey[ResolvedModel]()
RUN_DIR_KEY = pytest.StashKey[Path]()
