"""Reading and checking RWKV-7 checkpoints: official BlinkDL ``.pth`` and ``.safetensors``.

A ``.pth`` is read with ``torch.load(weights_only=True)``, so a checkpoint can never run code.
The model's shape is inferred from the tensors (never from key order, never from the file name),
and every expected key and shape is checked, as is every value (a NaN or infinite weight is
refused with its key named), so a bad file fails here with one clear message instead of deep
inside a matrix product or as a ``nan`` score.
"""
from __future__ import annotations

import hashlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path

import torch

from .config import ModelConfig
from .errors import CheckpointError

StateDict = dict[str, torch.Tensor]

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")

# Keys of one RWKV-7 block, with their shapes as functions of the config.
# "vec" marks (1, 1, C) parameters, which are also accepted as (C,).
_VEC = "vec"


def _block_shapes(cfg: ModelConfig, layer: int) -> dict[str, tuple[int, ...] | str]:
    C, H, N, F = cfg.n_embd, cfg.n_head, cfg.head_size, cfg.ffn_size
    shapes: dict[str, tuple[int, ...] | str] = {
        "ln1.weight": (C,), "ln1.bias": (C,), "ln2.weight": (C,), "ln2.bias": (C,),
        "att.x_r": _VEC, "att.x_w": _VEC, "att.x_k": _VEC, "att.x_v": _VEC, "att.x_a": _VEC, "att.x_g": _VEC,
        "att.w0": _VEC, "att.w1": (C, cfg.rank_w), "att.w2": (cfg.rank_w, C),
        "att.a0": _VEC, "att.a1": (C, cfg.rank_a), "att.a2": (cfg.rank_a, C),
        "att.v0": _VEC, "att.v1": (C, cfg.rank_v), "att.v2": (cfg.rank_v, C),
        "att.g1": (C, cfg.rank_g), "att.g2": (cfg.rank_g, C),
        "att.k_k": _VEC, "att.k_a": _VEC, "att.r_k": (H, N),
        "att.receptance.weight": (C, C), "att.key.weight": (C, C),
        "att.value.weight": (C, C), "att.output.weight": (C, C),
        "att.ln_x.weight": (C,), "att.ln_x.bias": (C,),
        "ffn.x_k": _VEC, "ffn.key.weight": (F, C), "ffn.value.weight": (C, F),
    }
    if layer == 0:
        shapes["ln0.weight"] = (C,)
        shapes["ln0.bias"] = (C,)
    return shapes


# Layer 0 never uses the value-residual mix (it defines v_first), so these may be absent there.
OPTIONAL_LAYER0 = ("att.v0", "att.v1", "att.v2")


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...] | str]:
    """Every key of an RWKV-7 checkpoint of shape ``cfg`` with its shape (``"vec"`` = (1, 1, C))."""
    shapes: dict[str, tuple[int, ...] | str] = {
        "emb.weight": (cfg.vocab_size, cfg.n_embd),
        "ln_out.weight": (cfg.n_embd,), "ln_out.bias": (cfg.n_embd,),
        "head.weight": (cfg.vocab_size, cfg.n_embd),
    }
    for layer in range(cfg.n_layer):
        for name, shape in _block_shapes(cfg, layer).items():
            shapes[f"blocks.{layer}.{name}"] = shape
    return shapes


