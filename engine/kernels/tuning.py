"""Choosing the CPU product forms by measurement, once per machine, and remembering the choice.

Which way of computing ``F.linear(x, W)`` is fastest depends on the CPU and the torch build: with
bf16 units (AVX512_BF16, AMX) torch's native bf16 GEMM ran ~3x faster than float32 on one EPYC,
without them it converts element by element and ran ~7x slower on another; MKL's ``W @ x^T``
beat ``x @ W^T`` by 1.2-3x over 2-512 rows there, and the matvec kernel beat both for a few
rows. No CPU name or flag predicts all of that, so at first use :func:`plan_for` times every
candidate form (:func:`engine.kernels.cpu.linear_candidates`) on the model's own weights at each
row count of :data:`~engine.kernels.cpu.POINTS` and keeps the fastest. Feature detection only
shortcuts: where the CPU has no AVX-512 at all, native half-precision GEMMs over many rows are
not timed (the fallback costs seconds per call there); it never overrides a measurement.
A decode step reads each weight once, from memory: the few-row points therefore time each call
on the next slice of the model's own weights (``stream``), in turn, so no call finds its weight in
the cache the previous calls filled. Timed on one slice again and again, a 16 MiB probe stayed in
the 300 MiB L3 of one Xeon, where F.linear ran 8% faster than the matvec kernel; from memory the
kernel read 21.3 GB/s and F.linear 19.6 (the 0.1B shape's float32 weights, 2026-12-01).
Each form is timed with its result row-major, as the model's next step reads it (the fused time
mix, the next product): ``W @ x^T`` returns a transposed view, and timed without the copy it
won at 256 rows on another Xeon with AMX (2026-12-02), where a 512-token bf16 prefill then ran
~20% slower than with ``x @ W^T`` (2,600 against 3,250 tokens/s).
Timings taken while other processes load the cores are slower than the machine's own (a thread
descheduled in a parallel region costs milliseconds), so a choice made then can be worse. Where
that shows (:func:`disturbed`: the matvec kernel timed slower over fewer rows than over more),
the plan is measured again, at once or when a cached entry is read; else :func:`forget` (or
deleting the file) measures again at the next model.

The decision is cached in ``products-<key>.json`` beside the compiled kernels
(:func:`engine.kernels.cpu.cache_dir`: ``$RWKVEVAL_CACHE/kernels`` or ``~/.cache/rwkveval/kernels``),
one file per machine signature (:func:`engine.kernels.cpu.cpu_signature`: architecture, CPU model
and flags) and torch version, one entry per dtype, weight shapes, thread count, compiled library
(its key: sources, compiler, flags) and candidate forms (a digest of the lists timed), so an entry
measured for other kernels or other candidates is measured again, never used. An entry whose
recorded signature or torch version differs from this process's is never used. Reading,
measuring and writing happen under an exclusive ``flock`` of ``products-<key>.json.lock``, and a
write merges its entry into what the file holds then, so processes sharing the cache (pytest-xdist
workers) neither lose each other's entries nor time their products at the same moment. A cache
that cannot be read, locked or written costs a new measurement, and
``model.info()["cpu_products"]["source"]`` says so.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from . import cpu
from .cpu import POINTS, Plan, linear_candidates, linear_form, lora_candidates, lora_form

try:
    import fcntl
except ImportError:  # not POSIX: the cache is used without a lock
    fcntl = None  # type: ignore[assignment]

CACHE_VERSION = 5  # 2: entries keyed by the compiled library and the candidate forms too; 3: few-row
# points timed on the model's weights in turn (from memory), not on one probe (from the cache);
# 4: each form timed with its result row-major, as the model's next step reads it; 5: a sixth
# point, 1024 rows, for more than 512 (and the oneDNN forms among the candidates)
# a timed call should take about this long: probes are sliced to it on big models, so a whole
# selection stays within a few hundred milliseconds (0.2-0.5 s on the 0.1B shape, on the 2-core EPYC
# of 2026-12-02, with the oneDNN forms and the 1,024-row point) to seconds (7B)
_PROBE_BYTES = 16 << 20  # memory-bound points: bytes of W read per call
_PROBE_FLOPS = 400e6  # compute-bound points: multiply-adds x 2 per call (the 0.1B shape's whole [C, C])
# ... but a result of at least this many bytes: the many-row forms differ by what their result costs
# (W @ x^T's transposing copy), which a narrow slice's result, held in L2, would hide
_PROBE_RESULT_BYTES = 2 << 20
_REPEATS = 4
_KEEP_WITHIN = 2.0  # a form this much slower than the best after two rounds is not timed again
_HALF = (torch.bfloat16, torch.float16)
# The matvec kernel makes one pass over W whatever the row count, so at the few-row points (each
# timed on slices of the same size) it never costs less over more rows. Timings where it took more
# than this ratio (plus the slack) at 1 row than at 4, or at 4 than at 16, were disturbed by other
# load, and a plan chosen from them is measured again (2026-12-02, on the 2-core EPYC, a plan
# timed while apt-get ran beside it had the kernel at 3.2 ms over one row and 0.5 over four, and
# chose another form for one row).
_DISTURBED_RATIO = 1.5
_DISTURBED_SLACK_US = 20.0


cpu_info = cpu.cpu_info  # (model, flags): read in one place, engine/kernels/cpu.py


def cpu_flags() -> set[str]:
    return set(cpu.cpu_info()[1].split())


def machine_signature() -> dict[str, str]:
    """The CPU (:func:`engine.kernels.cpu.cpu_signature`) and the torch version: what a plan is valid for."""
    return {**cpu.cpu_signature(), "torch": torch.__version__}


def bf16_units() -> bool:
    """True when the CPU reports native bf16 arithmetic (AVX512_BF16 or AMX-BF16)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def _shortcut(dtype: torch.dtype, rows: int, forms: list[str]) -> list[str]:
    """Drop forms that cannot win and would take seconds to time: native half-precision GEMMs over
    many rows on a CPU without AVX-512 (torch then converts element by element; measured ~7x
    slower than float32 on the AVX2 reference machine)."""
    if cpu.is_x86() and dtype in _HALF and rows >= POINTS[3] and "avx512f" not in cpu_flags() and "upcast" in forms:
        return [f for f in forms if f not in ("wxt", "xwt")]
    return forms


