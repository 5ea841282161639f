"""The recurrent state of an RWKV-7 model for a batch of sequences.

RWKV's state has a fixed size per sequence, so a shared prompt prefix is run once and its state
copied (``select``, ``cat``) for every continuation. Everything here is float32, whatever the
model's dtype: the WKV state accumulates over the whole sequence and needs the precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .config import ModelConfig
from .errors import InputError


@dataclass
class State:
    """Per-layer recurrent state, stacked over layers.

    att_x: [L, B, C]        the time mix's previous token (after ln1)
    wkv:   [L, B, H, N, N]  the WKV matrix per head, wkv[..., i, j]: value index i, key index j
    ffn_x: [L, B, C]        the channel mix's previous token (after ln2)
    """

    att_x: torch.Tensor
    wkv: torch.Tensor
    ffn_x: torch.Tensor

    @staticmethod
    def zeros(cfg: ModelConfig, batch_size: int, device: str | torch.device = "cpu") -> "State":
        L, C, H, N = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size
        f32 = dict(dtype=torch.float32, device=device)
        return State(
            att_x=torch.zeros(L, batch_size, C, **f32),
            wkv=torch.zeros(L, batch_size, H, N, N, **f32),
            ffn_x=torch.zeros(L, batch_size, C, **f32),
        )

    @staticmethod
    def start(cfg: ModelConfig, batch_size: int, device: str | torch.device = "cpu",
              wkv: torch.Tensor | None = None) -> "State":
        """The state before any token: zeros, with ``wkv`` [L, H, N, N] (a tuned initial state,
        from state tuning) copied into every row when given."""
        state = State.zeros(cfg, batch_size, device)
        if wkv is not None:
            state.wkv.copy_(wkv.unsqueeze(1).expand_as(state.wkv))  # (L, B, H, N, N)
        return state

    @property
    def batch_size(self) -> int:
        return self.att_x.shape[1]

    @property
    def device(self) -> torch.device:
        return self.att_x.device

    def clone(self) -> "State":
        return State(self.att_x.clone(), self.wkv.clone(), self.ffn_x.clone())

    def select(self, indices: Sequence[int] | torch.Tensor | int) -> "State":
        """The rows ``indices`` of the batch (a copy); repeat an index to fan a prefix out."""
        if isinstance(indices, int):
            indices = [indices]
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.device)
        if idx.dim() != 1:
            raise InputError(f"State.select: expected a 1-D list of batch indices, found shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < -self.batch_size or int(idx.max()) >= self.batch_size):
            raise InputError(
                f"State.select: batch index out of range for a state of batch size {self.batch_size}: "
                f"found indices from {int(idx.min())} to {int(idx.max())}"
            )
        if idx.numel() and int(idx.min()) < 0:
            idx = idx.remainder(self.batch_size)  # index_select takes no negative index
        # index_select, not t[:, idx]: 2x faster over a 10-row 0.1B state, 5x for one row
        return State(self.att_x.index_select(1, idx), self.wkv.index_select(1, idx), self.ffn_x.index_select(1, idx))

    def row(self, i: int) -> "State":
        """Row ``i`` of the batch as a view, not a copy (for :meth:`cat`, which copies)."""
        if not -self.batch_size <= i < self.batch_size:
            raise InputError(f"State.row: batch index out of range for a state of batch size {self.batch_size}: "
                             f"found {i}")
        i %= self.batch_size
        return State(self.att_x[:, i:i + 1], self.wkv[:, i:i + 1], self.ffn_x[:, i:i + 1])

    def expand(self, batch_size: int) -> "State":
        """A batch-1 state repeated ``batch_size`` times (a copy)."""
        if self.batch_size != 1:
            raise InputError(f"State.expand needs a state of batch size 1, found {self.batch_size}")
        return self.select([0] * batch_size)

    @staticmethod
    def cat(states: Sequence["State"]) -> "State":
        """Concatenate states along the batch."""
        if not states:
            raise InputError("State.cat: expected at least one state, found none")
        shapes = {(s.att_x.shape[0], s.wkv.shape[2:]) for s in states}
        if len(shapes) != 1:
            raise InputError(f"State.cat: states of different models cannot be joined: found shapes {sorted(map(str, shapes))}")
        return State(
            torch.cat([s.att_x for s in states], 1),
            torch.cat([s.wkv for s in states], 1),
            torch.cat([s.ffn_x for s in states], 1),
        )

    def check_fits(self, cfg: ModelConfig, batch_size: int) -> None:
        """Raise if this state does not belong to a model of shape ``cfg`` with ``batch_size`` rows."""
        L, C, H, N = cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size
        want = {"att_x": (L, batch_size, C), "wkv": (L, batch_size, H, N, N), "ffn_x": (L, batch_size, C)}
        for name, shape in want.items():
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor):
                raise InputError(f"state.{name}: expected a tensor, found {type(t).__name__}")
            if tuple(t.shape) != shape:
                what = "batch size" if t.dim() > 1 and tuple(t.shape[:1]) + tuple(t.shape[2:]) == shape[:1] + shape[2:] else "shape"
                raise InputError(
                    f"state.{name} does not fit ({what}): expected {shape} for {batch_size} sequences, "
                    f"found {tuple(t.shape)}"
                )
            if t.dtype != torch.float32:
                raise InputError(f"state.{name}: expected float32, found {t.dtype}")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.att_x, self.wkv, self.ffn_x))
