"""Every way an adapter can be wrong gets one clear error naming the key, what was expected and
what was found, before any model is built (engine/adapters.py)."""
from __future__ import annotations

import re

import pytest
import torch

import engine
from engine.adapters import AdapterError, AdapterOptions
from evals.cli import main as rwkveval

C, L = 64, 12  # the tiny model: width 64, one head of 64, 12 layers, FFN 256


def randn(*shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))


def lora(prefix, rank=4, out=C, inp=C):
    return {f"{prefix}.lora_A": randn(rank, inp), f"{prefix}.lora_B": randn(out, rank)}


def states(shape=(1, C, C), layers=range(L)):
    return {f"blocks.{i}.att.time_state": randn(*shape) for i in layers}


BAD = {
    "no base weight": (lora("blocks.0.att.query"), {"lora_alpha": 4},
                       "adapter .*: 'blocks.0.att.query.lora_A' names no weight of the base model: expected "
                       "'blocks.0.att.query.weight' in the base checkpoint"),
    "layer beyond the base": (lora("blocks.12.att.key"), {"lora_alpha": 4},
                              r"names no weight .* \(the base has layers 0-11\)"),
    "unknown plain tensor": ({"blocks.0.att.mystery": randn(C)}, {},
                             "tensor 'blocks.0.att.mystery' names no weight of the base model; expected LoRA"),
    "lora_A does not fit": (lora("blocks.0.att.key", inp=65), {"lora_alpha": 4},
                            r"tensor 'blocks.0.att.key.lora_A' does not fit blocks.0.att.key.weight \(64, 64\): "
                            r"expected shape \(4, 64\) \(rank, in\), found \(4, 65\)"),
    "lora_B does not fit": (lora("blocks.0.ffn.key", out=64), {"lora_alpha": 4},
                            r"'blocks.0.ffn.key.lora_B' does not fit blocks.0.ffn.key.weight \(256, 64\): "
                            r"expected shape \(256, 4\) \(out, rank\), found \(64, 4\)"),
    "replaced tensor shape": ({"blocks.3.ln1.weight": randn(C + 1)}, {},
                              r"tensor 'blocks.3.ln1.weight' does not fit the base: expected shape \(64,\), "
                              r"found \(65,\)"),
    "rank mismatch": ({"blocks.0.att.key.lora_A": randn(4, C), "blocks.0.att.key.lora_B": randn(C, 3)},
                      {"lora_alpha": 4}, r"LoRA rank mismatch at blocks.0.att.key: lora_A has rank 4 "
                                         r"\(shape \(4, 64\)\), lora_B has rank 3 \(shape \(64, 3\)\)"),
    "missing partner": ({"blocks.0.att.key.lora_A": randn(4, C)}, {"lora_alpha": 4},
                        "blocks.0.att.key.lora_A has no partner blocks.0.att.key.lora_B"),
    "lora on a vector": (lora("blocks.0.ln1"), {"lora_alpha": 4},
                         r"updates 'blocks.0.ln1.weight', which is not a matrix \(shape \(64,\)\)"),
    "no scale": (lora("blocks.0.att.key"), {},
                 r"holds LoRA tensors \(rank 4\) but no scale: pass --lora-alpha"),
    "state shape": (states((1, C, 32)), {},
                    r"tuned state 'blocks.0.att.time_state' has the wrong shape: expected \(n_head, head_size, "
                    r"head_size\) = \(1, 64, 64\), found \(1, 64, 32\)"),
    "state missing layers": (states(layers=range(6)), {},
                             r"needs blocks.N.att.time_state for every layer 0-11; missing layers \[6, 7, 8"),
    "state beyond the layers": (states(layers=range(13)), {},
                                "'blocks.12.att.time_state' names layer 12, but the base has layers 0-11"),
    "RWKV-6 time mix": ({"blocks.0.att.time_maa_x": randn(1, 1, C), **lora("blocks.0.att.key")}, {"lora_alpha": 4},
                        r"was made for another architecture: found RWKV-6 \(Finch\) \(key 'blocks.0.att.time_maa_x'\)"),
    "RWKV-6 gate LoRA": (lora("blocks.0.att.gate"), {"lora_alpha": 4},
                         "another architecture: found RWKV-4/5/6 .* 'blocks.0.att.gate.lora_A'"),
    "Hugging Face PEFT": ({"base_model.model.model.layers.0.attn.r_proj.lora_A.weight": randn(4, C)}, {},
                          "another architecture: found RWKV-7 in the Hugging Face"),
    "bone shape": ({"blocks.0.ffn.key.disha": randn(8, 64)}, {},
                   r"'blocks.0.ffn.key.disha' does not fit blocks.0.ffn.key.weight \(256, 64\): expected DiSHA "
                   r"bone shape \(r, 256\) with r <= 64, found \(8, 64\)"),
    "bat shape": ({"blocks.0.att.key.disha": randn(2, 24, 24)}, {},
                  r"expected DiSHA bat shape \(in/r, r, r\) with r dividing both sides"),
    "init tensors as adapter": ({"model.blocks.0.att.key.init_lora_A": randn(4, C)}, {},
                                "holds PiSSA's initialisation .*: pass that file with --adapter-init"),
    "integer tensor": ({"blocks.0.ln1.weight": torch.ones(C, dtype=torch.int64)}, {},
                       "expected a floating-point tensor, found torch.int64"),
    "empty": ({}, {}, "holds no tensors"),
    "NaN in a LoRA": ({"blocks.1.att.key.lora_A": randn(4, C), "blocks.1.att.key.lora_B": randn(C, 4).index_fill(
        0, torch.tensor([3]), float("nan"))}, {"lora_alpha": 4},
        r"adapter .*adapter.pth: tensor 'blocks.1.att.key.lora_B' holds 4 NaN and 0 infinite values out of 256: "
        "the adapter is damaged"),
    "infinite tuned state": ({**states(), "blocks.5.att.time_state": randn(1, C, C).index_fill(
        1, torch.tensor([0]), float("inf"))}, {},
        r"tensor 'blocks.5.att.time_state' holds 0 NaN and 64 infinite values out of 4096"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_adapter(case, tmp_path, tiny_model_path):
    tensors, kwargs, message = BAD[case]
    torch.save(tensors, tmp_path / "adapter.pth")
    with pytest.raises(AdapterError, match=message):
        engine.load_model(tiny_model_path, adapters=[tmp_path / "adapter.pth"], **kwargs)


def save(tmp_path, name, tensors):
    torch.save(tensors, tmp_path / name)
    return tmp_path / name


def test_two_adapters_changing_one_weight(tmp_path, tiny_model_path):
    a = save(tmp_path, "a.pth", lora("blocks.2.att.value"))
    b = save(tmp_path, "b.pth", {"blocks.2.att.value.disha": randn(8, C)})
    with pytest.raises(AdapterError, match=f"adapters {re.escape(str(a))} and {re.escape(str(b))} both change "
                                           "'blocks.2.att.value.weight'"):
        engine.load_model(tiny_model_path, adapters=[a, b], lora_alpha=4)


def test_two_tuned_states(tmp_path, tiny_model_path):
    a, b = save(tmp_path, "a.pth", states()), save(tmp_path, "b.pth", states())
    with pytest.raises(AdapterError, match=f"adapter {re.escape(str(b))} brings a tuned state, but adapter "
                                           f"{re.escape(str(a))} already has one"):
        engine.load_model(tiny_model_path, adapters=[a, b])


def test_pissa_init_that_does_not_match(tmp_path, tiny_model_path):
    trained = save(tmp_path, "t.pth", lora("blocks.0.att.key"))
    other = {"model.blocks.0.att.value.init_lora_A": randn(4, C), "model.blocks.0.att.value.init_lora_B": randn(C, 4)}
    with pytest.raises(AdapterError, match="PiSSA init .* has no 'blocks.0.att.key.init_lora_A' for the trained "
                                           "blocks.0.att.key.lora_A"):
        engine.load_model(tiny_model_path, adapters=[trained], adapter_init=save(tmp_path, "i.pth", other))
    extra = {"blocks.0.att.key.init_lora_A": randn(4, C), "blocks.0.att.key.init_lora_B": randn(C, 4), **other}
    with pytest.raises(AdapterError, match="2 tensors match no trained LoRA matrix, e.g. 'blocks.0.att.value"):
        engine.load_model(tiny_model_path, adapters=[trained], adapter_init=save(tmp_path, "j.pth", extra))
    wrong = {"blocks.0.att.key.init_lora_A": randn(2, C), "blocks.0.att.key.init_lora_B": randn(C, 2)}
    with pytest.raises(AdapterError, match=r"'blocks.0.att.key.init_lora_A' does not fit the trained adapter: "
                                           r"expected shape \(4, 64\), found \(2, 64\)"):
        engine.load_model(tiny_model_path, adapters=[trained], adapter_init=save(tmp_path, "k.pth", wrong))


@pytest.mark.parametrize("kwargs, message", [
    ({"lora_alpha": 8, "lora_scaling": 2.0}, "give LoRA's scale once"),
    ({"init": "i.pth"}, r"--adapter-init \(PiSSA's init_pissa.pth\) needs the trained adapter"),
    ({"paths": ("a.pth",), "init": "i.pth", "lora_alpha": 8}, "PiSSA adapters are merged without a scale"),
    ({"paths": ("a.pth",), "lora_alpha": -1.0}, "lora_alpha must be a finite number > 0, found -1.0"),
    ({"paths": ("a.pth", "b.pth", "./a.pth")}, "adapter given more than once: a.pth$"),
])
def test_conflicting_options(kwargs, message):
    with pytest.raises(AdapterError, match=message):
        AdapterOptions(**kwargs)


def test_options_with_nothing_to_apply_to(tmp_path, tiny_model_path):
    state = save(tmp_path, "s.pth", states())
    with pytest.raises(AdapterError, match="--lora-alpha/--lora-scaling given, but no adapter holds LoRA tensors"):
        engine.load_model(tiny_model_path, adapters=[state], lora_alpha=8)
    with pytest.raises(AdapterError, match="--adapter-init .* given, but no adapter holds the trained PiSSA"):
        engine.load_model(tiny_model_path, adapters=[state], adapter_init=save(tmp_path, "i.pth", {"x.init_lora_A": randn(2, 2)}))


def test_a_checkpoint_with_a_nan_tuned_state(tmp_path, tiny_model_path):
    # a merged state-tuned checkpoint's time_state is split off before the base's finite check
    sd = engine.checkpoint.read_state_dict(tiny_model_path)
    sd.update({k: v.clone() for k, v in states().items()})
    sd["blocks.7.att.time_state"][0, 1, 2] = float("nan")
    torch.save(sd, tmp_path / "merged.pth")
    with pytest.raises(AdapterError, match=r"merged.pth.*'blocks.7.att.time_state' holds 1 NaN"):
        engine.load_model(tmp_path / "merged.pth")


def test_unreadable_adapter_files(tmp_path, tiny_model_path):
    with pytest.raises(AdapterError, match="adapter .*missing.pth: checkpoint not found"):
        engine.load_model(tiny_model_path, adapters=[tmp_path / "missing.pth"])
    torch.save(states(), tmp_path / "whole.pth")
    (tmp_path / "junk.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:5000])  # a cut-off download
    with pytest.raises(AdapterError, match="adapter .*junk.pth: .* is truncated or corrupt"):
        engine.load_model(tiny_model_path, adapters=[tmp_path / "junk.pth"])


def test_commands_print_the_error(tmp_path, tiny_model_path, capsys):
    bad = save(tmp_path, "bad.pth", lora("blocks.0.att.key"))
    assert rwkveval(["merge", str(tiny_model_path), "--adapter", str(bad), "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "rwkveval merge: adapter" in capsys.readouterr().err
    assert rwkveval(["merge", str(tiny_model_path), "--adapter", str(bad), "--lora-alpha", "4",
                     "-o", str(tmp_path / "m.pth")]) == 2
    assert "expected a .safetensors file name, found suffix '.pth'" in capsys.readouterr().err
    assert rwkveval(["serve", "--model", str(tiny_model_path), "--adapter", str(bad), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "rwkveval serve: adapter" in err and "no scale" in err
