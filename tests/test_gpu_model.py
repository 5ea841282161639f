"""The GPU model class (engine/gpu.py): its checks, its graph cache and its numbers.

Without a GPU: the class chosen by device, the device/dtype/head-size checks, the decode-graph
keys and cache policy, and the whole model with the kernels' plain-PyTorch twins standing in for
the kernels (each call first passing the wrapper's own input checks), against the reference.
With a GPU (``-m gpu``; skips otherwise, fails under RWKVEVAL_REQUIRE_GPU=1): the real kernels
and CUDA graphs against the CPU reference, on the tiny model in ../shared/models and on random
models of several shapes.

    python -m pytest tests/test_gpu_model.py -q
"""
from __future__ import annotations

import contextlib
import types
import warnings

import pytest
import torch

import engine
from engine import State, gpu
from engine.errors import InputError
from engine.gpu import DecodeGraph, GraphCache, GraphRuntime, RWKV7CUDA, decode_graph_key, is_decode_step
from engine.kernels import ops, reference
from engine.model import RWKV7, model_class
from helpers import SHAPES, SMALL

VECTORS = ("r", "w", "k", "v", "a", "b")


def rel_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.detach().cpu().double(), ref.detach().cpu().double()
    return ((x - ref).square().mean().sqrt() / ref.square().mean().sqrt().clamp_min(1e-30)).item()


def assert_close_to_reference(got, want, exact, dtype: str) -> None:
    """``got`` from the path under test, ``want`` from the reference in the same dtype, ``exact``
    from the reference in float32. float32: within 1e-4 relative RMS. float16: within 1e-2 of
    the reference. bfloat16 (8 bits of mantissa) on random weights strays ~1.5e-2 from float32
    in the reference itself, so there the bar is the reference's own error: no more than 1.5x
    it (or 1e-2, whichever is larger) from float32."""
    if dtype == "float32":
        assert rel_rms(got, want) <= 1e-4
        return
    if dtype == "float16":
        assert rel_rms(got, want) <= 1e-2
    assert rel_rms(got, exact) <= max(1e-2, 1.5 * rel_rms(want, exact))


def _toks(vocab, B, T, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Which class, which device, which dtype


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1", torch.device("cuda")])
def test_cuda_devices_get_the_gpu_class(device):
    assert model_class(device) is RWKV7CUDA
    assert issubclass(RWKV7CUDA, RWKV7)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_cpu_gets_the_reference_class(device):
    assert model_class(device) is RWKV7


def _target(device="cuda", dtype="float16", head_size=64, cuda_devices=1, has_cupy=True):
    return gpu.check_gpu_target(device, dtype, head_size, cuda_devices=cuda_devices, has_cupy=has_cupy)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("head_size", ops.HEAD_SIZES)
def test_gpu_target_accepts_every_dtype_and_kernel_head_size(dtype, head_size):
    assert _target(dtype=dtype, head_size=head_size) == torch.device("cuda")
    assert _target("cuda:1", cuda_devices=2) == torch.device("cuda", 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(device="cpu"), "expected 'cuda' or 'cuda:N', found 'cpu'"),
    (dict(device="gpu0"), "device must be 'cuda' or 'cuda:N'"),
    (dict(dtype="half"), "dtype must be one of ['bfloat16', 'float16', 'float32'], found 'half'"),
    (dict(cuda_devices=0), "torch sees no CUDA GPU"),
    (dict(device="cuda:2", cuda_devices=2), "torch sees 2 CUDA GPU(s) (indices 0 to 1)"),
    (dict(has_cupy=False), "CuPy, which is not installed"),
    (dict(head_size=48), "head sizes (32, 64, 96, 128), found a model with head size 48"),
])
def test_gpu_target_rejects_with_a_message(kwargs, message):
    with pytest.raises(InputError) as info:
        _target(**kwargs)
    assert message in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where there is no GPU")
def test_asking_for_cuda_without_a_gpu_is_an_input_error(tiny_model_path):
    sd = engine.random_state_dict(SMALL, seed=0)
    with pytest.raises(InputError, match="no CUDA GPU"):
        engine.from_state_dict(sd, device="cuda", dtype="float16")
    with pytest.raises(InputError, match="no CUDA GPU"):
        engine.load_model(tiny_model_path, device="cuda", dtype="float16")
    with pytest.raises(InputError, match="no CUDA GPU"):
        RWKV7CUDA(sd, SMALL, device="cuda")


