"""Small model shapes shared by the engine tests (seeded random weights, official layout), and
the kernel tests' WKV inputs."""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest
import torch

from engine import ModelConfig, official_config
from engine.kernels import reference

# Several heads, head sizes 64 and 32, the World vocabulary, small and unequal LoRA ranks.
SHAPES = {
    "2x128-h2": ModelConfig(n_layer=2, n_embd=128, n_head=2, head_size=64, vocab_size=65536,
                            ffn_size=448, rank_w=16, rank_a=8, rank_v=8, rank_g=24),
    "3x96-h3n32": ModelConfig(n_layer=3, n_embd=96, n_head=3, head_size=32, vocab_size=65536,
                              ffn_size=384, rank_w=8, rank_a=16, rank_v=4, rank_g=8),
    "1x64-h1-v256": ModelConfig(n_layer=1, n_embd=64, n_head=1, head_size=64, vocab_size=256,
                                ffn_size=256, rank_w=32, rank_a=32, rank_v=32, rank_g=32),
}

SMALL = ModelConfig(n_layer=2, n_embd=64, n_head=2, head_size=32, vocab_size=256,
                    ffn_size=128, rank_w=8, rank_a=8, rank_v=8, rank_g=8)


# the benchmarks' smoke shape (--throughput-shape tiny): the World vocabulary, two small layers
SMOKE = ModelConfig(n_layer=2, n_embd=128, n_head=2, head_size=64, vocab_size=65536,
                    ffn_size=512, rank_w=32, rank_a=32, rank_v=32, rank_g=32)


def throughput_config(name: str) -> ModelConfig:
    """The shape a benchmark runs on for ``--throughput-shape name``."""
    return SMOKE if name == "tiny" else official_config(name)


def skip_unless_benchmark_only(request, command: str) -> None:
    """Benchmarks run only under ``--benchmark-only`` (minutes of CPU on the 0.1B shape)."""
    import pytest

    if not request.config.getoption("benchmark_only", False):
        pytest.skip(f"benchmarks run with `{command}` (minutes of CPU on the 0.1B shape)")


VECTORS = ("r", "w", "k", "v", "a", "b")  # the WKV-7 inputs besides the state, in the kernels' order


def wkv_inputs(B=2, T=3, H=2, N=64, dtype=torch.float32, step=False) -> dict[str, torch.Tensor]:
    """reference.random_wkv7_inputs on the CPU; ``step``: vectors [B, H, N] (the first step)."""
    d = reference.random_wkv7_inputs(B, T, H, N, dtype=dtype)
    if step:
        d.update({name: d[name][:, 0].contiguous() for name in VECTORS})  # [B, H, N]
    return d


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m", read_only: bool = False):
    """A small tmpfs at ``path`` for the duration (needs root); skips the test where it cannot mount."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); CI runs as root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# --- an accelerator's logits, on the CPU (engine tests: the Decoder's host view) -------------------


class OnDevice(torch.Tensor):
    """Logits as an accelerator holds them: their shape can be read and ``.cpu()`` brings them to
    the host; any other use (indexing, arithmetic, a copy into a CPU tensor) fails, as mixing a
    CUDA tensor with CPU index tensors and generators does."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in ("cpu", "__get__", "dim", "size", "__repr__"):
            with torch._C.DisableTorchFunctionSubclass():
                out = func(*args, **(kwargs or {}))
            return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out
        raise AssertionError(f"{name}() on logits still on the device: take them to the host (.cpu()) first")


class AcceleratorStandIn:
    """A CPU model posing as one on an accelerator ("meta"): the same numbers, but its logits
    come back as :class:`OnDevice` tensors, usable only after ``.cpu()``."""

    def __init__(self, model):
        self.model, self.config, self.tokenizer = model, model.config, model.tokenizer
        self.device = torch.device("meta")
        self.padded_rows = model.padded_rows  # batches the same way as the model it poses for
        self.ragged_rows = getattr(model, "ragged_rows", False)

    def info(self) -> dict:
        return {**self.model.info(), "device": "meta"}

    def zero_state(self, batch_size: int):
        return self.model.zero_state(batch_size)

    def forward(self, tokens, state=None, logits="all", *, inplace=False, logit_rows=None, lengths=None):
        out, new = self.model.forward(tokens, state, logits, inplace=inplace, logit_rows=logit_rows, lengths=lengths)
        return (None if out is None else out.as_subclass(OnDevice)), new
