"""The launch path of the CUDA wrappers, on the CPU: argument tuples against the kernels' C
signatures, the stream each launch names, and a whole launch through ``ops._launch`` with a
stand-in CuPy whose kernels run the plain-PyTorch twins on the tensors the pointers name.

Nothing here needs CuPy or a GPU; tests/test_kernels_gpu.py runs the real kernels.
"""
from __future__ import annotations

import contextlib
import re
import types
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from engine.kernels import CUPY_WHEELS, cupy_available, cupy_install_hint, cupy_wheel, loader, ops, reference
from helpers import VECTORS, wkv_inputs


# ---------------------------------------------------------------------------------------------
# Launch glue, checked on the CPU: the wrappers' argument tuples against the kernels' C
# signatures parsed from the sources (count, numpy scalar type per C type, which tensor each
# pointer is), and the launch geometry against the work. CuPy would accept a mismatch silently.

_C_SCALARS = {"int": np.int32, "long long": np.int64, "float": np.float32}


def kernel_signatures(source: str) -> dict[str, list[tuple[str, type | None]]]:
    """{kernel base name: [(parameter name, numpy scalar type, None for a pointer)]}."""
    text = loader.read_source(source).replace("\\\n", "\n")
    signatures = {}
    for match in re.finditer(r"(\w+?)_##SUFFIX\(([^)]*)\)", text):
        params = []
        for param in match.group(2).split(","):
            words = param.replace("*", " * ").split()
            name, ctype = words[-1], " ".join(w for w in words[:-1] if w not in ("const", "__restrict__"))
            params.append((name, None if "*" in ctype else _C_SCALARS[ctype]))
        signatures[match.group(1)] = params
    return signatures


@dataclass
class Launch:
    source: str
    function: str
    head_size: int
    grid: int
    block: int
    args: tuple


@pytest.fixture
def launches(monkeypatch) -> list[Launch]:
    """Run the wrappers on CPU tensors, recording each launch instead of making it."""
    calls: list[Launch] = []
    check_tensors = ops._check_tensors
    monkeypatch.setattr(ops, "_check_tensors", lambda op, tensors, device_type: check_tensors(op, tensors, "cpu"))
    monkeypatch.setattr(ops, "_launch", lambda source, function, head_size, device, grid, block, args:
                        calls.append(Launch(source, function, head_size, grid, block, args)))
    return calls


def assert_args_match(launch: Launch, tensors: dict[str, torch.Tensor], scalars: dict[str, float]) -> None:
    base, suffix = launch.function.rsplit("_", 1)
    signature = kernel_signatures(launch.source)[base]
    assert len(launch.args) == len(signature), f"{launch.function}: {len(launch.args)} args for {signature}"
    for (name, scalar_type), arg in zip(signature, launch.args):
        if scalar_type is None:
            assert isinstance(arg, np.uint64), f"{launch.function}: pointer {name} passed as {type(arg)}"
            assert int(arg) == tensors[name].data_ptr(), f"{launch.function}: {name} points elsewhere"
        else:
            assert type(arg) is scalar_type, f"{launch.function}: {name} passed as {type(arg)}, C wants {scalar_type}"
            assert arg == pytest.approx(scalars[name]), f"{launch.function}: {name} = {arg}, expected {scalars[name]}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("T", [1, 5])
def test_wkv7_forward_launch_arguments(launches, T, dtype):
    B, H, N = 3, 2, 64
    d = wkv_inputs(B=B, T=T, H=H, N=N, dtype=dtype)
    y = ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS)), w_log=True)
    (launch,) = launches
    suffix = ops.KERNEL_DTYPES[dtype]
    assert (launch.source, launch.head_size) == ("wkv7.cu", N)
    if T == 1:  # auto picks the coalesced step kernel
        assert launch.function == f"wkv7_step_{suffix}"
        assert launch.block == 32 * ops.WKV7_STEP_WARPS
        assert launch.grid * ops.WKV7_STEP_WARPS * ops.WKV7_STEP_ROWS >= B * H * N
    else:
        assert launch.function == f"wkv7_forward_{suffix}"
        assert (launch.grid, launch.block) == (B * H, N)
    assert_args_match(launch, {**d, "y": y}, {"B": B, "T": T, "H": H, "w_log": 1})