# ---------------------------------------------------------------------------------------------
# Decode graphs: which calls, which key, which plan


def test_only_inplace_single_token_steps_with_a_state_are_decode_steps():
    state = State.zeros(SMALL, 2)
    step = torch.zeros(2, 1, dtype=torch.long)
    assert is_decode_step(step, state, "last", True)
    assert is_decode_step(step, state, "none", True) and is_decode_step(step, state, "all", True)
    assert not is_decode_step(step, state, "last", False)  # a fresh state each call: no fixed address
    assert not is_decode_step(step, None, "last", True)
    assert not is_decode_step(torch.zeros(2, 3, dtype=torch.long), state, "last", True)
    assert not is_decode_step([[0], [1]], state, "last", True)
    assert not is_decode_step(step, state, "some", True)  # left to forward's own error


def test_graph_key_follows_the_state_memory_and_shape():
    state = State.zeros(SMALL, 3)
    key = decode_graph_key(3, state, "last")
    assert key == decode_graph_key(3, state, "last")
    assert key == decode_graph_key(3, state, "all")  # the same computation at T = 1
    assert key != decode_graph_key(3, state, "none")  # the head is skipped
    assert key != decode_graph_key(3, state.clone(), "last")  # other memory
    # a batch-prefix view, as engine.batching hands over: same address, other shape
    view = State(state.att_x[:, :2], state.wkv[:, :2], state.ffn_x[:, :2])
    assert decode_graph_key(2, view, "last") != decode_graph_key(2, state.select([0, 1]), "last")
    assert decode_graph_key(2, view, "last")[2][2] == key[2][2]
    hash(key)


def test_graph_cache_runs_eager_then_captures_then_replays():
    cache = GraphCache(max_graphs=2, capture_after=2)
    assert [cache.plan("a"), cache.plan("a")] == ["eager", "capture"]
    cache.store("a", "graph-a")
    assert cache.plan("a") == "replay" and cache.get("a") == "graph-a" and "a" in cache
    assert [cache.plan("b"), cache.plan("c"), cache.plan("b")] == ["eager", "eager", "capture"]
    cache.store("b", "graph-b")
    assert cache.plan("a") == "replay"  # a is now the most recently used
    assert cache.store("c", "graph-c") == ["graph-b"]  # least recently used out
    assert len(cache) == 2 and "b" not in cache and cache.plan("b") == "eager"
    cache.clear()
    assert len(cache) == 0 and cache.plan("a") == "eager"


def test_graph_cache_needs_an_eager_step_first_and_bounds_its_memory_of_sightings():
    three = GraphCache(capture_after=3)
    assert [three.plan("x") for _ in range(3)] == ["eager", "eager", "capture"]
    cache = GraphCache(capture_after=2, max_seen=3)
    for key in "abcd":
        assert cache.plan(key) == "eager"
    assert cache.plan("a") == "eager"  # forgotten: only the 3 latest sightings are kept
    assert cache.plan("d") == "capture"
    with pytest.raises(InputError, match="max_graphs and max_seen >= 1"):
        GraphCache(max_graphs=0)
    # a capture as a key's first step would launch kernels for the first time inside it
    with pytest.raises(InputError, match=r"capture_after >= 2 .* found 1"):
        GraphCache(capture_after=1)


def test_graph_cache_disabled_keys_stay_eager():
    cache = GraphCache(capture_after=2, max_seen=2)
    assert cache.plan("a") == "eager"
    cache.disable("a")
    assert [cache.plan("a") for _ in range(3)] == ["eager"] * 3 and cache.is_disabled("a")
    cache.disable("b")
    cache.disable("c")  # bounded like the sightings: "a" is forgotten and may be tried again
    assert not cache.is_disabled("a") and cache.is_disabled("c")
    assert [cache.plan("a"), cache.plan("a")] == ["eager", "capture"]
    cache.clear()
    assert not cache.is_disabled("c")


