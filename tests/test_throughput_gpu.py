"""GPU throughput benchmarks: decode and prefill tokens/s of the CUDA path beside the official package.

    pytest --benchmark-only tests/test_throughput_gpu.py --gpu-shapes 0.1B --benchmark-json=gpu-0.1B.json
    pytest --benchmark-only tests/test_throughput_gpu.py --gpu-shapes all     # all five shapes (long)

Seeded random weights in the official RWKV-7 shapes (0.1B 12 x 768, 0.4B 24 x 1024, 1.5B 24 x 2048,
2.9B 32 x 2560, 7.2B 32 x 4096; vocabulary 65536), rounded to float16 once, so that this engine and
the official ``rwkv`` package (strategy ``cuda fp16``, RWKV_CUDA_ON=1: its WKV kernel and cuBLAS
GEMM) run the very same numbers. Decode at batch 1, 8, 64, 256 and the largest batch the GPU
memory holds; prefill of 512 and 4096 tokens. The official package, which has no batching, is
measured after ours in the same process (scenarios ``official_decode_b1``, ``official_prefill_*``):
its CUDA extension builds at first import and may fail (a toolkit it cannot find, a compiler it
does not accept), which must not cost our figures. When it cannot be loaded its scenarios record
``official_missing`` with the reason and skip. ``RWKVEVAL_OFFICIAL_BUILD_STATUS=FILE`` (set by
docs/perf/gpu_run.py, which builds the extension in a separate process while the tests run):
wait for FILE, then load the official model only if it says ``ok``, else record its reason.

Timing: CUDA events around a round of calls after warm-up (for decode: the eager step, the CUDA
graph capture and a replay); the median round gives the rate. Each benchmark's ``extra_info``
holds tokens/s, weight bytes streamed per second, the fractions of this GPU's measured ceilings
(memory bandwidth of a large device copy; dense float16 matmul FLOP/s of an 8192^3 product), the
device name, and the issue's targets with whether they are met; it is filled step by step, so a
benchmark that fails after timing keeps what it measured and says ``error``. With
``--gpu-bench-log FILE`` every benchmark's ``extra_info`` is also appended to FILE (one JSON line)
the moment it ends, so a run killed part way still leaves what ran; ``docs/perf/gpu_tasks.py table``
builds the table (ratios to the official package included) from that file and shows the gaps.

Targets (issue 4, H100/H200): batch-1 decode >= 70% of the bandwidth roofline for 1.5B and larger;
batch-1 decode >= 2x the official package on 0.1B (launch-bound) and >= 1.2x on 1.5B; prefill of
4096 tokens >= 50% of dense float16 matmul peak; batch-256 decode >= 30% of that peak.

Run the benchmarks in their own pytest process: importing the official package with its CUDA
kernel on changes it for the rest of the process (and turns TF32 on).
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import importlib
import io
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import engine

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cuda_ready")]  # skip without a GPU (fail in the GPU run)

SHAPES = ("0.1B", "0.4B", "1.5B", "2.9B", "7.2B")
DTYPE, TORCH_DTYPE, STRATEGY = "float16", torch.float16, "cuda fp16"
DECODE_BATCHES = (1, 8, 64, 256, "max")
MAX_BATCH_CANDIDATES = (512, 1024, 2048, 4096, 8192)  # "max": the largest that fits in memory
PREFILL_LENGTHS = (512, 4096)
ROUND_SECONDS = 0.05  # each timed round runs enough calls to last about this long
BANDWIDTH_TARGET_SHAPES = ("1.5B", "2.9B", "7.2B")
OFFICIAL_RATIO_TARGETS = {"0.1B": 2.0, "1.5B": 1.2}  # ours / official, batch-1 decode
OFFICIAL_BUILD_ENV = "RWKVEVAL_OFFICIAL_BUILD_STATUS"


def parse_shapes(value: str) -> list[str]:
    """``--gpu-shapes``: comma-separated official sizes, or ``all``."""
    names = list(SHAPES) if value.strip() == "all" else [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not names:
        raise pytest.UsageError(f"--gpu-shapes: expected a comma-separated list of {', '.join(SHAPES)} "
                                f"(or 'all'), found {value!r}")
    return names


def pytest_generate_tests(metafunc):
    if "shape" in metafunc.fixturenames:
        shapes = parse_shapes(metafunc.config.getoption("gpu_shapes"))
        metafunc.parametrize("shape", shapes, scope="module")  # one model in memory at a time


@pytest.fixture(scope="session", autouse=True)
def _only_with_benchmark_only(request):
    if not request.config.getoption("benchmark_only", False):
        pytest.skip("GPU throughput benchmarks run with `pytest --benchmark-only tests/test_throughput_gpu.py`")


class BenchLog:
    """Appends one JSON line per finished benchmark to ``path`` (nothing without a path)."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None

    def write(self, info: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamped = {**info, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(stamped, default=str) + "\n")


@pytest.fixture(scope="session")
def bench_log(request) -> BenchLog:
    return BenchLog(request.config.getoption("gpu_bench_log"))


# ---------------------------------------------------------------------------------------------
# Timing and ceilings


def cuda_seconds(fn, *, rounds: int, warmup: int = 2, inner: int | None = None,
                 benchmark=None) -> list[float]:
    """Seconds per call of ``fn``, one value per round: CUDA events around ``inner`` calls.

    ``inner`` defaults to enough calls for a round of ~ROUND_SECONDS. With ``benchmark`` the rounds
    run under pytest-benchmark's ``pedantic`` (its wall-clock statistics then cover the same calls).
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    if inner is None:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        inner = max(1, min(200, math.ceil(ROUND_SECONDS / max(start.elapsed_time(end) / 1e3, 1e-6))))
    seconds: list[float] = []

    def one_round():
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3 / inner)

    if benchmark is None:
        for _ in range(rounds):
            one_round()
    else:
        benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    return seconds


def copy_bandwidth(nbytes: int = 2 << 30) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read plus bytes written."""
    src = torch.ones(nbytes // 2, dtype=torch.float16, device="cuda")
    dst = torch.empty_like(src)
    seconds = statistics.median(cuda_seconds(lambda: dst.copy_(src), rounds=7, inner=5))
    del src, dst
    return 2 * nbytes / seconds


def matmul_flops(dtype: torch.dtype, n: int = 8192) -> float:
    """FLOP/s of an n x n x n matrix product in ``dtype`` on random data (cuBLAS's best case)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(n, n, device="cuda", dtype=dtype, generator=g)
    b = torch.randn(n, n, device="cuda", dtype=dtype, generator=g)
    seconds = statistics.median(cuda_seconds(lambda: a @ b, rounds=7, warmup=3, inner=10))
    del a, b
    return 2 * n**3 / seconds


@pytest.fixture(scope="session")
def roofline():
    props = torch.cuda.get_device_properties(0)
    ceilings = {
        "device_name": torch.cuda.get_device_name(0),
        "multiprocessors": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "copy_bytes_per_s": copy_bandwidth(),
        "float16_matmul_flops": matmul_flops(torch.float16),
        "bfloat16_matmul_flops": matmul_flops(torch.bfloat16),
    }
    torch.cuda.empty_cache()
    return ceilings


# ---------------------------------------------------------------------------------------------
# Weights, models, the official package


def half_state_dict(cfg: engine.ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """engine.random_state_dict rounded to float16, tensor by tensor (7.2B: 29 GB -> 14 GB)."""
    sd = engine.random_state_dict(cfg, seed=seed)
    for key in list(sd):
        sd[key] = sd[key].to(TORCH_DTYPE)
    return sd


def official_cuda_class():
    """The official RWKV_x070 with its CUDA kernel (RWKV_CUDA_ON=1); it builds at first import."""
    os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="1", RWKV_CUDA_ON="1")
    pytest.importorskip("rwkv", reason="the official rwkv package is not installed: pip install rwkv")
    with contextlib.redirect_stdout(io.StringIO()):
        module = importlib.import_module("rwkv.model")
        if not hasattr(module, "RWKV7_OP"):  # imported before with its kernel off
            module = importlib.reload(module)
    assert hasattr(module, "RWKV7_OP"), "rwkv.model did not build its CUDA WKV-7 kernel"
    return module.RWKV_x070


def official_build_outcome(status: Path, poll_s: float = 1.0) -> str | None:
    """Wait for the separate build's status file: None when it says ``ok``, else why not."""
    while not status.exists():  # the build has a time limit of its own, the caller's stage too
        time.sleep(poll_s)
    text = status.read_text(encoding="utf-8").strip()
    return None if text == "ok" else f"its CUDA extension did not build: {text}"


def load_official(sd: dict[str, torch.Tensor], directory: Path):
    """The official package's model of ``sd`` (strategy ``cuda fp16``, its CUDA kernel on)."""
    cls = official_cuda_class()
    path = directory / "model.pth"
    torch.save(sd, path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return cls(str(path)[: -len(".pth")], strategy=STRATEGY)  # it appends .pth itself
    finally:
        path.unlink()  # up to 14 GB of disk


def _ids(cfg: engine.ModelConfig, length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def matmul_params(cfg: engine.ModelConfig, with_head: bool) -> int:
    """Weights in matrix products per token: projections, FFN, LoRAs (and the head)."""
    C, F = cfg.n_embd, cfg.ffn_size
    lora = C * 2 * (cfg.rank_w + cfg.rank_a + cfg.rank_v + cfg.rank_g)
    return cfg.n_layer * (4 * C * C + 2 * C * F + lora) + (cfg.vocab_size * C if with_head else 0)


def state_bytes(cfg: engine.ModelConfig) -> int:
    """One sequence's recurrent state (float32): WKV matrices and both token shifts, all layers."""
    return 4 * cfg.n_layer * (cfg.n_head * cfg.head_size**2 + 2 * cfg.n_embd)


def max_batch(cfg: engine.ModelConfig) -> int:
    """The largest of MAX_BATCH_CANDIDATES whose decode step fits in 60% of free GPU memory."""
    free, _ = torch.cuda.mem_get_info()
    C, F, V = cfg.n_embd, cfg.ffn_size, cfg.vocab_size
    # per sequence: the state, the logits (float16 head output, float32 copy, the returned
    # clone) and a generous bound on one layer's activations, for the eager step and the graph
    per_sequence = state_bytes(cfg) + V * (2 + 4 + 4) + 2 * 2 * (3 * F + 40 * C)
    fitting = [b for b in MAX_BATCH_CANDIDATES if b * per_sequence <= 0.6 * free]
    return max(fitting, default=256)


@dataclass
class Bench:
    """One shape's weights (float16, on the CPU) and, built on first use, our model, then the
    official one (ours is dropped first: the official scenarios run last)."""

    shape: str
    cfg: engine.ModelConfig
    sd: dict[str, torch.Tensor]
    directory: Path
    _model: engine.RWKV7 | None = None
    _official: object | None = None
    official_missing: str | None = None
    _max_batch: int | None = None

    @property
    def model(self) -> engine.RWKV7:
        if self._model is None:
            self._model = engine.from_state_dict(self.sd, device="cuda", dtype=DTYPE)
        return self._model

    @property
    def max_batch(self) -> int:
        if self._max_batch is None:
            self.model  # memory as it will be while decoding
            self._max_batch = max_batch(self.cfg)
        return self._max_batch

    def official(self):
        """The official model, or None with ``official_missing`` saying why (tried once per shape)."""
        if self.official_missing is None and self._official is None:
            status = os.environ.get(OFFICIAL_BUILD_ENV)
            self.official_missing = official_build_outcome(Path(status)) if status else None
            if self.official_missing is None:
                self.release_ours()
                try:
                    self._official = load_official(self.sd, self.directory)
                except (Exception, pytest.skip.Exception) as exc:  # a failed build raises anything
                    self.official_missing = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        if self.official_missing is not None:
            return None
        return self._official

    def release_ours(self) -> None:
        self._model = None
        gc.collect()
        torch.cuda.empty_cache()


@pytest.fixture(scope="module")
def bench(shape, tmp_path_factory):
    cfg = engine.official_config(shape)
    b = Bench(shape, cfg, half_state_dict(cfg), tmp_path_factory.mktemp(f"official-{shape}"))
    yield b
    b.release_ours()
    b._official = None
    gc.collect()
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Reporting


def _target(value: float, target: float) -> dict:
    return {"value": round(value, 3), "target": target, "met": value >= target}


def record(benchmark, b: Bench, roofline: dict, scenario: str, seconds: list[float], *,
           tokens_per_call: int, weight_bytes_per_call: int, flops_per_call: float,
           state_bytes_per_call: int = 0, **extra) -> None:
    """Fill ``benchmark.extra_info`` in steps, the measured times first: whatever fails later
    (a ceiling that was not measured, say) leaves the figures before it in place."""
    info = benchmark.extra_info
    info.update(timing="CUDA events, median of rounds after warm-up", rounds=len(seconds), **extra)
    per_call = statistics.median(seconds)
    rate = tokens_per_call / per_call
    info.update(seconds_per_call=per_call, seconds_per_call_min_max=[min(seconds), max(seconds)],
                tokens_per_s=round(rate, 2))
    weight_bps = weight_bytes_per_call / per_call
    flops = flops_per_call / per_call
    info.update(weight_gb_per_s=round(weight_bps / 1e9, 2), matmul_tflops=round(flops / 1e12, 3))
    info.update(
        fraction_of_bandwidth_roofline=round(weight_bps / roofline["copy_bytes_per_s"], 3),
        fraction_of_matmul_roofline=round(flops / roofline["float16_matmul_flops"], 3),
        machine_copy_gb_per_s=round(roofline["copy_bytes_per_s"] / 1e9, 1),
        machine_float16_matmul_tflops=round(roofline["float16_matmul_flops"] / 1e12, 1),
        machine_bfloat16_matmul_tflops=round(roofline["bfloat16_matmul_flops"] / 1e12, 1),
    )
    if state_bytes_per_call:
        moved = (weight_bytes_per_call + state_bytes_per_call) / per_call
        info["state_gb_per_s"] = round(state_bytes_per_call / per_call / 1e9, 2)
        info["fraction_of_bandwidth_roofline_with_state"] = round(moved / roofline["copy_bytes_per_s"], 3)
    targets = {}
    if scenario == "decode_b1" and b.shape in BANDWIDTH_TARGET_SHAPES:
        targets["fraction_of_bandwidth_roofline"] = _target(info["fraction_of_bandwidth_roofline"], 0.70)
    if scenario == "prefill_4096":
        targets["fraction_of_matmul_roofline"] = _target(info["fraction_of_matmul_roofline"], 0.50)
    if scenario == "decode_b256":
        targets["fraction_of_matmul_roofline"] = _target(info["fraction_of_matmul_roofline"], 0.30)
    if targets:
        info["targets"] = targets
    if scenario == "decode_b1" and b.shape in OFFICIAL_RATIO_TARGETS:  # judged by the table, beside official_decode_b1
        info["official_ratio_target"] = OFFICIAL_RATIO_TARGETS[b.shape]


# ---------------------------------------------------------------------------------------------
# The benchmarks


OURS = [f"decode_b{b}" for b in DECODE_BATCHES] + [f"prefill_{n}" for n in PREFILL_LENGTHS]
OFFICIAL = ["official_decode_b1"] + [f"official_prefill_{n}" for n in PREFILL_LENGTHS]
SCENARIOS = OURS + OFFICIAL  # ours first: the official package's build and import come last


# One test function, so that pytest runs every scenario of one shape before loading the next model
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_throughput(benchmark, bench, roofline, scenario, bench_log):
    benchmark.group = scenario
    benchmark.extra_info.update(device_name=roofline["device_name"], scenario=scenario, shape=bench.shape,
                                config=bench.cfg.to_dict(), dtype=DTYPE, torch=torch.__version__,
                                engine="official" if scenario in OFFICIAL else "rwkveval")
    try:
        if scenario in OFFICIAL:
            official(benchmark, bench, roofline, scenario.removeprefix("official_"))
        elif scenario.startswith("decode_b"):
            batch = scenario.removeprefix("decode_b")
            decode(benchmark, bench, roofline, bench.max_batch if batch == "max" else int(batch), scenario)
        else:
            prefill(benchmark, bench, roofline, int(scenario.removeprefix("prefill_")), scenario)
    except Exception as exc:
        benchmark.extra_info["error"] = f"{type(exc).__name__}: {str(exc).strip()[:500]}"
        raise
    finally:
        bench_log.write(dict(benchmark.extra_info))
        torch.cuda.empty_cache()


def decode(benchmark, bench: Bench, roofline: dict, B: int, scenario: str) -> None:
    model, cfg = bench.model, bench.cfg
    state = model.zero_state(B)
    model.forward(_ids(cfg, 1, B, seed=2), state, logits="none", inplace=True)  # a state that is not zeros
    step = _ids(cfg, 1, B, seed=3)  # on the CPU, as generate hands tokens over
    before = model.graph_stats["replay"]
    seconds = cuda_seconds(lambda: model.forward(step, state, logits="last", inplace=True),
                           rounds=7, warmup=3, benchmark=benchmark)  # warm-up: eager, capture, replay
    record(benchmark, bench, roofline, scenario, seconds, tokens_per_call=B,
           weight_bytes_per_call=matmul_params(cfg, True) * 2,
           flops_per_call=2 * matmul_params(cfg, True) * B, state_bytes_per_call=2 * B * state_bytes(cfg),
           batch=B, graph_replays=model.graph_stats["replay"] - before,
           graph_capture_failed=model.graph_stats["capture_failed"])


def prefill(benchmark, bench: Bench, roofline: dict, length: int, scenario: str) -> None:
    model, cfg = bench.model, bench.cfg
    toks = _ids(cfg, length, seed=1)  # the official run's ids
    seconds = cuda_seconds(lambda: model.forward(toks, logits="last"), rounds=5, warmup=2,
                           benchmark=benchmark)
    record(benchmark, bench, roofline, scenario, seconds, tokens_per_call=length,
           weight_bytes_per_call=matmul_params(cfg, True) * 2, flops_per_call=prefill_flops(cfg, length),
           length=length)


def prefill_flops(cfg: engine.ModelConfig, length: int) -> float:
    return 2 * matmul_params(cfg, False) * length + 2 * cfg.vocab_size * cfg.n_embd  # head: last token only


def official(benchmark, bench: Bench, roofline: dict, scenario: str) -> None:
    """The official package on the same weights: batch-1 decode or a prefill from a zero state."""
    model = bench.official()
    if model is None:
        benchmark.extra_info["official_missing"] = bench.official_missing
        pytest.skip(f"official package not measured: {bench.official_missing}")
    cfg = bench.cfg
    toks = _ids(cfg, max(PREFILL_LENGTHS), seed=1)[0].tolist()  # our prefill's ids
    if scenario == "decode_b1":
        _, state = model.forward(toks[:4], None)
        seconds = cuda_seconds(lambda: model.forward([toks[5]], state), rounds=7, warmup=4, benchmark=benchmark)
        record(benchmark, bench, roofline, "official_decode_b1", seconds, tokens_per_call=1,
               weight_bytes_per_call=matmul_params(cfg, True) * 2, flops_per_call=2 * matmul_params(cfg, True),
               batch=1)
        return
    length = int(scenario.removeprefix("prefill_"))
    seconds = cuda_seconds(lambda: model.forward(toks[:length], None), rounds=5, warmup=2, benchmark=benchmark)
    record(benchmark, bench, roofline, f"official_{scenario}", seconds, tokens_per_call=length,
           weight_bytes_per_call=matmul_params(cfg, True) * 2, flops_per_call=prefill_flops(cfg, length),
           length=length)