def test_wkv7_step_launch_arguments(launches):
    d = wkv_inputs(B=2, H=5, N=128, step=True)
    y = ops.wkv7_step(*(d[n] for n in ("state", *VECTORS)))
    (launch,) = launches
    assert launch.function == "wkv7_step_f32" and launch.head_size == 128
    assert_args_match(launch, {**d, "y": y}, {"B": 2, "H": 5, "w_log": 0})


def test_groupnorm_launch_arguments(launches):
    B, T, H, N = 2, 3, 5, 32
    d = reference.random_groupnorm_inputs(B, T, H, N, dtype=torch.float16)
    out = ops.groupnorm_bonus_gate(**d, eps=1e-3)
    (launch,) = launches
    assert (launch.function, launch.head_size) == ("groupnorm_bonus_gate_f16", N)
    assert launch.block == ops.GROUPNORM_BLOCK and launch.grid * launch.block >= B * T * H * 32
    assert_args_match(launch, {**d, "out": out}, {"groups": B * T * H, "H": H, "eps": 1e-3})


def test_token_shift_launch_arguments(launches):
    M, B, T, C = 6, 2, 3, 100
    d = reference.random_token_shift_inputs(M, B, T, C, dtype=torch.bfloat16)
    out = ops.token_shift_mix(**d)
    (launch,) = launches
    assert launch.function == "token_shift_mix_bf16" and out.shape == (M, B, T, C)
    assert launch.block == ops.TOKEN_SHIFT_BLOCK and launch.grid * launch.block >= B * T * C
    assert_args_match(launch, {**d, "out": out}, {"n": B * T * C, "T": T, "C": C, "M": M})


def test_empty_inputs_launch_nothing(launches):
    d = wkv_inputs(B=0, T=4)
    assert ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS))).shape == (0, 4, 2, 64)
    assert ops.token_shift_mix(**reference.random_token_shift_inputs(6, 2, 0, 8)).shape == (6, 2, 0, 8)
    assert launches == []


def test_signatures_parse_every_kernel():
    assert set(kernel_signatures("wkv7.cu")) == {"wkv7_forward", "wkv7_step"}
    assert set(kernel_signatures("fused.cu")) == {"groupnorm_bonus_gate", "token_shift_mix"}



# ---------------------------------------------------------------------------------------------
# Streams and a whole launch, through a stand-in CuPy


class FakeCupy:
    """What ops/loader use of CuPy: ``cuda.Device`` (a context), ``cuda.Stream.from_external``
    (CuPy >= 14) or ``cuda.ExternalStream`` (CuPy 13), and kernels from ``get_kernel``."""

    def __init__(self, from_external: bool = True):
        self.log: list[tuple] = []
        self.current_device: int | None = None
        fake = self

        @contextlib.contextmanager
        def device(index):
            fake.current_device, before = index, fake.current_device
            yield
            fake.current_device = before

        class Stream:
            def __init__(self, ptr):
                self.ptr = ptr

        if from_external:
            def from_external(obj):
                version, ptr = obj.__cuda_stream__()
                assert version == 0
                fake.log.append(("from_external", ptr))
                return Stream(ptr)

            Stream.from_external = staticmethod(from_external)

        def external_stream(ptr, device_id):
            fake.log.append(("ExternalStream", ptr, device_id))
            return Stream(ptr)

        self.cuda = types.SimpleNamespace(Device=device, Stream=Stream, ExternalStream=external_stream)


@pytest.fixture
def fake_cupy(monkeypatch):
    fake = FakeCupy()
    monkeypatch.setattr(loader, "cupy_module", lambda: fake)
    loader.launch_stream.cache_clear()
    yield fake
    loader.launch_stream.cache_clear()  # (get_kernel may still be a stand-in here)


