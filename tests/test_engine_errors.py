"""Every bad checkpoint and bad input gets one clear error naming what was expected and found."""
from __future__ import annotations

import pickle

import pytest
import torch

import engine
from engine import CheckpointError, InputError, State
from helpers import SMALL


@pytest.fixture(scope="module")
def small_sd():
    return engine.random_state_dict(SMALL, seed=1)


@pytest.fixture(scope="module")
def small(small_sd):
    return engine.from_state_dict(small_sd)


def _save(tmp_path, obj, name="m.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


# ---------------------------------------------------------------- files


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pth"):
        engine.load_model(tmp_path / "nope.pth")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory"):
        engine.load_model(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "e.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        engine.load_model(tmp_path / "e.pth")


def test_truncated_pth(tmp_path, small_sd):
    data = _save(tmp_path, small_sd).read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        engine.load_model(tmp_path / "cut.pth")


def test_truncated_real_checkpoint(tmp_path, tiny_model_path):
    data = tiny_model_path.read_bytes()
    (tmp_path / "tiny-cut.pth").write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        engine.load_model(tmp_path / "tiny-cut.pth")


def test_garbage_bytes(tmp_path):
    (tmp_path / "g.pth").write_bytes(b"\x80\x04this is not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        engine.load_model(tmp_path / "g.pth")


def test_truncated_safetensors(tmp_path, small_sd):
    from safetensors.torch import save_file

    save_file(small_sd, str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt .*safetensors"):
        engine.load_model(tmp_path / "cut.safetensors")


def test_ggml_file_named(tmp_path):
    (tmp_path / "m.bin").write_bytes(b"fmgg" + bytes(100))
    with pytest.raises(CheckpointError, match="rwkv.cpp/ggml"):
        engine.load_model(tmp_path / "m.bin")


class Payload:  # a pickled object that would run code under a plain torch.load
    def __reduce__(self):
        return (print, ("pwned",))


def test_code_in_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"emb.weight": torch.zeros(2, 2), "x": Payload()}, f)
    with pytest.raises(CheckpointError, match="Python objects beyond tensors"):
        engine.load_model(path)


def test_plain_pickle_not_zip(tmp_path):
    path = tmp_path / "p.pth"
    path.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError):
        engine.load_model(path)


def test_not_a_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="not a state dict: expected a dict of tensors, found list"):
        engine.load_model(_save(tmp_path, [torch.zeros(2)]))


def test_training_checkpoint_hint(tmp_path, small_sd):
    with pytest.raises(CheckpointError, match="under 'model'"):
        engine.load_model(_save(tmp_path, {"model": small_sd, "step": torch.tensor(3)}))


@pytest.mark.parametrize("key, name", [
    ("blocks.0.att.time_first", "RWKV-4"),
    ("blocks.0.att.time_faaaa", "RWKV-5"),
    ("blocks.0.att.time_maa_x", "RWKV-6"),
    ("model.layers.0.self_attn.q_proj.weight", "transformer"),
    ("model.layers.0.attn.r_proj.weight", "Hugging Face"),
])
def test_other_architectures_named(tmp_path, key, name):
    sd = {"emb.weight": torch.zeros(4, 4), key: torch.zeros(4, 4)}
    with pytest.raises(CheckpointError, match=f"not an RWKV-7 checkpoint: found .*{name}"):
        engine.load_model(_save(tmp_path, sd))


def test_unknown_keys_named(tmp_path):
    with pytest.raises(CheckpointError, match="expected keys like 'emb.weight'.*found foo"):
        engine.load_model(_save(tmp_path, {"foo": torch.zeros(1)}))


