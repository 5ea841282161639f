"""Matvec kernel A/B, old build against new, one process, turn about: the 0.1B decode step's 73 matrices.
The matrices are 12 layers x W_r W_k W_v W_o ffn_key ffn_value, then the head, read in turn.
Run from the repository root: python docs/perf/cpu-matvec-ab.py OLD_COMMIT [M ...] (the new build is the working
tree; M: the vector counts, default 1 and 2)."""
import ctypes, os, statistics, subprocess, sys, tempfile, time
import torch

sys.path.insert(0, "tests")
from roofline import _median_seconds as med  # warm-up call, then the median of n timed calls

old_commit = sys.argv[1]
vector_counts = [int(m) for m in sys.argv[2:]] or [1, 2]
# the engine's flags (engine/kernels/cpu.py); AB_FLAGS adds some, e.g. "-mno-avx512f" for the portable loop
flags = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffp-contract=fast", "-fopenmp", "-shared", "-fPIC",
         "-std=c11", *os.environ.get("AB_FLAGS", "").split()]
tmp = tempfile.mkdtemp()
for name, rev in (("old", old_commit), ("new", None)):
    for f in ("matvec_cpu.c", "bf16_cpu.h"):
        src = subprocess.run(["git", "show", f"{rev}:engine/kernels/{f}"], capture_output=True, text=True,
                             check=True).stdout if rev else open(f"engine/kernels/{f}").read()
        os.makedirs(f"{tmp}/{name}", exist_ok=True)
        open(f"{tmp}/{name}/{f}", "w").write(src)
    subprocess.run(["gcc", *flags, f"{tmp}/{name}/matvec_cpu.c", "-o", f"{tmp}/{name}.so", "-lm"], check=True)
libs = {n: ctypes.CDLL(f"{tmp}/{n}.so") for n in ("old", "new")}
for lib in libs.values():
    for f in ("matvec_f32", "matvec_bf16", "matvec_bf16_dot"):
        getattr(lib, f).argtypes = [ctypes.c_int64] * 3 + [ctypes.c_int] + [ctypes.c_void_p] * 3 + [ctypes.c_int]
C, F, V, L = 768, 3072, 65536, 12
shapes = ([(C, C)] * 4 + [(F, C), (C, F)]) * L + [(V, C)]
threads = torch.get_num_threads()
src = torch.ones(1 << 26)  # the benchmark's read probe: a sum over 256 MiB



print(f"# {__doc__.splitlines()[0]}\n# {time.strftime('%c')}, torch {torch.__version__}, {threads} threads, old = "
      f"{old_commit}, extra flags {os.environ.get('AB_FLAGS', '') or 'none'}; GB/s of weights read (median of 9 passes per turn), probe = torch sum over 256 MiB")
for dtype in (torch.bfloat16, torch.float32):
    mats = [(torch.randn(r, c) * 0.02).to(dtype) for r, c in shapes]
    nbytes = sum(t.numel() * t.element_size() for t in mats)
    # bf16: the bf16 model's kernel, the AVX512_BF16 dot product where the build has it (x bf16), else
    # bf16 weights times float32 x
    dot = libs["new"].matvec_bf16_dot_available() and libs["old"].matvec_bf16_dot_available()
    f, ybf = (("matvec_bf16_dot" if dot else "matvec_bf16"), 1) if dtype == torch.bfloat16 else ("matvec_f32", 0)
    xdtype = dtype if dtype == torch.float32 or dot else torch.float32
    for M in vector_counts:
        xs = {k: torch.randn(M, k).to(xdtype) for k in (C, F)}
        ys = {k: torch.empty(M, k, dtype=dtype) for k in (C, F, V)}
        for name in libs:  # same results, old and new (float32 sums in another order)
            call = getattr(libs[name], f)
            call(V, C, M, threads, mats[-1].data_ptr(), xs[C].data_ptr(), ys[V].data_ptr(), ybf)
            if name == "old":
                ref = ys[V].float().clone()
        diff = (ys[V].float() - ref).abs().max().item()
        res = {"probe": [], "old": [], "new": []}
        for rnd in range(6):
            res["probe"].append(src.numel() * 4 / med(lambda: src.sum(), 5) / 1e9)
            for name, lib in libs.items():
                call = getattr(lib, f)
                step = lambda: [call(W.shape[0], W.shape[1], M, threads, W.data_ptr(), xs[W.shape[1]].data_ptr(),
                                     ys[W.shape[0]].data_ptr(), ybf) for W in mats]
                res[name].append(nbytes / med(step, 9) / 1e9)
        print(f"{str(dtype)[6:]:8} M={M} " + " | ".join(
            f"{k} {statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})" for k, v in res.items())
              + f" | head max |new - old| {diff:.2e}", flush=True)
