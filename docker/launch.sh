#!/usr/bin/env bash
# The image's default command: the whole pipeline through the launcher (python -m cecl.launch), one
# stage in flight per visible GPU. JOBS overrides the count; without a GPU it is 1 (stages one at a time
# on the CPU). Arguments are passed on to the launcher (e.g. --profile gpu-day, --max-gpu-hours none).
set -euo pipefail
if [ -z "${JOBS:-}" ]; then
  # CUDA_VISIBLE_DEVICES if set, else torch's device count (NVML: no CUDA context in this process).
  JOBS=$(python -c 'from cecl.launch.slots import host_gpus; print(host_gpus())')
  if [ "${JOBS}" -lt 1 ]; then
    JOBS=1
  fi
fi
echo "cecl-launch: python -m cecl.launch --jobs ${JOBS} $*" >&2
exec python -m cecl.launch --jobs "${JOBS}" "$@"