def test_launch_stream_is_one_protocol_object_per_pointer_and_device(fake_cupy):
    first = loader.launch_stream(0x1234, 0)
    assert first.ptr == 0x1234 and loader.launch_stream(0x1234, 0) is first
    assert loader.launch_stream(0x1234, 1) is not first  # the same value on another device
    assert loader.launch_stream(0, 0).ptr == 0  # the legacy default stream
    assert fake_cupy.log == [("from_external", 0x1234), ("from_external", 0x1234), ("from_external", 0)]
    assert loader.StreamHandle(7).__cuda_stream__() == (0, 7)


def test_launch_stream_uses_external_stream_where_cupy_lacks_from_external(monkeypatch):
    fake = FakeCupy(from_external=False)
    monkeypatch.setattr(loader, "cupy_module", lambda: fake)
    loader.launch_stream.cache_clear()
    try:
        assert loader.launch_stream(99, 2).ptr == 99
        assert fake.log == [("ExternalStream", 99, 2)]
    finally:
        loader.launch_stream.cache_clear()


class TwinKernels:
    """``loader.get_kernel`` stand-in: each kernel resolves its pointer arguments to the tensors
    they came from (recorded by ``ops._ptr``) and runs the twin of reference.py into the output."""

    def __init__(self, fake: FakeCupy):
        self.fake = fake
        self.tensors: dict[int, torch.Tensor] = {}
        self.launches: list[dict] = []

    def ptr(self, t: torch.Tensor) -> np.uint64:
        self.tensors[t.data_ptr()] = t
        return np.uint64(t.data_ptr())

    def get_kernel(self, source, function, options, device):
        base = function.rsplit("_", 1)[0]
        names = [name for name, _ in kernel_signatures(source)[base]]

        def kernel(grid, block, args, *, stream):
            a = dict(zip(names, args))
            t = {n: self.tensors[int(v)] for n, v in a.items() if isinstance(v, np.uint64)}
            self.launches.append({"function": function, "device": self.fake.current_device,
                                  "stream": stream, "grid": grid, "block": block})
            if base in ("wkv7_forward", "wkv7_step"):
                B, H, N, _ = t["state"].shape
                vec = [t[n] if base == "wkv7_forward" else t[n].reshape(B, 1, H, N) for n in VECTORS]  # [B, T, H, N]
                y = reference.wkv7_forward(t["state"], *vec, w_log=bool(a["w_log"]))
                t["y"].copy_(y.view(t["y"].shape))
            elif base == "groupnorm_bonus_gate":
                t["out"].copy_(reference.groupnorm_bonus_gate(*(t[n] for n in ("y", "r", "k", "v", "g", "ln_w",
                                                                                "ln_b", "r_k")), eps=float(a["eps"])))
            else:
                t["out"].copy_(reference.token_shift_mix(t["x"], t["x_prev"], t["mix"]))

        return kernel


@pytest.fixture
def twin_launch(fake_cupy, monkeypatch):
    """The real ``ops._launch`` on CPU tensors: device checks relaxed to the CPU, a fake current
    stream pointer, the twin kernels; the tensors claim CUDA device index 0 for the launch."""
    kernels = TwinKernels(fake_cupy)
    check_tensors = ops._check_tensors
    monkeypatch.setattr(ops, "_check_tensors", lambda op, tensors, device_type: check_tensors(op, tensors, "cpu"))
    monkeypatch.setattr(ops, "_ptr", kernels.ptr)
    monkeypatch.setattr(loader, "get_kernel", kernels.get_kernel)
    streams = {"ptr": 0xBEEF}
    monkeypatch.setattr(ops, "current_stream_ptr", lambda device: streams["ptr"])
    launch = ops._launch
    monkeypatch.setattr(ops, "_launch", lambda source, function, head_size, device, grid, block, args:
                        launch(source, function, head_size, torch.device("cuda", 0), grid, block, args))
    kernels.streams = streams
    return kernels


