"""The RWKV-7 ("x070") model: the readable torch reference path that runs anywhere.

Names follow the checkpoint keys and the paper: r w k v a g, kk (the normalised key that
removes old values from the state), v_first (layer 0's value, mixed into later layers).
A sequence runs as matrix products over all T tokens at once; only the WKV recurrence is
sequential in time, as a rank-2 update per step (O(N^2) per head, not the N^3 of ``state @ ab``).

One switch, ``fast``, picks how the products and the recurrence run (as nanoGPT's ``flash`` flag
does): the plain path (:class:`TorchPath`: ``F.linear``, ``x @ A @ B`` and
:func:`wkv7_reference`, the oracle every fast path is tested against) or, on the CPU, the
compiled kernels with each product in the form measured fastest on this machine
(:class:`engine.kernels.cpu.CPUPath`). The math below is the same either way.

Shapes: B batch, T tokens, C = n_embd = H * N, H heads of size N, V vocabulary, L layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from .adapters import AdapterOptions, adapter_options, prepare_checkpoint
from .checkpoint import file_sha256, read_state_dict
from .config import ModelConfig
from .errors import InputError, out_of_vocabulary
from .state import State

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# decay = exp(-exp(-0.5) * sigmoid(.)) keeps w in (0.545, 1): the official constant 0.606531 is exp(-0.5)
_DECAY_SCALE = math.exp(-0.5)
# group norm eps of ln_x: the head outputs are small, the official value is 64e-5, not 1e-5
_LN_X_EPS = 64e-5


@dataclass
class LayerWeights:
    """One block's tensors, vectors flattened to [C]; linear weights [out, in] as in the checkpoint."""

    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    mix: torch.Tensor  # [6, C]: x_r x_w x_k x_v x_a x_g
    w0: torch.Tensor
    w1: torch.Tensor  # [C, rank_w]
    w2: torch.Tensor  # [rank_w, C]
    a0: torch.Tensor
    a1: torch.Tensor
    a2: torch.Tensor
    v0: torch.Tensor | None  # None in layer 0
    v1: torch.Tensor | None
    v2: torch.Tensor | None
    g1: torch.Tensor
    g2: torch.Tensor
    k_k: torch.Tensor
    k_a: torch.Tensor
    r_k: torch.Tensor  # [C] (from [H, N])
    W_r: torch.Tensor  # [C, C]
    W_k: torch.Tensor
    W_v: torch.Tensor
    W_o: torch.Tensor
    ln_x_w: torch.Tensor
    ln_x_b: torch.Tensor
    ffn_x_k: torch.Tensor
    ffn_key: torch.Tensor  # [F, C]
    ffn_value: torch.Tensor  # [C, F]