def test_decode_graph_run_fills_the_input_buffer_and_returns_a_copy():
    replays = []
    static_tokens = torch.zeros(2, 1, dtype=torch.long)
    static_logits = torch.zeros(2, 1, 5)
    fake = types.SimpleNamespace(replay=lambda: (replays.append(static_tokens.clone()),
                                                 static_logits.fill_(float(static_tokens.sum()))))
    entry = DecodeGraph(fake, static_tokens, static_logits)
    out = entry.run(torch.tensor([[3], [4]]))
    assert torch.equal(replays[0], torch.tensor([[3], [4]])) and torch.all(out == 7.0)
    entry.run(torch.tensor([[1], [1]]))
    assert torch.all(out == 7.0), "the returned logits must not alias the captured output"
    assert DecodeGraph(fake, static_tokens, None).run(torch.tensor([[0], [0]])) is None


# ---------------------------------------------------------------------------------------------
# The whole model on the CPU, the kernels' twins in place of the kernels


class TwinOps:
    """``ops`` as engine/gpu.py calls it: each wrapper's own checks (on CPU tensors), then the twin."""

    HEAD_SIZES = ops.HEAD_SIZES

    def __init__(self):
        self.calls = {"wkv7_forward": 0, "groupnorm_bonus_gate": 0, "token_shift_mix": 0}

    def wkv7_forward(self, state, r, w, k, v, a, b, *, w_log=False):
        ops.check_wkv7("wkv7_forward", state, dict(zip(VECTORS, (r, w, k, v, a, b))), step=False,
                       device_type="cpu")
        self.calls["wkv7_forward"] += 1
        return reference.wkv7_forward(state, r, w, k, v, a, b, w_log=w_log)

    def groupnorm_bonus_gate(self, y, r, k, v, g, ln_w, ln_b, r_k, *, eps):
        ops.check_groupnorm_bonus_gate(y, r, k, v, g, ln_w, ln_b, r_k, eps=eps, device_type="cpu")
        self.calls["groupnorm_bonus_gate"] += 1
        return reference.groupnorm_bonus_gate(y, r, k, v, g, ln_w, ln_b, r_k, eps=eps)

    def token_shift_mix(self, x, x_prev, mix):
        ops.check_token_shift_mix(x, x_prev, mix, device_type="cpu")
        self.calls["token_shift_mix"] += 1
        return reference.token_shift_mix(x, x_prev, mix)


@pytest.fixture
def twins(monkeypatch):
    """RWKV7CUDA buildable on the CPU, its kernels replaced by the twins."""
    fake = TwinOps()
    monkeypatch.setattr(gpu, "ops", fake)
    monkeypatch.setattr(gpu, "check_gpu_target", lambda device, *a, **k: torch.device(device))
    return fake


def twin_model(sd, dtype="float32", **kwargs) -> RWKV7CUDA:
    cfg = engine.checkpoint.infer_config(sd)
    return RWKV7CUDA(sd, cfg, device="cpu", dtype=dtype, **kwargs)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_twin_path_equals_reference_float32(twins, shape):
    sd = engine.random_state_dict(SHAPES[shape], seed=5)
    ref, ours = engine.from_state_dict(sd), twin_model(sd, use_graphs=False)
    toks = _toks(SHAPES[shape].vocab_size, 2, 7, seed=1)
    want, want_state = ref.forward(toks)
    got, got_state = ours.forward(toks)
    L = SHAPES[shape].n_layer
    assert twins.calls == {"wkv7_forward": L, "groupnorm_bonus_gate": L, "token_shift_mix": 2 * L}
    assert rel_rms(got, want) <= 1e-5
    for name in ("att_x", "wkv", "ffn_x"):
        assert rel_rms(getattr(got_state, name), getattr(want_state, name)) <= 1e-5, name


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_twin_path_half_precision_close_to_reference(twins, dtype):
    sd = engine.random_state_dict(SMALL, seed=5)
    toks = _toks(SMALL.vocab_size, 2, 9, seed=2)
    want, _ = engine.from_state_dict(sd, dtype=dtype).forward(toks)
    exact, _ = engine.from_state_dict(sd).forward(toks)
    got, state = twin_model(sd, dtype, use_graphs=False).forward(toks)
    assert got.dtype == torch.float32 and state.wkv.dtype == torch.float32
    assert_close_to_reference(got, want, exact, dtype)


