"""The GPU run's tasks that need torch (prerequisites, versions, the official package's build,
kernel timings) and the one that does not (the table), each a subcommand run by gpu_run.py:

    python3 docs/perf/gpu_tasks.py prereq                 # what is there; exit 2 if a must is missing
    python3 docs/perf/gpu_tasks.py env                    # versions, device, the commit carried
    python3 docs/perf/gpu_tasks.py build-official         # build the rwkv package's CUDA extension
    python3 docs/perf/gpu_tasks.py wkv-timing LOG.jsonl   # prefill/decode WKV kernel times, appended to LOG
    python3 docs/perf/gpu_tasks.py table LOG.jsonl SHAPES # the Markdown table, gaps shown

torch, CuPy and the engine are imported inside the functions that need them, so the table (and
the tests of it) run anywhere with the standard library alone.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# The scenarios of tests/test_throughput_gpu.py (a test checks the two lists agree)
OURS = ["decode_b1", "decode_b8", "decode_b64", "decode_b256", "decode_bmax", "prefill_512", "prefill_4096"]
OFFICIAL = ["official_decode_b1", "official_prefill_512", "official_prefill_4096"]


# ---------------------------------------------------------------------------------------------
# Prerequisites and versions (on the GPU machine)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def prereq() -> int:
    """Print every prerequisite as ok / MISSING; 2 if a must is missing (nothing useful can run)."""
    checks: list[tuple[bool, bool, str, str]] = []  # (must, ok, what, detail)

    def check(must: bool, ok: bool, what: str, detail: str) -> None:
        checks.append((must, ok, what, detail))

    print(f"python {sys.version.split()[0]} at {sys.executable}")
    try:
        import torch
    except ImportError as exc:
        check(True, False, "torch", str(exc))
        torch = None
    if torch is not None:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        names = ", ".join(f"{torch.cuda.get_device_name(i)} (sm_{''.join(map(str, torch.cuda.get_device_capability(i)))})"
                          for i in range(gpus))
        check(True, gpus > 0, "torch sees a CUDA GPU",
              f"torch {torch.__version__}, CUDA {torch.version.cuda}, {gpus} GPU(s): {names or 'none'}")
    has_cupy = importlib.util.find_spec("cupy") is not None
    cupy_dists = [d for d in ("cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy") if _version(d)]
    check(True, has_cupy, "CuPy", ", ".join(f"{d} {_version(d)}" for d in cupy_dists) or "not importable")
    if has_cupy and torch is not None and torch.version.cuda:
        sys.path.insert(0, str(REPO))
        from engine.kernels import cupy_wheel

        try:
            wanted = cupy_wheel(torch.version.cuda)
            check(False, wanted in cupy_dists, "CuPy wheel matches torch's CUDA",
                  f"torch CUDA {torch.version.cuda} wants {wanted}; installed {cupy_dists}")
        except ValueError as exc:
            check(False, False, "CuPy wheel matches torch's CUDA", str(exc))
    for module, dist in (("pytest", "pytest"), ("pytest_benchmark", "pytest-benchmark")):
        check(True, importlib.util.find_spec(module) is not None, dist, _version(dist) or "not importable")
    check(False, importlib.util.find_spec("xdist") is not None, "pytest-xdist (tests in 4 processes)",
          _version("pytest-xdist") or "not importable: the tests run in one process")
    vocab_ok, vocab_detail = False, ""
    try:
        sys.path.insert(0, str(REPO))
        from engine.tokenizer import default_world_vocab

        vocab = default_world_vocab()
        vocab_ok, vocab_detail = True, f"{vocab} (rwkv {_version('rwkv')})"
    except (ImportError, OSError) as exc:
        vocab_detail = f"{exc} (the carried wheel in .gpu/wheels should provide it)"
    check(True, vocab_ok, "World vocabulary (official rwkv package)", vocab_detail)
    shared = Path(os.environ.get("RWKVEVAL_SHARED", REPO.parent / "shared"))
    tiny = shared / "models" / "tiny-rwkv7-834K" / "tiny-rwkv7-834K.pth"
    check(False, tiny.is_file(), "tiny model (its GPU tests fail without it)", str(tiny))
    cuda_home = os.environ.get("CUDA_HOME", "")
    nvcc = Path(cuda_home, "bin", "nvcc") if cuda_home else None
    check(False, bool(nvcc and nvcc.is_file()), "CUDA toolkit (CUDA_HOME: compile tests, official build)",
          cuda_home or "not found")
    for tool in ("compute-sanitizer", "ninja", "nvidia-smi"):
        path = _which(tool)
        check(False, path is not None, tool, path or "not on PATH")
    for must, ok, what, detail in checks:
        print(f"{'ok' if ok else ('MISSING' if must else 'missing')}  {what}: {detail}")
    fatal = [what for must, ok, what, _ in checks if must and not ok]
    if fatal:
        print(f"prereq: cannot run without: {'; '.join(fatal)}")
        return 2
    print("prereq: every must is there")
    return 0


def _which(tool: str) -> str | None:
    import shutil

    return shutil.which(tool)


def env() -> int:
    """Versions, the device, and which commit the carried files were prepared from."""
    import torch

    commit = REPO / ".gpu" / "COMMIT"
    print(f"date {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"prepared from {commit.read_text().strip() if commit.is_file() else 'unknown (no .gpu/COMMIT)'}")
    print(f"python {sys.version.split()[0]} | torch {torch.__version__} (CUDA {torch.version.cuda}) | "
          + " | ".join(f"{d} {_version(d)}" for d in ("cupy-cuda13x", "cupy-cuda12x", "rwkv", "pytest",
                                                     "pytest-benchmark", "pytest-xdist", "triton") if _version(d)))
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"device {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
              f"sm_{p.major}{p.minor}, L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
    return 0


# ---------------------------------------------------------------------------------------------
# The official package's CUDA extension (built once, before its benchmarks need it)


def build_official() -> int:
    """Import rwkv.model with its CUDA kernels on: torch builds them (into TORCH_EXTENSIONS_DIR)."""
    os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="1")
    print(f"CUDA_HOME={os.environ.get('CUDA_HOME', '(unset)')} TORCH_EXTENSIONS_DIR="
          f"{os.environ.get('TORCH_EXTENSIONS_DIR', '(default)')}", flush=True)
    import rwkv.model as official

    if not hasattr(official, "RWKV7_OP"):
        print("build-official: rwkv.model imported without its CUDA WKV-7 op (RWKV7_OP)")
        return 1
    print(f"build-official: rwkv {_version('rwkv')} CUDA extension ready")
    return 0


# ---------------------------------------------------------------------------------------------
# Kernel timings (the prefill kernel is serial in time: how long is one layer?)


def wkv_timing(log: Path) -> int:
    """WKV kernel times with CUDA events on random inputs (never zeros), one JSON line each."""
    import torch

    sys.path.insert(0, str(REPO))
    from engine.kernels import ops, reference

    def ms_per_call(fn, reps: int = 10) -> float:
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(5):
            start.record()
            for _ in range(reps):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / reps)
        return statistics.median(times)

    device = torch.cuda.get_device_name(0)
    rows = []
    for layer, H in (("1.5B layer (H=32)", 32), ("0.1B layer (H=12)", 12)):
        for B, T in ((1, 4096), (1, 512), (1, 1), (256, 1)):
            d = reference.random_wkv7_inputs(B, T, H, 64, device="cuda", w_log=True)  # drawn once, on the CPU
            for dtype in (torch.bfloat16, torch.float16):
                args = [d["state"]] + [d[n].to(dtype) for n in ("r", "w", "k", "v", "a", "b")]
                ms = ms_per_call(lambda: ops.wkv7_forward(*args, w_log=True))
                rows.append({"engine": "rwkveval", "scenario": "kernel_wkv7", "shape": layer, "batch": B,
                             "length": T, "dtype": str(dtype).removeprefix("torch."), "ms_per_call": round(ms, 4),
                             "tokens_per_s": round(B * T / ms * 1e3, 1), "device_name": device})
    # what the serial WKV competes with: one 1.5B layer's projections over 4096 tokens, float16
    C, F, T = 2048, 8192, 4096
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(T, C, device="cuda", dtype=torch.float16, generator=g)
    Ws = [torch.randn(C, C, device="cuda", dtype=torch.float16, generator=g) * 0.02 for _ in range(4)]
    key = torch.randn(F, C, device="cuda", dtype=torch.float16, generator=g) * 0.02
    value = torch.randn(C, F, device="cuda", dtype=torch.float16, generator=g) * 0.02

    def layer_products():
        for W in Ws:
            torch.nn.functional.linear(x, W)
        torch.nn.functional.linear(torch.nn.functional.linear(x, key), value)

    ms = ms_per_call(layer_products)
    rows.append({"engine": "torch", "scenario": "layer_matmuls", "shape": "1.5B layer (4 C^2 + 2 C F)",
                 "batch": 1, "length": T, "dtype": "float16", "ms_per_call": round(ms, 4),
                 "tflops": round(2 * T * (4 * C * C + 2 * C * F) / ms / 1e9, 1), "device_name": device})
    with log.open("a", encoding="utf-8") as f:
        for row in rows:
            row["time"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            f.write(json.dumps(row) + "\n")
            print(json.dumps(row))
    return 0


# ---------------------------------------------------------------------------------------------
# The table (standard library only)


def read_log(path: Path) -> list[dict]:
    """The JSON lines of a bench log; a line cut off by a kill is reported and skipped."""
    rows = []
    if not path.is_file():
        return rows
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"table: {path.name}:{number} is not JSON (cut off?): {line[:80]!r}", file=sys.stderr)
    return rows


def _num(value, spec: str = ",.0f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def table(rows: list[dict], shapes: list[str]) -> str:
    """Markdown: one row per planned (shape, scenario) of ours, the official figure beside it,
    a gap wherever a benchmark did not run, failed, or the official package was not measured."""
    by_key = {(r.get("shape"), r.get("scenario")): r for r in rows if r.get("scenario") in OURS + OFFICIAL}
    devices = sorted({r["device_name"] for r in rows if r.get("device_name")})
    dates = sorted({r["time"][:10] for r in rows if r.get("time")})
    lines = [f"GPU throughput, float16, seeded random weights in the official shapes: "
             f"{', '.join(devices) or 'no device recorded'}, {', '.join(dates) or 'no date recorded'}", "",
             "| shape | scenario | batch / tokens | tokens/s | weight GB/s | of bandwidth | of fp16 matmul | "
             "official tokens/s | vs official | targets |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for shape in shapes:
        missing_official = {r.get("official_missing") for s in OFFICIAL
                            if (r := by_key.get((shape, s))) and r.get("official_missing")}
        for reason in sorted(missing_official):
            notes.append(f"- {shape}: the official package was not measured: {reason}")
        for scenario in OURS:
            r = by_key.get((shape, scenario))
            size = "" if r is None else r.get("batch", r.get("length", ""))
            if r is None:
                lines.append(f"| {shape} | {scenario} | | not run | | | | | | |")
                continue
            off = by_key.get((shape, f"official_{scenario}"), {})
            ours_rate, off_rate = r.get("tokens_per_s"), off.get("tokens_per_s")
            ratio = ours_rate / off_rate if ours_rate and off_rate else None
            targets = [f"{k} {'met' if v.get('met') else 'MISSED'} ({v.get('value')} vs {v.get('target')})"
                       for k, v in (r.get("targets") or {}).items()]
            if r.get("official_ratio_target") is not None and ratio is not None:
                target = r["official_ratio_target"]
                targets.append(f"vs official {'met' if ratio >= target else 'MISSED'} ({ratio:.2f} vs {target})")
            if f"official_{scenario}" not in OFFICIAL:
                off_text = ""  # the official package has no batching
            elif not off:
                off_text = "not run"
            elif off.get("official_missing"):
                off_text = "missing"
            elif off.get("error"):
                off_text = "error"
            else:
                off_text = _num(off_rate)
            if r.get("error"):
                notes.append(f"- {shape} {scenario}: error after {'timing' if ours_rate else 'setup'}: {r['error']}")
                targets.append("error (see below)")
            lines.append(
                f"| {shape} | {scenario} | {size} | {_num(ours_rate)} | {_num(r.get('weight_gb_per_s'))} | "
                f"{_num(r.get('fraction_of_bandwidth_roofline'), '.2f')} | "
                f"{_num(r.get('fraction_of_matmul_roofline'), '.2f')} | {off_text} | "
                f"{_num(ratio, '.2f', 'x')} | {'; '.join(targets)} |")
        for scenario in OFFICIAL:
            r = by_key.get((shape, scenario))
            if r and r.get("error"):
                notes.append(f"- {shape} {scenario}: error: {r['error']}")
    kernels = [r for r in rows if r.get("scenario") in ("kernel_wkv7", "layer_matmuls")]
    if kernels:
        lines += ["", "| kernel | layer | dtype | batch x tokens | ms per call | tokens/s |", "|---|---|---|---|---|---|"]
        for r in kernels:
            lines.append(f"| {r['scenario']} | {r.get('shape')} | {r.get('dtype')} | {r.get('batch')} x "
                         f"{r.get('length')} | {_num(r.get('ms_per_call'), '.3f')} | "
                         f"{_num(r.get('tokens_per_s')) if 'tokens_per_s' in r else _num(r.get('tflops'), '.0f', ' TFLOP/s')} |")
    if notes:
        lines += ["", "Gaps:", *notes]
    return "\n".join(lines) + "\n"


def merge_benchmark_json(paths: list[Path]) -> dict:
    """pytest-benchmark's JSON files (one per shape process) as one document."""
    runs = []
    for path in paths:
        try:
            runs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            runs.append({"file": path.name, "unreadable": str(exc)})
    return {"runs": runs}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    command, args = argv[0], argv[1:]
    if command == "prereq":
        return prereq()
    if command == "env":
        return env()
    if command == "build-official":
        return build_official()
    if command == "wkv-timing" and len(args) == 1:
        return wkv_timing(Path(args[0]))
    if command == "table" and len(args) == 2:
        print(table(read_log(Path(args[0])), [s for s in args[1].split(",") if s]), end="")
        return 0
    print(f"gpu_tasks.py: unknown command or arguments {argv!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
