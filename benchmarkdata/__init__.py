"""Where the shared, read-only data lives: benchmark files and reference models.

One setting finds it: the environment variable ``RWKVEVAL_SHARED``, which defaults to
``../shared`` relative to the repository root. Nothing under it is ever committed.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_ENV = "RWKVEVAL_SHARED"


def shared_root() -> Path:
    """The shared folder (``$RWKVEVAL_SHARED`` or ``<repo>/../shared``); it may not exist."""
    value = os.environ.get(SHARED_ENV)
    return Path(value).expanduser().resolve() if value else (REPO_ROOT.parent / "shared").resolve()


def tiny_model_dir() -> Path:
    """The folder of the tiny real RWKV-7 model (vocabulary 256) kept in the shared folder."""
    return shared_root() / "models" / "tiny-rwkv7-834K"


def in_ci() -> bool:
    """True when running under CI (``CI=true``), where missing shared data is an error."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}
