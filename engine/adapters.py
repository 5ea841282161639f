"""Fine-tuned RWKV-7 checkpoints without merging first: RWKV-PEFT adapter files are read, checked
against the base checkpoint and merged into its tensors before the model is built.

The formats are those of JL-er/RWKV-PEFT (read at commit 5b8aac9, 2025-06-18; RWKV-7 support since
81d869a, December 2024): an adapter file is the ``.pth`` state dict its trainer saves (or the same
tensors as ``.safetensors``), with the base checkpoint's key names:

=========  ====================================================  =====================================
kind       keys                                                  merged as (:mod:`engine.peft`)
=========  ====================================================  =====================================
lora       ``P.lora_A`` [r, in], ``P.lora_B`` [out, r]            ``P.weight + scale * B @ A``
pissa      the same, with ``--adapter-init``'s ``P.init_lora_A``   ``P.weight - B0 @ A0 + B @ A``
           / ``P.init_lora_B`` (saved with a ``model.`` prefix)
disha      ``P.disha`` [r, out] ("bone") or [in/r, r, r] ("bat")  block-wise, see engine/peft.py
           (``P.bone`` before February 2025)
state      ``blocks.N.att.time_state`` [H, N, N]                  the initial WKV state of every sequence
weights    any other key naming a base tensor (RWKV-PEFT saves    replaces that tensor
           the trained ``ln*`` with every LoRA, by default)
=========  ====================================================  =====================================

LoRA's scale is ``lora_alpha / r`` (RWKV-PEFT's ``LoraLinear.scaling``), from ``--lora-alpha``, or
given whole by ``--lora-scaling``, or read from a ``.safetensors`` file's metadata (``lora_alpha``
or ``lora_scaling``); RWKV-PEFT's ``.pth`` files do not store it, so without an option a LoRA is an
error rather than a guess. The time state is in the official ``rwkv`` package's orientation
(state[head, value index, key index]; RWKV-PEFT hands its transpose to flash-linear-attention,
which keeps [key, value]), which is also :class:`engine.state.State`'s, so it is used as it is.

Within one file, whole tensors are replaced first and the updates applied on top (RWKV-PEFT's
merge order); two files may not change the same tensor. Merged tensors are float32.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from . import peft
from .argtypes import positive_float
from .checkpoint import (StateDict, check_finite, check_state_dict, file_sha256, foreign_architecture, infer_config,
                         read_state_dict)
from .config import ModelConfig
from .errors import CheckpointError

LORA_A, LORA_B = ".lora_A", ".lora_B"
INIT_A, INIT_B = ".init_lora_A", ".init_lora_B"
DISHA_SUFFIXES = (".disha", ".bone")  # ".bone": RWKV-PEFT's name for DiSHA before February 2025
_TIME_STATE = re.compile(r"^blocks\.(\d+)\.att\.time_state$")
_LAYER = re.compile(r"^blocks\.(\d+)\.")
# PyTorch Lightning's wrapper prefix: RWKV-PEFT strips it from adapters, not from init_pissa.pth
_WRAPPER_PREFIX = "model."


class AdapterError(CheckpointError):
    """An adapter file that cannot be applied to the base checkpoint."""


@dataclass(frozen=True)
class AdapterOptions:
    """Which adapter files to apply, in order, and how: PiSSA's initialisation, LoRA's scale."""

    paths: tuple[Path, ...] = ()
    init: Path | None = None
    lora_alpha: float | None = None
    lora_scaling: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", tuple(Path(p) for p in self.paths))
        if self.init is not None:
            object.__setattr__(self, "init", Path(self.init))
        for name in ("lora_alpha", "lora_scaling"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise AdapterError(f"{name} must be a finite number > 0, found {value!r}")
        if self.lora_alpha is not None and self.lora_scaling is not None:
            raise AdapterError("give LoRA's scale once: --lora-alpha (scale = alpha / rank) or --lora-scaling "
                               f"(the scale itself), found both ({self.lora_alpha:g} and {self.lora_scaling:g})")
        if self.init is not None and not self.paths:
            raise AdapterError("--adapter-init (PiSSA's init_pissa.pth) needs the trained adapter: add --adapter PATH")
        if self.init is not None and (self.lora_alpha is not None or self.lora_scaling is not None):
            raise AdapterError("PiSSA adapters are merged without a scale (W - B0 @ A0 + B @ A): drop "
                               "--lora-alpha/--lora-scaling, or drop --adapter-init for a plain LoRA")
        resolved = [p.resolve() for p in self.paths]
        repeated = sorted({str(p) for p in self.paths if resolved.count(p.resolve()) > 1})
        if repeated:
            raise AdapterError(f"adapter given more than once: {', '.join(repeated)}")

    def __bool__(self) -> bool:
        return bool(self.paths)


@dataclass
class AdapterFile:
    """One adapter file: its tensors (the wrapper prefix ``model.`` removed) and safetensors metadata."""

    path: Path
    sha256: str
    tensors: StateDict
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Merged:
    """The base checkpoint's tensors with every adapter applied, and what was applied.

    initial_wkv: [L, H, N, N] float32, a tuned state (None: sequences start from zeros)
    state_from: where the tuned state came from (None without one)
    records: one JSON-able description per adapter file (path, sha256, kind, scale, ...)
    """

    state_dict: StateDict
    initial_wkv: torch.Tensor | None
    state_from: str | None
    records: tuple[dict[str, Any], ...]


def read_adapter(path: str | Path, role: str = "adapter", device: str | torch.device = "cpu") -> AdapterFile:
    """Read an adapter (or PiSSA init) file and refuse one made for another architecture.
    ``device="meta"`` keeps only shapes and dtypes, to check adapters against a checkpoint's
    header before anything is loaded (engine.checkpoint.checkpoint_shapes)."""
    path = Path(path)
    try:
        tensors = read_state_dict(path)
    except AdapterError:
        raise
    except CheckpointError as error:
        raise AdapterError(f"{role} {path}: {error}") from None
    if not tensors:
        raise AdapterError(f"{role} {path} holds no tensors: expected RWKV-PEFT adapter tensors "
                           "(*.lora_A/B, *.disha, blocks.N.att.time_state, ...)")
    foreign = foreign_architecture(tensors)
    if foreign:
        raise AdapterError(f"{role} {path} was made for another architecture: found {foreign[0]} (key "
                           f"{foreign[1]!r}); the base is RWKV-7 (x070), whose adapters name its tensors "
                           "(blocks.N.att.receptance, blocks.N.ffn.key, ...)")
    stripped: StateDict = {}
    for key, tensor in tensors.items():
        name = key[len(_WRAPPER_PREFIX):] if key.startswith(_WRAPPER_PREFIX) else key
        if name in stripped:
            raise AdapterError(f"{role} {path} holds {name!r} twice (with and without the {_WRAPPER_PREFIX!r} prefix)")
        if not tensor.is_floating_point():
            raise AdapterError(f"{role} {path}: tensor {key!r}: expected a floating-point tensor, found {tensor.dtype}")
        stripped[name] = tensor.to(device)
        try:  # merged into the weights (or the start state), a NaN would make every logit NaN
            check_finite(key, stripped[name], f"the {role}")
        except CheckpointError as error:
            raise AdapterError(f"{role} {path}: {error}") from None
    return AdapterFile(path, file_sha256(path), stripped, _safetensors_metadata(path))


def _safetensors_metadata(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def split_time_state(sd: StateDict, cfg: ModelConfig, where: str) -> tuple[StateDict, torch.Tensor | None]:
    """Take ``blocks.N.att.time_state`` out of a state dict: (the rest, the state [L, H, N, N] float32
    or None). A checkpoint merged with RWKV-PEFT's merge_state.py (or ``rwkveval merge``) holds them."""
    states = {int(m.group(1)): sd[k] for k in sd if (m := _TIME_STATE.match(k))}
    if not states:
        return sd, None
    rest = {k: v for k, v in sd.items() if not _TIME_STATE.match(k)}
    return rest, stack_time_state(states, cfg, where)


