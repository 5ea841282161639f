"""The one GPU run, planned for a single call of at most 9 minutes; and its checks on the CPU.

    bash docs/perf/run_gpu.sh [STAGE ...]   on the GPU machine: the plan below (or the stages named)
    bash docs/perf/run_gpu.sh --prepare     here, with a network: fetch the rwkv wheel, copy the tiny
                                            model into .gpu/ (git-ignored, carried), then --dry-run
    bash docs/perf/run_gpu.sh --dry-run     here, no GPU: packaging, the plan, the launch command

The GPU machine has no network and no ``rwkv`` package, and gets only the working tree plus the
carried folder ``.gpu/`` (wheels/rwkv-*.whl, shared/models/tiny-rwkv7-834K, COMMIT). Stages run
in order of value; each gets a time limit, so the whole run ends inside BUDGET_S: an essential
stage always gets its cap (the caps of the essential stages still to come are held back), an
extra stage runs only on what is left. Every output is written under the output folder as it
is produced ($RWKVEVAL_GPU_OUT, else $OUT, else docs/perf/raw/<date>), so a run killed from
outside still returns what ran. A stage over its limit gets SIGINT (pytest then writes its
reports), then SIGKILL.
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import gpu_tasks  # noqa: E402  (beside this file; standard library at import)

BUDGET_S = 540                 # the plan's wall time; the run tool allows 600 s a command
RUN_TOOL_LIMIT_S = 600         # timeout_s at most
RUN_TOOL_MAX_CARRY = 8         # carry paths at most
RUN_TOOL_MAX_COMMAND = 2000    # characters
TRAVEL_LIMIT = 64 << 20        # working tree + carried paths, bytes
MAX_OUT_FILES = 8              # files that come back from $OUT
OFFICIAL_BUILD_CAP_S = 240     # the official package's extension builds beside the tests
CARRY_ENV = "RWKVEVAL_GPU_CARRY"
TINY = "models/tiny-rwkv7-834K"
TINY_FILES = ("tiny-rwkv7-834K.pth", "expected-logits-7v0-834K.bin", "LICENSE-rwkv.cpp", "README.md")
VOCAB_IN_WHEEL = "rwkv/rwkv_vocab_v20230424.txt"

TEST_FILES = ("tests/test_kernels_compile.py", "tests/test_kernels_validation.py", "tests/test_kernels_launch.py",
              "tests/test_kernels_gpu.py", "tests/test_gpu_model.py")
BENCH_FILE = "tests/test_throughput_gpu.py"
SENT_FILES = (*TEST_FILES, BENCH_FILE, "tests/helpers.py", "conftest.py", "pytest.ini", "docs/perf/run_gpu.sh",
              "docs/perf/gpu_run.py", "docs/perf/gpu_tasks.py", "docs/perf/GPU_PLAN.md")
SENT_TREES = ("engine", "benchmarkdata")
BENCH_CAPS = {"0.1B": 100, "0.4B": 120, "1.5B": 150, "2.9B": 200, "7.2B": 300}
SANITIZER_PROBE = ("import torch; x = torch.ones(4, device='cuda'); torch.cuda.synchronize(); "
                   "print('probe ok', float(x.sum()))")


@dataclass(frozen=True)
class Stage:
    name: str
    cap_s: int        # its time limit
    estimate_s: int   # what it should take (a guess until the first run)
    essential: bool   # always gets its cap; an extra runs on what is left
    what: str
    min_s: int = 10   # not started with less than this
    outputs: tuple[str, ...] = ()


def bench_stage(shapes: str, essential: bool = True) -> Stage:
    names = shapes.split(",")
    unknown = [n for n in names if n not in BENCH_CAPS]
    if unknown:
        raise ValueError(f"bench={shapes}: expected shapes from {', '.join(BENCH_CAPS)}, found {unknown}")
    return Stage(f"bench={shapes}", sum(BENCH_CAPS[n] for n in names), sum(BENCH_CAPS[n] for n in names) * 2 // 3,
                 essential, f"throughput of {shapes}: ours first, then the official package on the same weights",
                 min_s=30, outputs=("bench.jsonl",))


PLAN = (
    Stage("prereq", 40, 20, True, "install the carried rwkv wheel, find the CUDA toolkit, check packages, GPU, "
          "vocabulary and tiny model (stop if a must is missing); start the official build beside", outputs=("run.log",)),
    Stage("env", 15, 5, True, "nvidia-smi, nvcc, versions, device properties, the commit carried"),
    Stage("tests", 170, 90, True, "GPU tests against the reference: kernels vs twins (every dtype, head size), "
          "the model vs the CPU path (tiny model, random shapes, every dtype), graphs, compile checks; "
          "RWKVEVAL_REQUIRE_GPU=1 turns skips into failures", outputs=("gpu-tests.xml",)),
    bench_stage("0.1B"),
    bench_stage("1.5B"),
    Stage("wkv-timing", 30, 15, True, "WKV kernel times (prefill 4096 / 512, decode) and one 1.5B layer's "
          "products, for the chunked-prefill decision", outputs=("bench.jsonl",)),
    Stage("table", 15, 3, True, "table.md from bench.jsonl (gaps shown); pytest-benchmark JSON merged",
          outputs=("table.md", "bench-pytest.json")),
    Stage("sanitize", 150, 120, False, "compute-sanitizer memcheck (no caching allocator) and racecheck on the "
          "kernel tests, if it can attach here", min_s=45, outputs=("sanitize.log",)),
)
BACKGROUND_OUTPUTS = ("official-build.log",)


def stage_named(name: str) -> Stage:
    for stage in PLAN:
        if stage.name == name:
            return stage
    if name.startswith("bench="):
        return bench_stage(name.removeprefix("bench="), essential=False)
    raise ValueError(f"unknown stage {name!r}: expected one of {', '.join(s.name for s in PLAN)} or bench=SHAPES")


def time_limit(stages: list[Stage], index: int, elapsed: float, budget: int = BUDGET_S) -> int:
    """Seconds stage ``index`` may take: its cap, less what the essential stages after it need."""
    reserve = sum(s.cap_s for s in stages[index + 1:] if s.essential)
    return int(min(stages[index].cap_s, budget - elapsed - reserve))


def worst_case(stages: list[Stage], budget: int = BUDGET_S) -> list[tuple[str, int, int]]:
    """(name, start, limit) when every stage uses all of its limit; limit 0: not started."""
    rows, elapsed = [], 0
    for i, stage in enumerate(stages):
        limit = time_limit(stages, i, elapsed, budget)
        limit = limit if limit >= stage.min_s else 0
        rows.append((stage.name, elapsed, limit))
        elapsed += limit
    return rows


def check_plan(stages: list[Stage], budget: int = BUDGET_S) -> list[str]:
    problems = []
    essential = sum(s.cap_s for s in stages if s.essential)
    if essential > budget:
        problems.append(f"plan: the essential stages' caps add up to {essential} s, over the budget of {budget} s")
    estimate = sum(s.estimate_s for s in stages)
    if estimate > budget:
        problems.append(f"plan: the estimates add up to {estimate} s, over the budget of {budget} s")
    end = max((start + limit for _, start, limit in worst_case(stages, budget)), default=0)
    if end > budget:
        problems.append(f"plan: the worst case ends at {end} s, after the budget of {budget} s")
    for stage, (name, _, limit) in zip(stages, worst_case(stages, budget)):
        if stage.essential and limit < stage.cap_s:
            problems.append(f"plan: essential stage {name} would get {limit} s of its {stage.cap_s} s in the worst case")
    outputs = {o for s in stages for o in s.outputs} | set(BACKGROUND_OUTPUTS)
    if len(outputs) > MAX_OUT_FILES:
        problems.append(f"plan: {len(outputs)} output files {sorted(outputs)}, but only {MAX_OUT_FILES} come back")
    bad = [o for o in outputs if not re.fullmatch(r"[A-Za-z0-9._-]+", o)]
    if bad:
        problems.append(f"plan: output names {bad} have characters the run tool does not bring back")
    return problems


# ---------------------------------------------------------------------------------------------
# Finding the CUDA toolkit (torch derives CUDA_HOME from the nvcc on PATH, which may be a wrapper)


def is_toolkit(path: str | Path | None) -> bool:
    return bool(path) and (Path(path) / "bin" / "nvcc").is_file() and (Path(path) / "include" / "cuda_runtime.h").is_file()


def nvcc_top(nvcc: str, run=subprocess.run) -> str | None:
    """The toolkit an nvcc (or a wrapper script around one) really runs: nvcc --dryrun prints _HERE_."""
    try:
        out = run([nvcc, "--dryrun", "-c", "none.cu"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"^#\$ _HERE_=(.+)$", out.stdout + out.stderr, flags=re.M)
    return str(Path(match.group(1).strip()).parent) if match else None


def find_cuda_home(environ: dict[str, str], which=shutil.which, run=subprocess.run,
                   candidates: tuple[str, ...] = ()) -> tuple[str | None, str]:
    """(toolkit folder, how it was found): CUDA_HOME / CUDA_PATH if real, the folder the nvcc on
    PATH runs from, the nvcc's resolved location, then /usr/local/cuda and /usr/local/cuda-*."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if is_toolkit(environ.get(var)):
            return environ[var], f"${var}"
    nvcc = which("nvcc", path=environ.get("PATH"))
    if nvcc:
        top = nvcc_top(nvcc, run)
        if is_toolkit(top):
            return top, f"nvcc --dryrun of {nvcc}"
        resolved = Path(nvcc).resolve().parent.parent
        if is_toolkit(resolved):
            return str(resolved), f"resolved path of {nvcc}"
    found = candidates or ("/usr/local/cuda", *sorted(map(str, Path("/usr/local").glob("cuda-*")), reverse=True))
    for path in found:
        if is_toolkit(path):
            return path, "standard location"
    return None, "no toolkit (bin/nvcc and include/cuda_runtime.h) found"