def test_twin_path_sequence_equals_steps_and_batch_prefix_views(twins):
    sd = engine.random_state_dict(SMALL, seed=6)
    model = twin_model(sd, use_graphs=False)
    toks = _toks(SMALL.vocab_size, 3, 8, seed=3)
    whole, whole_state = model.forward(toks)
    state, steps = model.zero_state(3), []
    for t in range(8):
        logits, _ = model.forward(toks[:, t:t + 1], state, inplace=True)
        steps.append(logits)
    assert rel_rms(torch.cat(steps, 1), whole) <= 1e-5
    assert rel_rms(state.wkv, whole_state.wkv) <= 1e-5
    # the running rows of engine.batching: a prefix view of a bigger state, updated in place
    big = model.zero_state(5)
    view = State(big.att_x[:, :3], big.wkv[:, :3], big.ffn_x[:, :3])
    model.forward(toks, view, logits="none", inplace=True)
    assert rel_rms(big.wkv[:, :3], whole_state.wkv) <= 1e-6 and big.wkv[:, 3:].abs().max() == 0


def test_twin_path_starts_from_a_tuned_state(twins):
    """A tuned initial state (state tuning, engine/adapters.py) reaches the GPU class through the
    reference's zero_state: its scoring and generation equal the reference's with the same state."""
    sd = engine.random_state_dict(SMALL, seed=8)
    wkv = 0.5 * torch.randn(SMALL.n_layer, SMALL.n_head, SMALL.head_size, SMALL.head_size,
                            generator=torch.Generator().manual_seed(1))  # (L, H, N, N)
    ref, ours = engine.RWKV7(sd, SMALL, initial_wkv=wkv), twin_model(sd, use_graphs=False, initial_wkv=wkv)
    assert torch.equal(ours.zero_state(3).wkv[:, 1], wkv)
    pairs = [([0, 5, 9, 14], [3, 7]), ([0, 5, 9], [1]), ([0, 200, 13, 2, 2], [9, 9, 9])]
    want, got = ref.loglikelihood(pairs), ours.loglikelihood(pairs)
    plain = engine.RWKV7(sd, SMALL).loglikelihood(pairs)
    assert all(abs(g[0] - w[0]) <= 1e-4 for g, w in zip(got, want))
    assert max(abs(p[0] - w[0]) for p, w in zip(plain, want)) > 1e-2  # the state changes the scores
    prompts = [[0, 1, 2], [0, 40, 41, 42, 43]]
    assert [g.tokens for g in ours.generate(prompts, 6)] == [g.tokens for g in ref.generate(prompts, 6)]


def test_twin_path_rejects_a_state_on_another_device(twins):
    model = twin_model(engine.random_state_dict(SMALL, seed=0))
    with pytest.raises(InputError, match="state.att_x is on meta, expected the model's device cpu"):
        model.forward(_toks(SMALL.vocab_size, 1, 1), State.zeros(SMALL, 1, "meta"), inplace=True)


@pytest.fixture
def fake_graphs(monkeypatch):
    """Capture as a closure over the captured buffers: a replay reruns the step on them."""
    captured = []

    def capture(self, key, tokens, state, logits):
        static_tokens = tokens.clone()
        out = None if logits == "none" else torch.empty(tokens.shape[0], 1, self.config.vocab_size)

        def replay():
            result, _ = RWKV7.forward(self, static_tokens, state, logits, inplace=True)
            if out is not None:
                out.copy_(result)

        entry = DecodeGraph(types.SimpleNamespace(replay=replay), static_tokens, out)
        self.graphs.store(key, entry)
        captured.append(key)
        return entry

    monkeypatch.setattr(RWKV7CUDA, "_capture_decode", capture)
    return captured


def test_decode_with_graphs_equals_without(twins, fake_graphs):
    sd = engine.random_state_dict(SMALL, seed=8)
    plain, graphed = twin_model(sd, use_graphs=False), twin_model(sd)
    toks = _toks(SMALL.vocab_size, 2, 6, seed=4)
    s_plain, s_graph = plain.zero_state(2), graphed.zero_state(2)
    for t in range(6):
        want, _ = plain.forward(toks[:, t:t + 1], s_plain, logits="last", inplace=True)
        got, returned = graphed.forward(toks[:, t:t + 1], s_graph, logits="last", inplace=True)
        assert returned is s_graph
        assert torch.equal(got, want), f"step {t}"
    assert torch.equal(s_graph.wkv, s_plain.wkv)
    assert dict(graphed.graph_stats) == {"eager": 1, "capture": 1, "replay": 4}
    assert len(fake_graphs) == 1
    # a new state (a row left the batch) starts over: eager, then its own graph
    s_graph = s_graph.select([1])
    s_plain = s_plain.select([1])
    for t in range(3):
        want, _ = plain.forward(toks[1:, t:t + 1], s_plain, logits="last", inplace=True)
        got, _ = graphed.forward(toks[1:, t:t + 1], s_graph, logits="last", inplace=True)
        assert torch.equal(got, want)
    assert dict(graphed.graph_stats) == {"eager": 2, "capture": 2, "replay": 5}
    # sequences, copies of the state and use_graphs=False take the plain path
    graphed.forward(toks, None)
    graphed.forward(toks[1:, :1], s_graph.clone(), logits="last")
    graphed.use_graphs = False
    graphed.forward(toks[1:, :1], s_graph, logits="last", inplace=True)
    assert sum(graphed.graph_stats.values()) == 9  # none of them counted