def stack_time_state(states: dict[int, torch.Tensor], cfg: ModelConfig, where: str) -> torch.Tensor:
    """Per-layer time states [H, N, N] -> [L, H, N, N] float32; every layer must have one, every
    value finite (checked here, before the base checkpoint's own check: the state is split off first)."""
    L, H, N = cfg.n_layer, cfg.n_head, cfg.head_size
    for layer, t in sorted(states.items()):
        key = f"blocks.{layer}.att.time_state"
        if layer >= L:
            raise AdapterError(f"{where}: tuned state {key!r} names layer {layer}, but the base has layers 0-{L - 1}")
        if tuple(t.shape) != (H, N, N):
            raise AdapterError(f"{where}: tuned state {key!r} has the wrong shape: expected (n_head, head_size, "
                               f"head_size) = {(H, N, N)}, found {tuple(t.shape)}")
        try:
            check_finite(key, t, "the tuned state")
        except CheckpointError as error:
            raise AdapterError(f"{where}: {error}") from None
    missing = [layer for layer in range(L) if layer not in states]
    if missing:
        raise AdapterError(f"{where}: a tuned state needs blocks.N.att.time_state for every layer 0-{L - 1}; "
                           f"missing layers {missing[:8]}" + (" ..." if len(missing) > 8 else ""))
    return torch.stack([states[layer].float() for layer in range(L)]).contiguous()  # (L, H, N, N)