def read_state_dict(path: str | Path) -> StateDict:
    """Read a checkpoint file into a dict of tensors, with one clear error per way it can be bad."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a directory, expected a .pth or .safetensors file: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint file is empty (0 bytes): {path}")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic[:4] in (b"fmgg", b"ggmf", b"ggml", b"GGUF"):
        raise CheckpointError(
            f"{path} is an rwkv.cpp/ggml file (magic {magic[:4]!r}), not a PyTorch state dict; "
            "use the official .pth release or convert it"
        )
    if path.suffix == ".safetensors":
        sd = _read_safetensors(path)
    else:
        sd = _read_torch(path)
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} is not a state dict: expected a dict of tensors, found {type(sd).__name__}")
    not_tensors = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        nested = [k for k in not_tensors if isinstance(sd[k], dict)]
        hint = f" (a training checkpoint? the weights may be under {nested[0]!r})" if nested else ""
        raise CheckpointError(
            f"{path} is not a state dict of tensors: {len(not_tensors)} entries are not tensors, "
            f"e.g. {not_tensors[0]!r} is {type(sd[not_tensors[0]]).__name__}{hint}"
        )
    return dict(sd)


def _read_torch(path: Path) -> object:
    is_zip = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notes on garbage input: the error below says it all
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" in text or "weights_only" in text:
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors, which could run code when loaded; "
                f"refusing it (expected a plain state dict of tensors). Loader said: {text.splitlines()[0]}"
            ) from None
        raise CheckpointError(f"{path} is truncated or corrupt (not a readable PyTorch file): {text}") from None
    except Exception as e:  # torch's unpickler raises IndexError, KeyError, ... on garbage bytes
        kind = "zip archive" if is_zip else "file (not a zip archive)"
        raise CheckpointError(
            f"{path} is truncated or corrupt: expected a PyTorch state dict, found an unreadable {kind} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'})"
        ) from None


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt (not a readable safetensors file): {e}") from None


# Keys that only other architectures or layouts have, in the order they are tested.
_FOREIGN_MARKERS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("att.time_maa_x", "att.time_decay_w1"), "RWKV-6 (Finch)"),
    (("att.time_faaaa",), "RWKV-5 (Eagle)"),
    (("att.time_first",), "RWKV-4 (Raven/Pile)"),
    ((".attn.r_proj.",), "RWKV-7 in the Hugging Face/flash-linear-attention layout (model.layers.N.attn.*)"),
    ((".self_attn.q_proj.",), "a transformer (self_attn.q_proj: Llama/Qwen-like)"),
    ((".lora_A.weight", ".lora_B.weight"), "a Hugging Face PEFT adapter (*.lora_A.weight)"),
    # RWKV-7 has neither a gate matrix nor a receptance in its channel mix (RWKV-4, 5 and 6 do):
    # an adapter holding only LoRA pairs shows its architecture by these names alone
    ((".att.gate.", ".ffn.receptance."), "RWKV-4/5/6 (att.gate / ffn.receptance have no RWKV-7 counterpart)"),
)


def foreign_architecture(keys) -> tuple[str, str] | None:
    """(what the keys belong to, one key that shows it) if they name another architecture or
    layout than RWKV-7's official one, else None."""
    ordered = sorted(keys)
    for markers, found in _FOREIGN_MARKERS:
        for key in ordered:
            if any(m in key for m in markers):
                return found, key
    return None


def detect_architecture(sd: StateDict) -> str:
    """Name the architecture of a state dict: "rwkv7", or raise naming what was found instead."""
    keys = set(sd)
    if "blocks.0.att.r_k" in keys or any(k.endswith(".att.r_k") for k in keys):
        return "rwkv7"
    foreign = foreign_architecture(keys)
    if foreign:
        raise CheckpointError(
            f"not an RWKV-7 checkpoint: found {foreign[0]} (key {foreign[1]!r}); rwkveval reads RWKV-7 (x070) "
            "checkpoints in the official BlinkDL layout (blocks.N.att.r_k, blocks.N.att.x_r, ...)"
        )
    sample = ", ".join(sorted(keys)[:5]) or "no keys"
    raise CheckpointError(
        f"not an RWKV-7 checkpoint: expected keys like 'emb.weight' and 'blocks.0.att.r_k', found {sample}"
    )