def test_missing_key(tmp_path, small_sd):
    sd = dict(small_sd)
    del sd["blocks.1.att.k_a"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks.1.att.k_a"):
        engine.load_model(_save(tmp_path, sd))


def test_unexpected_key(tmp_path, small_sd):
    sd = dict(small_sd, **{"blocks.1.att.extra": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): blocks.1.att.extra"):
        engine.load_model(_save(tmp_path, sd))


def test_wrong_shape(tmp_path, small_sd):
    sd = dict(small_sd)
    sd["blocks.1.ffn.value.weight"] = torch.zeros(64, 100)
    with pytest.raises(CheckpointError, match=r"'blocks.1.ffn.value.weight' has the wrong shape: "
                                              r"expected \(64, 128\), found \(64, 100\)"):
        engine.load_model(_save(tmp_path, sd))


@pytest.mark.parametrize("key, value, counts", [
    ("blocks.1.att.w0", float("nan"), "1 NaN and 0 infinite"),
    ("head.weight", float("inf"), "0 NaN and 1 infinite"),
    ("emb.weight", float("-inf"), "0 NaN and 1 infinite"),
])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_non_finite_weights_are_refused_with_the_key(tmp_path, small_sd, key, value, counts, suffix):
    sd = {k: v.clone() if k == key else v for k, v in small_sd.items()}
    sd[key].view(-1)[sd[key].numel() // 2] = value
    if suffix == ".pth":
        path = _save(tmp_path, sd)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "m.safetensors"
        save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' holds {counts} values out of"):
        engine.load_model(path)
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' holds"):
        engine.from_state_dict(sd)
    with pytest.raises(CheckpointError, match=rf"tensor '{key}' holds"):  # also in bfloat16
        engine.from_state_dict({k: v.to(torch.bfloat16) for k, v in sd.items()})


def test_layer0_without_value_residual_loads(tmp_path):
    sd = engine.random_state_dict(SMALL, seed=2, layer0_v=False)
    model = engine.load_model(_save(tmp_path, sd))
    assert model.config.n_layer == 2


def test_key_order_does_not_matter(tmp_path, small_sd):
    shuffled = dict(reversed(list(small_sd.items())))
    a = engine.load_model(_save(tmp_path, shuffled, "r.pth"))
    b = engine.from_state_dict(small_sd)
    toks = torch.tensor([[1, 2, 3]])
    assert torch.equal(a.forward(toks)[0], b.forward(toks)[0])


def test_bad_dtype_and_device(tmp_path, small_sd):
    path = _save(tmp_path, small_sd)
    with pytest.raises(InputError, match="dtype must be one of .*found 'int8'"):
        engine.load_model(path, dtype="int8")
    with pytest.raises(InputError, match="device must be 'cpu' or 'cuda"):
        engine.load_model(path, device="tpu")


# ---------------------------------------------------------------- inputs


@pytest.mark.parametrize("tokens, message", [
    (torch.tensor([[1, 256]]), r"token id 256 is out of the vocabulary: expected ids in \[0, 256\)"),
    (torch.tensor([[-1, 2]]), r"token id -1 is out of the vocabulary"),
    (torch.tensor([1, 2]), r"tokens must have shape \[B, T\], found \(2,\)"),
    (torch.zeros(1, 0, dtype=torch.long), r"at least one token: found shape \(1, 0\)"),
    (torch.tensor([[1.0, 2.0]]), r"integer ids .*found dtype torch.float32"),
    ([[1, 2]], r"must be a torch.LongTensor of shape \[B, T\], found list"),
])
def test_bad_tokens(small, tokens, message):
    with pytest.raises(InputError, match=message):
        small.forward(tokens)


def test_state_batch_mismatch(small):
    _, state = small.forward(torch.tensor([[1, 2], [3, 4]]))
    with pytest.raises(InputError, match=r"state.att_x does not fit \(batch size\): expected \(2, 3, 64\) .*found \(2, 2, 64\)"):
        small.forward(torch.tensor([[1], [2], [3]]), state)


def test_state_of_another_model(small):
    other = engine.random_model(engine.ModelConfig(3, 64, 2, 32, 256, 128, 8, 8, 8, 8), seed=0)
    _, state = other.forward(torch.tensor([[1]]))
    with pytest.raises(InputError, match=r"state.att_x does not fit"):
        small.forward(torch.tensor([[1]]), state)
    with pytest.raises(InputError, match="engine.State or None, found dict"):
        small.forward(torch.tensor([[1]]), {"wkv": 1})


def test_state_select_errors(small):
    _, state = small.forward(torch.tensor([[1], [2]]))
    with pytest.raises(InputError, match="out of range for a state of batch size 2"):
        state.select([0, 5])
    with pytest.raises(InputError, match="out of range for a state of batch size 2"):
        state.select([-3])
    # negative indices count from the end, as in Python; a repeated index fans a row out
    picked, want = state.select([-1, 0, -2, 1]), state.select([1, 0, 0, 1])
    for name in ("att_x", "wkv", "ffn_x"):
        assert torch.equal(getattr(picked, name), getattr(want, name)), name
    assert torch.equal(want.wkv[:, 0], state.wkv[:, 1]) and not torch.equal(state.wkv[:, 0], state.wkv[:, 1])
    with pytest.raises(InputError, match="at least one state"):
        State.cat([])
    # row(i): a view of one row (no copy), for cat; negative from the end, checked like select
    view = state.row(-1)
    assert view.batch_size == 1 and view.wkv.data_ptr() == state.wkv[:, 1].data_ptr()
    assert torch.equal(State.cat([state.row(1), state.row(0)]).wkv, state.select([1, 0]).wkv)
    with pytest.raises(InputError, match="State.row: batch index out of range for a state of batch size 2: found 2"):
        state.row(2)


def test_scoring_input_errors(small):
    with pytest.raises(InputError, match="request 0: the context is empty"):
        small.loglikelihood([([], [1])])
    with pytest.raises(InputError, match="request 1: the continuation is empty"):
        small.loglikelihood([([0], [1]), ([0], [])])
    with pytest.raises(InputError, match=r"request 0 continuation: token id 999 is out of the vocabulary"):
        small.loglikelihood([([0], [999])])
    with pytest.raises(InputError, match="text 0: nothing to score"):
        small.loglikelihood_rolling([[]], bos=None)


def test_generate_input_errors(small):
    with pytest.raises(InputError, match="prompt 0 is empty"):
        small.generate([[]], 4)
    with pytest.raises(InputError, match="max_new_tokens must be an int >= 0, found -1"):
        small.generate([[0]], -1)
    with pytest.raises(InputError, match=r"top_p must be in \(0, 1\], found 0"):
        small.generate([[0]], 2, temperature=1.0, top_p=0)
    with pytest.raises(InputError, match="stop entries must be token ids .* found float"):
        small.generate([[0]], 2, stop=[1.5])