# ---------------------------------------------------------------------------------------------
# Running stages


@dataclass
class Run:
    out: Path
    tmp: Path
    carry: Path
    env: dict[str, str]
    log: object
    start: float = field(default_factory=time.monotonic)
    results: list[tuple[str, str, float]] = field(default_factory=list)
    background: list[subprocess.Popen] = field(default_factory=list)

    def say(self, text: str) -> None:
        line = text if text.endswith("\n") else text + "\n"
        sys.stdout.write(line)
        sys.stdout.flush()
        self.log.write(line)
        self.log.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def run_cmd(run: Run, cmd: list[str], limit: float, *, log: Path | None = None, echo: bool = True,
            env: dict[str, str] | None = None, keep: list | None = None) -> int:
    """Run ``cmd`` in its own process group for at most ``limit`` seconds, its output copied line by
    line to run.log and stdout (``echo``) and to ``log``; 124 when stopped at the limit."""
    if echo:
        run.say(f"$ {' '.join(cmd)}   (limit {int(limit)} s)")
    sink = log.open("ab") if log else None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
                            env=env or run.env, preexec_fn=os.setpgrp)
    if keep is not None:
        keep.append(proc)

    def pump() -> None:
        for raw in proc.stdout:
            if sink:
                sink.write(raw)
                sink.flush()
            if echo:
                run.say(raw.decode("utf-8", errors="replace").rstrip("\n"))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(1, limit))
    except subprocess.TimeoutExpired:
        rc = 124
        for sig, grace in ((signal.SIGINT, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
                proc.wait(timeout=grace)
                break
            except (subprocess.TimeoutExpired, ProcessLookupError):
                continue
        if echo:
            run.say(f"(stopped at its limit of {int(limit)} s)")
    reader.join(timeout=5)
    if sink:
        sink.close()
    return rc


def stage_prereq(run: Run, limit: float) -> str:
    deadline = time.monotonic() + limit
    site = run.tmp / "site"
    wheels = sorted((run.carry / "wheels").glob("*.whl"))
    if wheels:
        rc = run_cmd(run, [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                           "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, wheels)], limit)
        run.say(f"carried wheels {[w.name for w in wheels]}: {'installed' if rc == 0 else f'pip exit {rc}'}")
    else:
        run.say(f"no carried wheels in {run.carry / 'wheels'} (bash docs/perf/run_gpu.sh --prepare makes them)")
    run.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(site), run.env.get("PYTHONPATH", "")) if p)
    home, how = find_cuda_home(run.env)
    if home:
        run.env["CUDA_HOME"] = home
        run.env["PATH"] = f"{home}/bin{os.pathsep}{run.env.get('PATH', '')}"
    run.say(f"CUDA_HOME={home} ({how})")
    if "RWKVEVAL_SHARED" not in run.env and not (REPO.parent / "shared" / TINY).is_dir():
        if (run.carry / "shared" / TINY).is_dir():
            run.env["RWKVEVAL_SHARED"] = str(run.carry / "shared")
    run.say(f"RWKVEVAL_SHARED={run.env.get('RWKVEVAL_SHARED', '../shared (default)')}")
    run.env.setdefault("TORCH_EXTENSIONS_DIR", str(run.tmp / "torch-extensions"))
    run.env.setdefault("MAX_JOBS", "8")
    rc = run_cmd(run, [sys.executable, str(HERE / "gpu_tasks.py"), "prereq"], max(5, deadline - time.monotonic()))
    if rc == 2:
        return "fatal"
    if rc != 0:
        return "failed"
    start_official_build(run)
    return "ok"


def start_official_build(run: Run) -> None:
    """Build the official package's CUDA extension beside the tests; its outcome goes to a file
    that the official benchmarks wait for (tests/test_throughput_gpu.py)."""
    status = run.tmp / "official-build.status"
    status.unlink(missing_ok=True)
    run.env["RWKVEVAL_OFFICIAL_BUILD_STATUS"] = str(status)
    log = run.out / "official-build.log"

    def build() -> None:
        rc = run_cmd(run, [sys.executable, str(HERE / "gpu_tasks.py"), "build-official"], OFFICIAL_BUILD_CAP_S,
                     log=log, echo=False, keep=run.background)
        for lock in Path(run.env["TORCH_EXTENSIONS_DIR"]).glob("*/lock"):  # a killed build leaves its lock
            lock.unlink(missing_ok=True)
        if rc == 0:
            text = "ok"
        elif rc == 124:
            text = f"timed out after {OFFICIAL_BUILD_CAP_S} s (official-build.log)"
        else:
            errors = [l for l in log.read_text(errors="replace").splitlines() if re.search(r"error|Error|failed", l)]
            text = f"exit {rc}: {errors[-1].strip()[:300] if errors else 'see official-build.log'}"
        status.write_text(text + "\n")

    thread = threading.Thread(target=build, daemon=True)
    thread.start()
    run.say(f"official package: building its CUDA extension in the background (log: official-build.log, "
            f"limit {OFFICIAL_BUILD_CAP_S} s)")


def stage_env(run: Run, limit: float) -> str:
    deadline = time.monotonic() + limit
    for cmd in (["nvidia-smi"], ["nvcc", "--version"], [sys.executable, str(HERE / "gpu_tasks.py"), "env"]):
        if shutil.which(cmd[0], path=run.env.get("PATH")) or cmd[0] == sys.executable:
            run_cmd(run, cmd, max(5, deadline - time.monotonic()))
        else:
            run.say(f"{cmd[0]}: not on PATH")
    return "ok"


def pytest_status(rc: int) -> str:
    return {0: "ok", 124: "timeout", 5: "failed (no tests ran)"}.get(rc, f"failed (exit {rc})")


def stage_tests(run: Run, limit: float) -> str:
    workers = ["-n", "4"] if importlib.util.find_spec("xdist") else []
    cmd = [sys.executable, "-m", "pytest", *TEST_FILES, "-q", "-rs", "-p", "no:cacheprovider", *workers,
           f"--junitxml={run.out / 'gpu-tests.xml'}"]
    return pytest_status(run_cmd(run, cmd, limit, env={**run.env, "RWKVEVAL_REQUIRE_GPU": "1"}))


def stage_bench(run: Run, limit: float, shapes: str) -> str:
    cmd = [sys.executable, "-m", "pytest", BENCH_FILE, "--benchmark-only", "--gpu-shapes", shapes,
           "--gpu-bench-log", str(run.out / "bench.jsonl"),
           f"--benchmark-json={run.tmp / ('bench-' + shapes.replace(',', '_') + '.json')}",
           "--benchmark-columns=median,min,max,rounds", "-q", "-rs", "-p", "no:cacheprovider"]
    return pytest_status(run_cmd(run, cmd, limit, env={**run.env, "RWKVEVAL_REQUIRE_GPU": "1"}))


def stage_wkv_timing(run: Run, limit: float) -> str:
    rc = run_cmd(run, [sys.executable, str(HERE / "gpu_tasks.py"), "wkv-timing", str(run.out / "bench.jsonl")], limit)
    return "ok" if rc == 0 else pytest_status(rc)


def stage_table(run: Run, limit: float, shapes: list[str]) -> str:
    text = gpu_tasks.table(gpu_tasks.read_log(run.out / "bench.jsonl"), shapes)
    (run.out / "table.md").write_text(text)
    merged = gpu_tasks.merge_benchmark_json(sorted(run.tmp.glob("bench-*.json")))
    (run.out / "bench-pytest.json").write_text(json.dumps(merged, indent=1))
    run.say(text)
    return "ok"


def stage_sanitize(run: Run, limit: float) -> str:
    deadline = time.monotonic() + limit
    log = run.out / "sanitize.log"
    tool = shutil.which("compute-sanitizer", path=run.env.get("PATH"))

    def note(text: str) -> None:
        run.say(text)
        with log.open("a") as f:
            f.write(text + "\n")

    if tool is None:
        note("sanitize: skipped: compute-sanitizer is not on PATH")
        return "skipped"
    probe = run_cmd(run, [tool, "--tool", "memcheck", "--error-exitcode", "99", sys.executable, "-c", SANITIZER_PROBE],
                    min(90, limit), log=log)
    text = log.read_text(errors="replace") if log.exists() else ""
    if probe != 0 or "probe ok" not in text or "Device not supported" in text:
        note(f"sanitize: skipped: compute-sanitizer cannot attach here (probe exit {probe}; see sanitize.log)")
        return "skipped"
    env = {**run.env, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "RWKVEVAL_REQUIRE_GPU": "1"}
    runs = [("memcheck", ["tests/test_kernels_gpu.py", "-k", "not grid_stride"]),
            ("racecheck", ["tests/test_kernels_gpu.py", "-k", "wkv7_forward_matches and bfloat16"]),
            ("memcheck", ["tests/test_gpu_model.py", "-k", "gpu_tiny or gpu_graphs"])]
    outcome = "ok"
    for tool_name, args in runs:
        left = deadline - time.monotonic()
        if left < 20:
            note(f"sanitize: {tool_name} {' '.join(args)}: not started, {int(left)} s left")
            continue
        rc = run_cmd(run, [tool, "--tool", tool_name, "--error-exitcode", "99", sys.executable, "-m", "pytest",
                           "-q", "-x", "-p", "no:cacheprovider", *args], left, log=log, env=env)
        note(f"sanitize: {tool_name} {' '.join(args)}: {pytest_status(rc)}")
        outcome = outcome if rc == 0 else "failed"
    return outcome


def run_stages(names: list[str], out: Path) -> int:
    stages = [stage_named(n) for n in names]
    tmp = Path(os.environ.get("RWKVEVAL_GPU_TMP", "/tmp/rwkveval-gpu"))
    tmp.mkdir(parents=True, exist_ok=True)
    for stale in tmp.glob("bench-*.json"):  # an earlier run's, which the table would merge
        stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (out / "run.log").open("a") as log:
        run = Run(out, tmp, carry_dir(), env, log)
        run.say(f"gpu_run: {len(stages)} stages in at most {BUDGET_S} s; output in {out}")
        for name, start, limit in worst_case(stages):
            run.say(f"  {name:<12} starts by {start:>3} s, limit {limit:>3} s: {stage_named(name).what}")
        shapes = [s for n in names if n.startswith("bench=") for s in n.removeprefix("bench=").split(",")]
        fatal = False
        for i, stage in enumerate(stages):
            limit = time_limit(stages, i, run.elapsed())
            began = time.monotonic()
            if fatal:
                status = "not run (a prerequisite is missing)"
            elif limit < stage.min_s:
                status = f"skipped ({int(limit)} s left, needs {stage.min_s})"
            else:
                run.say(f"=== {stage.name} at {int(run.elapsed())} s, limit {limit} s")
                if stage.name == "prereq":
                    status = stage_prereq(run, limit)
                    fatal = status == "fatal"
                elif stage.name == "env":
                    status = stage_env(run, limit)
                elif stage.name == "tests":
                    status = stage_tests(run, limit)
                elif stage.name.startswith("bench="):
                    status = stage_bench(run, limit, stage.name.removeprefix("bench="))
                elif stage.name == "wkv-timing":
                    status = stage_wkv_timing(run, limit)
                elif stage.name == "table":
                    status = stage_table(run, limit, shapes)
                else:
                    status = stage_sanitize(run, limit)
            run.results.append((stage.name, status, time.monotonic() - began))
            run.say(f"=== {stage.name}: {status} ({time.monotonic() - began:.0f} s)")
        for proc in run.background:  # an official build still going: nothing will wait for it
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        run.say("gpu_run summary: " + "; ".join(f"{n} {s} {t:.0f} s" for n, s, t in run.results)
                + f"; total {run.elapsed():.0f} s")
        bad = [n for n, s, _ in run.results if not (s == "ok" or s.startswith("skipped"))]
        return 2 if fatal else (1 if bad else 0)


def carry_dir() -> Path:
    return REPO / os.environ.get(CARRY_ENV, ".gpu")


def main(argv: list[str]) -> int:
    if argv[:1] in (["--dry-run"], ["--prepare"]):
        import gpu_dryrun

        return gpu_dryrun.dry_run() if argv[0] == "--dry-run" else gpu_dryrun.prepare()
    names = argv or [s.name for s in PLAN]
    try:
        for name in names:
            stage_named(name)
    except ValueError as exc:
        print(f"gpu_run: {exc}", file=sys.stderr)
        return 2
    out = Path(os.environ.get("RWKVEVAL_GPU_OUT") or os.environ.get("OUT")
               or REPO / "docs" / "perf" / "raw" / datetime.date.today().isoformat())
    return run_stages(names, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
