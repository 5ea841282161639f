#!/usr/bin/env bash
# Run the GPU tests and the GPU throughput benchmarks on a CUDA machine; raw output goes to files.
#
#   docs/perf/run_gpu.sh [STAGE ...]          (default: env tests bench=0.1B table)
#
# Stages, run in the order given:
#   env              nvidia-smi, versions, commit                      -> env.txt
#   tests            kernel and GPU-model tests (pytest -rs)           -> gpu-tests.log, gpu-tests.xml
#   sanitize         compute-sanitizer memcheck and racecheck          -> sanitize.log
#   bench[=SHAPES]   throughput benchmarks, one pytest process per shape (SHAPES: comma-separated
#                    from 0.1B,0.4B,1.5B,2.9B,7.2B, or all; default 0.1B)
#                                                                      -> bench-SHAPE.json, bench.log
#   table            a Markdown table of every bench-*.json in the output folder -> table.md
#
# Output folder: $RWKVEVAL_GPU_OUT, else $OUT (set by the device tool), else docs/perf/raw/<date>.
# Python packages: torch, cupy, pytest, pytest-benchmark, tokenizers, safetensors and the official
# rwkv package (the oracle, the speed reference and the World vocabulary). Wheels in .whl/ are
# installed first (to /tmp/rwkveval-site), for machines that cannot reach a package index.
# The tiny model: $RWKVEVAL_SHARED, else ../shared, else ./shared or ./.shared (a copy in the checkout).
# Exit status: non-zero if any stage failed; later stages still run.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2

out="${RWKVEVAL_GPU_OUT:-${OUT:-docs/perf/raw/$(date +%F)}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -z "${RWKVEVAL_SHARED:-}" ] && [ ! -d ../shared ]; then
    for d in shared .shared; do  # a copy inside the checkout (the device tool carries ./shared)
        [ -d "$d/models" ] && { export RWKVEVAL_SHARED="$PWD/$d"; break; }
    done
fi

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/rwkveval-site .whl/*.whl || exit 2
    export PYTHONPATH="/tmp/rwkveval-site${PYTHONPATH:+:$PYTHONPATH}"
fi
python3 - <<'PY' || exit 2
import importlib.util, sys
need = ["torch", "cupy", "pytest", "pytest_benchmark", "tokenizers", "safetensors", "rwkv"]
missing = [name for name in need if importlib.util.find_spec(name) is None]
if missing:
    sys.exit(f"run_gpu.sh: missing Python packages {missing}: pip install them, or put their wheels "
             "in .whl/ (the official one: pip download --no-deps rwkv -d .whl)")
PY

status=0
fail() { echo "run_gpu.sh: stage $1 failed" >&2; status=1; }

stage_env() {
    {
        date -u +"date: %Y-%m-%dT%H:%M:%SZ"
        echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown) $(git status --porcelain 2>/dev/null | wc -l) changed files"
        nvidia-smi || true
        nvcc --version | tail -n 2 || true
        python3 -c 'import sys, torch, cupy, rwkv, importlib.metadata as m
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| cupy", cupy.__version__, "| rwkv", m.version("rwkv"))
print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0))'
    } >"$out/env.txt" 2>&1 || fail env
    cat "$out/env.txt"
}

stage_tests() {
    python3 -m pytest tests/test_kernels_compile.py tests/test_kernels_validation.py \
        tests/test_kernels_gpu.py tests/test_gpu_model.py -q -rs -p no:cacheprovider \
        --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.log" || fail tests
}

stage_sanitize() {
    {
        compute-sanitizer --tool memcheck python3 -m pytest tests/test_kernels_gpu.py -q -x -p no:cacheprovider \
            -k "not grid_stride" &&
        compute-sanitizer --tool racecheck python3 -m pytest tests/test_kernels_gpu.py -q -x -p no:cacheprovider \
            -k "wkv7_forward_matches and bfloat16" &&
        compute-sanitizer --tool memcheck python3 -m pytest tests/test_gpu_model.py -q -x -p no:cacheprovider \
            -k "gpu_tiny or gpu_graphs"
    } 2>&1 | tee "$out/sanitize.log" || fail sanitize
}

stage_bench() {
    local shapes="${1:-0.1B}" shape
    [ "$shapes" = all ] && shapes="0.1B,0.4B,1.5B,2.9B,7.2B"
    for shape in ${shapes//,/ }; do
        echo "=== bench $shape $(date -u +%H:%M:%S)" | tee -a "$out/bench.log"
        python3 -m pytest tests/test_throughput_gpu.py --benchmark-only --gpu-shapes "$shape" \
            --benchmark-json="$out/bench-$shape.json" --benchmark-columns=median,min,max,rounds \
            -q -rs -p no:cacheprovider 2>&1 | tee -a "$out/bench.log" || fail "bench $shape"
        # every benchmark skipped (no GPU, no CuPy) leaves an empty file: that is a failure here
        [ -s "$out/bench-$shape.json" ] || fail "bench $shape (no benchmark ran)"
    done
}

stage_table() {
    python3 - "$out" >"$out/table.md" <<'PY' || fail table
import glob, json, os, sys

rows, device, when = [], set(), set()
for path in sorted(glob.glob(os.path.join(sys.argv[1], "bench-*.json"))):
    if os.path.getsize(path) == 0:  # a run where no benchmark ran
        print(f"(no benchmarks in {os.path.basename(path)})\n")
        continue
    data = json.load(open(path))
    when.add(data.get("datetime", "")[:10])
    for b in data["benchmarks"]:
        e = b["extra_info"]
        device.add(e.get("device_name", "?"))
        met = [f"{k} {'met' if v['met'] else 'MISSED'} ({v['value']} vs {v['target']})"
               for k, v in e.get("targets", {}).items()]
        size = e.get("batch", e.get("length", ""))
        ratio = e.get("ratio_to_official")
        rows.append(f"| {e['shape']} | {e['scenario']} | {size} | {e['tokens_per_s']:,.0f} | "
                    f"{e['weight_gb_per_s']:,.0f} | {e['fraction_of_bandwidth_roofline']:.2f} | "
                    f"{e['fraction_of_matmul_roofline']:.2f} | {'' if ratio is None else f'{ratio:.2f}x'} | "
                    f"{'; '.join(met)} |")
print(f"GPU throughput, float16, random weights in the official shapes: {', '.join(sorted(device))}, "
      f"{', '.join(sorted(when))}\n")
print("| shape | scenario | batch / tokens | tokens/s | weight GB/s | of bandwidth | of fp16 matmul | vs official | targets |")
print("|---|---|---|---|---|---|---|---|---|")
print("\n".join(rows))
PY
    cat "$out/table.md"
}

[ $# -eq 0 ] && set -- env tests bench=0.1B table
for stage in "$@"; do
    case "$stage" in
        env) stage_env ;;
        tests) stage_tests ;;
        sanitize) stage_sanitize ;;
        bench) stage_bench ;;
        bench=*) stage_bench "${stage#bench=}" ;;
        table) stage_table ;;
        *) echo "run_gpu.sh: unknown stage '$stage' (env, tests, sanitize, bench[=SHAPES], table)" >&2; exit 2 ;;
    esac
done
echo "run_gpu.sh: output in $out"
exit "$status"
