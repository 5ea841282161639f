"""The weight updates of RWKV-PEFT's adapter kinds, as pure tensor functions.

Each function takes a base linear weight W [out, in] (the checkpoint's layout) and the adapter's
tensors, and returns the merged weight in float32. The formulas are those of RWKV-PEFT's merge
scripts (JL-er/RWKV-PEFT ``merge/merge.py``, ``merge/merge_disha.py``, commit 5b8aac9), which are
also what its training layers compute (``rwkvt/peft/rwkvLinear.py``):

- LoRA:   W + scale * B @ A,  A [r, in], B [out, r], scale = lora_alpha / r
- PiSSA:  W - B0 @ A0 + B @ A  (A0, B0: the SVD initialisation saved as ``init_pissa.pth``; no scale)
- DiSHA "bone" (D [r, out]):    W[o, c] += D[c mod r, o]   (the in-dimension in blocks of r; a short
  last block takes the first rows of D)
- DiSHA "bat"  (D [in/r, r, r]): each r x r block W_ab (a over out/r, b over in/r) becomes
  W_ab + W_ab @ D_b + D_b

Shapes are checked by the caller (:mod:`engine.adapters`), which knows the key names for its
messages; these functions assume they fit.
"""
from __future__ import annotations

import torch


def lora(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """W [out, in] + scale * B [out, r] @ A [r, in], in float32."""
    return W.float() + scale * (B.float() @ A.float())  # (out, in)


def pissa(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor, A0: torch.Tensor, B0: torch.Tensor) -> torch.Tensor:
    """W [out, in] with the PiSSA initialisation B0 @ A0 taken out and the trained B @ A put in."""
    return W.float() - B0.float() @ A0.float() + B.float() @ A.float()  # (out, in)


def disha_bone(W: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """DiSHA's "bone" mode: D [r, out] is added to every block of r input columns, transposed.

    Equivalently, the layer computes W x + (sum over blocks of x, zero-padded to a multiple of r) @ D,
    which is how RWKV-PEFT's BoneLinear runs it in training.
    """
    r = D.shape[0]
    cols = torch.arange(W.shape[1], device=W.device) % r  # the row of D that column c takes
    return W.float() + D.float().t()[:, cols]  # (out, in)


def disha_bat(W: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """DiSHA's "bat" mode: D [in/r, r, r]; every r x r block W_ab becomes W_ab + W_ab @ D_b + D_b."""
    out_features, in_features = W.shape
    r = D.shape[-1]
    blocks = W.float().view(out_features // r, r, in_features // r, r).permute(0, 2, 1, 3)  # (a, b, r, r)
    delta = blocks @ D.float() + D.float()  # D_b broadcast over a                         (a, b, r, r)
    return W.float() + delta.permute(0, 2, 1, 3).reshape(out_features, in_features)  # (out, in)