def infer_config(sd: StateDict) -> ModelConfig:
    """Infer layers, width, heads, head size, vocabulary, FFN size and LoRA ranks from the tensors."""
    detect_architecture(sd)
    for key in ("emb.weight", "blocks.0.att.r_k", "blocks.0.ffn.key.weight"):
        if key not in sd:
            raise CheckpointError(f"missing key {key!r}, needed to infer the model's shape")
    emb, r_k = sd["emb.weight"], sd["blocks.0.att.r_k"]
    if emb.dim() != 2:
        raise CheckpointError(f"tensor 'emb.weight': expected 2 dims (vocab, n_embd), found shape {tuple(emb.shape)}")
    if r_k.dim() != 2:
        raise CheckpointError(
            f"tensor 'blocks.0.att.r_k': expected 2 dims (n_head, head_size), found shape {tuple(r_k.shape)}"
        )
    layers = {int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))}
    n_layer = max(layers) + 1
    vocab_size, n_embd = emb.shape
    n_head, head_size = r_k.shape
    if n_head * head_size != n_embd:
        raise CheckpointError(
            f"tensor 'blocks.0.att.r_k' has shape {tuple(r_k.shape)}: n_head * head_size should equal "
            f"n_embd = {n_embd} (from emb.weight)"
        )

    def rank(name: str) -> int:
        for layer in range(n_layer):
            t = sd.get(f"blocks.{layer}.att.{name}")
            if t is not None:
                if t.dim() != 2:
                    raise CheckpointError(
                        f"tensor 'blocks.{layer}.att.{name}': expected 2 dims (n_embd, rank), found {tuple(t.shape)}"
                    )
                return int(t.shape[1])
        raise CheckpointError(f"missing key 'blocks.N.att.{name}' in every layer, needed to infer its LoRA rank")

    return ModelConfig(
        n_layer=n_layer, n_embd=int(n_embd), n_head=int(n_head), head_size=int(head_size),
        vocab_size=int(vocab_size), ffn_size=int(sd["blocks.0.ffn.key.weight"].shape[0]),
        rank_w=rank("w1"), rank_a=rank("a1"), rank_v=rank("v1"), rank_g=rank("g1"),
    )


def check_state_dict(sd: StateDict, cfg: ModelConfig) -> None:
    """Check every key and shape against ``cfg``; raise one error listing what is wrong."""
    expected = expected_shapes(cfg)
    optional = {f"blocks.0.{name}" for name in OPTIONAL_LAYER0}
    missing = sorted((k for k in expected if k not in sd and k not in optional), key=_natural)
    unexpected = sorted((k for k in sd if k not in expected), key=_natural)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(
                f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else "")
            )
        raise CheckpointError(f"checkpoint does not match an RWKV-7 model of shape {cfg}: " + "; ".join(parts))
    for key, shape in expected.items():
        if key not in sd:
            continue
        found = tuple(sd[key].shape)
        if shape == _VEC:
            ok = found in ((1, 1, cfg.n_embd), (cfg.n_embd,))
            want = (1, 1, cfg.n_embd)
        else:
            ok = found == shape
            want = shape
        if not ok:
            raise CheckpointError(f"tensor {key!r} has the wrong shape: expected {want}, found {found}")
        if not sd[key].is_floating_point():
            raise CheckpointError(f"tensor {key!r}: expected a floating-point tensor, found dtype {sd[key].dtype}")
        check_finite(key, sd[key])


def check_finite(key: str, tensor: torch.Tensor, what: str = "the checkpoint") -> None:
    """Raise naming ``key`` (a tensor of ``what``) if ``tensor`` holds a NaN or an infinity (one
    pass, no copy: a NaN makes both the minimum and the maximum NaN, an infinity shows at one
    end). A model with one computes NaN logits, and a greedy argmax over them emits token 0."""
    if tensor.numel() == 0 or tensor.is_meta:  # shapes only (checks before the work): checked at load
        return
    low, high = torch.aminmax(tensor)
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return
    nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    raise CheckpointError(f"tensor {key!r} holds {nan} NaN and {inf} infinite values out of {tensor.numel()}: "
                          f"{what} is damaged (or saved from a diverged run); every value must be finite")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _natural(key: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", key))


def checkpoint_shapes(path: str | Path) -> StateDict:
    """The checkpoint's tensors as empty "meta" tensors of their shapes and dtypes, without reading
    its weights (a .pth is memory-mapped, a .safetensors read by its header)."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file() and path.stat().st_size > 0:
        return _safetensors_shapes(path)
    return {key: torch.empty(t.shape, dtype=t.dtype, device="meta") for key, t in read_state_dict(path).items()}


def _safetensors_shapes(path: Path) -> StateDict:
    """Empty tensors of a safetensors file's shapes and dtypes (its header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            out = {}
            for key in handle.keys():
                part = handle.get_slice(key)
                out[key] = torch.empty(part.get_shape(), dtype=_SAFETENSORS_DTYPES.get(part.get_dtype(), torch.uint8),
                                       device="meta")
            return out
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt (not a readable safetensors file): {e}") from None


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}
