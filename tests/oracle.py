"""The official ``rwkv`` package (RWKV_V7_ON=1) as the test oracle and speed reference."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
from pathlib import Path

import pytest
import torch


def official_rwkv7_class():
    """The official RWKV_x070 class; skips when the package is not installed."""
    os.environ["RWKV_V7_ON"] = "1"
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    pytest.importorskip("rwkv", reason="the official rwkv package (the oracle) is not installed: pip install rwkv")
    with contextlib.redirect_stdout(io.StringIO()):  # it prints a banner on import
        mod = importlib.import_module("rwkv.model")
        if not hasattr(mod, "RWKV_x070"):  # imported before RWKV_V7_ON was set
            mod = importlib.reload(mod)
    return mod.RWKV_x070


def load_official(sd: dict[str, torch.Tensor], directory: Path, strategy: str = "cpu fp32"):
    """Save ``sd`` as ``directory/model.pth`` and load it with the official package."""
    cls = official_rwkv7_class()
    path = Path(directory) / "model.pth"
    torch.save(sd, path)
    with contextlib.redirect_stdout(io.StringIO()):
        return cls(str(path)[: -len(".pth")], strategy=strategy)  # it appends .pth itself
