"""LoRA, PiSSA and DiSHA adapters merged at load equal RWKV-PEFT's merge done by hand (logits <= 1e-5),
on the tiny real model and a seeded random World-vocabulary model; ``rwkveval merge`` writes the same.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import engine
from engine import peft
from evals.cli import main as rwkveval
from helpers import SHAPES
from peft_reference import (hand_merge_disha, hand_merge_lora, make_disha, make_lora, make_pissa,
                            make_time_state)

TOL = 1e-5
WORLD = SHAPES["2x128-h2"]  # vocabulary 65536, two layers: small enough for every case below


@pytest.fixture(scope="module")
def tiny_sd(tiny_model_path):
    return torch.load(tiny_model_path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def world_sd():
    return engine.random_state_dict(WORLD, seed=11)


@pytest.fixture(params=["tiny", "world"])
def base(request, tmp_path, tiny_model_path):
    """(path of the base checkpoint, its tensors) for each of the two models."""
    if request.param == "tiny":
        return tiny_model_path, request.getfixturevalue("tiny_sd")
    sd = request.getfixturevalue("world_sd")
    path = tmp_path / "world.pth"
    torch.save(sd, path)
    return path, sd


def tokens(vocab: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(seed))  # (B, T)


def assert_same_logits(adapted, merged_sd, base_sd):
    """``adapted`` (loaded with the adapter) equals the hand-merged checkpoint, and differs from the base."""
    t = tokens(adapted.config.vocab_size)
    got, _ = adapted.forward(t)
    want, _ = engine.from_state_dict(merged_sd).forward(t)
    plain, _ = engine.from_state_dict(base_sd).forward(t)
    assert (got - want).abs().max().item() <= TOL
    assert (got - plain).abs().max().item() > 100 * TOL  # the adapter changed the model


def test_lora_equals_hand_merge(base, tmp_path):
    path, sd = base
    adapter = make_lora(sd, rank=8, seed=1)
    torch.save(adapter, tmp_path / "lora.pth")
    model = engine.load_model(path, adapters=[tmp_path / "lora.pth"], lora_alpha=16)
    assert_same_logits(model, hand_merge_lora(sd, adapter, lora_alpha=16), sd)
    (record,) = model.info()["adapters"]
    assert record["kind"] == "lora" and record["scale"] == 2.0 and record["rank"] == 8
    assert record["replaced"] == len([k for k in adapter if k.endswith("ln1.weight")])
    assert record["scale_from"] == "--lora-alpha 16 / rank 8" and len(record["sha256"]) == 64


def test_lora_scaling_and_safetensors_metadata(tiny_sd, tiny_model_path, tmp_path):
    """--lora-scaling is the scale itself; a .safetensors adapter may carry lora_alpha in its metadata."""
    adapter = make_lora(tiny_sd, rank=4, seed=2, with_ln=False)
    save_file(adapter, str(tmp_path / "lora.safetensors"), metadata={"lora_alpha": "12"})
    by_metadata = engine.load_model(tiny_model_path, adapters=[tmp_path / "lora.safetensors"])
    assert by_metadata.info()["adapters"][0]["scale"] == 3.0
    assert_same_logits(by_metadata, hand_merge_lora(tiny_sd, adapter, lora_alpha=12), tiny_sd)
    by_scaling = engine.load_model(tiny_model_path, adapters=[tmp_path / "lora.safetensors"], lora_scaling=0.5)
    assert by_scaling.info()["adapters"][0]["scale_from"] == "--lora-scaling 0.5"
    assert_same_logits(by_scaling, hand_merge_lora(tiny_sd, adapter, lora_alpha=0.5 * 4), tiny_sd)


def test_pissa_equals_hand_merge(base, tmp_path):
    path, sd = base
    trained, init = make_pissa(sd, rank=8, seed=3)
    torch.save(trained, tmp_path / "rwkv-0.pth")
    torch.save(init, tmp_path / "init_pissa.pth")
    model = engine.load_model(path, adapters=[tmp_path / "rwkv-0.pth"], adapter_init=tmp_path / "init_pissa.pth")
    assert_same_logits(model, hand_merge_lora(sd, trained, init=init), sd)
    (record,) = model.info()["adapters"]
    assert record["kind"] == "pissa" and record["init"]["path"] == str(tmp_path / "init_pissa.pth")


def test_pissa_init_without_wrapper_prefix(tiny_sd, tiny_model_path, tmp_path):
    """merge/merge_pissa.py's keys (no 'model.' prefix) are read as well."""
    trained, init = make_pissa(tiny_sd, rank=4, seed=4, layers=[0, 5])
    torch.save(trained, tmp_path / "a.pth")
    torch.save({k[len("model."):]: v for k, v in init.items()}, tmp_path / "init.pth")
    model = engine.load_model(tiny_model_path, adapters=[tmp_path / "a.pth"], adapter_init=tmp_path / "init.pth")
    assert_same_logits(model, hand_merge_lora(tiny_sd, trained, init=init), tiny_sd)


