"""The tiny real RWKV-7 in ../shared/models against logits that rwkv.cpp expects from it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import engine


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return engine.load_model(tiny_model_path)


@pytest.fixture(scope="module")
def expected(tiny_expected_logits):
    return torch.from_numpy(np.fromfile(tiny_expected_logits, dtype="<f4"))


QUOTE_IN = [34, 105, 110]  # the bytes of '"in'


def test_shape_inferred_from_tensors(tiny):
    c = tiny.config
    assert (c.n_layer, c.n_embd, c.n_head, c.head_size, c.vocab_size, c.ffn_size) == (12, 64, 1, 64, 256, 256)
    assert (c.rank_w, c.rank_a, c.rank_v, c.rank_g) == (32, 32, 32, 32)
    assert tiny.tokenizer.vocab_size == 256


def test_sequence_matches_rwkv_cpp(tiny, expected):
    assert expected.shape == (256,)
    logits, _ = tiny.forward(torch.tensor([QUOTE_IN]))
    assert logits.shape == (1, 3, 256) and logits.dtype == torch.float32
    assert (logits[0, -1] - expected).abs().max().item() <= 1e-5


def test_token_by_token_matches_rwkv_cpp(tiny, expected):
    state = None
    for t in QUOTE_IN:
        logits, state = tiny.forward(torch.tensor([[t]]), state)
    assert (logits[0, -1] - expected).abs().max().item() <= 1e-5


def test_safetensors_equals_pth(tiny_model_path, tmp_path, expected):
    from safetensors.torch import save_file

    sd = torch.load(tiny_model_path, weights_only=True)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = engine.load_model(path)
    logits, _ = model.forward(torch.tensor([QUOTE_IN]), logits="last")
    assert (logits[0, -1] - expected).abs().max().item() <= 1e-5


def test_bfloat16_close_to_float32(tiny_model_path, expected):
    model = engine.load_model(tiny_model_path, dtype="bfloat16")
    logits, state = model.forward(torch.tensor([QUOTE_IN]))
    assert logits.dtype == torch.float32 and state.wkv.dtype == torch.float32
    # bf16 keeps ~3 significant digits; the logits here are O(10)
    assert (logits[0, -1] - expected).abs().max().item() < 0.25
    assert torch.argmax(logits[0, -1]) == torch.argmax(expected)


def test_info_is_plain_json(tiny, tiny_model_path):
    import json

    info = json.loads(json.dumps(tiny.info()))
    assert info["sha256"] and len(info["sha256"]) == 64
    assert info["config"]["n_layer"] == 12 and info["dtype"] == "float32"
