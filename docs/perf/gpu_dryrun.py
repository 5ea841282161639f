"""The GPU run's checks on the CPU, and the folder it carries (run by docs/perf/run_gpu.sh).

    bash docs/perf/run_gpu.sh --prepare   with a network: the rwkv wheel of the installed version and
                                          the tiny model into .gpu/ (git-ignored), COMMIT; then the dry run
    bash docs/perf/run_gpu.sh --dry-run   no GPU: everything the one GPU call needs, checked

The dry run checks that every file the stages use exists, is not ignored by git (so it travels) and
compiles; that run_gpu.sh parses; that .gpu/ holds a pure-Python rwkv wheel with the World
vocabulary and CUDA sources, at the installed version, and the tiny model equal to the shared
copy; that what travels stays under 64 MiB; that the plan fits its budget in the worst case with
at most 8 output files; that the run-tool call written in GPU_PLAN.md is within the tool's limits
and carries .gpu; and that the tests and benchmarks of the stages collect.
"""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import gpu_tasks
from gpu_run import (BENCH_FILE, BUDGET_S, CARRY_ENV, HERE, PLAN, REPO, RUN_TOOL_LIMIT_S, RUN_TOOL_MAX_CARRY,
                     RUN_TOOL_MAX_COMMAND, SENT_FILES, SENT_TREES, TEST_FILES, TINY, TINY_FILES, TRAVEL_LIMIT,
                     VOCAB_IN_WHEEL, carry_dir, check_plan, stage_named, worst_case)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    except OSError as exc:  # no git here: every check that needs it reports its absence
        return subprocess.CompletedProcess(["git", *args], 128, "", str(exc))


def prepare() -> int:
    """Fill the carried folder: the rwkv wheel of the installed version, the tiny model, COMMIT."""
    carry = carry_dir()
    wheels = carry / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    try:
        version = importlib.metadata.version("rwkv")
    except importlib.metadata.PackageNotFoundError:
        print("prepare: the official rwkv package is not installed here (pip install -e '.[dev]'); "
              "its wheel is fetched at the installed version")
        return 1
    for old in wheels.glob("rwkv-*.whl"):
        if not old.name.startswith(f"rwkv-{version}-"):
            old.unlink()
    if not list(wheels.glob(f"rwkv-{version}-*.whl")):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               f"rwkv=={version}", "-d", str(wheels)]
        print("prepare: $ " + " ".join(cmd), flush=True)
        if subprocess.run(cmd, timeout=300).returncode != 0:
            print(f"prepare: could not download rwkv=={version} (no network to the package index?)")
            return 1
    sys.path.insert(0, str(REPO))
    from benchmarkdata import shared_root

    source = shared_root() / TINY
    target = carry / "shared" / TINY
    target.mkdir(parents=True, exist_ok=True)
    for name in TINY_FILES:
        if not (source / name).is_file():
            print(f"prepare: the tiny model is incomplete: expected {source / name}")
            return 1
        if not (target / name).is_file() or sha256(target / name) != sha256(source / name):
            shutil.copyfile(source / name, target / name)
    head = git("rev-parse", "HEAD").stdout.strip() or "unknown"
    changed = len([l for l in git("status", "--porcelain").stdout.splitlines() if l.strip()])
    (carry / "COMMIT").write_text(f"{head} ({changed} changed files in the checkout when prepared, "
                                  f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')})\n")
    print(f"prepare: {carry.relative_to(REPO)}/ holds rwkv {version}, the tiny model and COMMIT")
    return dry_run()


def check_carry(carry: Path) -> list[str]:
    problems = []
    wheels = sorted((carry / "wheels").glob("*.whl"))
    rwkv = [w for w in wheels if w.name.startswith("rwkv-")]
    if len(rwkv) != 1:
        problems.append(f"carry: expected one rwkv wheel in {carry / 'wheels'}, found {[w.name for w in rwkv]} "
                        "(bash docs/perf/run_gpu.sh --prepare)")
    for wheel in rwkv:
        if not wheel.name.endswith("-py3-none-any.whl"):
            problems.append(f"carry: {wheel.name} is not a pure-Python wheel (any platform)")
        names = set(zipfile.ZipFile(wheel).namelist())
        for needed in (VOCAB_IN_WHEEL, "rwkv/model.py", "rwkv/cuda/rwkv7.cu", "rwkv/cuda/rwkv7_op.cpp"):
            if needed not in names:
                problems.append(f"carry: {wheel.name} lacks {needed}")
        try:
            installed = importlib.metadata.version("rwkv")
            if not wheel.name.startswith(f"rwkv-{installed}-"):
                problems.append(f"carry: {wheel.name} is not the installed rwkv {installed} (run --prepare again)")
        except importlib.metadata.PackageNotFoundError:
            pass
    sys.path.insert(0, str(REPO))
    from benchmarkdata import shared_root

    for name in TINY_FILES:
        carried, source = carry / "shared" / TINY / name, shared_root() / TINY / name
        if not carried.is_file():
            problems.append(f"carry: the tiny model file {carried} is missing (--prepare)")
        elif source.is_file() and sha256(carried) != sha256(source):
            problems.append(f"carry: {carried} differs from {source} (--prepare)")
    if not (carry / "COMMIT").is_file():
        problems.append(f"carry: {carry / 'COMMIT'} is missing (--prepare)")
    return problems


def check_sent(files: list[str]) -> list[str]:
    problems = [f"send: {f} does not exist" for f in files if not (REPO / f).is_file()]
    ignored = git("check-ignore", "--no-index", *files)
    if ignored.returncode == 0:
        problems += [f"send: {f} is ignored by git, so it would not travel" for f in ignored.stdout.split()]
    for f in files:
        if f.endswith(".py") and (REPO / f).is_file():
            try:
                compile((REPO / f).read_bytes(), f, "exec")
            except (SyntaxError, ValueError) as exc:
                problems.append(f"send: {f} does not compile: {exc}")
    return problems


def sent_files() -> list[str]:
    tracked = git("ls-files", "--", *SENT_TREES).stdout.split()
    return sorted(set(SENT_FILES) | set(tracked))


def travel_size(carry: Path) -> int:
    listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").stdout.split("\0")
    size = sum((REPO / f).stat().st_size for f in listed if f and (REPO / f).is_file())
    return size + sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())


