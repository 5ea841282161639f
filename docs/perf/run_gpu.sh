#!/usr/bin/env bash
# The GPU run: tests against the reference, then throughput beside the official package, inside
# one call of at most 9 minutes (docs/perf/GPU_PLAN.md says why and in what order).
#
#   bash docs/perf/run_gpu.sh               on the GPU machine: every stage of the plan
#   bash docs/perf/run_gpu.sh STAGE ...     only these (prereq env tests bench=SHAPES wkv-timing table sanitize)
#   bash docs/perf/run_gpu.sh --prepare     here (network): the rwkv wheel and the tiny model into .gpu/, then --dry-run
#   bash docs/perf/run_gpu.sh --dry-run     here (no GPU): packaging, the plan and the launch command checked
#
# Output folder: $RWKVEVAL_GPU_OUT, else $OUT (the device tool's), else docs/perf/raw/<date>.
# Python: $PYTHON, else python3 (on the GPU machine, the one that holds torch and CuPy).
# Exit status: 0 all stages ok (extras may skip), 1 a stage failed, 2 a prerequisite is missing.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" docs/perf/gpu_run.py "$@"