class RefusingCapture:
    """GraphRuntime's stand-in on the CPU: streams and a graph that log what the capture does;
    ending the capture raises, as the driver does for a capture it invalidated."""

    def __init__(self, pending: str | None = None):
        self.events: list[str] = []
        self.pending = pending

    def _stream(self, name):
        return types.SimpleNamespace(wait_stream=lambda other: self.events.append(f"{name} waits"))

    def side_stream(self):
        return self._stream("side")

    def current_stream(self):
        return self._stream("current")

    def use(self, stream):
        return contextlib.nullcontext()

    def new_graph(self):
        events = self.events

        def capture_end():
            events.append("capture_end")
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

        return types.SimpleNamespace(capture_begin=lambda: events.append("capture_begin"), capture_end=capture_end)

    def recover(self):
        self.events.append("recover")
        return self.pending


def test_failed_capture_warns_once_then_decodes_without_graphs(twins, monkeypatch):
    sd = engine.random_state_dict(SMALL, seed=11)
    plain, graphed = twin_model(sd, use_graphs=False), twin_model(sd)
    graphed._runtime = runtime = RefusingCapture(pending="cudaErrorStreamCaptureInvalidated")
    shift = twins.token_shift_mix

    def refuse_while_capturing(x, x_prev, mix):  # the first kernel of a step, as a driver refuses it
        if graphed._capturing:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
        return shift(x, x_prev, mix)

    monkeypatch.setattr(twins, "token_shift_mix", refuse_while_capturing)
    toks = _toks(SMALL.vocab_size, 2, 5, seed=12)
    s_plain, s_graph = plain.zero_state(2), graphed.zero_state(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(5):
            want, _ = plain.forward(toks[:, t:t + 1], s_plain, logits="last", inplace=True)
            got, _ = graphed.forward(toks[:, t:t + 1], s_graph, logits="last", inplace=True)
            assert torch.equal(got, want), f"step {t}"  # the failed step ran once, eagerly
        assert torch.equal(s_graph.wkv, s_plain.wkv) and torch.equal(s_graph.att_x, s_plain.att_x)
        assert dict(graphed.graph_stats) == {"eager": 4, "capture": 1, "capture_failed": 1}
        assert not graphed._capturing
        # the capture ended, the current stream waited for the side stream, the device recovered
        assert runtime.events == ["side waits", "capture_begin", "capture_end", "current waits", "recover"]
        # another state fails too: counted, not warned again
        s_one = graphed.zero_state(1)
        for t in range(3):
            graphed.forward(toks[:1, t:t + 1], s_one, logits="last", inplace=True)
        assert graphed.graph_stats["capture_failed"] == 2
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert "capture of a decode step (batch 2) failed: CUDA error: operation not permitted" in messages[0]
    assert "the device then reported: cudaErrorStreamCaptureInvalidated" in messages[0]
    assert "plain launches from now on" in messages[0]


def test_graph_runtime_recover_reports_a_pending_error_and_raises_on_a_broken_context(monkeypatch):
    calls = []

    def synchronize(device, errors):
        calls.append(device)
        if errors:
            raise RuntimeError(errors.pop(0))

    runtime = GraphRuntime(torch.device("cuda", 0))
    pending = ["CUDA error: an asynchronous launch failed\nmore detail"]
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: synchronize(device, pending))
    assert runtime.recover() == "CUDA error: an asynchronous launch failed" and len(calls) == 2
    assert runtime.recover() is None and len(calls) == 3
    sticky = ["CUDA error: illegal memory access", "CUDA error: illegal memory access"]
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device: synchronize(device, sticky))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        runtime.recover()