def wkv7_reference(
    state: torch.Tensor, r: torch.Tensor, w: torch.Tensor, k: torch.Tensor,
    v: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
) -> torch.Tensor:
    """The WKV-7 recurrence, one step at a time, updating ``state`` in place.

    state: [B, H, N, N] float32 (float64 for golden values), contiguous, state[..., i, j] for value
    index i and key index j
    r, w, k, v, a, b: [B, T, H, N] in state's dtype (w is the decay in (0, 1); a = -kk, b = kk * a_gate)
    returns y: [B, T, H, N] in state's dtype

        S_t = S_{t-1} diag(w_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,   y_t = S_t r_t
    """
    B, T, H, N = r.shape
    S = state.view(B * H, N, N)  # (BH, N, N), a view: updated in place
    # time-major, batch*heads flattened, as columns/rows for bmm
    def tm(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(0, 1).reshape(T, B * H, N)

    r_, w_, a_ = tm(r).unsqueeze(-1), tm(w).unsqueeze(-2), tm(a).unsqueeze(-1)  # (T,BH,N,1) (T,BH,1,N) (T,BH,N,1)
    v_ = tm(v).unsqueeze(-1)  # (T, BH, N, 1)
    # the rank-2 update [S a, v] @ [b; k] in one baddbmm: the [b; k] rows are known up front
    bk = torch.stack((tm(b), tm(k)), dim=2)  # (T, BH, 2, N)
    y = torch.empty(T, B * H, N, 1, dtype=state.dtype, device=r.device)  # (T, BH, N, 1)
    for t in range(T):
        sa = torch.bmm(S, a_[t])  # S a                                    (BH, N, 1)
        S.mul_(w_[t])  # S diag(w)                                          (BH, N, N)
        S.baddbmm_(torch.cat((sa, v_[t]), 2), bk[t])  # + (S a) b^T + v k^T (BH, N, N)
        torch.bmm(S, r_[t], out=y[t])  # y = S r                            (BH, N, 1)
    return y.view(T, B, H, N).transpose(0, 1)  # (B, T, H, N)


class TorchPath:
    """The plain path: the products and the recurrence as the math writes them, in torch.

    ``linear(x, W)``: x [..., in] times a linear weight W [out, in] (the checkpoint's layout);
    ``lora(x, A, B, act)``: act(x @ A) @ B with A [in, rank], B [rank, out];
    ``wkv``: :func:`wkv7_reference`. The fast paths have the same contracts.
    """

    name = "torch reference"

    @staticmethod
    def linear(x: torch.Tensor, W: torch.Tensor, contiguous: bool = False) -> torch.Tensor:
        return F.linear(x, W)  # (..., out)

    @staticmethod
    def lora(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, act=None) -> torch.Tensor:
        h = x @ A  # (..., rank)
        return (act(h) if act is not None else h) @ B  # (..., out)

    wkv = staticmethod(wkv7_reference)
    wkv_output = None  # no fused forms: RWKV7._wkv_output and _token_shift run their lines one by one
    token_shift = None

    @staticmethod
    def block_step(model, x, state, new, ln_x_eps: float) -> None:
        return None  # no block in one call: forward runs each block's lines


class RWKV7:
    """An RWKV-7 model on one device in one dtype (float32 or bfloat16; the state is float32).

    ``initial_wkv`` [L, H, N, N] is a tuned initial state (RWKV-PEFT's state tuning): every
    sequence starts from it instead of zeros. ``adapters`` describes the adapter files merged into
    ``sd`` (engine/adapters.py), for :meth:`info`. ``fast=False`` runs the plain torch path
    (:class:`TorchPath`) instead of the CPU kernels.
    """

    def __init__(self, sd: dict[str, torch.Tensor], cfg: ModelConfig, *, device: str = "cpu",
                 dtype: str = "float32", path: str | None = None, sha256: str | None = None,
                 initial_wkv: torch.Tensor | None = None, state_from: str | None = None,
                 adapters: Sequence[dict] = (), fast: bool = True):
        if dtype not in DTYPES:
            raise InputError(f"dtype must be one of {sorted(DTYPES)}, found {dtype!r}")
        self.config = cfg
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.dtype_name = dtype
        self.path = path
        self.sha256 = sha256
        dt, dev = self.dtype, self.device
        self.adapters = tuple(adapters)
        self.initial_wkv = None
        self.state_from = state_from
        if initial_wkv is not None:
            want = (cfg.n_layer, cfg.n_head, cfg.head_size, cfg.head_size)
            if tuple(initial_wkv.shape) != want:
                raise InputError(f"initial_wkv: expected shape (n_layer, n_head, head_size, head_size) = {want}, "
                                 f"found {tuple(initial_wkv.shape)}")
            self.initial_wkv = initial_wkv.to(device=dev, dtype=torch.float32).contiguous()  # (L, H, N, N)

        def t(key: str) -> torch.Tensor:
            return sd[key].to(device=dev, dtype=dt).contiguous()

        lin = t  # linear weights: [out, in], as in the checkpoint (the products take that layout)

        def vec(key: str) -> torch.Tensor:
            return sd[key].reshape(-1).to(device=dev, dtype=dt).contiguous()

        C = cfg.n_embd
        # ln0 applies to the embedding only, so it is folded into the table once (as the official code does)
        emb = sd["emb.weight"].to(torch.float32)
        emb = F.layer_norm(emb, (C,), sd["blocks.0.ln0.weight"].float(), sd["blocks.0.ln0.bias"].float())
        self.emb = emb.to(device=dev, dtype=dt).contiguous()  # [V, C]
        self.ln_out_w, self.ln_out_b = t("ln_out.weight"), t("ln_out.bias")
        self.head = lin("head.weight")  # [V, C]
        self.layers: list[LayerWeights] = []
        for i in range(cfg.n_layer):
            p = f"blocks.{i}."
            has_v = i > 0
            self.layers.append(LayerWeights(
                ln1_w=t(p + "ln1.weight"), ln1_b=t(p + "ln1.bias"), ln2_w=t(p + "ln2.weight"), ln2_b=t(p + "ln2.bias"),
                mix=torch.stack([vec(p + f"att.x_{c}") for c in "rwkvag"]),
                w0=vec(p + "att.w0"), w1=t(p + "att.w1"), w2=t(p + "att.w2"),
                a0=vec(p + "att.a0"), a1=t(p + "att.a1"), a2=t(p + "att.a2"),
                v0=vec(p + "att.v0") if has_v else None, v1=t(p + "att.v1") if has_v else None,
                v2=t(p + "att.v2") if has_v else None,
                g1=t(p + "att.g1"), g2=t(p + "att.g2"),
                k_k=vec(p + "att.k_k"), k_a=vec(p + "att.k_a"), r_k=vec(p + "att.r_k"),
                W_r=lin(p + "att.receptance.weight"), W_k=lin(p + "att.key.weight"),
                W_v=lin(p + "att.value.weight"), W_o=lin(p + "att.output.weight"),
                ln_x_w=t(p + "att.ln_x.weight"), ln_x_b=t(p + "att.ln_x.bias"),
                ffn_x_k=vec(p + "ffn.x_k"), ffn_key=lin(p + "ffn.key.weight"), ffn_value=lin(p + "ffn.value.weight"),
            ))
        from .tokenizer import get_tokenizer

        self.tokenizer = get_tokenizer(cfg.vocab_size)
        self.fast = fast
        self.kernels = self._choose_kernels(fast)

    def _choose_kernels(self, fast: bool):
        """The plain torch path, or on the CPU the compiled kernels with products in the forms
        measured fastest here (engine/kernels/tuning.py; the first model of a shape on a machine
        times them, a few tens of ms, later ones read the decision from the cache)."""
        self.wkv_impl = "torch reference"
        if not fast or self.device.type != "cpu":
            return TorchPath()
        from .kernels import cpu, tuning

        kernel = cpu.load() is not None
        wkv = wkv7_reference
        if not kernel:
            self.wkv_impl = f"torch reference (C kernel unavailable: {cpu.UNAVAILABLE_REASON})"
        elif self.config.head_size <= cpu.MAX_N:
            wkv, self.wkv_impl = cpu.wkv7_cpu, "C kernel (engine/kernels/wkv7_cpu.c)"
        first = self.layers[0]
        # the few-row points are timed on the weights a decode step reads, in its order (from memory)
        stream = [W for lw in self.layers for W in (lw.W_r, lw.W_k, lw.W_v, lw.W_o, lw.ffn_key)] + [self.head]
        plan = tuning.plan_for(first.ffn_key, first.W_r, first.w1, first.w2, kernel, stream=stream)
        # the fused time-mix output reads float32 or bf16 (a float16 model runs its torch lines)
        fused = wkv is not wkv7_reference and self.dtype in (torch.float32, torch.bfloat16)
        if fused:
            self.wkv_impl += ", fused with the time mix's output"
        return cpu.CPUPath(plan, wkv, self.wkv_impl, fused=fused, packing=self._packing_fits())

    def _packing_fits(self) -> bool:
        """Whether the ``packed`` product form may keep a reordered copy of the linear weights: only
        where they take at most a quarter of the memory free now (else it runs on them as they are)."""
        from .batching import free_memory

        weights = [self.head] + [W for lw in self.layers
                                 for W in (lw.W_r, lw.W_k, lw.W_v, lw.W_o, lw.ffn_key, lw.ffn_value)]
        size = sum(W.numel() * W.element_size() for W in weights)
        free = free_memory(self.device)
        fits = 4 * size <= free
        self.packing_note = (f"{'allowed' if fits else 'not allowed'}: the linear weights take "
                             f"{size / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free")
        return fits

    # ------------------------------------------------------------------ public API

    def info(self) -> dict:
        """Plain JSON description of the model for reports."""
        return {
            "path": self.path, "sha256": self.sha256, "config": self.config.to_dict(),
            "dtype": self.dtype_name, "device": str(self.device), "n_params": self.config.n_params,
            "tokenizer": self.tokenizer.name, "wkv": self.wkv_impl, "engine_path": self.kernels.name,
            **({"cpu_products": {**self.kernels.plan.describe(), "packed_weights": self.packing_note,
                                 "decode_block_step": self.kernels.block_step_rows()}}
               if hasattr(self.kernels, "plan") else {}),
            "adapters": [dict(r) for r in self.adapters],
            "initial_state": "zeros" if self.initial_wkv is None else f"tuned ({self.state_from or 'given'})",
        }

    def zero_state(self, batch_size: int) -> State:
        """The state before any token, in every row: zeros, or the tuned initial state. Scoring,
        generation, batching and the server all start sequences here."""
        return State.start(self.config, batch_size, self.device, self.initial_wkv)

    # forward(lengths=...): rows of different lengths, right-padded, run in one call (engine.batching)
    padded_rows = True

    @property
    def ragged_rows(self) -> bool:
        """Whether forward(lengths=...) runs only the rows' own tokens (the CPU kernels: the padding
        is dropped before the first layer), so a batch costs its tokens, not rows x the longest."""
        return self.kernels.token_shift is not None

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, state: State | None = None,
                logits: Literal["all", "last", "none"] = "all", *, inplace: bool = False,
                logit_rows: int | None = None, lengths: Sequence[int] | None = None
                ) -> tuple[torch.Tensor | None, State]:
        """Run ``tokens`` [B, T] from ``state`` (zeros if None).

        Returns logits float32 [B, T, V] (``logits="last"``: [B, 1, V]; ``"none"``: None, the head
        is skipped) and the new state. ``logit_rows=k``: logits of the last k rows only ([k, ., V];
        a ragged batch's rows that end in this call). The state passed in is left unchanged unless
        ``inplace``, which saves a copy of the whole state per call (decoding, ragged batches).
        ``lengths``: row b holds ``lengths[b]`` (1..T) tokens and padding after them: its state is
        the one after its own tokens (padding leaves the recurrence as it is), ``"last"`` logits are
        those after its last token, and ``"all"`` logits past its end mean nothing (zeros where
        :attr:`ragged_rows`: there the padding is dropped and every layer runs the rows' tokens one
        after another, as one row, the kernels told where each row starts).
        """
        tokens = self.check_tokens(tokens)
        B, T = tokens.shape
        last = self._check_lengths(lengths, B, T)  # (B,) each row's last position, or None: all T
        if logits not in ("all", "last", "none"):
            raise InputError(f"logits must be 'all', 'last' or 'none', found {logits!r}")
        if logit_rows is not None and (not isinstance(logit_rows, int) or not 1 <= logit_rows <= B or logits == "none"):
            raise InputError(f"logit_rows must be an int in [1, B={B}] with logits 'all' or 'last', "
                             f"found {logit_rows!r} with logits={logits!r}")
        if state is None:
            state, inplace = self.zero_state(B), True
        elif not isinstance(state, State):
            raise InputError(f"state must be an engine.State or None, found {type(state).__name__}")
        else:
            state.check_fits(self.config, B)
        if inplace:
            new = state
        else:
            new = State(torch.empty_like(state.att_x), state.wkv.clone(), torch.empty_like(state.ffn_x))

        starts = None  # a ragged batch's row offsets [B + 1]: its tokens run as one row (1, n)
        if last is not None and self.ragged_rows:
            real = torch.arange(T) <= last.unsqueeze(1)  # (B, T) the rows' own tokens
            starts = F.pad((last + 1).cumsum(0), (1, 0))  # (B + 1,)
            tokens, ends, last = tokens[real].unsqueeze(0), starts[1:] - 1, None  # (1, n); rows' last tokens
        x = F.embedding(tokens, self.emb)  # (B, T, C); indexing emb[tokens] took ~3x longer (a gather per element)
        v_first = None
        C = self.config.n_embd
        rows = torch.arange(B) if last is not None else None

        def final(t: torch.Tensor) -> torch.Tensor:  # (B, C): each row's last token
            if starts is not None:
                return t[0, ends]
            return t[:, -1] if last is None else t[rows, last]

        # a decode step on the CPU kernels: each block's lines below in one kernel call (block_cpu.c)
        block_step = self.kernels.block_step(self, x, state, new, _LN_X_EPS) if T == 1 else None
        for i, p in enumerate(self.layers):
            if block_step is not None:
                v_first = block_step(i, p, v_first)  # x, new's rows of layer i updated in place
                continue
            xx = F.layer_norm(x, (C,), p.ln1_w, p.ln1_b)  # (B, T, C)
            out, v_first = self._time_mix(i, p, xx, state.att_x[i], new.wkv[i], v_first, last, starts)
            new.att_x[i] = final(xx)
            x = x + out
            xx = F.layer_norm(x, (C,), p.ln2_w, p.ln2_b)
            x = x + self._channel_mix(p, xx, state.ffn_x[i], starts)
            new.ffn_x[i] = final(xx)
        if logits == "none":
            return None, new
        first = B - logit_rows if logit_rows is not None else 0  # the rows whose logits are wanted
        if logits == "last":
            x = final(x).unsqueeze(1)[first:]  # (B - first, 1, C)
        elif starts is not None:
            x = x[:, int(starts[first]):]  # (1, their tokens, C)
        else:
            x = x[first:]  # (B - first, T, C)
        x = F.layer_norm(x, (C,), self.ln_out_w, self.ln_out_b)
        out = self.kernels.linear(x, self.head, contiguous=True).float()  # (B - first, T, V)
        if starts is not None and logits == "all":  # back to rows, zeros past each row's end
            padded = out.new_zeros(B - first, T, out.shape[-1])
            padded[real[first:]] = out[0]
            out = padded
        return out, new

    def loglikelihood(self, pairs, **kwargs):
        from .scoring import loglikelihood

        return loglikelihood(self, pairs, **kwargs)

    def loglikelihood_rolling(self, token_lists, bos: int | None = 0, **kwargs):
        from .scoring import loglikelihood_rolling

        return loglikelihood_rolling(self, token_lists, bos=bos, **kwargs)

    def generate(self, prompts, max_new_tokens: int, stop=None, temperature: float = 0.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | Sequence[int] | None = None, batch_size: int | None = 16, **callbacks):
        from .generate import generate

        return generate(self, prompts, max_new_tokens, stop=stop, temperature=temperature, top_p=top_p,
                        top_k=top_k, seed=seed, batch_size=batch_size, **callbacks)

    # ------------------------------------------------------------------ checks

    def _check_lengths(self, lengths, B: int, T: int) -> torch.Tensor | None:
        """``lengths`` as each row's last position (B,) on the CPU, or None when every row is T long."""
        if lengths is None:
            return None
        if not self.padded_rows:
            raise InputError(f"lengths: {type(self).__name__} runs rows of one length only; expected None, "
                             f"found {list(lengths)[:8]}")
        values = lengths.tolist() if isinstance(lengths, torch.Tensor) and lengths.dim() == 1 else lengths
        try:
            values = list(values)
        except TypeError:
            values = None
        if values is None or len(values) != B or not all(
                isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= T for n in values):
            shown = values[:8] if values is not None else lengths
            raise InputError(f"lengths: expected {B} ints in [1, T={T}] (one per row), found {shown!r:.120}")
        if min(values) == T:
            return None
        return torch.tensor(values, dtype=torch.long) - 1

    def check_tokens(self, tokens) -> torch.Tensor:
        """Validate a [B, T] batch of token ids; return it as a LongTensor on the model's device."""
        if not isinstance(tokens, torch.Tensor):
            raise InputError(f"tokens must be a torch.LongTensor of shape [B, T], found {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise InputError(f"tokens must hold integer ids (LongTensor [B, T]), found dtype {tokens.dtype}")
        if tokens.dim() != 2:
            raise InputError(f"tokens must have shape [B, T], found {tuple(tokens.shape)}")
        if tokens.shape[0] < 1 or tokens.shape[1] < 1:
            raise InputError(f"tokens must hold at least one sequence of at least one token: found shape {tuple(tokens.shape)}")
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise out_of_vocabulary(lo if lo < 0 else hi, self.config.vocab_size)
        return tokens.to(device=self.device, dtype=torch.long)

    # ------------------------------------------------------------------ the math

    def _time_mix(self, layer: int, p: LayerWeights, x: torch.Tensor, x_prev: torch.Tensor,
                  wkv: torch.Tensor, v_first: torch.Tensor | None, last: torch.Tensor | None = None,
                  starts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, C) after ln1; x_prev: (B, C) float32; wkv: (B, H, N, N) float32, updated in place;
        last: (B,) each row's last position, padding after it (None: none); starts: (B + 1,) a ragged
        batch's row offsets, its rows' tokens one after another in x (1, n, C) (the CPU kernels)."""
        mixed = self._token_shift(x, x_prev, p.mix, starts)  # xr xw xk xv xa xg, (6, B, T, C)
        if self.kernels.wkv_output is None:
            r, w, k, v, a, g, kk, v_first = self._projections(layer, p, mixed, v_first)
            return self.kernels.linear(self._wkv_output(p, wkv, r, w, k, v, a, g, kk, last), p.W_o), v_first
        # the CPU kernels: the lines of _mix_products and _wkv_output in one call (wkv7_cpu.c); they
        # take a ragged batch as it is (starts), so forward never hands them padding
        if last is not None:
            raise RuntimeError("the fused time mix takes ragged batches (starts), not padded rows (last)")
        r, w, k, v, a, g, v_gate = self._products(layer, p, mixed)
        v_first = v if layer == 0 else v_first
        y = self.kernels.wkv_output(wkv, r, w, k, v, a, g, v_first, v_gate, p.w0, p.r_k, p.k_k, p.k_a, p.v0,
                                    p.ln_x_w, p.ln_x_b, _LN_X_EPS, starts)
        return self.kernels.linear(y, p.W_o), v_first

    def _token_shift(self, x: torch.Tensor, x_prev: torch.Tensor, mix: torch.Tensor,
                     starts: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, C), x_prev (B, C) float32 (the token before x[:, 0]), mix (J, C) -> (J, B, T, C):
        each mix j interpolates every token with the one before it. The CPU kernels run it as one
        call (``kernels.token_shift``), also over a ragged batch (``starts``, see _time_mix)."""
        if self.kernels.token_shift is not None:
            return self.kernels.token_shift(x, x_prev, mix, starts)
        shifted = torch.cat((x_prev.to(x.dtype).unsqueeze(1), x[:, :-1]), 1)  # (B, T, C)
        return x + (shifted - x) * mix.view(-1, 1, 1, x.shape[-1])

    def _wkv_output(self, p: LayerWeights, wkv: torch.Tensor, r, w, k, v, a, g, kk,
                    last: torch.Tensor | None = None) -> torch.Tensor:
        """From the projections (each (B, T, C); w before w0 and the sigmoid) to the output
        product's input (B, T, C): the decay, the WKV recurrence (``wkv`` updated in place), the
        per-head group norm, the current token's bonus and the gate. The CPU kernels run these
        lines and _mix_products' as one call (``kernels.wkv_output``: engine/kernels/wkv7_cpu.c,
        in float32)."""
        B, T, C = r.shape
        H, N = self.config.n_head, self.config.head_size
        decay = torch.exp(-_DECAY_SCALE * torch.sigmoid((p.w0 + w).float()))  # (B, T, C) float32 in (0.545, 1)
        k_state = k
        if last is not None:  # padding leaves the state as it is: S diag(1) + (S 0) 0^T + v 0^T = S
            real = (torch.arange(T) <= last.unsqueeze(1)).unsqueeze(-1)  # (B, T, 1)
            decay, kk, k_state = decay.masked_fill(~real, 1.0), kk * real, k * real

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.float().view(B, T, H, N)

        y = self.kernels.wkv(wkv, heads(r), decay.view(B, T, H, N), heads(k_state), heads(v), heads(-kk),
                             heads(kk * a))
        y = F.group_norm(y.reshape(B * T, C).to(r.dtype), H, p.ln_x_w, p.ln_x_b, eps=_LN_X_EPS).view(B, T, C)
        bonus = (r * k * p.r_k).view(B, T, H, N).sum(-1, keepdim=True) * v.view(B, T, H, N)  # (B, T, H, N)
        y = y + bonus.view(B, T, C)
        return y * g

    def _projections(self, layer: int, p: LayerWeights, mixed, v_first: torch.Tensor | None):
        """From the six token-shift mixes xr xw xk xv xa xg (each (B, T, C)) to r, w (the decay's
        LoRA output, before w0 and the sigmoid), k, v, a, g, kk and v_first, each (B, T, C).
        Shared by the reference and the GPU path, which swaps in kernels only around it."""
        r, w, k, v, a, g, v_gate = self._products(layer, p, mixed)
        if layer == 0:
            v_first = v
        k, v, kk = self._mix_products(p, k, v, a, v_first, v_gate)
        return r, w, k, v, a, g, kk, v_first

    def _products(self, layer: int, p: LayerWeights, mixed):
        """The products of the six mixes: r, w, k, v (before the value residual), a, g, and in
        layers after the first the value residual's gate (its LoRA output, before v0 and the
        sigmoid; None in layer 0), each (B, T, C)."""
        xr, xw, xk, xv, xa, xg = mixed
        linear, lora = self.kernels.linear, self.kernels.lora
        r = linear(xr, p.W_r)  # (B, T, C)
        w = lora(xw, p.w1, p.w2, torch.tanh)  # (B, T, C)
        k = linear(xk, p.W_k)
        v = linear(xv, p.W_v)
        a = torch.sigmoid(p.a0 + lora(xa, p.a1, p.a2))  # in-context learning rate
        g = lora(xg, p.g1, p.g2, torch.sigmoid)  # output gate
        v_gate = lora(xv, p.v1, p.v2) if layer > 0 else None
        return r, w, k, v, a, g, v_gate

    def _mix_products(self, p: LayerWeights, k, v, a, v_first, v_gate):
        """kk (the normalised key that removes old values from the state), the key scaled by the
        in-context learning rate, and the value pulled towards layer 0's (``v_gate`` None: layer 0)."""
        B, T, C = k.shape
        H, N = self.config.n_head, self.config.head_size
        kk = F.normalize((k * p.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (a - 1) * p.k_a)
        if v_gate is not None:
            v = v + (v_first - v) * torch.sigmoid(p.v0 + v_gate)
        return k, v, kk

    def _channel_mix(self, p: LayerWeights, x: torch.Tensor, x_prev: torch.Tensor,
                     starts: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, C) after ln2; x_prev: (B, C) float32; starts: as in _time_mix."""
        k = self._token_shift(x, x_prev, p.ffn_x_k.view(1, -1), starts)[0]  # (B, T, C)
        k = torch.relu_(self.kernels.linear(k, p.ffn_key)).square_()  # relu(k W)^2 (B, T, F), in place
        return self.kernels.linear(k, p.ffn_value)  # (B, T, C)


def load_model(path: str | Path, device: str = "cpu", dtype: str = "float32", *, checksum: bool = True,
               sha256: str | None = None, adapters: Sequence[str | Path] | AdapterOptions | None = None,
               adapter_init: str | Path | None = None, lora_alpha: float | None = None,
               lora_scaling: float | None = None, fast: bool = True) -> RWKV7:
    """Load an RWKV-7 checkpoint (.pth or .safetensors) and check every key and shape.

    ``sha256``: the file's checksum when the caller computed it already (it is not read again).
    ``adapters``: RWKV-PEFT adapter files (LoRA, PiSSA with ``adapter_init``, DiSHA, a tuned state)
    merged into the checkpoint's tensors before the model is built (engine/adapters.py); LoRA's
    scale is ``lora_alpha / rank`` or ``lora_scaling``. A ``blocks.N.att.time_state`` in the
    checkpoint itself (a merged state tuning) is its initial state. ``fast=False``: the plain
    torch path (the oracle) instead of the CPU kernels.
    """
    if dtype not in DTYPES:
        raise InputError(f"dtype must be one of {sorted(DTYPES)}, found {dtype!r}")
    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"device {device!r} asked for, but torch sees no CUDA GPU on this machine")
    elif str(device) != "cpu":
        raise InputError(f"device must be 'cpu' or 'cuda[:N]', found {device!r}")
    options = adapter_options(adapters, adapter_init=adapter_init, lora_alpha=lora_alpha, lora_scaling=lora_scaling)
    sd = read_state_dict(path)
    if sha256 is None and checksum:
        sha256 = file_sha256(path)
    return _build(sd, device, dtype, options, f"checkpoint {path}", path=str(path), sha256=sha256, fast=fast)


def from_state_dict(sd: dict[str, torch.Tensor], device: str = "cpu", dtype: str = "float32", *,
                    adapters: Sequence[str | Path] | AdapterOptions | None = None,
                    adapter_init: str | Path | None = None, lora_alpha: float | None = None,
                    lora_scaling: float | None = None, fast: bool = True) -> RWKV7:
    """Build a model from an in-memory state dict (checked like a file), with adapters and ``fast``
    as in load_model."""
    options = adapter_options(adapters, adapter_init=adapter_init, lora_alpha=lora_alpha, lora_scaling=lora_scaling)
    return _build(sd, device, dtype, options, "state dict", fast=fast)


def _build(sd: dict[str, torch.Tensor], device: str, dtype: str, options: AdapterOptions, where: str,
           path: str | None = None, sha256: str | None = None, fast: bool = True) -> RWKV7:
    cfg, merged = prepare_checkpoint(sd, options, where)
    return model_class(device)(merged.state_dict, cfg, device=device, dtype=dtype, path=path, sha256=sha256,
                               initial_wkv=merged.initial_wkv, state_from=merged.state_from,
                               adapters=merged.records, fast=fast)


# ---- the GPU path (engine/gpu.py): chosen by device; imported only when asked for
def model_class(device: str | torch.device) -> type[RWKV7]:
    """The class that runs a model on ``device``: engine.gpu.RWKV7CUDA on CUDA, RWKV7 elsewhere."""
    if str(device).startswith("cuda"):
        from .gpu import RWKV7CUDA

        return RWKV7CUDA
    return RWKV7
# ---- end of the GPU path's hook


def random_state_dict(cfg: ModelConfig, seed: int = 0, *, layer0_v: bool = True) -> dict[str, torch.Tensor]:
    """A seeded random RWKV-7 checkpoint of shape ``cfg`` in the official layout and key names.

    The scales keep activations in the range a trained model sees (decays near 1, small LoRAs),
    so numerical comparisons exercise every term of the math.
    """
    from .checkpoint import expected_shapes, OPTIONAL_LAYER0

    g = torch.Generator().manual_seed(seed)
    C = cfg.n_embd
    sd: dict[str, torch.Tensor] = {}
    for key, shape in expected_shapes(cfg).items():
        if not layer0_v and key in {f"blocks.0.{n}" for n in OPTIONAL_LAYER0}:
            continue
        shape = (1, 1, C) if shape == "vec" else shape
        name = key.split(".", 2)[-1] if key.startswith("blocks.") else key
        if name.endswith(("ln1.weight", "ln2.weight", "ln0.weight", "ln_x.weight")) or key == "ln_out.weight":
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias") and "ln" in name or key == "ln_out.bias":
            t = 0.1 * torch.randn(shape, generator=g)
        elif name.startswith("att.x_") or name == "ffn.x_k":
            t = torch.rand(shape, generator=g)
        elif name in ("att.w0",):
            t = torch.randn(shape, generator=g) * 0.5 - 2.0
        elif name in ("att.a0", "att.v0"):
            t = torch.randn(shape, generator=g) * 0.5
        elif name in ("att.k_k", "att.k_a", "att.r_k"):
            t = 0.5 + 0.5 * torch.rand(shape, generator=g)
        elif len(shape) == 2:
            fan_in = shape[1] if name.endswith(".weight") else shape[0]
            t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
        else:
            t = torch.randn(shape, generator=g)
        sd[key] = t.float().contiguous()
    return sd


def random_model(cfg: ModelConfig, seed: int = 0, device: str = "cpu", dtype: str = "float32",
                 fast: bool = True) -> RWKV7:
    """A seeded random-weights model of shape ``cfg`` (for tests, self-checks and speed work)."""
    return from_state_dict(random_state_dict(cfg, seed), device=device, dtype=dtype, fast=fast)