def time_forms(forms: Sequence[str], run: Callable[[str], object], repeats: int = _REPEATS) -> dict[str, float]:
    """Best seconds per call of ``run(form)`` for each form: one warm-up call each, then rounds
    over the forms in turn, so a burst of load elsewhere hits them alike. The minimum is kept: on
    a shared machine a call whose thread was descheduled takes milliseconds longer, never less.
    From the second round on, forms slower than ``_KEEP_WITHIN`` x the best are not timed again."""
    for form in forms:
        run(form)  # first-touch allocations, library dispatch, thread pool start
    best = {form: math.inf for form in forms}
    alive = list(forms)
    for round_ in range(repeats):
        for form in alive:
            start = time.perf_counter()
            run(form)
            best[form] = min(best[form], time.perf_counter() - start)
        if round_ >= 1 and len(alive) > 1:
            fastest = min(best[f] for f in alive)
            alive = [f for f in alive if best[f] <= _KEEP_WITHIN * fastest]
    return best


def _probe(W: torch.Tensor, rows: int) -> torch.Tensor:
    """W's first rows, as many as keep one timed call near the probe budget (W's actual input size)."""
    out, inp = W.shape
    if rows <= POINTS[2]:
        keep = _PROBE_BYTES // (inp * W.element_size())
    else:
        keep = max(int(_PROBE_FLOPS // (2 * inp * rows)), _PROBE_RESULT_BYTES // (rows * W.element_size()))
    return W[:max(64, min(out, keep))]


def _stream(probe: torch.Tensor, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Slices of ``weights`` shaped like ``probe`` (same input size and dtype, as many rows), in the
    order a decode step reads them: what the few-row points are timed on, one slice per call. Just
    ``[probe]`` when no weight fits."""
    rows, inp = probe.shape
    out = []
    for W in weights:
        if W.dim() == 2 and W.shape[1] == inp and W.dtype == probe.dtype and W.is_contiguous():
            out.extend(W[i:i + rows] for i in range(0, W.shape[0] - rows + 1, rows))
    return out or [probe]


def candidates(dtype: torch.dtype, kernel: bool) -> dict[str, list[list[str]]]:
    """The forms :func:`measure` times at each of :data:`POINTS`, linear and LoRA."""
    return {"linear": [_shortcut(dtype, rows, linear_candidates(dtype, rows, kernel)) for rows in POINTS],
            "lora": [lora_candidates(dtype, rows, kernel) for rows in POINTS]}


def measure(ffn_key: torch.Tensor, att: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
            kernel: bool, stream: Sequence[torch.Tensor] = ()) -> tuple[Plan, dict]:
    """Time every candidate form at every point on the model's weights: slices of ``ffn_key`` [F, C]
    (the largest layer matrix) for the few-row points, where reading W dominates, each call on the
    next such slice of ``stream`` (the model's weights of input size C, in the order a step reads
    them; empty: ``ffn_key``'s first slice every time), ``att`` [C, C] for the many-row points, and
    a LoRA pair [C, r], [r, C]. Returns the plan and the timings (us)."""
    dtype = ffn_key.dtype
    gen = torch.Generator().manual_seed(0)
    linear, lora, timings = [], [], {}
    timed = candidates(dtype, kernel)
    transposed = (lora_a.t().contiguous(), lora_b.t().contiguous())  # kept by the model's path, as here
    few_rows = itertools.cycle(_stream(_probe(ffn_key, POINTS[0]), stream))  # one turn over all the points
    for point, rows in enumerate(POINTS):
        W = _probe(ffn_key if rows <= POINTS[2] else att, rows)
        x = torch.randn(rows, W.shape[1], generator=gen).to(dtype)
        forms = timed["linear"][point]
        weights = few_rows if rows <= POINTS[2] else itertools.repeat(W)
        packed = cpu.pack(W) if "packed" in forms else None  # reordered once, as the model's path keeps it
        best = time_forms(forms, lambda form: linear_form(form, x, next(weights), packed=packed).contiguous()) \
            if len(forms) > 1 else {forms[0]: 0.0}
        linear.append(min(best, key=best.get))
        timings[f"linear@{rows}"] = {f: round(t * 1e6, 1) for f, t in best.items() if math.isfinite(t)}
        xl = torch.randn(rows, lora_a.shape[0], generator=gen).to(dtype)
        forms = timed["lora"][point]
        pair = {form: (tuple(map(cpu.pack, transposed)) if form == "packed" else transposed) for form in forms}
        best = time_forms(forms, lambda form: lora_form(form, xl, lora_a, lora_b, torch.tanh, pair[form])) \
            if len(forms) > 1 else {forms[0]: 0.0}
        lora.append(min(best, key=best.get))
        if len(forms) > 1:
            timings[f"lora@{rows}"] = {f: round(t * 1e6, 1) for f, t in best.items() if math.isfinite(t)}
    return Plan(tuple(linear), tuple(lora)), timings


def disturbed(timings: dict) -> str | None:
    """Why these timings (``measure``'s, in us) cannot be the machine's own: the matvec kernel
    slower over fewer rows than over more at the few-row points (see ``_DISTURBED_RATIO``); None
    when they look sound."""
    def us(kind: str, rows: int) -> float | None:
        point = timings.get(f"{kind}@{rows}") if isinstance(timings, dict) else None
        t = point.get("matvec") if isinstance(point, dict) else None
        return t if isinstance(t, (int, float)) else None

    for kind in ("linear", "lora"):
        for fewer, more in zip(POINTS[:2], POINTS[1:3]):
            a, b = us(kind, fewer), us(kind, more)
            if a is not None and b is not None and a > _DISTURBED_RATIO * b + _DISTURBED_SLACK_US:
                return f"the matvec {kind} took {a} us over {fewer} rows and {b} over {more}"
    return None


def plan_key(dtype: torch.dtype, ffn_key: torch.Tensor, att: torch.Tensor, lora_a: torch.Tensor,
             kernel: bool) -> str:
    """The cache entry's name: dtype, the weight shapes timed, the thread count, the compiled
    kernels' library (its key, or none) and a digest of the candidate forms: a plan chosen
    among other forms, or with other kernels, is stale."""
    shapes = "x".join(map(str, ffn_key.shape)) + "," + "x".join(map(str, att.shape)) + "," + \
        "x".join(map(str, lora_a.shape))
    library = (cpu.loaded_key() or "unknown") if kernel else "none"
    forms = hashlib.sha256(json.dumps(candidates(dtype, kernel), sort_keys=True).encode()).hexdigest()[:12]
    return (f"{str(dtype).removeprefix('torch.')}|{shapes}|threads={torch.get_num_threads()}|kernel={library}"
            f"|forms={forms}")


def cache_file(signature: dict[str, str], directory: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
    return (directory or cpu.cache_dir()) / f"products-{digest}.json"


def _read(path: Path, signature: dict[str, str]) -> tuple[dict, str | None]:
    """(entries, problem): the file's plans when it belongs to this machine and torch, else {}."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError) as error:
        return {}, f"cache {path} unreadable ({error})"
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("plans"), dict):
        return {}, f"cache {path} has another format"
    if data.get("signature") != signature:
        return {}, f"cache {path} was written for {data.get('signature')}"
    return data["plans"], None


def _write(path: Path, signature: dict[str, str], key: str, entry: dict) -> str | None:
    """Add ``entry`` under ``key`` to the cache as the file holds it now (other processes' entries
    kept), written atomically; returns why not, or None."""
    plans, _ = _read(path, signature)
    plans = {**plans, key: entry}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            json.dump({"version": CACHE_VERSION, "signature": signature, "plans": plans}, f, indent=1, sort_keys=True)
        os.replace(f.name, path)
    except OSError as error:
        return f"not cached: {error}"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[str | None]:
    """Hold an exclusive flock of ``path``'s lock file for the block; yields why not, or None
    (without a lock the block still runs: at worst two processes measure the same plan)."""
    if fcntl is None:
        yield "not locked: no fcntl here"
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "a")
    except OSError as error:
        yield f"not locked: {error}"
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        except OSError as error:  # e.g. ENOLCK on a network file system without locks
            problem: str | None = f"not locked: {error}"
        else:
            problem = None
        yield problem


def forget(directory: Path | None = None) -> bool:
    """Delete this machine's cached decisions (all dtypes, shapes and thread counts); True if there were any."""
    path = cache_file(machine_signature(), directory)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def plan_for(ffn_key: torch.Tensor, att: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
             kernel: bool, *, stream: Sequence[torch.Tensor] = (), directory: Path | None = None,
             remeasure: bool = False) -> Plan:
    """The product plan for a model with these weights on this machine: from the cache, or measured
    now (and cached); ``stream``: the model's weights in the order a decode step reads them (see
    :func:`measure`). ``remeasure`` ignores a cached entry."""
    signature = machine_signature()
    path = cache_file(signature, directory)
    key = plan_key(ffn_key.dtype, ffn_key, att, lora_a, kernel)
    machine = {"machine": signature, "threads": torch.get_num_threads(), "bf16_units": bf16_units(),
               "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with _locked(path) as unlocked:  # read, measure, write: one process at a time
        plans, problem = _read(path, signature)
        entry = plans.get(key)
        if entry is not None and not remeasure:
            try:
                cached = Plan(tuple(entry["linear"]), tuple(entry["lora"]), source=f"cached ({path})",
                              info={**machine, "selection_ms": entry.get("selection_ms"),
                                    "timings_us": entry.get("timings_us", {})})
            except (KeyError, TypeError, ValueError) as error:
                problem = f"cache entry {key!r} in {path} is damaged ({error})"
            else:
                why = disturbed(cached.info["timings_us"])
                if why is None or entry.get("measured_twice"):  # (a second disturbed measurement stands)
                    return cached
                problem = f"the cached timings were disturbed: {why}"
        start = time.perf_counter()
        plan, timings = measure(ffn_key, att, lora_a, lora_b, kernel, stream)
        why = disturbed(timings)
        if why is not None:  # measured again once; the second measurement stands either way
            plan, timings = measure(ffn_key, att, lora_a, lora_b, kernel, stream)
            again = disturbed(timings)
            problem = "; ".join(n for n in (problem, f"timed twice, the first timings disturbed ({why})"
                                            + (f", the second too ({again})" if again else "")) if n)
        selection_ms = round((time.perf_counter() - start) * 1e3, 1)
        written = _write(path, signature, key, {**plan.to_json(), "selection_ms": selection_ms,
                                                "timings_us": timings, "measured_twice": why is not None})
    notes = "; ".join(n for n in (problem, unlocked, written) if n)
    source = "measured" + (f" ({notes})" if notes else f", cached in {path}")
    return Plan(plan.linear, plan.lora, source=source,
                info={**machine, "selection_ms": selection_ms, "timings_us": timings})