def test_twin_path_scoring_and_generation_equal_the_reference(twins, fake_graphs):
    sd = engine.random_state_dict(SMALL, seed=9)
    ref, ours = engine.from_state_dict(sd), twin_model(sd)
    pairs = [([0, 5, 6, 7], [8, 9]), ([0, 5, 6, 7], [10]), ([0, 5, 11], [12, 13, 14])]
    for (lp_ref, greedy_ref), (lp, greedy) in zip(ref.loglikelihood(pairs), ours.loglikelihood(pairs)):
        assert abs(lp - lp_ref) <= 1e-4 and greedy == greedy_ref
    rolling = ours.loglikelihood_rolling([[1, 2, 3, 4], [5, 6]])
    assert rolling == pytest.approx(ref.loglikelihood_rolling([[1, 2, 3, 4], [5, 6]]), abs=1e-4)
    prompts = [[0, 1, 2], [0, 3], [0, 4, 5, 6], [0, 7]]
    for kwargs in (dict(), dict(temperature=0.8, top_p=0.9, seed=3)):
        want = ref.generate(prompts, 6, batch_size=2, **kwargs)
        got = ours.generate(prompts, 6, batch_size=2, **kwargs)
        assert [g.tokens for g in got] == [g.tokens for g in want]
    assert ours.graph_stats["replay"] > 0


# ---------------------------------------------------------------------------------------------
# On a GPU: the real kernels and graphs against the CPU reference

requires_gpu = [pytest.mark.gpu, pytest.mark.usefixtures("cuda_ready")]  # skip without (fail in the GPU run)
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 1e-2}
DTYPE_NAMES = list(TOLERANCE)


def gpu_test(fn):
    for mark in requires_gpu:
        fn = mark(fn)
    return fn