def launch_command(plan_doc: Path) -> tuple[str, list[str], int] | None:
    """The run-tool call written in GPU_PLAN.md: run(command="...", carry=[...], timeout_s=N)."""
    import ast

    match = re.search(r'^run\(command=("(?:[^"\\]|\\.)*"), carry=(\[[^\]]*\]), timeout_s=(\d+)\)$',
                      plan_doc.read_text(encoding="utf-8"), flags=re.M)
    if not match:
        return None
    return ast.literal_eval(match.group(1)), ast.literal_eval(match.group(2)), int(match.group(3))


def check_launch(plan_doc: Path, carry: Path) -> list[str]:
    found = launch_command(plan_doc)
    if found is None:
        return [f"launch: {plan_doc.name} has no line run(command=\"...\", carry=[...], timeout_s=N)"]
    command, carried, timeout_s = found
    problems = []
    if len(command) > RUN_TOOL_MAX_COMMAND:
        problems.append(f"launch: the command has {len(command)} characters, over {RUN_TOOL_MAX_COMMAND}")
    if "docs/perf/run_gpu.sh" not in command:
        problems.append("launch: the command does not run docs/perf/run_gpu.sh")
    if len(carried) > RUN_TOOL_MAX_CARRY:
        problems.append(f"launch: {len(carried)} carry paths, over {RUN_TOOL_MAX_CARRY}")
    if carry.relative_to(REPO).as_posix() not in carried and os.environ.get(CARRY_ENV) is None:
        problems.append(f"launch: carry {carried} does not name {carry.relative_to(REPO)}")
    for path in carried:
        if not (REPO / path).exists() and os.environ.get(CARRY_ENV) is None:
            problems.append(f"launch: carried path {path} does not exist here")
    if not BUDGET_S + 30 <= timeout_s <= RUN_TOOL_LIMIT_S:
        problems.append(f"launch: timeout_s={timeout_s}: expected between {BUDGET_S + 30} (the plan's "
                        f"{BUDGET_S} s and a margin) and {RUN_TOOL_LIMIT_S}")
    return problems


def collect(args: list[str]) -> tuple[int, str]:
    # a pytest-xdist worker's variables would make the child think it is a worker too (and
    # pytest-benchmark then refuses --benchmark-only)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    env.update(RWKVEVAL_REQUIRE_GPU="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stdout + done.stderr


def dry_run() -> int:
    carry = carry_dir()
    problems = check_plan(list(PLAN))
    print(f"dry run: the plan, worst case (each stage using all of its limit; budget {BUDGET_S} s):")
    for name, start, limit in worst_case(list(PLAN)):
        print(f"  {name:<12} {start:>4} s  +{limit:>4} s  (estimate {stage_named(name).estimate_s} s)")
    files = sent_files()
    problems += check_sent(files)
    bash = subprocess.run(["bash", "-n", str(HERE / "run_gpu.sh")], capture_output=True, text=True)
    if bash.returncode != 0:
        problems.append(f"send: run_gpu.sh does not parse: {bash.stderr.strip()}")
    problems += check_carry(carry)
    if not carry.resolve().is_relative_to(REPO):
        problems.append(f"carry: {carry} is outside the repository, so the run tool cannot carry it")
    elif git("check-ignore", "-q", carry.relative_to(REPO).as_posix()).returncode != 0:
        problems.append(f"carry: {carry.relative_to(REPO)} is not ignored by git (it must travel as a carried path)")
    size = travel_size(carry)
    if size > TRAVEL_LIMIT:
        problems.append(f"send: the working tree and {carry.name} hold {size / 2**20:.1f} MiB, over 64 MiB")
    problems += check_launch(HERE / "GPU_PLAN.md", carry)
    rc, text = collect(list(TEST_FILES))
    counted = re.search(r"(\d+) tests? collected", text)
    if rc != 0 or not counted:
        problems.append(f"collect: the tests stage's files do not collect: {text.strip().splitlines()[-3:]}")
    shapes = ",".join(s for st in PLAN if st.name.startswith("bench=") for s in [st.name.removeprefix("bench=")])
    rc, bench_text = collect([BENCH_FILE, "--benchmark-only", "--gpu-shapes", shapes])
    expected = len(shapes.split(",")) * (len(gpu_tasks.OURS) + len(gpu_tasks.OFFICIAL))
    if rc != 0 or f"{expected} tests collected" not in bench_text:
        problems.append(f"collect: expected {expected} benchmarks for {shapes}: {bench_text.strip().splitlines()[-3:]}")
    for problem in problems:
        print(f"PROBLEM {problem}")
    if problems:
        print(f"dry run: {len(problems)} problem(s)")
        return 1
    print(f"dry run: ok: {len(files)} files sent (all present, none ignored, the Python compiles), "
          f"{carry.relative_to(REPO)}/ holds the rwkv wheel and the tiny model, {size / 2**20:.1f} MiB travel, "
          f"{counted.group(1)} tests and {expected} benchmarks collect, the plan fits {BUDGET_S} s")
    return 0
