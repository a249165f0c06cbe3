#!/usr/bin/env bash
# The throughput issue's GPU checks as one command, for the rare session that is lent a GPU machine.
#
# Why a script: such a machine comes for minutes (15 of device time per task, start-up included), bare,
# with its own torch and no registry. This runs the checks in order of value, each under its own time
# cap, and keeps every figure it got even when a later phase is cut off:
#   1. tests/test_cuda.py (its CUDA checks and their CPU stand-ins, compute.deterministic's byte-identical
#      reruns, the two-process SyncBatchNorm run), the suite's other GPU-only tests (losses, augmentation),
#      the real CUDA probe of tests/test_device.py and the warm server's CUDA checks (tests/test_warm.py);
#      torch's own sync detector over steady-state steps of every method (tests/test_no_sync.py) and the
#      nvJPEG batched decode of the ImageNet folder (tests/test_gpu_decode.py);
#   2. benchmarks/throughput.py in float32: the CPU default's workload (cecl, simclr) and the CIFAR-shaped
#      one (ResNet-18 and ResNet-50, batch 256 and 1024): bound, pipeline, SupContrast-style loader; every
#      model row also records syncs_per_step (torch.cuda.set_sync_debug_mode("warn") over 4 steps);
#   3. the same for ResNet-18 at batch 1024 with bf16 autocast and the fused optimiser;
#   4. as 3 with torch.compile on top.
# Everything lands in $OUT (the device tool's folder; ./gpu-session elsewhere): env.txt, one log per
# phase, one JSON per benchmark phase. The image lacks a few pure-Python packages the code imports;
# `make gpu-wheels` puts them in .whl/ here, and the run carries it:
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
# Not run here: the pipeline's stages themselves (MLflow, DVC and Ray exceed what a call can carry);
# the benchmark's "loop" row is run_pretraining as the pretrain stage runs it, without the tracking.
#
# QUICK=1: the CPU default's small workload at tiny sizes on whatever device there is; the smoke test
# (tests/test_benchmark_throughput.py) runs it so that the script cannot rot.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-session}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# The carried wheels, only where the interpreter lacks what they hold (here .venv has them all).
if compgen -G ".whl/*.whl" >/dev/null && ! $PY -c "import pydantic, pytorch_metric_learning" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_session: installing .whl/ failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ "${QUICK:-0}" = 1 ]; then
  caps=(240 120 120 180)
  sizes=(--quick --workloads params --methods cecl)
  big=("${sizes[@]}")
  timing=(--windows 1 --warmup 1 --probe-repeats 1)
else
  caps=(200 160 70 140)
  sizes=(--workloads params cifar --methods cecl simclr --archs resnet18 resnet50 --cifar-batches 256 1024)
  big=(--workloads cifar --archs resnet18 --cifar-batches 1024)
  timing=(--windows 3 --window-seconds 1 --warmup 3 --probe-repeats 1)
fi
failed=0

phase() {  # phase NAME CAP COMMAND...: run under a time cap, log to $OUT/NAME.log, report how it ended
  local name=$1 cap=$2
  shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$cap" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "[gpu_session] $name: exit $rc after $((SECONDS - start)) s (cap $cap s)$([ $rc = 124 ] && echo ', cut off')"
  tail -n 25 "$OUT/$name.log"
  [ $rc = 0 ] || failed=$((failed + 1))
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
  $PY -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
"devices", torch.cuda.device_count(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")'
  nproc
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# The warm server's checks import what the stages import (MLflow, pandas): only where the machine has them.
warm_tests=()
if $PY -c "import mlflow, pandas" 2>/dev/null; then
  warm_tests=(tests/test_warm.py::test_the_preload_does_not_touch_cuda
    tests/test_warm.py::test_a_warm_stage_sees_its_own_cuda_visible_devices_and_a_fresh_cuda)
fi
phase tests "${caps[0]}" $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py \
  --deselect "tests/test_cuda.py::test_compiled_step_equals_eager[cpu]" \
  tests/test_losses.py::test_cuda_matches_cpu tests/test_augment.py::test_cuda_matches_seed_and_rejects_cpu_generator \
  tests/test_device.py::test_the_real_probe_on_this_machine ${warm_tests[@]+"${warm_tests[@]}"} \
  tests/test_no_sync.py::test_cuda_steady_state_steps_do_not_synchronise \
  tests/test_gpu_decode.py::test_nvjpeg_decodes_like_the_cpu_and_views_stay_on_the_gpu
phase fp32 "${caps[1]}" $PY benchmarks/throughput.py "${sizes[@]}" "${timing[@]}" --json "$OUT/fp32.json"
phase bf16_fused "${caps[2]}" $PY benchmarks/throughput.py "${big[@]}" "${timing[@]}" \
  --autocast bf16 --fused --json "$OUT/bf16_fused.json"
phase bf16_fused_compile "${caps[3]}" $PY benchmarks/throughput.py "${big[@]}" "${timing[@]}" \
  --autocast bf16 --fused --compile --json "$OUT/bf16_fused_compile.json"
echo "[gpu_session] done: $failed phase(s) failed or cut off; logs and JSON in $OUT"
[ $failed = 0 ]
