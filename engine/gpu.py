"""The GPU path: the reference model of :mod:`engine.model` with the CUDA kernels swapped in.

:class:`RWKV7CUDA` has the reference's API (``forward(tokens, state, logits=..., inplace=...)``,
scoring, generation) and its numbers, and replaces only what :mod:`engine.kernels` accelerates:

- the token-shift mixes (six in the time mix, one in the channel mix): ``ops.token_shift_mix``
- the WKV-7 recurrence: ``ops.wkv7_forward`` (sequence kernel for prefill, step kernel for
  T = 1), fed log(decay): in float16 / bfloat16 a decay near 1 rounds to exactly 1, its log does not
- group norm + bonus + gate after the WKV: ``ops.groupnorm_bonus_gate``

Matrix products stay with cuBLAS through torch, in the model's dtype (float16, bfloat16 or float32;
float32 results assume torch's default of no TF32).

Decoding ([B, 1] steps with ``inplace=True``, as ``generate`` and the scorers run them) replays
CUDA graphs, since a small model's step is bound by kernel launches, not by the GPU. A graph bakes
in the addresses of every tensor it touches, so it is keyed on the batch size, the logits mode and
the caller's state tensors (address, shape, strides): the caller's state *is* the graph's static
state buffer and nothing is copied in or out, while the token ids go through a static input
buffer. A key seen for the first time runs eagerly (so every kernel, and cuBLAS for that batch
size, has run once before any capture: a first-ever launch inside a capture can fail), its second
sighting captures, later ones replay; graphs of other shapes or states stay cached, the least
recently used evicted first. ``use_graphs=False`` keeps the plain launch-per-op path.

A capture that fails (an operation the driver refuses while capturing, say) costs nothing but
time: nothing ran during the capture, so the step runs eagerly instead, the key decodes without
graphs from then on, the model warns once and counts it in ``graph_stats["capture_failed"]``.
"""
from __future__ import annotations

import contextlib
import warnings
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Literal

import torch

from .config import ModelConfig
from .errors import InputError
from .kernels import cupy_available, cupy_install_hint, ops
from .model import _DECAY_SCALE, _LN_X_EPS, DTYPES, LayerWeights, RWKV7, TorchPath
from .state import State

Plan = Literal["eager", "capture", "replay"]


# ---------------------------------------------------------------------------------------------
# Checks (pure: run on any machine)


