"""``rwkveval merge``: a base checkpoint with RWKV-PEFT adapters merged in, written as one
``.safetensors`` file (for tools that want a whole checkpoint; rwkveval itself takes ``--adapter``).

    rwkveval merge BASE.pth --adapter lora.pth --lora-alpha 32 -o merged.safetensors
    rwkveval merge BASE.pth --adapter rwkv-0.pth --adapter-init init_pissa.pth
    rwkveval merge BASE.pth --adapter state.pth           # keeps blocks.N.att.time_state

The merge is the one ``--adapter`` does at load (engine/adapters.py). A tuned state is written as
``blocks.N.att.time_state``, as RWKV-PEFT's merge_state.py does; rwkveval loads it as the initial
state. The file is written to a temporary name beside the output and renamed, so a crash never
leaves half a checkpoint; an existing output is replaced only with ``--force``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from .adapters import AdapterOptions, add_adapter_options, fine_tune_name, options_from, prepare_checkpoint
from .checkpoint import StateDict, file_sha256, read_state_dict
from .errors import InputError
from .model import DTYPES


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("merge", help="write a checkpoint with RWKV-PEFT adapters merged in (.safetensors)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", type=Path, metavar="BASE", help="the RWKV-7 checkpoint the adapters were trained on")
    add_adapter_options(p.add_argument)
    p.add_argument("-o", "--output", type=Path, default=None, metavar="OUT.safetensors",
                   help="where to write (default: BASE-STEM+ADAPTER-STEM.safetensors in the current folder)")
    p.add_argument("--dtype", choices=("base", *DTYPES), default="base",
                   help="dtype of the written tensors: 'base' keeps each tensor's dtype from the base checkpoint "
                        "(merged in float32, then rounded to it) (default: %(default)s)")
    p.add_argument("--force", action="store_true", default=False, help="replace an existing output file")
    p.set_defaults(run=run)
    return p


def default_output(base: Path, options: AdapterOptions) -> Path:
    return Path(fine_tune_name(base.stem, options.paths) + ".safetensors")


def merged_checkpoint(base: Path, options: AdapterOptions, dtype: str = "base") -> tuple[StateDict, dict]:
    """(the merged tensors to write, a description of the merge for the file's metadata)."""
    sd = read_state_dict(base)
    cfg, merged = prepare_checkpoint(sd, options, f"checkpoint {base}")
    out: StateDict = {}
    for key, tensor in merged.state_dict.items():
        want = sd[key].dtype if dtype == "base" else DTYPES[dtype]
        out[key] = tensor.to(want).contiguous()
    if merged.initial_wkv is not None:  # RWKV-PEFT's key names, [H, N, N] per layer, float32 (the state's precision)
        want = torch.float32 if dtype == "base" else DTYPES[dtype]
        for layer in range(cfg.n_layer):
            out[f"blocks.{layer}.att.time_state"] = merged.initial_wkv[layer].to(want).contiguous()
    about = {"base": str(base), "base_sha256": file_sha256(base), "adapters": list(merged.records),
             "initial_state": merged.state_from, "dtype": dtype}
    return out, about


def write_safetensors(path: Path, tensors: StateDict, metadata: dict[str, str]) -> None:
    """Write ``tensors`` to ``path`` atomically: a temporary file beside it, then a rename."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def run(args: argparse.Namespace) -> int:
    options = options_from(lambda name: getattr(args, name))
    if not options:
        raise InputError("rwkveval merge needs at least one --adapter")
    out = args.output or default_output(args.base, options)
    if out.suffix != ".safetensors":
        raise InputError(f"-o {out}: expected a .safetensors file name, found suffix {out.suffix!r}")
    if out.resolve() == args.base.resolve():
        raise InputError(f"-o {out} is the base checkpoint itself; choose another name")
    if out.exists() and not args.force:
        raise InputError(f"{out} exists; pass --force to replace it")
    tensors, about = merged_checkpoint(args.base, options, args.dtype)
    write_safetensors(out, tensors, {"format": "pt", "rwkveval_merge": json.dumps(about)})
    kinds = ", ".join(f"{r['kind']} {Path(r['path']).name}" for r in about["adapters"])
    print(f"merged {kinds} into {args.base.name}: wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0