# ---------------------------------------------------------------------------------------- merging

@dataclass
class _Parts:
    """One adapter file's tensors by kind; keys are base-weight prefixes P (``P.weight``)."""

    lora: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # P -> {"A", "B"}
    disha: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)  # P -> (key, D)
    states: dict[int, torch.Tensor] = field(default_factory=dict)
    weights: StateDict = field(default_factory=dict)


def _classify(f: AdapterFile) -> _Parts:
    parts = _Parts()
    for key, t in f.tensors.items():
        if key.endswith((INIT_A, INIT_B)):
            raise AdapterError(f"adapter {f.path} holds PiSSA's initialisation ({key!r}): pass that file "
                               "with --adapter-init and the trained adapter with --adapter")
        if key.endswith((LORA_A, LORA_B)):
            prefix, side = key[:-len(LORA_A)], key[-1]
            parts.lora.setdefault(prefix, {})[side] = t
        elif key.endswith(DISHA_SUFFIXES):
            parts.disha[key.rsplit(".", 1)[0]] = (key, t)
        elif m := _TIME_STATE.match(key):
            parts.states[int(m.group(1))] = t
        else:
            parts.weights[key] = t
    for prefix, pair in parts.lora.items():
        if len(pair) == 1:
            have, lack = ("lora_A", "lora_B") if "A" in pair else ("lora_B", "lora_A")
            raise AdapterError(f"adapter {f.path}: {prefix}.{have} has no partner {prefix}.{lack}: "
                               "a LoRA needs both matrices")
    both = sorted(set(parts.lora) & set(parts.disha))
    if both:
        raise AdapterError(f"adapter {f.path} holds both a LoRA and a DiSHA update for {both[0]}.weight")
    return parts