@pytest.mark.parametrize("T", [1, 6])
def test_wkv7_launch_runs_on_the_current_stream_and_equals_the_twin(twin_launch, T):
    d = wkv_inputs(B=2, T=T, H=3, N=32, dtype=torch.bfloat16)
    state = d["state"].clone()
    want = reference.wkv7_forward(state, *(d[n] for n in VECTORS), w_log=False)
    y = ops.wkv7_forward(*(d[n] for n in ("state", *VECTORS)))
    assert torch.equal(y, want) and torch.equal(d["state"], state)
    (launch,) = twin_launch.launches
    assert launch["function"] == ("wkv7_step_bf16" if T == 1 else "wkv7_forward_bf16")
    assert launch["device"] == 0 and launch["stream"].ptr == 0xBEEF
    # the same stream object for the next launch; a new current stream gets its own
    ops.token_shift_mix(**reference.random_token_shift_inputs(6, 2, T, 64))
    assert twin_launch.launches[1]["stream"] is launch["stream"]
    twin_launch.streams["ptr"] = 0xCAFE
    gn = reference.random_groupnorm_inputs(2, T, 3, 32, dtype=torch.float16)
    out = ops.groupnorm_bonus_gate(**gn)
    assert torch.equal(out, reference.groupnorm_bonus_gate(**gn))
    assert twin_launch.launches[2]["stream"].ptr == 0xCAFE
    assert twin_launch.launches[2]["stream"] is not launch["stream"]


def test_model_forward_through_the_launch_path_equals_the_reference(twin_launch, monkeypatch):
    """The GPU model's three kernels, each through ops' launch glue and stream, on a random model."""
    import engine
    from engine import gpu
    from helpers import SMALL

    monkeypatch.setattr(gpu, "check_gpu_target", lambda device, *a, **k: torch.device(device))
    sd = engine.random_state_dict(SMALL, seed=3)
    ours = gpu.RWKV7CUDA(sd, SMALL, device="cpu", use_graphs=False)
    toks = torch.randint(0, SMALL.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    want, _ = engine.from_state_dict(sd).forward(toks)
    got, _ = ours.forward(toks)
    assert ((got - want).norm() / want.norm()).item() <= 1e-5
    functions = {launch["function"] for launch in twin_launch.launches}
    assert functions == {"token_shift_mix_f32", "wkv7_forward_f32", "groupnorm_bonus_gate_f32"}
    assert {launch["stream"].ptr for launch in twin_launch.launches} == {0xBEEF}


# ---------------------------------------------------------------------------------------------
# Which CuPy wheel


@pytest.mark.parametrize("version, wheel", [("13.0", "cupy-cuda13x"), ("12.4", "cupy-cuda12x"), ("11.8", "cupy-cuda11x")])
def test_cupy_wheel_follows_the_cuda_major(version, wheel):
    assert cupy_wheel(version) == wheel and wheel in CUPY_WHEELS.values()


@pytest.mark.parametrize("version, message", [(None, "built without CUDA"), ("10.2", "no CuPy wheel for CUDA 10.2"),
                                              ("abc", "expected a CUDA version such as '13.0', found 'abc'")])
def test_cupy_wheel_rejects_what_has_none(version, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        cupy_wheel(version)


def test_cupy_install_hint_names_the_wheel_for_this_torch(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert cupy_install_hint() == ("pip install cupy-cuda13x (or pip install 'rwkveval[cuda13]'): "
                                   "torch here was built with CUDA 13.0")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "built without CUDA" in cupy_install_hint()


@pytest.mark.skipif(cupy_available(), reason="CuPy is installed here, so it cannot be missing")
def test_missing_cupy_says_how_to_install():
    with pytest.raises(ImportError, match=r"the GPU kernels need CuPy: expected an importable `cupy`, found none \(.+\)"):
        loader.cupy_module()