@pytest.fixture
def no_tf32():
    """float32 means float32: the official package, once imported, turns TF32 on for the process."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


QUOTE_IN = [34, 105, 110]


@gpu_test
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_gpu_tiny_model_matches_reference(tiny_model_path, tiny_expected_logits, dtype, no_tf32):
    import numpy as np

    cpu = engine.load_model(tiny_model_path, dtype=dtype)
    cuda = engine.load_model(tiny_model_path, device="cuda", dtype=dtype)
    assert isinstance(cuda, RWKV7CUDA) and cuda.device.type == "cuda"
    toks = torch.tensor([QUOTE_IN + [32, 100, 101, 102, 103]])
    want, want_state = cpu.forward(toks)
    got, got_state = cuda.forward(toks)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert rel_rms(got, want) <= TOLERANCE[dtype]
    assert rel_rms(got_state.wkv, want_state.wkv) <= TOLERANCE[dtype]
    if dtype == "float32":
        expected = torch.from_numpy(np.fromfile(tiny_expected_logits, dtype="<f4"))
        got3, _ = cuda.forward(torch.tensor([QUOTE_IN]), logits="last")
        assert rel_rms(got3[0, 0], expected) <= 1e-4


@gpu_test
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_gpu_random_models_match_reference(shape, dtype, no_tf32):
    cfg = SHAPES[shape]
    sd = engine.random_state_dict(cfg, seed=7)
    cuda = engine.from_state_dict(sd, device="cuda", dtype=dtype)
    toks = _toks(cfg.vocab_size, 3, 33, seed=5)
    want, want_state = engine.from_state_dict(sd, dtype=dtype).forward(toks)
    exact, exact_state = engine.from_state_dict(sd).forward(toks)
    got, got_state = cuda.forward(toks)
    assert_close_to_reference(got, want, exact, dtype)
    for name in ("att_x", "wkv", "ffn_x"):
        assert_close_to_reference(getattr(got_state, name), getattr(want_state, name),
                                  getattr(exact_state, name), dtype)


@gpu_test
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_gpu_sequence_equals_steps_with_graphs(dtype, no_tf32):
    cfg = SHAPES["2x128-h2"]
    sd = engine.random_state_dict(cfg, seed=8)
    model = engine.from_state_dict(sd, device="cuda", dtype=dtype)
    toks = _toks(cfg.vocab_size, 4, 12, seed=6)
    whole, whole_state = model.forward(toks)
    state, steps = model.zero_state(4), []
    for t in range(12):
        logits, _ = model.forward(toks[:, t:t + 1], state, logits="last", inplace=True)
        steps.append(logits)
    assert model.graph_stats["replay"] == 10, dict(model.graph_stats)
    assert rel_rms(torch.cat(steps, 1), whole) <= TOLERANCE[dtype]
    assert rel_rms(state.wkv, whole_state.wkv) <= TOLERANCE[dtype]


@gpu_test
@pytest.mark.parametrize("dtype", DTYPE_NAMES)
def test_gpu_graphs_equal_plain_launches(dtype, no_tf32):
    cfg = SHAPES["3x96-h3n32"]
    sd = engine.random_state_dict(cfg, seed=9)
    graphed = engine.from_state_dict(sd, device="cuda", dtype=dtype)
    plain = RWKV7CUDA(sd, cfg, device="cuda", dtype=dtype, use_graphs=False)
    toks = _toks(cfg.vocab_size, 5, 8, seed=7)
    s_graph, s_plain = graphed.zero_state(5), plain.zero_state(5)
    kept = []
    # a replay runs the plain path's kernels on the same data: equal but for a different cuBLAS
    # algorithm under capture, which would change the last bit of a float16 / bfloat16 output
    tol = 1e-6 if dtype == "float32" else 2e-3
    for t in range(8):
        got, _ = graphed.forward(toks[:, t:t + 1], s_graph, logits="last", inplace=True)
        want, _ = plain.forward(toks[:, t:t + 1], s_plain, logits="last", inplace=True)
        kept.append(got)
        assert rel_rms(got, want) <= tol, f"step {t}"
    assert rel_rms(s_graph.wkv, s_plain.wkv) <= tol
    assert graphed.graph_stats["replay"] == 6 and len(graphed.graphs) == 1
    assert not torch.equal(kept[-1], kept[-2]), "returned logits must not alias the graph's output"
    # a batch-prefix view (engine.batching), the head skipped, a CUDA tokens tensor
    view = State(s_graph.att_x[:, :2], s_graph.wkv[:, :2], s_graph.ffn_x[:, :2])
    for _ in range(3):
        out, _ = graphed.forward(toks[:2, :1].cuda(), view, logits="none", inplace=True)
        assert out is None
    assert len(graphed.graphs) == 2


@gpu_test
def test_gpu_scoring_and_generation_equal_cpu(tiny_model_path, no_tf32):
    cpu = engine.load_model(tiny_model_path)
    cuda = engine.load_model(tiny_model_path, device="cuda")
    pairs = [([0, 34, 105], [110, 32]), ([0, 34, 105], [111]), ([0, 72, 101, 108], [108, 111, 33])]
    for (lp_ref, greedy_ref), (lp, greedy) in zip(cpu.loglikelihood(pairs), cuda.loglikelihood(pairs)):
        assert abs(lp - lp_ref) <= 1e-3 and greedy == greedy_ref
    texts = [[72, 101, 108, 108, 111], [34, 105, 110, 32, 116]]
    assert cuda.loglikelihood_rolling(texts) == pytest.approx(cpu.loglikelihood_rolling(texts), abs=1e-3)
    prompts = [[0, 34, 105], [0, 72], [0, 84, 104, 101], [0, 65], [0, 73, 32]]
    want = cpu.generate(prompts, 24, batch_size=2)
    got = cuda.generate(prompts, 24, batch_size=2)
    assert [g.tokens for g in got] == [g.tokens for g in want]
    assert cuda.graph_stats["replay"] > 0


@gpu_test
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_gpu_half_generation_same_with_and_without_graphs(dtype):
    cfg = SHAPES["2x128-h2"]
    sd = engine.random_state_dict(cfg, seed=10)
    graphed = engine.from_state_dict(sd, device="cuda", dtype=dtype)
    plain = RWKV7CUDA(sd, cfg, device="cuda", dtype=dtype, use_graphs=False)
    prompts = [[0, 11, 12], [0, 13], [0, 14, 15, 16], [0, 17]]
    got = graphed.generate(prompts, 16, batch_size=3)  # the fourth takes the first free slot
    want = plain.generate(prompts, 16, batch_size=3)
    assert graphed.graph_stats["replay"] > 0
    # replays run the plain path's kernels: the greedy tokens agree (see the test above if not)
    assert [g.tokens for g in got] == [g.tokens for g in want]
