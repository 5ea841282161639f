"""Running many sequences of different lengths through the model together, and how many.

An RNN has no attention mask, so padding would change the state. Instead, rows are sorted by
length (longest first) and run in segments: each segment feeds every row that still has tokens,
for as many tokens as the shortest of them has left. The rows still running are always a prefix
of the batch, so their state is a view that the model updates in place; no token is wasted.

Each segment after the first is a separate forward call over the rows left, so rows of very
different lengths turn one batch into a tail of small calls, each paying a pass over every
weight for a few tokens (decode speed, not prefill speed). Callers therefore batch rows of
similar length: :func:`pack` cuts a list sorted longest first into batches of at most
``Budget.tokens`` tokens (rows x the longest) and ``Budget.rows`` rows, and :func:`auto_budget`
sizes both from the model's shape and the memory free on its device.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .errors import InputError
from .state import State

# Logits of one forward call are at most this many floats (512 MiB), whatever the vocabulary.
LOGIT_BUDGET = 1 << 27
# Tokens in one forward call: bounds activation memory on long prompts.
MAX_TOKENS_PER_CALL = 8192

# on_logits(rows, starts, logits): rows are the caller's row indices, starts the position in each
# row's sequence of logits[:, 0], logits float32 [len(rows), T, V] (the logits after each token).
LogitsCallback = Callable[[list[int], list[int], torch.Tensor], None]
# on_tokens(prompt_tokens, generated_tokens): what the engine just ran, so callers can show honest
# rates (a shared prefix counts once, a cached continuation not at all)
TokensCallback = Callable[[int, int], None]


# Rows per batch at most (auto): the state of every row is copied a few times per batch.
MAX_ROWS = 512
# Decoding rows at most (auto): past ~64 rows a CPU decoding step's products are compute-bound
# (the batch-64 figure of tests/test_throughput.py), and each finished row costs a state copy.
MAX_DECODE_ROWS = 64
# Share of the free memory a batch may use (activations, states, logits); the rest is the
# process's own tensors and the allocator's slack.
_MEMORY_SHARE = 0.25
# On the CPU a forward call's largest activation, the time mix's six token-shift mixes (6 C
# numbers per token), stays within this many bytes (float32). glibc serves an allocation past 32
# MiB with a fresh mmap, whose pages fault in on first touch at every call: on a 2-core AVX-512
# EPYC (2026-12-02) the six mixes of 2,048 tokens of the 0.1B shape (38 MB) took 16.8 ms into a new
# buffer against 2.5 into a kept one, and 64 LAMBADA documents scored in calls of up to 8,192 tokens
# ran ~6.8 documents/s against 8.5-8.9 in calls of up to 512-1,024 (F.linear's products; medians
# of three, same process, turn about). Smaller calls also keep a call's activations nearer the
# caches: with 8, 12, 16 and 24 MiB here (455, 682, 910 and 1,365 tokens; oneDNN's products) the
# same documents took 5.85-6.14, 5.82-6.06, 6.24-6.51 and 6.37-6.71 s.
CPU_CALL_BYTES = 12 << 20


def check_batch_size(value, name: str = "batch_size", automatic: bool = True) -> None:
    """Raise unless ``value`` is an int >= 1 (or, with ``automatic``, None: sized by the engine).
    ``name`` is what the caller calls it (``batch_size``, ``max_batch``)."""
    if value is None and automatic:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be an int >= 1{' or None (automatic)' if automatic else ''}, found {value!r}")


class HostLogits:
    """A model whose logits live on an accelerator, as the CPU-side code sees it: ``forward``
    hands its logits back on the CPU while the state stays on the model's device.

    Scoring, decoding and search index logits with CPU tensors (targets, sampled ids) and sample
    with CPU generators, so every one of them takes its logits through this one view
    (:func:`on_host`) instead of moving them at each use.
    """

    def __init__(self, model):
        self.model = model
        self.config = model.config
        self.tokenizer = model.tokenizer
        self.device = model.device
        self.padded_rows = bool(getattr(model, "padded_rows", False))
        self.ragged_rows = runs_ragged(model)

    def zero_state(self, batch_size: int) -> State:
        return self.model.zero_state(batch_size)

    def info(self) -> dict:
        return self.model.info()

    def forward(self, tokens, state=None, logits="all", *, inplace=False, logit_rows=None, lengths=None):
        pad = {} if lengths is None else {"lengths": lengths}
        out, new = self.model.forward(tokens, state, logits, inplace=inplace, logit_rows=logit_rows, **pad)
        return (None if out is None else out.cpu()), new


def on_host(model):
    """``model`` when its logits are CPU tensors already, else its :class:`HostLogits` view."""
    if isinstance(model, HostLogits) or getattr(getattr(model, "device", None), "type", "cpu") == "cpu":
        return model
    return HostLogits(model)


def max_tokens_per_call(vocab_size: int, want_logits: bool, max_tokens: int = MAX_TOKENS_PER_CALL) -> int:
    if not want_logits:
        return max_tokens
    return max(1, min(max_tokens, LOGIT_BUDGET // vocab_size))


@dataclass(frozen=True)
class Budget:
    """How much one batch holds: ``tokens`` (rows x the longest row, per forward call), ``rows``,
    and ``prefix_states`` (states of shared prefixes kept at once while scoring)."""

    tokens: int
    rows: int
    prefix_states: int

    def __post_init__(self) -> None:
        for name in ("tokens", "rows", "prefix_states"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"batch budget: {name} must be an int >= 1, found {value!r}")


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: CUDA's own count, or the kernel's MemAvailable (sysconf elsewhere)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def auto_budget(model, rows: int | None = None) -> Budget:
    """The batch budget for ``model`` from its shape and the memory free now. ``rows`` (a user's
    batch size) caps the rows; the token budget is whatever a quarter of the free memory holds in
    activations (~(24 C + 3 F) float32 per token in flight), at most :func:`call_tokens`."""
    cfg = model.config
    usable = int(free_memory(model.device) * _MEMORY_SHARE)
    per_token = (24 * cfg.n_embd + 3 * cfg.ffn_size) * 4
    state_row = cfg.n_layer * (cfg.n_head * cfg.head_size ** 2 + 2 * cfg.n_embd) * 4
    tokens = min(max(256, min(MAX_TOKENS_PER_CALL, usable // 2 // per_token)), call_tokens(model))
    auto_rows = max(1, min(MAX_ROWS, usable // 4 // (3 * state_row), LOGIT_BUDGET // cfg.vocab_size))
    prefix_states = max(8, min(1024, usable // 4 // state_row))
    return Budget(tokens, rows if rows is not None else auto_rows, prefix_states)


def call_tokens(model) -> int:
    """Tokens per forward call at most, whatever the memory: MAX_TOKENS_PER_CALL, and on the CPU as
    many as keep the six token-shift mixes within :data:`CPU_CALL_BYTES` (682 on the 0.1B shape,
    256 at C = 2048, 128 at C = 4096), at least 64."""
    if getattr(getattr(model, "device", None), "type", "cpu") == "cpu":
        return min(MAX_TOKENS_PER_CALL, max(64, CPU_CALL_BYTES // (6 * model.config.n_embd * 4)))
    return MAX_TOKENS_PER_CALL


def auto_decode_rows(model) -> int:
    """Rows decoded together when the batch size is automatic."""
    return min(MAX_DECODE_ROWS, auto_budget(model).rows)


# a batch of rows sorted longest first stops where padding them to the longest would waste more
# than this share of its token slots (rows of one batch run to the longest row's end together)
MAX_PADDING = 0.1


def runs_ragged(model) -> bool:
    """Whether ``model.forward(lengths=...)`` runs only the rows' own tokens (``ragged_rows``: the CPU
    kernels drop the padding), so a batch of rows costs the sum of their lengths."""
    return bool(getattr(model, "padded_rows", False) and getattr(model, "ragged_rows", False))


def pack(lengths: Sequence[int], tokens: int, rows: int, max_padding: float = MAX_PADDING,
         ragged: bool = False) -> list[range]:
    """Cut items sorted longest first (``lengths``) into consecutive batches of at most ``rows``
    items whose count x first (longest) length is at most ``tokens``, and whose padding to the
    longest is at most ``max_padding`` of that (a padded model computes it; a ragged batch runs a
    segment per distinct length instead); a longer item goes alone. ``ragged`` (a model that
    drops the padding, :func:`runs_ragged`): batches whose lengths sum to at most ``tokens``, with
    no padding limit, so every call but the last is full."""
    out, i = [], 0
    if ragged:
        while i < len(lengths):
            take, held = 1, max(1, lengths[i])
            while take < rows and i + take < len(lengths) and held + lengths[i + take] <= tokens:
                held += lengths[i + take]
                take += 1
            out.append(range(i, i + take))
            i += take
        return out
    while i < len(lengths):
        longest = max(1, lengths[i])
        take = max(1, min(rows, tokens // longest, len(lengths) - i))
        held = 0
        for k in range(take):  # stop before the row whose padding would pass the limit
            held += lengths[i + k]
            if (k + 1) * longest - held > max_padding * (k + 1) * longest:
                take = max(1, k)
                break
        out.append(range(i, i + take))
        i += take
    return out


def advance(model, seqs: Sequence[Sequence[int]], state: State | None = None, *,
            on_logits: LogitsCallback | None = None, want_last: bool = False,
            on_tokens: TokensCallback | None = None, max_tokens: int | None = None, consume: bool = False
            ) -> tuple[State, torch.Tensor | None]:
    """Run ``seqs[i]`` from row i of ``state`` (zeros if None) to its end.

    Returns the final state (row i for seqs[i]; the input state is not changed unless ``consume``:
    the caller gives it up, and advance runs in it where its rows come longest first, saving a
    copy of the whole state; a 10-row 0.1B state is 24 MB, fresh memory whose pages fault in) and, with
    ``want_last``, the logits after each sequence's last token, float32 [n, V]. An empty sequence
    keeps its row's state (its last logits are then undefined: NaN).
    ``on_logits`` receives the logits of every position, segment by segment, so that callers
    reduce them at once (log-probabilities of targets) instead of keeping [n, T, V] around.
    ``on_tokens(count, 0)`` is told the tokens of each forward call as it returns. A forward call
    runs at most ``max_tokens`` tokens (None: :func:`call_tokens`; fewer with ``on_logits``: their
    logits fit LOGIT_BUDGET).
    Rows run together: a model with ``padded_rows`` takes every running row to the longest one's
    end (or the budget) in one call, the shorter ones padded (``forward(lengths=...)``); others
    run segments to the shortest running row's end. Where the model drops the padding
    (:func:`runs_ragged`), the budget counts the rows' own tokens (except for ``on_logits``, whose
    logits come padded).
    """
    n = len(seqs)
    if n == 0:
        raise InputError("advance: expected at least one sequence, found none")
    cfg = model.config
    if state is not None and state.batch_size != n:
        raise InputError(f"advance: {n} sequences but the state has batch size {state.batch_size}")
    if max_tokens is None:
        max_tokens = call_tokens(model)
    lengths = [len(s) for s in seqs]
    order = sorted(range(n), key=lambda i: -lengths[i])  # longest first: running rows are a prefix
    in_order = order == list(range(n))  # the rows came longest first
    # a copy, updated in place below (every row of a fresh state is the same: no reordering copy)
    if state is None:
        work = model.zero_state(n)
    else:
        work = state if consume and in_order else state.select(order)
    last = torch.full((n, cfg.vocab_size), float("nan")) if want_last else None
    # want_last alone computes logits for the rows that end in a segment only: [rows, V], not [rows, T, V]
    budget = max_tokens_per_call(cfg.vocab_size, on_logits is not None, max_tokens)
    # a model that runs right-padded rows (forward's lengths) takes each segment to the longest
    # row's end, the shorter rows padded: one call where ragged segments took one per length, each
    # a pass over every weight for a few tokens per row (LAMBADA's 64-context batch: 36 calls)
    padded = bool(getattr(model, "padded_rows", False))
    ragged = runs_ragged(model) and on_logits is None
    pos = 0  # every running row has consumed the same number of tokens
    running = sum(1 for L in lengths if L > 0)
    while running:
        rows = order[:running]
        remaining = lengths[rows[0 if padded else -1]] - pos  # the longest (padded) or shortest running row
        seg = max(1, min(remaining, budget // running))
        if ragged and seg < remaining:  # the longest segment whose rows' own tokens fit the budget
            left = [lengths[i] - pos for i in rows]
            hi = remaining
            while seg < hi:
                mid = (seg + hi + 1) // 2
                if sum(min(mid, n) for n in left) <= budget:
                    seg = mid
                else:
                    hi = mid - 1
        row_len = [min(seg, lengths[i] - pos) for i in rows]  # all seg unless padded
        tokens = torch.tensor([list(seqs[i][pos:pos + n]) + [0] * (seg - n) for i, n in zip(rows, row_len)],
                              dtype=torch.long)
        ending = sum(1 for i in rows if lengths[i] <= pos + seg)  # the last rows of the batch end here
        mode = "all" if on_logits is not None else ("last" if want_last and ending else "none")
        view = State(work.att_x[:, :running], work.wkv[:, :running], work.ffn_x[:, :running])
        pad = {"lengths": row_len} if min(row_len) < seg else {}
        if mode == "last" and ending < running:
            # only the rows that end need logits: the head is as big as the rest of a small model
            logits, _ = model.forward(tokens, view, logits=mode, inplace=True, logit_rows=ending, **pad)
        else:
            logits, _ = model.forward(tokens, view, logits=mode, inplace=True, **pad)
        if on_tokens is not None:
            on_tokens(sum(row_len), 0)  # the rows' own tokens, not the padding
        if on_logits is not None:
            on_logits(rows, [pos] * running, logits)  # a padded row's logits past its end are never read
        if want_last and ending:
            # (running or ending, V), the ending rows last: "last" logits are each row's own last
            final = logits[:, -1] if mode == "last" else logits[torch.arange(running), torch.tensor(row_len) - 1]
            for j, i in enumerate(rows[running - ending:]):
                last[i] = final[final.shape[0] - ending + j]
        pos += seg
        while running and lengths[order[running - 1]] <= pos:
            running -= 1
    if in_order:  # already in the caller's order
        return work, last
    inverse = [0] * n
    for j, i in enumerate(order):
        inverse[i] = j
    return work.select(inverse), last


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of ``seqs``."""
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return n
