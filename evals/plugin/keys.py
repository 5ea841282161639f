"""``config.stash`` keys shared by the plugin's modules."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evals.plugin.options import EvalConfig
from evals.thresholds import Gate

CONFIG_KEY = pytest.StashKey[EvalConfig]()
MODEL_KEY = pytest.StashKey[Any]()  # evals.plugin.model.RunModel
RUN_DIR_KEY = pytest.StashKey[Path]()
GATES_KEY = pytest.StashKey[list[Gate]]()
BASELINE_KEY = pytest.StashKey[Any]()  # evals.baseline.Baseline, with --baseline
# Set (to the reason) by a conftest whose eval_backend needs no checkpoint (evals.fakes): the
# checkpoint is then not inspected before the run.
NO_CHECKPOINT_KEY = pytest.StashKey[str]()
# an xdist worker's workeroutput key: its checkpoint failed to load (the message); the controller
# then ends the run with that line and exit 4
LOAD_ERROR = "rwkveval_load_error"
