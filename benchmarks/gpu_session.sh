#!/usr/bin/env bash
# All GPU measurements in as few device calls as possible (a session has 30 device minutes,
# 10 per call). First install the wheels the device lacks: `bash ../shared/device/stage-wheels.sh`
# here, then the four device calls its header lists; in the fourth, after
# `source .device/rest/install.sh &&`, run:   bash benchmarks/gpu_session.sh envs
# and in later calls (same warm machine: `export PYTHONPATH=$HOME/hj-site`):
#   bash benchmarks/gpu_session.sh sac      # SAC updates/s, 1 and 5 seeds
#   bash benchmarks/gpu_session.sh train    # dense pushing, 5 seeds, eval success
# Results go to $OUT (copied back) and benchmarks/results/ on the device.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
out=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
case "${1:-envs}" in
  envs)  # physics + render, both impls; the first Warp compile takes minutes
    timeout 540 python benchmarks/env_throughput.py --nums=256,2048,8192 --steps=50 \
      --out="$out" 2>&1 | tee "$out/env_throughput.log" ;;
  sac)
    timeout 540 python benchmarks/sac_update.py --out="$out" 2>&1 | tee "$out/sac_update.log" ;;
  train)
    timeout 540 python -m holdjax.train --config=pushing_dense --seeds=5 --num_envs=64 \
      --num_epochs=20 --out="$out/pushing_dense" 2>&1 | tail -5 | tee "$out/train.log"
    cp "$out/pushing_dense/metrics.jsonl" "$out/pushing_dense_metrics.jsonl" ;;
esac