class _Merger:
    """Applies adapter files one after another to a copy of the base's tensor dict."""

    def __init__(self, base: StateDict, cfg: ModelConfig, options: AdapterOptions, initial_wkv: torch.Tensor | None):
        self.sd = dict(base)
        self.cfg = cfg
        self.options = options
        self.initial_wkv = initial_wkv
        self.state_from = "the base checkpoint" if initial_wkv is not None else None
        self.changed_by: dict[str, Path] = {}
        self.device = next(iter(base.values())).device
        self.init: AdapterFile | None = (read_adapter(options.init, "PiSSA init", self.device) if options.init
                                         else None)
        self.init_used: set[str] = set()

    def target(self, f: AdapterFile, key: str, prefix: str) -> torch.Tensor:
        """The base weight ``prefix.weight`` that adapter key ``key`` updates, as a matrix."""
        name = prefix + ".weight"
        if name not in self.sd:
            raise AdapterError(f"adapter {f.path}: {key!r} names no weight of the base model: expected "
                               f"{name!r} in the base checkpoint{self._layer_hint(name)}")
        W = self.sd[name]
        if W.dim() != 2:
            raise AdapterError(f"adapter {f.path}: {key!r} updates {name!r}, which is not a matrix "
                               f"(shape {tuple(W.shape)}): expected a linear weight [out, in]")
        return W

    def _layer_hint(self, key: str) -> str:
        m = _LAYER.match(key)
        if m and int(m.group(1)) >= self.cfg.n_layer:
            return f" (the base has layers 0-{self.cfg.n_layer - 1})"
        return ""

    def claim(self, f: AdapterFile, name: str) -> None:
        other = self.changed_by.get(name)
        if other is not None and other != f.path:
            raise AdapterError(f"adapters {other} and {f.path} both change {name!r}; apply one at a time "
                               "(rwkveval merge writes the first into a checkpoint)")
        self.changed_by[name] = f.path

    def apply(self, f: AdapterFile) -> dict[str, Any]:
        parts = _classify(f)
        for key, t in parts.weights.items():
            if key not in self.sd:
                raise AdapterError(f"adapter {f.path}: tensor {key!r} names no weight of the base model"
                                   f"{self._layer_hint(key)}; expected LoRA (*.lora_A/B), DiSHA (*.disha), "
                                   "a tuned state (blocks.N.att.time_state) or a base tensor's name")
            want = tuple(self.sd[key].shape)
            if tuple(t.shape) != want:
                raise AdapterError(f"adapter {f.path}: tensor {key!r} does not fit the base: expected shape "
                                   f"{want}, found {tuple(t.shape)}")
            self.claim(f, key)
            self.sd[key] = t
        ranks, scales, scale_from = set(), set(), None
        for prefix, pair in sorted(parts.lora.items()):
            rank, scale, scale_from = self._apply_lora(f, prefix, pair["A"], pair["B"])
            ranks.add(rank)
            scales.add(scale)
        for prefix, (key, D) in sorted(parts.disha.items()):
            self._apply_disha(f, prefix, key, D)
        if parts.states:
            if self.initial_wkv is not None:
                raise AdapterError(f"adapter {f.path} brings a tuned state, but {self.state_from} already "
                                   "has one: give one state")
            self.initial_wkv = stack_time_state(parts.states, self.cfg, f"adapter {f.path}")
            self.state_from = f"adapter {f.path}"
        kinds = [k for k, present in (("pissa" if self.init else "lora", parts.lora), ("disha", parts.disha),
                                      ("state", parts.states)) if present]
        record: dict[str, Any] = {
            "path": str(f.path), "sha256": f.sha256, "kind": "+".join(kinds) or "weights",
            "scale": _one(scales), "scale_from": scale_from, "rank": _one(ranks),
            "lora": len(parts.lora), "disha": len(parts.disha), "state_layers": len(parts.states),
            "replaced": len(parts.weights),
        }
        if parts.disha:
            record["disha_mode"] = sorted({"bone" if D.dim() == 2 else "bat" for _, D in parts.disha.values()})
        if self.init is not None and parts.lora:
            record["init"] = {"path": str(self.init.path), "sha256": self.init.sha256}
        return record

    def _apply_lora(self, f: AdapterFile, prefix: str, A: torch.Tensor, B: torch.Tensor) -> tuple[int, float, str]:
        W = self.target(f, prefix + LORA_A, prefix)
        out_features, in_features = W.shape
        if A.dim() != 2 or B.dim() != 2:
            raise AdapterError(f"adapter {f.path}: {prefix}.lora_A/B must be matrices, found shapes "
                               f"{tuple(A.shape)} and {tuple(B.shape)}")
        if A.shape[0] != B.shape[1]:
            raise AdapterError(f"adapter {f.path}: LoRA rank mismatch at {prefix}: lora_A has rank {A.shape[0]} "
                               f"(shape {tuple(A.shape)}), lora_B has rank {B.shape[1]} (shape {tuple(B.shape)})")
        rank = int(A.shape[0])
        if A.shape[1] != in_features:
            raise AdapterError(f"adapter {f.path}: tensor '{prefix}.lora_A' does not fit {prefix}.weight "
                               f"{(out_features, in_features)}: expected shape {(rank, in_features)} (rank, in), "
                               f"found {tuple(A.shape)}")
        if B.shape[0] != out_features:
            raise AdapterError(f"adapter {f.path}: tensor '{prefix}.lora_B' does not fit {prefix}.weight "
                               f"{(out_features, in_features)}: expected shape {(out_features, rank)} (out, rank), "
                               f"found {tuple(B.shape)}")
        self.claim(f, prefix + ".weight")
        if self.init is not None:
            A0, B0 = self._init_pair(prefix, A, B)
            self.sd[prefix + ".weight"] = peft.pissa(W, A, B, A0, B0)
            return rank, 1.0, "PiSSA (no scale)"
        scale, scale_from = self._lora_scale(f, rank)
        self.sd[prefix + ".weight"] = peft.lora(W, A, B, scale)
        return rank, scale, scale_from

    def _init_pair(self, prefix: str, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        init = self.init
        assert init is not None
        keys = (prefix + INIT_A, prefix + INIT_B)
        for key, trained in zip(keys, (A, B)):
            if key not in init.tensors:
                raise AdapterError(f"PiSSA init {init.path} has no {key!r} for the trained {prefix}.lora_"
                                   f"{key[-1]} (is it the init_pissa.pth of the same run?)")
            if init.tensors[key].shape != trained.shape:
                raise AdapterError(f"PiSSA init {init.path}: tensor {key!r} does not fit the trained adapter: "
                                   f"expected shape {tuple(trained.shape)}, found {tuple(init.tensors[key].shape)}")
        self.init_used.update(keys)
        return init.tensors[keys[0]], init.tensors[keys[1]]

    def _lora_scale(self, f: AdapterFile, rank: int) -> tuple[float, str]:
        o = self.options
        if o.lora_scaling is not None:
            return float(o.lora_scaling), f"--lora-scaling {o.lora_scaling:g}"
        if o.lora_alpha is not None:
            return o.lora_alpha / rank, f"--lora-alpha {o.lora_alpha:g} / rank {rank}"
        for name in ("lora_scaling", "lora_alpha"):
            if name in f.metadata:
                try:
                    value = float(f.metadata[name])
                except ValueError:
                    raise AdapterError(f"adapter {f.path}: metadata {name!r} should be a number, found "
                                       f"{f.metadata[name]!r}") from None
                if not math.isfinite(value) or value <= 0:
                    raise AdapterError(f"adapter {f.path}: metadata {name!r} must be > 0, found {value}")
                if name == "lora_scaling":
                    return value, f"file metadata lora_scaling {value:g}"
                return value / rank, f"file metadata lora_alpha {value:g} / rank {rank}"
        raise AdapterError(f"adapter {f.path} holds LoRA tensors (rank {rank}) but no scale: pass --lora-alpha "
                           "(the lora_alpha it was trained with, in RWKV-PEFT's --lora_config; scale = alpha / "
                           "rank) or --lora-scaling (the scale itself); for PiSSA pass --adapter-init instead")

    def _apply_disha(self, f: AdapterFile, prefix: str, key: str, D: torch.Tensor) -> None:
        W = self.target(f, key, prefix)
        out_features, in_features = W.shape
        if D.dim() == 2:  # "bone": [r, out]
            r = D.shape[0]
            if D.shape[1] != out_features or not 1 <= r <= in_features:
                raise AdapterError(f"adapter {f.path}: tensor {key!r} does not fit {prefix}.weight "
                                   f"{(out_features, in_features)}: expected DiSHA bone shape (r, {out_features}) "
                                   f"with r <= {in_features}, found {tuple(D.shape)}")
            update = peft.disha_bone
        elif D.dim() == 3:  # "bat": [in/r, r, r]
            r = D.shape[-1]
            if D.shape[1] != r or in_features % r or out_features % r or D.shape[0] != in_features // r:
                raise AdapterError(f"adapter {f.path}: tensor {key!r} does not fit {prefix}.weight "
                                   f"{(out_features, in_features)}: expected DiSHA bat shape (in/r, r, r) with r "
                                   f"dividing both sides, e.g. {(in_features // r, r, r)}, found {tuple(D.shape)}")
            update = peft.disha_bat
        else:
            raise AdapterError(f"adapter {f.path}: tensor {key!r}: expected DiSHA's [r, out] (bone) or "
                               f"[in/r, r, r] (bat), found shape {tuple(D.shape)}")
        self.claim(f, prefix + ".weight")
        self.sd[prefix + ".weight"] = update(W, D)

    def finish(self, records: list[dict[str, Any]]) -> Merged:
        o = self.options
        has_lora = any(r["lora"] for r in records)
        if (o.lora_alpha is not None or o.lora_scaling is not None) and not has_lora:
            raise AdapterError("--lora-alpha/--lora-scaling given, but no adapter holds LoRA tensors (*.lora_A/B)")
        if self.init is not None:
            unused = sorted(k for k in self.init.tensors if k not in self.init_used)
            if not has_lora:
                raise AdapterError(f"--adapter-init {self.init.path} given, but no adapter holds the trained "
                                   "PiSSA matrices (*.lora_A/B)")
            if unused:
                raise AdapterError(f"PiSSA init {self.init.path}: {len(unused)} tensors match no trained LoRA "
                                   f"matrix, e.g. {unused[0]!r} (is it the init_pissa.pth of the same run?)")
        return Merged(self.sd, self.initial_wkv, self.state_from, tuple(records))


def _one(values: set) -> Any:
    """The single value of a set, a sorted list of several, or None for none."""
    if not values:
        return None
    return next(iter(values)) if len(values) == 1 else sorted(values)


def merge_adapters(base: StateDict, cfg: ModelConfig, options: AdapterOptions,
                   initial_wkv: torch.Tensor | None = None) -> Merged:
    """Apply ``options``' adapter files to ``base`` (a checked checkpoint of shape ``cfg``, tuned
    state already split off into ``initial_wkv``); the base dict is not changed."""
    merger = _Merger(base, cfg, options, initial_wkv)
    records = [merger.apply(read_adapter(path, device=merger.device)) for path in options.paths]
    return merger.finish(records)


def prepare_checkpoint(sd: StateDict, options: AdapterOptions, where: str) -> tuple[ModelConfig, Merged]:
    """A checkpoint's tensors as the model needs them: shape inferred, every key checked, its own
    tuned state (``blocks.N.att.time_state``) split off, then ``options``' adapters applied."""
    cfg = infer_config(sd)
    sd, initial_wkv = split_time_state(sd, cfg, where)
    check_state_dict(sd, cfg)
    if not options:
        return cfg, Merged(sd, initial_wkv, f"the {where}" if initial_wkv is not None else None, ())
    return cfg, merge_adapters(sd, cfg, options, initial_wkv)


def adapter_options(adapters: Sequence[str | Path] | AdapterOptions | None, *, adapter_init: str | Path | None = None,
                    lora_alpha: float | None = None, lora_scaling: float | None = None) -> AdapterOptions:
    """``load_model``'s keyword arguments as one :class:`AdapterOptions`."""
    if isinstance(adapters, AdapterOptions):
        if adapter_init is not None or lora_alpha is not None or lora_scaling is not None:
            raise AdapterError("pass adapter_init/lora_alpha/lora_scaling inside the AdapterOptions, not beside it")
        return adapters
    if isinstance(adapters, (str, Path)):
        adapters = [adapters]
    return AdapterOptions(tuple(adapters or ()), adapter_init, lora_alpha, lora_scaling)


# The adapter options of `rwkveval serve`, `rwkveval merge` and the pytest plugin, as (flag, keyword
# arguments) for argparse's add_argument, which pytest's addoption also takes.
ADAPTER_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--adapter", dict(action="append", type=Path, default=[], metavar="PATH",
                       help="an RWKV-PEFT adapter merged at load: LoRA, PiSSA (with --adapter-init), DiSHA/Bone "
                            "or a tuned state (.pth or .safetensors); repeatable, e.g. a LoRA and a state "
                            "(default: none)")),
    ("--adapter-init", dict(type=Path, default=None, metavar="PATH",
                            help="PiSSA: the init_pissa.pth of the same training run; the adapter's LoRA "
                                 "matrices are then merged as W - B0 A0 + B A (default: none, a plain LoRA)")),
    ("--lora-alpha", dict(type=positive_float, default=None, metavar="ALPHA",
                          help="LoRA scale = ALPHA / rank: the lora_alpha of training (RWKV-PEFT's "
                               "--lora_config) (default: the adapter file's metadata, else an error)")),
    ("--lora-scaling", dict(type=positive_float, default=None, metavar="S",
                            help="LoRA scale given whole, for trainers that define it otherwise "
                                 "(e.g. alpha / sqrt(rank)) (default: none)")),
)


def fine_tune_name(base_name: str, adapters: Sequence[str | Path]) -> str:
    """A fine-tune's name: the base's name and each adapter file's stem, joined by '+'
    (``rwkv7-g1-0.1b+math-lora``): the served model id, the report folder, the thresholds key."""
    return "+".join([base_name, *(Path(p).stem for p in adapters)])


def add_adapter_options(add) -> None:
    """Register :data:`ADAPTER_OPTIONS` with ``add`` (``parser.add_argument`` or pytest's ``addoption``)."""
    for flag, kwargs in ADAPTER_OPTIONS:
        add(flag, **kwargs)


def options_from(get) -> AdapterOptions:
    """:class:`AdapterOptions` from parsed options; ``get(name)`` reads one by its dest name."""
    return AdapterOptions(tuple(get("adapter") or ()), get("adapter_init"), get("lora_alpha"), get("lora_scaling"))