@pytest.mark.parametrize("mode, r", [("bone", 48), ("bone", 32), ("bat", 32)])
def test_disha_equals_hand_merge(base, tmp_path, mode, r):
    path, sd = base
    if mode == "bone" and r == 48 and sd["emb.weight"].shape[1] == 64:
        r = 24  # the tiny model's width 64: 24 leaves a short last block, as 48 does at width 128
    adapter = make_disha(sd, r, mode, seed=5)
    torch.save(adapter, tmp_path / "disha.pth")
    model = engine.load_model(path, adapters=[tmp_path / "disha.pth"])
    assert_same_logits(model, hand_merge_disha(sd, adapter), sd)
    assert model.info()["adapters"][0]["disha_mode"] == [mode]


def test_bone_key_of_older_versions(tiny_sd, tiny_model_path, tmp_path):
    """Before February 2025 RWKV-PEFT saved DiSHA's tensors as '*.bone'."""
    adapter = make_disha(tiny_sd, 16, "bat", seed=6, layers=[1], key="bone")
    torch.save(adapter, tmp_path / "bone.pth")
    model = engine.load_model(tiny_model_path, adapters=[tmp_path / "bone.pth"])
    assert_same_logits(model, hand_merge_disha(tiny_sd, adapter, key="bone"), tiny_sd)


def test_bone_merge_equals_the_training_layer():
    """The merged bone weight computes what RWKV-PEFT's BoneLinear computes in training: W x plus
    the zero-padded input summed over blocks of r, times D."""
    g = torch.Generator().manual_seed(0)
    W, D, x = torch.randn(40, 52, generator=g), torch.randn(12, 40, generator=g), torch.randn(3, 52, generator=g)
    padded = torch.nn.functional.pad(x, (0, 12 - 52 % 12))  # (3, 60)
    training = x @ W.t() + padded.view(3, -1, 12).sum(1) @ D  # (3, 40)
    assert torch.allclose(x @ peft.disha_bone(W, D).t(), training, atol=1e-5)


def test_lora_and_state_together(tiny_sd, tiny_model_path, tmp_path):
    """A LoRA and a tuned state combine: both recorded, the state becomes the initial state."""
    torch.save(make_lora(tiny_sd, rank=4, seed=7), tmp_path / "lora.pth")
    torch.save(make_time_state(12, 1, 64, seed=8), tmp_path / "state.pth")
    model = engine.load_model(tiny_model_path, adapters=[tmp_path / "lora.pth", tmp_path / "state.pth"],
                              lora_alpha=4)
    assert [r["kind"] for r in model.info()["adapters"]] == ["lora", "state"]
    assert model.info()["initial_state"] == f"tuned (adapter {tmp_path / 'state.pth'})"
    assert torch.equal(model.zero_state(3).wkv[:, 2], model.initial_wkv)


# ---------------------------------------------------------------------- rwkveval merge


def test_merge_command_equals_in_memory_merge(tiny_sd, tiny_model_path, tmp_path):
    torch.save(make_lora(tiny_sd, rank=8, seed=9), tmp_path / "lora.pth")
    torch.save(make_time_state(12, 1, 64, seed=10), tmp_path / "state.pth")
    out = tmp_path / "merged.safetensors"
    args = ["merge", str(tiny_model_path), "--adapter", str(tmp_path / "lora.pth"), "--adapter",
            str(tmp_path / "state.pth"), "--lora-alpha", "8", "-o", str(out)]
    assert rwkveval(args) == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("merged")] == ["merged.safetensors"]
    written = load_file(str(out))
    in_memory = engine.load_model(tiny_model_path, adapters=[tmp_path / "lora.pth", tmp_path / "state.pth"],
                                  lora_alpha=8)
    reloaded = engine.load_model(out)
    assert torch.equal(reloaded.initial_wkv, in_memory.initial_wkv)
    assert written["blocks.0.att.time_state"].shape == (1, 64, 64)
    t = tokens(256)
    assert torch.equal(reloaded.forward(t)[0], in_memory.forward(t)[0])
    assert rwkveval(args) == 2  # the output exists: never overwritten without --force
    assert rwkveval(args + ["--force"]) == 0


def test_merge_command_keeps_base_dtype_unless_asked(tmp_path, world_sd):
    base = {k: v.to(torch.bfloat16) for k, v in world_sd.items()}
    torch.save(base, tmp_path / "base.pth")
    torch.save(make_disha(base, 32, "bat", seed=12, layers=[0]), tmp_path / "d.pth")
    assert rwkveval(["merge", str(tmp_path / "base.pth"), "--adapter", str(tmp_path / "d.pth"),
                     "-o", str(tmp_path / "bf16.safetensors")]) == 0
    assert rwkveval(["merge", str(tmp_path / "base.pth"), "--adapter", str(tmp_path / "d.pth"),
                     "-o", str(tmp_path / "f32.safetensors"), "--dtype", "float32"]) == 0
    bf16, f32 = load_file(str(tmp_path / "bf16.safetensors")), load_file(str(tmp_path / "f32.safetensors"))
    key = "blocks.0.att.key.weight"
    assert bf16[key].dtype == torch.bfloat16 and f32[key].dtype == torch.float32
    assert torch.equal(bf16[key], f32[key].to(torch.bfloat16))
    assert not torch.equal(f32[key], base[key].float())
