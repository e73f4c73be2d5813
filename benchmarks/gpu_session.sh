#!/usr/bin/env bash
# All GPU measurements in as few device calls as possible (a session has 30 device minutes,
# 10 per call). First install the wheels the device lacks: `bash ../shared/device/stage-wheels.sh`
# here, then the four device calls its header lists; in the fourth, after
# `source .device/rest/install.sh &&`, run:   bash benchmarks/gpu_session.sh envs
# and in later calls (same warm machine: `export PYTHONPATH=$HOME/hj-site`):
#   bash benchmarks/gpu_session.sh sac      # SAC updates/s, 1 and 5 seeds
#   bash benchmarks/gpu_session.sh train    # dense pushing, 5 seeds, eval success
# or, when the session has one call's worth of device time, everything in order of value,
# each part under its own time limit so that a slow part cannot starve the ones before it:
#   bash benchmarks/gpu_session.sh all      # sac, then train (impl=jax), then envs
# Results go to $OUT (copied back) and benchmarks/results/ on the device.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
case "${1:-envs}" in
  envs)  # physics + render, both impls; the first Warp compile takes minutes
    timeout 540 python3 benchmarks/env_throughput.py --nums=256,2048,8192 --steps=50 \
      --out="$out" 2>&1 | tee "$out/env_throughput.log" ;;
  sac)
    timeout 540 python3 benchmarks/sac_update.py --out="$out" 2>&1 | tee "$out/sac_update.log" ;;
  train)
    timeout 540 python3 -m holdjax.train --config=pushing_dense --seeds=5 --num_envs=64 \
      --num_epochs=20 --out="$out/pushing_dense" 2>&1 | tail -5 | tee "$out/train.log"
    cp "$out/pushing_dense/metrics.jsonl" "$out/pushing_dense_metrics.jsonl" ;;
  all)
    budget=${BUDGET_S:-480}
    timeout 130 python3 benchmarks/sac_update.py --seeds=1,5 --updates=200 --repeats=2 \
      --out="$out" 2>&1 | tee "$out/sac_update.log"
    timeout 50 python3 benchmarks/sac_update.py --conv=canonical --seeds=1 --updates=200 \
      --repeats=2 --out="$out" 2>&1 | tee -a "$out/sac_update.log"
    # Dense pushing, 2 seeds x 64 worlds, a quarter update per env step; impl=jax so that only
    # the render kernels compile. Killed at its limit, metrics.jsonl still holds every epoch.
    timeout 230 python3 -m holdjax.train --config=pushing_dense --impl=jax --seeds=2 \
      --num_envs=64 --updates_per_step=0.25 --epoch_length=5000 --total_steps=100000 \
      --path_save_frequency=0 --checkpoint_frequency=100 --out=/tmp/pushing_dense \
      > "$out/train.log" 2>&1
    tail -3 "$out/train.log"
    cp /tmp/pushing_dense/metrics.jsonl "$out/pushing_dense_metrics.jsonl"
    timeout $((budget - SECONDS)) python3 benchmarks/env_throughput.py --impls=jax,warp \
      --nums=256,2048,8192 --steps=50 --repeats=2 --out="$out" 2>&1 | tee "$out/env_throughput.log" ;;
esac
