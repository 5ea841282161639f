"""RWKV-PEFT's adapter files built in tests, and its merges done by hand: the oracle for engine/adapters.py.

The hand merges follow JL-er/RWKV-PEFT's merge scripts (commit 5b8aac9: ``merge/merge.py``,
``merge/merge_disha.py``) step by step, in their own index gymnastics, rather than
engine/peft.py's formulation, so that the two are independent: copy the adapter's tensors over
the base's, then for every ``P.weight`` with an update, apply it. PiSSA's merge rounds the base
to bfloat16 in RWKV-PEFT; here everything stays float32 (the engine's merge does the same).
"""
from __future__ import annotations

import torch

# The linear weights RWKV-PEFT wraps (make_linear_att / make_linear_ffn in rwkvt/rwkv7/*.py)
LINEARS = ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value")


def _randn(shape, g, scale):
    return torch.randn(shape, generator=g) * scale


def make_lora(base: dict, rank: int, seed: int, layers=None, with_ln: bool = True) -> dict:
    """A trained-looking LoRA on every wrapped linear, plus retrained ln weights (RWKV-PEFT's
    default train_parts ["time", "ln"] saves them beside the LoRA matrices)."""
    g = torch.Generator().manual_seed(seed)
    n_layer = 1 + max(int(k.split(".")[1]) for k in base if k.startswith("blocks."))
    adapter = {}
    for layer in (range(n_layer) if layers is None else layers):
        for name in LINEARS:
            W = base[f"blocks.{layer}.{name}.weight"]
            adapter[f"blocks.{layer}.{name}.lora_A"] = _randn((rank, W.shape[1]), g, W.shape[1] ** -0.5)
            adapter[f"blocks.{layer}.{name}.lora_B"] = _randn((W.shape[0], rank), g, 0.2 / rank)
        if with_ln:
            w = base[f"blocks.{layer}.ln1.weight"]
            adapter[f"blocks.{layer}.ln1.weight"] = w + _randn(w.shape, g, 0.05)
    return adapter


def hand_merge_lora(base: dict, adapter: dict, lora_alpha: float | None = None, init: dict | None = None) -> dict:
    """merge/merge.py: tensors copied over, then --type lora: W += B @ A * (alpha / r), or
    --type pissa (with ``init``): W = W - B0 @ A0, then W += B @ A (no scale)."""
    w = dict(base)
    w.update(adapter)
    for k in list(w):
        prefix = k[: -len(".weight")] if k.endswith(".weight") else None
        if prefix is None or prefix + ".lora_A" not in w:
            continue
        A, B = w[prefix + ".lora_A"], w[prefix + ".lora_B"]
        if init is None:
            w[k] = w[k] + B @ A * (lora_alpha / B.shape[1])
        else:
            w[k] = w[k] - init["model." + prefix + ".init_lora_B"] @ init["model." + prefix + ".init_lora_A"]
            w[k] = w[k] + B @ A
    return {k: v for k, v in w.items() if "lora" not in k}


def make_pissa(base: dict, rank: int, seed: int, layers=None) -> tuple[dict, dict]:
    """(trained adapter, init_pissa.pth): the init as RWKV-PEFT's pissa_init computes it (a rank-r
    SVD, split as sqrt(S) on both sides) under Lightning's ``model.`` prefix, the trained matrices
    moved away from it."""
    g = torch.Generator().manual_seed(seed)
    n_layer = 1 + max(int(k.split(".")[1]) for k in base if k.startswith("blocks."))
    init, trained = {}, {}
    for layer in (range(n_layer) if layers is None else layers):
        for name in LINEARS:
            prefix = f"blocks.{layer}.{name}"
            U, S, V = torch.svd_lowrank(base[prefix + ".weight"].float(), rank, niter=4)
            A0 = torch.diag(S.sqrt()) @ V.t()  # (r, in)
            B0 = U @ torch.diag(S.sqrt())  # (out, r)
            init["model." + prefix + ".init_lora_A"], init["model." + prefix + ".init_lora_B"] = A0, B0
            trained[prefix + ".lora_A"] = A0 + _randn(A0.shape, g, 0.05 * A0.abs().mean().item())
            trained[prefix + ".lora_B"] = B0 + _randn(B0.shape, g, 0.05 * B0.abs().mean().item())
    return trained, init


def make_disha(base: dict, r: int, mode: str, seed: int, layers=None, key: str = "disha") -> dict:
    """DiSHA tensors as RWKV-PEFT's BoneLinear ([r, out]) or BatLinear ([in/r, r, r]) hold them."""
    g = torch.Generator().manual_seed(seed)
    n_layer = 1 + max(int(k.split(".")[1]) for k in base if k.startswith("blocks."))
    adapter = {}
    for layer in (range(n_layer) if layers is None else layers):
        for name in LINEARS:
            out_f, in_f = base[f"blocks.{layer}.{name}.weight"].shape
            shape = (r, out_f) if mode == "bone" else (in_f // r, r, r)
            adapter[f"blocks.{layer}.{name}.{key}"] = _randn(shape, g, 0.02)
    return adapter


def hand_merge_disha(base: dict, adapter: dict, key: str = "disha") -> dict:
    """merge/merge_disha.py: "bat" (3-D) block by block; "bone" (2-D) by the script's reshapes,
    including its branch for an input size that r does not divide."""
    w = {k: v.clone() for k, v in base.items()}
    w.update(adapter)
    for k in list(w):
        prefix = k[: -len(".weight")] if k.endswith(".weight") else None
        if prefix is None or prefix + "." + key not in w:
            continue
        D, W = w[prefix + "." + key], w[k]
        if D.dim() == 3:
            r = D.shape[-1]
            new = W.clone()
            for a in range(W.shape[0] // r):
                for b in range(W.shape[1] // r):
                    block = W[a * r:(a + 1) * r, b * r:(b + 1) * r]
                    new[a * r:(a + 1) * r, b * r:(b + 1) * r] = block + block @ D[b] + D[b]
            w[k] = new
        else:
            r = D.shape[0]
            in_features = W.shape[1]
            n_block = in_features // r
            full = n_block * r
            W = W.clone()
            head = W[:, :full].reshape(-1, n_block, r).permute(1, 2, 0) + D  # (n_block, r, out)
            W[:, :full] = head.permute(2, 0, 1).reshape(W.shape[0], full)
            if in_features % r:
                W[:, full:] = W[:, full:] + D.transpose(0, 1)[:, : in_features - full]
            w[k] = W
    return {k: v for k, v in w.items() if not k.endswith("." + key)}


def make_time_state(n_layer: int, n_head: int, head_size: int, seed: int, scale: float = 0.5) -> dict:
    """A state-tuning file: blocks.N.att.time_state [H, N, N] for every layer."""
    g = torch.Generator().manual_seed(seed)
    return {f"blocks.{i}.att.time_state": _randn((n_head, head_size, head_size), g, scale) for i in range(n_layer)}