def check_gpu_target(device: str | torch.device, dtype: str, head_size: int, *,
                     cuda_devices: int, has_cupy: bool) -> torch.device:
    """Check that a model with heads of ``head_size`` can run on ``device`` in ``dtype``.

    ``cuda_devices`` is ``torch.cuda.device_count()`` and ``has_cupy`` whether CuPy imports
    (parameters, so the checks run without a GPU). Returns the device (index None for "cuda").
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {sorted(DTYPES)}, found {dtype!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device must be 'cuda' or 'cuda:N' for the GPU path, found {device!r}") from exc
    if dev.type != "cuda":
        raise InputError(f"the GPU path runs on a CUDA device: expected 'cuda' or 'cuda:N', found {device!r}")
    if cuda_devices < 1:
        raise InputError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU on this machine")
    if dev.index is not None and dev.index >= cuda_devices:
        raise InputError(f"device {str(device)!r} asked for, but torch sees {cuda_devices} CUDA GPU(s) "
                         f"(indices 0 to {cuda_devices - 1})")
    if not has_cupy:
        raise InputError(f"the GPU path launches its kernels through CuPy, which is not installed: "
                         f"{cupy_install_hint()}")
    if head_size not in ops.HEAD_SIZES:
        raise InputError(f"the GPU kernels take head sizes {ops.HEAD_SIZES}, found a model with "
                         f"head size {head_size}; run it on the CPU reference path (device='cpu')")
    return dev


def is_decode_step(tokens: Any, state: Any, logits: Any, inplace: bool) -> bool:
    """True for a call a decode graph can serve: tokens [B, 1], a given state updated in place."""
    return (inplace and isinstance(state, State) and isinstance(tokens, torch.Tensor)
            and tokens.dim() == 2 and tokens.shape[1] == 1 and logits in ("all", "last", "none"))


def _signature(t: torch.Tensor) -> tuple:
    return (t.device.type, t.device.index, t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)


def decode_graph_key(batch_size: int, state: State, logits: str) -> tuple:
    """What a captured decode step depends on: the batch size, whether the head runs, and the
    addresses, shapes and strides of the state tensors it reads and writes in place.

    Two calls with equal keys run the same kernels on the same memory, so one graph serves both,
    even when the second state is a new tensor that the allocator placed where the first one was.
    """
    head = "none" if logits == "none" else "last"  # "all" and "last" agree at T = 1
    return (batch_size, head, _signature(state.att_x), _signature(state.wkv), _signature(state.ffn_x))


class GraphCache:
    """Captured decode graphs by key, least recently used evicted first.

    ``plan(key)``: "replay" when the key has a graph; "capture" on its ``capture_after``-th
    sighting; "eager" before that, and always for a key whose capture failed (``disable``).
    States that live for one step (rows leaving the batch, ragged segments) so never pay for a
    capture, which costs about two eager steps. ``capture_after`` is at least 2: the eager
    first sighting launches every kernel of the step once before any capture records it.
    """

    def __init__(self, max_graphs: int = 8, capture_after: int = 2, max_seen: int = 64):
        if max_graphs < 1 or max_seen < 1:
            raise InputError(f"GraphCache: expected max_graphs and max_seen >= 1, found "
                             f"{max_graphs}, {max_seen}")
        if capture_after < 2:
            raise InputError(f"GraphCache: expected capture_after >= 2 (a key's first step runs eagerly, so "
                             f"no kernel is launched for the first time inside a capture), found {capture_after}")
        self.max_graphs = max_graphs
        self.capture_after = capture_after
        self.max_seen = max_seen
        self._graphs: OrderedDict[Hashable, Any] = OrderedDict()
        self._seen: OrderedDict[Hashable, int] = OrderedDict()
        self._disabled: OrderedDict[Hashable, None] = OrderedDict()

    def plan(self, key: Hashable) -> Plan:
        if key in self._graphs:
            self._graphs.move_to_end(key)
            return "replay"
        if key in self._disabled:
            self._disabled.move_to_end(key)
            return "eager"
        count = self._seen.pop(key, 0) + 1
        if count >= self.capture_after:
            return "capture"
        self._seen[key] = count
        while len(self._seen) > self.max_seen:
            self._seen.popitem(last=False)
        return "eager"

    def get(self, key: Hashable) -> Any:
        return self._graphs[key]

    def disable(self, key: Hashable) -> None:
        """Never capture ``key`` again (its capture failed); remembered for the latest ``max_seen`` keys."""
        self._seen.pop(key, None)
        self._disabled[key] = None
        self._disabled.move_to_end(key)
        while len(self._disabled) > self.max_seen:
            self._disabled.popitem(last=False)

    def is_disabled(self, key: Hashable) -> bool:
        return key in self._disabled

    def store(self, key: Hashable, entry: Any) -> list[Any]:
        """Keep ``entry`` for ``key``; return the entries evicted to make room."""
        self._seen.pop(key, None)
        self._graphs[key] = entry
        self._graphs.move_to_end(key)
        evicted = []
        while len(self._graphs) > self.max_graphs:
            evicted.append(self._graphs.popitem(last=False)[1])
        return evicted

    def clear(self) -> None:
        self._graphs.clear()
        self._seen.clear()
        self._disabled.clear()

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._graphs


@dataclass
class DecodeGraph:
    """One captured decode step. The state it updates is the caller's, by address (see the key)."""

    graph: Any                     # torch.cuda.CUDAGraph, or anything with .replay()
    tokens: torch.Tensor           # [B, 1] int64 on the device: the captured input buffer
    logits: torch.Tensor | None    # [B, 1, V] float32: the captured output (None: head skipped)

    def run(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Replay on ``tokens`` [B, 1] (already checked, on the device); return fresh logits."""
        self.tokens.copy_(tokens)
        self.graph.replay()
        # a copy: the next replay overwrites the captured output, and callers may keep logits
        return None if self.logits is None else self.logits.clone()


class GraphRuntime:
    """The torch.cuda calls a decode capture makes, in one place (CPU tests put a stand-in here)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._side: torch.cuda.Stream | None = None

    def side_stream(self) -> torch.cuda.Stream:
        """The stream captures run on (one per model: capturing on the current stream is refused
        when it is the legacy default stream)."""
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        return self._side

    def current_stream(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)

    def use(self, stream: torch.cuda.Stream):
        return torch.cuda.stream(stream)

    def new_graph(self) -> torch.cuda.CUDAGraph:
        return torch.cuda.CUDAGraph()

    def recover(self) -> str | None:
        """After a failed capture: wait for the device and leave no error pending.

        torch's and CuPy's error checks reset the runtime's error state (cudaGetLastError) when
        they raise, so what can remain is an asynchronous error, which a synchronise reports (and
        torch's check resets). Returns that report, or None. A second synchronise that fails too
        means the context itself is broken (a sticky error): that raises.
        """
        try:
            torch.cuda.synchronize(self.device)
        except RuntimeError as exc:
            torch.cuda.synchronize(self.device)
            return str(exc).strip().splitlines()[0]
        return None


def _contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


# ---------------------------------------------------------------------------------------------
# The model


class RWKV7CUDA(RWKV7):
    """An RWKV-7 model on a CUDA GPU: the reference math with the kernels of engine/kernels."""

    padded_rows = False  # the CUDA WKV kernel runs every row T steps: ragged batches run as segments

    def __init__(self, sd: dict[str, torch.Tensor], cfg: ModelConfig, *, device: str = "cuda",
                 dtype: str = "float32", path: str | None = None, sha256: str | None = None,
                 initial_wkv: torch.Tensor | None = None, state_from: str | None = None,
                 adapters: tuple[dict, ...] = (), use_graphs: bool = True, max_graphs: int = 8,
                 capture_after: int = 2, fast: bool = True):
        dev = check_gpu_target(device, dtype, cfg.head_size, cuda_devices=torch.cuda.device_count(),
                               has_cupy=cupy_available())
        if dev.type == "cuda" and dev.index is None:  # a state made on "cuda" reports cuda:N
            dev = torch.device("cuda", torch.cuda.current_device())
        # the tuned initial state and adapter records live in the reference class: zero_state()
        # (and so batching, scoring, generation and the server) start from it on either path
        super().__init__(sd, cfg, device=str(dev), dtype=dtype, path=path, sha256=sha256,
                         initial_wkv=initial_wkv, state_from=state_from, adapters=adapters)
        self.use_graphs = use_graphs
        self.graphs = GraphCache(max_graphs, capture_after)
        self.graph_stats: Counter[str] = Counter()  # plans taken: eager / capture / replay; capture_failed
        self._capturing = False
        self._capture_warned = False
        self._runtime = GraphRuntime(self.device)

    def info(self) -> dict:
        info = super().info()
        info["engine"] = "cuda-kernels"
        info["cuda_graphs"] = self.use_graphs
        if self.device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(self.device)
        return info

    def clear_graphs(self) -> None:
        """Drop every captured graph (and its memory pool)."""
        self.graphs.clear()

    # ------------------------------------------------------------------ forward and decode graphs

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, state: State | None = None,
                logits: Literal["all", "last", "none"] = "all", *, inplace: bool = False,
                logit_rows: int | None = None, lengths=None) -> tuple[torch.Tensor | None, State]:
        """As :meth:`RWKV7.forward`; [B, 1] steps with ``inplace=True`` replay CUDA graphs. Rows of
        different lengths (``lengths``) are refused here (padded_rows is False)."""
        if lengths is not None:
            return super().forward(tokens, state, logits, inplace=inplace, logit_rows=logit_rows, lengths=lengths)
        if isinstance(state, State):
            self._check_state_device(state)
        if (self._capturing or not self.use_graphs or logit_rows is not None
                or not is_decode_step(tokens, state, logits, inplace)):
            return super().forward(tokens, state, logits, inplace=inplace, logit_rows=logit_rows)
        checked = self.check_tokens(tokens)
        state.check_fits(self.config, checked.shape[0])
        key = decode_graph_key(checked.shape[0], state, logits)
        plan = self.graphs.plan(key)
        self.graph_stats[plan] += 1
        if plan == "eager":  # the caller's tokens: checking ids on the device would sync
            return super().forward(tokens, state, logits, inplace=True)
        if plan == "replay":
            return self.graphs.get(key).run(checked), state
        try:
            entry = self._capture_decode(key, checked, state, logits)
        except RuntimeError as exc:  # nothing ran while capturing: the step is still to do
            self._capture_failed(key, checked.shape[0], exc)
            return super().forward(tokens, state, logits, inplace=True)
        return entry.run(checked), state

    def check_tokens(self, tokens) -> torch.Tensor:
        if self._capturing:  # the capture's static buffer: checked before, and min/max would sync
            return tokens
        return super().check_tokens(tokens)

    def _check_state_device(self, state: State) -> None:
        for name in ("att_x", "wkv", "ffn_x"):
            t = getattr(state, name)
            if isinstance(t, torch.Tensor) and t.device != self.device:
                raise InputError(f"state.{name} is on {t.device}, expected the model's device {self.device}")

    def _capture_decode(self, key: tuple, tokens: torch.Tensor, state: State, logits: str) -> DecodeGraph:
        """Record one decode step on ``state``'s tensors; nothing runs until the graph replays."""
        runtime = self._runtime
        stream, current = runtime.side_stream(), runtime.current_stream()
        static_tokens = tokens.clone()
        graph = runtime.new_graph()
        stream.wait_stream(current)
        self._capturing = True
        try:
            with runtime.use(stream):
                # capture_begin/end rather than torch.cuda.graph(), which runs gc.collect() and
                # empty_cache() on entry: tens of ms, paid each time generate's batch changes
                graph.capture_begin()
                try:
                    out, _ = RWKV7.forward(self, static_tokens, state, logits, inplace=True)
                except BaseException:
                    with contextlib.suppress(RuntimeError):  # the capture is broken; keep the cause
                        graph.capture_end()
                    raise
                graph.capture_end()
        finally:
            self._capturing = False
            current.wait_stream(stream)
        entry = DecodeGraph(graph, static_tokens, out)
        self.graphs.store(key, entry)
        return entry

    def _capture_failed(self, key: tuple, batch_size: int, exc: RuntimeError) -> None:
        """Graphs off for ``key``; the device synchronised with no error left pending; warn once."""
        self.graphs.disable(key)
        self.graph_stats["capture_failed"] += 1
        pending = self._runtime.recover()
        if self._capture_warned:
            return
        self._capture_warned = True
        after = f"; the device then reported: {pending}" if pending else ""
        warnings.warn(
            f"CUDA graph capture of a decode step (batch {batch_size}) failed: {exc}{after}. That state "
            "decodes with plain launches from now on (same results, more launch overhead); later "
            "failures are counted in graph_stats['capture_failed'] without a warning",
            RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ the math, kernels swapped in

    def _choose_kernels(self, fast: bool) -> TorchPath:
        """Products as the reference writes them (cuBLAS takes [out, in] weights as they are, and
        its results are contiguous, which the kernels need); the WKV recurrence and the fused
        steps are this class's own (the kernels of engine/kernels, whatever ``fast`` says)."""
        self.wkv_impl = "CUDA kernel (engine/kernels/wkv7.cu)"
        return TorchPath()

    def _time_mix(self, layer: int, p: LayerWeights, x: torch.Tensor, x_prev: torch.Tensor,
                  wkv: torch.Tensor, v_first: torch.Tensor | None, last: torch.Tensor | None = None,
                  starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """As the reference: x (B, T, C) after ln1, x_prev (B, C) float32, wkv (B, H, N, N) float32
        updated in place (``last`` and ``starts`` are always None: padded_rows is False, forward
        refuses lengths).
        Lines without a kernel are the reference's, line for line."""
        B, T, C = x.shape
        H, N = self.config.n_head, self.config.head_size
        mixed = ops.token_shift_mix(x, _contiguous(x_prev), p.mix)  # six (B, T, C)
        r, w, k, v, a, g, kk, v_first = self._projections(layer, p, mixed, v_first)
        # log(decay) in (-0.61, 0), computed in float32 and stored in the model dtype; the kernel
        # takes exp in float32, so a decay of 1 - 2^-12 survives float16 / bfloat16
        log_decay = (-_DECAY_SCALE * torch.sigmoid((p.w0 + w).float())).to(x.dtype)  # (B, T, C)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, H, N)

        state = _contiguous(wkv)  # a batch-prefix view (engine.batching) already is
        y = ops.wkv7_forward(state, heads(r), heads(log_decay), heads(k), heads(v), heads(-kk),
                             heads(kk * a), w_log=True)  # (B, T, H, N) float32
        if state is not wkv:
            wkv.copy_(state)
        y = ops.groupnorm_bonus_gate(y, heads(r), heads(k), heads(v), heads(g), p.ln_x_w, p.ln_x_b,
                                     p.r_k, eps=_LN_X_EPS)  # (B, T, H, N) in the model dtype
        return self.kernels.linear(y.view(B, T, C), p.W_o), v_first

    def _channel_mix(self, p: LayerWeights, x: torch.Tensor, x_prev: torch.Tensor,
                     starts: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C) after ln2; x_prev: (B, C) float32 (``starts`` always None, as in _time_mix)."""
        k = ops.token_shift_mix(x, _contiguous(x_prev), p.ffn_x_k.view(1, -1))[0]  # (B, T, C), M = 1
        k = torch.relu(self.kernels.linear(k, p.ffn_key)).square_()  # (B, T, F)
        return self.kernels.linear(k, p.ffn_value)  # (B, T, C)
