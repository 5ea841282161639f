"""End-to-end decode A/B, one process, turn about: the engine's library built from this tree against
one built with matvec_cpu.c from OLD (other sources from this tree). Run from the repository root:
python docs/perf/cpu-decode-e2e-ab.py OLD DTYPE... (it swaps the loaded library through engine.kernels.cpu._lib)"""
import os, statistics, subprocess, sys, tempfile, time
sys.path.insert(0, "tests")
import torch
import engine
from engine.kernels import cpu
from helpers import throughput_config
from roofline import _median_seconds, read_bandwidth

old = sys.argv[1]
new_lib = cpu.load()
tmp = tempfile.mkdtemp()
srcs = []
for s in cpu.SOURCES:
    text = subprocess.run(["git", "show", f"{old}:engine/kernels/{s.name}"], capture_output=True, text=True,
                          check=True).stdout if s.name == "matvec_cpu.c" else s.read_text()
    open(os.path.join(tmp, s.name), "w").write(text)
    srcs.append(__import__("pathlib").Path(tmp, s.name))
for h in cpu.SOURCES[0].parent.glob("*.h"):
    open(os.path.join(tmp, h.name), "w").write(h.read_text())
path = cpu.build(srcs, __import__("pathlib").Path(tmp, "lib"))
real_build = cpu.build
cpu.build = lambda *a, **k: path
cpu._tried = False
old_lib = cpu.load()
cpu.build = real_build
cpu._lib = new_lib
assert old_lib is not new_lib
cfg = throughput_config("0.1B")
sd = engine.random_state_dict(cfg, seed=0)
print(f"# {__doc__.splitlines()[0]}\n# {time.strftime('%c')}, OLD = {old}, torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads; ms per step (median of 10), each turn; probe GB/s before each round")
for dtype in sys.argv[2:]:
    m = engine.from_state_dict(sd, dtype=dtype)
    g = torch.Generator().manual_seed(2)
    _, st = m.forward(torch.randint(0, cfg.vocab_size, (1, 4), generator=g))
    step = torch.randint(0, cfg.vocab_size, (1, 1), generator=g)
    res = {"probe": [], "old": [], "new": []}
    for rnd in range(8):
        res["probe"].append(read_bandwidth() / 1e9)
        for name, lib in (("old", old_lib), ("new", new_lib)):
            cpu._lib = lib
            res[name].append(_median_seconds(lambda: m.forward(step, st, logits="last", inplace=True), 10) * 1e3)
    cpu._lib = new_lib
    print(dtype, " | ".join(f"{k} {statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for k, v in res.items()),
          "| per round new/old:", " ".join(f"{n / o:.2f}" for n, o in zip(res["new"], res["old"])), flush=True)
    del m
