#!/usr/bin/env bash
# All GPU measurements in as few device calls as possible (a session has 15 device minutes,
# 10 per call; starting a machine takes ~35 s, the four wheel calls ~10 s). First install the wheels the device lacks: `bash ../shared/device/stage-wheels.sh`
# here, then the four device calls its header lists; in the fourth, after
# `source .device/rest/install.sh &&`, run:   bash benchmarks/gpu_session.sh envs
# and in later calls (same warm machine: `export PYTHONPATH=$HOME/hj-site`):
#   bash benchmarks/gpu_session.sh sac      # SAC updates/s, 1 and 5 seeds
#   bash benchmarks/gpu_session.sh train    # dense pushing at one update per env step
# or, when the session has one call's worth of device time, everything in order of value,
# each part under its own time limit so that a slow part cannot starve the ones before it:
#   bash benchmarks/gpu_session.sh all      # sac, then train, then envs
#   bash benchmarks/gpu_session.sh probe    # SAC update profile and variants, every task's envs
#   bash benchmarks/gpu_session.sh speed    # bf16 encoders, run_all, 120x180 tabletop envs
#   bash benchmarks/gpu_session.sh next     # rows/fused encoders, run_all (GL, brax), demo model, HOLD-R
#   bash benchmarks/gpu_session.sh rows     # canonical vs rows encoders, then 400k dense pushing
#   bash benchmarks/gpu_session.sh learn    # 400k dense pushing with bf16 encoders, to the budget
#   bash benchmarks/gpu_session.sh sparse   # figure 3a's 400k sparse run, N=256, then 5-seed rows
#   bash benchmarks/gpu_session.sh backbones  # demo HOLD-C with ResNet-50/18, 64 filters, 128/256 px
#   bash benchmarks/gpu_session.sh pixels   # #4's figure-3a check on pixels: sparse vs HOLD-C, 3 seeds
#   bash benchmarks/gpu_session.sh pallas   # Pallas encoder kernels: checked, timed against rows, tilings swept
#   bash benchmarks/gpu_session.sh sparse400k  # #3's plain-SAC run to its end (400k), one call
#   bash benchmarks/gpu_session.sh sparse400k5 # the same run for 5 seeds at once, to the budget
#   bash benchmarks/gpu_session.sh latency  # a step's latency and fidelity at 20 vs 10 substeps
#   bash benchmarks/gpu_session.sh brax     # #5's state-based SAC against brax's, its own call
#   bash benchmarks/gpu_session.sh convs    # canonical vs rows encoders, then the demo model's check
#   bash benchmarks/gpu_session.sh final    # run_all, the GPU-default demo-trained HOLD-C, HOLD-R
#   bash benchmarks/gpu_session.sh fig3a    # figure 3a's HOLD-C run, 5 seeds, to the time limit
#   bash benchmarks/gpu_session.sh compare  # figure 3a's sparse vs HOLD-C, state proxy, 10 seeds
# Results go to benchmarks/results/, or with $OUT set (a device call) to $OUT/results.tgz.
# OpenGL for the reference loop (the machine has no libEGL; without it the loop renders with
# MJX, 22 ms a frame): stage the libraries here once per checkout with the device README's
# recipe (apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2
# into .gl/, ignored by git) and carry ".gl" beside ".device/rest" in the fourth call.
set -uo pipefail
# A misspelt part stops here, before it costs anything on the device.
parts=$(grep -oE '^  [a-z0-9]+\)' "${BASH_SOURCE[0]}" | tr -d ' )' | tr '\n' ' ')
if [[ " $parts" != *" ${1:-envs} "* ]]; then
  echo "gpu_session.sh: unknown part '${1:-}'; parts: $parts" >&2; exit 2
fi
if compgen -G ".gl/*.deb" > /dev/null; then  # unpacked into / (these few libraries only)
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f $vendor ] && export __EGL_VENDOR_LIBRARY_FILENAMES=${__EGL_VENDOR_LIBRARY_FILENAMES:-$vendor}
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
out=benchmarks/results
if [ -n "${OUT:-}" ]; then
  # A device call returns at most 8 files: everything goes to one folder, packed into
  # $OUT/results.tgz every 20 s and at the end (a call cut short keeps the last pack);
  # here, unpack it (`tar xzf results.tgz -C DIR`) and copy its .json files to benchmarks/results/.
  out=/tmp/hj_out; mkdir -p $out
  pack() { tar czf "$OUT/pack.tgz" -C $out . && mv "$OUT/pack.tgz" "$OUT/results.tgz"; }
  (while sleep 20; do pack; done) > /dev/null 2>&1 &
  packer=$!
  trap 'kill $packer 2> /dev/null; pack' EXIT
fi
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
# A fresh run folder for run $1 (a part run again on the same warm machine would find the
# last one's checkpoint and refuse to start).
run_dir() { echo "/tmp/runs/$1-$(date +%s)"; }
# A time-limited run (train_run.py) is stopped at its limit with SIGINT and may take
# train_run's --stop_grace (45 s) to evaluate its pending epochs and checkpoint, and ~15 s
# more to summarise: its `timeout` leaves it STOP_MARGIN_S beyond the limit.
STOP_MARGIN_S=60
# Dense pushing, one seed x 64 worlds, stopped after $1 seconds: metrics.jsonl holds every
# epoch so far, and train_run.py summarises it into $out/train-pushing_dense-<device>.json.
dense_pushing() {
  timeout $(($1 + STOP_MARGIN_S)) python3 benchmarks/train_run.py --time_limit="$1" \
    --results="$out" --config=pushing_dense --seeds=1 --num_envs=64 --epoch_length=5000 \
    --total_steps=400000 --path_save_frequency=0 --checkpoint_frequency=1000 \
    --out="$(run_dir pushing_dense)" "${@:2}" \
    > "$out/train.log" 2>&1
  tail -30 "$out/train.log"
}
# SAC updates/s of one variant (sac_update.py's flags), stopped after $1 seconds; 200 updates a
# scan, best of 2; the whole output appended to sac_update.log.
sac() {
  timeout "$1" python3 benchmarks/sac_update.py --updates=200 --repeats=2 --out="$out" "${@:2}" \
    2>&1 | tee -a "$out/sac_update.log"
}
# One seed's SAC update rate with each encoder computation, each stopped after $1 seconds,
# most wanted first; results in $out/convs until fastest_encoder has read them.
convs() {
  mkdir -p "$out/convs"
  sac "$1" --seeds=1 --encoder_dtype=bfloat16 --tag=canonical-bfloat16 --out="$out/convs"
  sac "$1" --seeds=1 --conv=rows --encoder_dtype=bfloat16 --tag=bfloat16 --out="$out/convs"
  sac "$1" --seeds=1 --conv=rows --encoder_dtype=bfloat16 --fused_encoders=1 \
    --tag=fused-bfloat16 --out="$out/convs"
  sac "$1" --seeds=1 --tag=canonical-float32 --out="$out/convs"
  sac "$1" --seeds=1 --conv=rows --tag=float32 --out="$out/convs"
  cp "$out"/convs/*.json "$out"/
}
# The train flags of the fastest encoder computation that convs measured.
fastest_encoder() {
  python3 -c 'import glob, json, sys
runs = [json.load(open(p)) for p in glob.glob(sys.argv[1] + "/*.json")]
best = min(runs, key=lambda r: r["rows"][0]["ms_per_update"])
print("--encoder_conv=%s --encoder_dtype=%s --fused_encoders=%s" % (
    best["encoder_conv"], best["encoder_dtype"], str(best["fused_encoders"]).lower()))
' "$out/convs" | tee -a "$out/sac_update.log"
}
# The flags of the fastest pallas variant (pallas or pallas_banded, fused encoders or not) at
# its default tiling today (pallas_conv.DEFAULT_TILINGS) if `pallas` parts found it right
# (the kernels' check within 5%, its own or that of the same kernels unfused) and faster
# than rows with 5 seeds in bf16, measured on this GPU kind: this machine's files in $out
# (an earlier call, same warm machine) or, where it has none, those committed in
# benchmarks/results/; else nothing (rows, the default). sparse400k and sparse400k5 use it.
pallas_if_faster() {
  python3 -c 'import glob, json, re, subprocess, sys
from holdjax.sac.pallas_conv import DEFAULT_TILINGS
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip().lower()
gpu = re.sub("[^a-z0-9]+", "-", gpu).strip("-")  # as benchmarks/common.device_name
def run(pattern):
    for folder in sys.argv[1:]:
        paths = glob.glob(folder + "/" + pattern + "-" + gpu + ".json")
        if paths:
            return json.load(open(paths[0]))
def ms(run, seeds=5):
    return next((r["ms_per_update"] for r in run["rows"] if r["num_seeds"] == seeds), None)
def right(run):
    return run and run.get("check", {}).get("max", 1) < 0.05
base = run("sac_update-rows-bfloat16-baseline")
best, best_ms = "", ms(base) if base else None
for conv in ("pallas", "pallas_banded"):
    for tag, flags in (("bfloat16", ""), ("fused-bfloat16", " --fused_encoders=true")):
        candidate = run("sac_update-%s-%s" % (conv, tag))
        tiling = str(DEFAULT_TILINGS[conv])
        if not candidate or candidate.get("pallas_tiling", "128:4:4:0:0:0") != tiling:
            continue  # files from before tilings were recorded ran 128:4:4:0:0:0, and
            # shorter tilings are those of before saved routes or patches
        checked = candidate if "check" in candidate else run("sac_update-%s-bfloat16" % conv)
        if right(checked) and ms(candidate) and best_ms and ms(candidate) < best_ms:
            best, best_ms = "--encoder_conv=" + conv + flags, ms(candidate)
print(best)
' "$out" benchmarks/results | tee -a "$out/sac_update.log"
}
# Figure 3a's plain-SAC run (sparse reward, 400k env steps, 256 worlds, bf16 encoders) for
# $1 seeds in one program, named $2, stopped at the budget; TRAIN_FLAGS adds flags (default:
# pallas encoders where pallas_if_faster says so). Evaluated every 1,000 env steps as the
# reference (the config's epochs), 10 epochs' policies at a time (eval_batch's GPU default).
# Compared with the reference loop's 65 env steps/s on an H100 (SPEC.md: ~8.5 h for 5 seeds).
# A run longer than one call goes on in the next call on the same warm machine: its folder
# is kept, and --resume added once it holds a checkpoint (the stop saves one), and the
# compilation cache spares the resumed run its compile.
sparse_pushing() {
  local dir=/tmp/runs/$2 resume=""
  [ -d "$dir/checkpoints" ] && resume=--resume
  JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache \
  timeout $(( ${BUDGET_S:-585} - 5 )) python3 benchmarks/train_run.py \
    --time_limit=$(( ${BUDGET_S:-585} - 5 - STOP_MARGIN_S )) --results="$out" \
    --config=fig3a_pushing_sac --seeds="$1" --num_envs=256 --total_steps=400000 \
    --encoder_dtype=bfloat16 --path_save_frequency=0 --checkpoint_frequency=1000 \
    --reference_steps_per_s=65 --out="$dir" --name="$2" $resume \
    ${TRAIN_FLAGS:-$(pallas_if_faster)} > "$out/train.log" 2>&1
  tail -30 "$out/train.log"
}
case "${1:-envs}" in
  envs)  # physics + render, both impls (Warp's first compile: ~6 s on the H200 here)
    timeout 540 python3 benchmarks/env_throughput.py --nums=256,2048,8192 --steps=50 \
      --out="$out" 2>&1 | tee "$out/env_throughput.log" ;;
  sac)
    timeout 540 python3 benchmarks/sac_update.py --out="$out" 2>&1 | tee "$out/sac_update.log" ;;
  train)  # the reference's ratio (auto: one update per env step on a GPU), one seed
    dense_pushing $(( 590 - STOP_MARGIN_S )) ;;
  probe)  # where an update's time goes, and the knobs that might cut it; then every task's env
    cmdbuf=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE
    sac 75 --seeds=1,5 --trace=/tmp/trace_base
    XLA_FLAGS="--xla_gpu_enable_command_buffer=$cmdbuf --xla_gpu_graph_min_graph_size=1" \
      sac 75 --seeds=1,5 --tag=cmdbuf_while --trace=/tmp/trace_cmdbuf
    sac 75 --seeds=1 --tag=unroll4 --unroll=4
    sac 75 --seeds=1 --tag=flat_adam --flat_optimizer
    timeout 130 python3 benchmarks/env_throughput.py --impls=warp --nums=256,2048,8192 --steps=50 \
      --repeats=2 --tag=warp --out="$out" 2>&1 | tee "$out/env_throughput.log"
    timeout 70 python3 benchmarks/env_throughput.py --tasks=pushing --impls=jax --tag=jax \
      --nums=2048,8192 --steps=50 --repeats=2 --out="$out" 2>&1 | tee -a "$out/env_throughput.log" ;;
  speed)  # bf16 encoders, then the three-way comparison (run_all), then 120x180 tabletop envs
    sac 50 --seeds=1,5 --encoder_dtype=bfloat16 --tag=bf16
    sac 50 --seeds=1 --encoder_dtype=bfloat16 --conv=lax --tag=bf16
    timeout 330 python3 benchmarks/run_all.py --fused_rewards=holdc --fused_nums=512 \
      --out="$out" > "$out/run_all.log" 2>&1; tail -40 "$out/run_all.log"
    timeout $((${BUDGET_S:-450} - SECONDS)) python3 benchmarks/env_throughput.py \
      --tasks=close_drawer --impls=jax,warp --nums=256,2048 --steps=50 --repeats=2 --tag=tabletop \
      --out="$out" 2>&1 | tee "$out/env_throughput.log" ;;
  next)  # what no GPU call has measured yet: the update rate of each encoder computation
    # (canonical baseline; rows = banded GEMMs, float32 and bf16; fused encoders), then
    # run_all with an OpenGL reference loop (carry .gl) and brax's part inside the limit, the
    # small default demo model's check, HOLD-R at 512
    sac 60 --seeds=1 --fused_encoders=0 --tag=separate
    sac 60 --seeds=1,5 --conv=rows --tag=float32
    sac 60 --seeds=1,5 --conv=rows --encoder_dtype=bfloat16 --tag=bfloat16 --trace=/tmp/trace_rows
    sac 60 --seeds=1,5 --conv=rows --encoder_dtype=bfloat16 --fused_encoders=1 --tag=fused-bfloat16
    sac 60 --seeds=1,5 --fused_encoders=1 --encoder_dtype=bfloat16 --tag=fused-bfloat16
    left() { echo $(( ${BUDGET_S:-560} - SECONDS )); }
    timeout $(( $(left) > 430 ? 400 : $(left) - 30 )) python3 benchmarks/run_all.py \
      --fused_rewards=holdc --fused_nums=512 --brax_steps=20000 --out="$out" \
      > "$out/run_all.log" 2>&1; tail -40 "$out/run_all.log"
    [ "$(left)" -gt 60 ] && timeout 90 python3 benchmarks/reward_check.py --task=pushing \
      --tag=default --out="$out" 2>&1 | tail -5 | tee "$out/reward_check.log"
    [ "$(left)" -gt 60 ] && timeout "$(left)" python3 benchmarks/fused_step.py --rewards=holdr \
      --nums=512 --ratios=0.0625 --iterations=3 --repeats=2 --tag=holdr512 --out="$out" 2>&1 \
      | tee "$out/fused_step_holdr.log" ;;
  convs)  # one seed's update rate with each encoder computation, most wanted first (the
    # lowest floor in gpu_census.py, canonical bf16; rows bf16, alone and with fused encoders;
    # the float32 baselines), each cut at $BUDGET_S's share, then the default demo model's check
    convs $(( (${BUDGET_S:-200} - 60) / 5 ))
    [ $(( ${BUDGET_S:-200} - SECONDS )) -gt 50 ] && timeout $(( ${BUDGET_S:-200} - SECONDS - 5 )) \
      python3 benchmarks/reward_check.py --task=pushing --tag=default --out="$out" 2>&1 \
      | tail -5 | tee "$out/reward_check.log" ;;
  learn)  # dense pushing at one update per env step with bf16 encoders, to the budget: #3's
    # success >= 0.8 (reached: train-pushing_dense_bf16-nvidia-h200.json)
    dense_pushing $(( ${BUDGET_S:-560} - SECONDS - 5 - STOP_MARGIN_S )) --encoder_dtype=bfloat16 \
      --name=pushing_dense_bf16 ;;
  sparse)  # #3's plain-SAC run (figure 3a: sparse reward, 400k env steps, one update per env
    # step) for one seed, at 256 worlds (the physics and render cost per update a quarter of 64
    # worlds') with bf16 encoders (rows: the accelerator default), evaluated every 10k steps;
    # then the 5-seed update rate of the rows and canonical bf16 encoders with what is left
    timeout $(( ${BUDGET_S:-560} - 70 )) python3 benchmarks/train_run.py \
      --time_limit=$(( ${BUDGET_S:-560} - 70 - STOP_MARGIN_S )) --results="$out" \
      --config=fig3a_pushing_sac --seeds=1 --num_envs=256 --epoch_length=10000 \
      --total_steps=400000 --encoder_dtype=bfloat16 --path_save_frequency=0 \
      --checkpoint_frequency=1000 --out="$(run_dir fig3a_sac)" \
      --name=fig3a_pushing_sac_n256_bf16 > "$out/train.log" 2>&1
    tail -30 "$out/train.log"
    left=$(( (${BUDGET_S:-560} - SECONDS) / 2 ))
    [ $left -gt 20 ] && sac $left --seeds=5 --conv=rows --encoder_dtype=bfloat16 \
      --tag=bfloat16-5seeds
    left=$(( ${BUDGET_S:-560} - SECONDS ))
    [ $left -gt 20 ] && sac $left --seeds=5 --encoder_dtype=bfloat16 \
      --tag=canonical-bfloat16-5seeds ;;
  backbones)  # #4's backbone measurement with today's default footage and recipe: ResNet-50
    # (64 filters) at 128 px, at the released crop of 256 px, then ResNet-18 at 128 px again
    # (its 2026-11-26 H100 figure predates the time regression); each stopped at the budget.
    # BACKBONES="50:256" picks some (layers:pixels; ResNet-50 at 128 px is measured: 0.998 /
    # 0.836 on an H100; at 256 px it trained in ~84 s and its check needs ~10 s more)
    for spec in ${BACKBONES:-50:128 50:256 18:128}; do
      set -- ${spec/:/ }
      left=$(( ${BUDGET_S:-560} - SECONDS - 5 ))
      [ $left -gt 60 ] && timeout $left python3 benchmarks/reward_check.py --task=pushing \
        --layers=$1 --filters=64 --image_size=$2 --tag=resnet$1_$2px --out="$out" 2>&1 \
        | tail -4 | tee -a "$out/reward_check.log"
    done ;;
  pixels)  # #4's done-when on pixels: figure 3a's plain SAC (sparse) against HOLD-C with the
    # default demo model plus the sparse reward, 3 seeds each under one schedule, one update
    # per env step, at normaliser 10 (the demo model's scale: NOTES, the CPU proxy). The two
    # train at once, so their set-up and compilation (CPU) overlap and the GPU time-slices
    # between them; each stops at the budget, and the comparison covers the evals both reached.
    # The default demo model trains first where it is missing (~45 s of GPU); carrying one
    # trained here (`python -m holdjax.reward.train --task=pushing`, 236 KB: carry
    # "runs/reward_models" beside ".device/rest") spares that. The SAC encoders stay rows (a
    # crash here would cost the session's #4 check): PIXEL_FLAGS=--encoder_conv=pallas opts in
    limit=$(( ${BUDGET_S:-560} - SECONDS - 5 - STOP_MARGIN_S )) trainers=""
    for config in fig3a_pushing_sac fig3a_pushing_holdc; do
      timeout $(( limit + STOP_MARGIN_S )) python3 benchmarks/reward_comparison.py --configs=$config \
        --seeds=3 --num_envs=128 --epoch_length=5000 --total_steps=${STEPS:-80000} \
        --encoder_dtype=bfloat16 --distance_normalizer=10 --checkpoint_frequency=1000 \
        --time_limit=$limit ${PIXEL_FLAGS:-} --tag=pixels-$config --results="$out" \
        > "$out/pixels-$config.log" 2>&1 &
      trainers="$trainers $!"
    done
    wait $trainers  # not the packer
    tail -n 4 "$out"/pixels-*.log
    sparse=$(ls "$out"/reward_comparison-pixels-fig3a_pushing_sac-*.json 2> /dev/null)
    holdc=$(ls "$out"/reward_comparison-pixels-fig3a_pushing_holdc-*.json 2> /dev/null)
    if [ -n "$sparse" ] && [ -n "$holdc" ]; then
      python3 benchmarks/reward_comparison.py --tag=pixels --results="$out" \
        --pool="$sparse,$holdc" 2>&1 | tee "$out/pixels.log"
    else
      echo "pixels: a run wrote no results (its log above), so nothing to compare"
    fi ;;
  pallas)  # the Pallas encoder kernels (encoder_conv="pallas") with fused encoders (the
    # fastest update of the first timing) at today's tiling (pallas_conv.TILING, chosen by
    # triton_resources.py): checked against rows on the device (features and gradients, in
    # the payload's "check"), 1 and 5 seeds in bf16, profiled; rows bf16 (the default) in the
    # same call; the default with the images shifted and converted by XLA before the first
    # layer (lazy augmentation's gain alone); then the other tilings of triton_resources.py's
    # table: the previous default (2 blocks a backward program, not 4), the one before (8
    # backward warps, no loops, the first layer's windows one by one), today's without loops,
    # and the patches recomputing their routes (the saved routes' gain); then pallas_banded,
    # checked, at its own default (pallas_conv.BANDED_TILING: at pallas's, its unpatched
    # first layer's backward spills)
    sac $(( ${BUDGET_S:-360} / 4 )) --seeds=1,5 --conv=pallas --encoder_dtype=bfloat16 \
      --fused_encoders=1 --check_against=rows --trace=/tmp/trace_pallas --tag=fused-bfloat16
    sac 45 --seeds=1,5 --conv=rows --encoder_dtype=bfloat16 --tag=bfloat16-baseline
    sac 45 --seeds=1,5 --conv=pallas --encoder_dtype=bfloat16 --fused_encoders=1 \
      --lazy_augmentation=0 --tag=fused-bfloat16-eager
    for tiling in 64:8:16:1:1152:1:1 64:8:8:1:0:1:0 64:8:16:1:0:1:1 64:8:16:1:576:0:1; do
      sac 45 --seeds=1,5 --conv=pallas --encoder_dtype=bfloat16 --fused_encoders=1 \
        --pallas_tiling=$tiling --tag=fused-bfloat16-tiling-${tiling//:/-}
    done
    left=$(( ${BUDGET_S:-360} - SECONDS - 5 ))
    [ $left -gt 20 ] && sac $left --seeds=1,5 --conv=pallas_banded \
      --encoder_dtype=bfloat16 --fused_encoders=1 --check_against=rows --tag=fused-bfloat16 ;;
  sparse400k)  # #3's "the reference's plain-SAC run completes": one seed at 256 worlds, rows
    # bf16, evaluated every 1k env steps. From the 2026-11-27 H100 runs: ~112 s of set-up,
    # ~70 s for the first (compiling) epoch, then ~0.9 s of training per 1k env steps and
    # (evaluated every 10k steps there) ~0.67 s per evaluated epoch: 400 evaluations make
    # it ~800 s, more than a call, so a second call (same warm machine) resumes it to the
    # end (BUDGET_S=590, timeout_s=600 each); TRAIN_FLAGS adds flags (default: pallas
    # encoders where pallas_if_faster says so)
    sparse_pushing 1 fig3a_pushing_sac_400k ;;
  sparse400k5)  # #3's "under 10 minutes for 5 seeds at once": the sparse400k run with five
    # seeds in one program, stopped at the budget (a call's ~10 minutes, set-up included, is
    # the target itself: an unfinished run misses it, and its steady env steps/s per seed say
    # by how much); TRAIN_FLAGS as for sparse400k
    sparse_pushing 5 fig3a_pushing_sac_400k_5seeds ;;
  latency)  # evaluation (20 worlds) and small-N training are bound by a physics step's
    # latency on a GPU (NOTES): the noisy expert's rate, success and contact depth at today's
    # 20 substeps and at 10, for 20 and 256 worlds, MuJoCo Warp physics (~1 min in all)
    for n in 20 256; do
      timeout 150 python3 benchmarks/timestep_stability.py --timesteps=0.005,0.01 --num_envs=$n \
        --tag=n$n --out="$out" 2>&1 | tee -a "$out/latency.log"
    done ;;
  brax)  # #5's comparison with brax's sac.train (state observations, dense reward, equal
    # settings), which run_all's 270-s share never reached: N=256, a quarter update per env
    # step, 400k env steps, both learners, to the budget (each learner ~1-2 min predicted)
    timeout $(( ${BUDGET_S:-300} - SECONDS - 5 )) python3 benchmarks/brax_sac.py --num_envs=256 \
      --total_steps=400000 --updates_per_step=0.25 --out="$out" 2>&1 | tee "$out/brax_sac.log" ;;
  rows)  # the update rate of each encoder computation, then dense pushing (400k env steps,
    # one update per env step) with the fastest, to the budget
    convs 50
    dense_pushing $(( ${BUDGET_S:-560} - SECONDS - 5 - STOP_MARGIN_S )) $(fastest_encoder) \
      --name=pushing_dense_fastest_encoder ;;
  final)  # issue 5's ratios (brax: its own part), then issue 4's accelerator-default model and HOLD-R's fused step;
    # each part writes its results file as it goes, so a part cut short keeps what it measured.
    # First, HOLD-R's cuDNN attention (its GPU default since 2026-12-07) against flax's.
    timeout 90 python3 -m pytest -q -o addopts="" -p no:cacheprovider tests/test_holdr.py \
      -k cudnn 2>&1 | tee "$out/cudnn_attention.log"
    timeout 270 python3 benchmarks/run_all.py --fused_rewards=holdc --fused_nums=512 \
      --brax_steps=0 --out="$out" > "$out/run_all.log" 2>&1; tail -40 "$out/run_all.log"
    timeout 160 python3 benchmarks/reward_check.py --task=pushing --out="$out" 2>&1 \
      | tee "$out/reward_check.log"
    timeout $((${BUDGET_S:-560} - SECONDS)) python3 benchmarks/fused_step.py --rewards=holdr \
      --nums=64,512 --ratios=default --iterations=3 --repeats=2 --tag=holdr --out="$out" 2>&1 \
      | tee "$out/fused_step_holdr.log" ;;
  fig3a)  # the reference's figure-3a HOLD-C run, 5 seeds at once (random released-size weights:
    # a speed figure), stopped at the budget: its steady rate, the ratio to the reference
    # loop's 65 env steps/s (SPEC.md) and the whole run's time projected from that rate.
    # 256 worlds a seed: at 16 (the config's) physics, render, reward and evaluation took ~30%
    # of the 2026-11-27 run's time, most of it per fused step; N is free for sample
    # efficiency at one update per env step (NOTES). Its 2026-11-27 run logged 16 epochs in a
    # 210-s limit after ~112 s of set-up and a 71-s first epoch, hence the 320-s default.
    timeout $((${BUDGET_S:-320} - SECONDS)) python3 benchmarks/train_run.py \
      --time_limit=$((${BUDGET_S:-320} - SECONDS - STOP_MARGIN_S)) --random_reward_weights \
      --config=fig3a_pushing_holdc --seeds=5 --num_envs=256 --reward_dtype=bfloat16 \
      --path_save_frequency=0 --checkpoint_frequency=1000 --reference_steps_per_s=65 \
      --out="$(run_dir fig3a)" --results="$out" > "$out/fig3a.log" 2>&1
    tail -30 "$out/fig3a.log" ;;
  compare)  # issue 4's figure-3a question with more seeds than a CPU affords: the CPU's
    # state-policy proxy (NOTES.md), 10 seeds a reward, each its own file (each run stopped
    # at its half of the budget), then pooled over the evals both reached
    for config in fig3a_pushing_sac fig3a_pushing_holdc; do
      share=$(( (${BUDGET_S:-560} - SECONDS) / 2 ))
      timeout $share python3 benchmarks/reward_comparison.py \
        --configs=$config --seeds=10 --total_steps=60000 --observation=state \
        --updates_per_step=1 --epoch_length=5000 --num_envs=16 --distance_normalizer=10 \
        --time_limit=$(( share - STOP_MARGIN_S )) --tag=state-60k-10seeds-$config \
        --results="$out" 2>&1 | tail -3 | tee -a "$out/compare.log"
    done
    sparse=$(ls "$out"/reward_comparison-state-60k-10seeds-fig3a_pushing_sac-*.json 2> /dev/null)
    holdc=$(ls "$out"/reward_comparison-state-60k-10seeds-fig3a_pushing_holdc-*.json 2> /dev/null)
    if [ -n "$sparse" ] && [ -n "$holdc" ]; then
      python3 benchmarks/reward_comparison.py --pool="$sparse,$holdc" --tag=state-60k-10seeds \
        --results="$out" 2>&1 | tail -4 | tee -a "$out/compare.log"
    else
      echo "compare: a run wrote no results (its log above), so nothing to pool"
    fi ;;
  all)
    budget=${BUDGET_S:-480}
    timeout 130 python3 benchmarks/sac_update.py --seeds=1,5 --updates=200 --repeats=2 \
      --out="$out" 2>&1 | tee "$out/sac_update.log"
    timeout 50 python3 benchmarks/sac_update.py --conv=lax --seeds=1 --updates=200 \
      --repeats=2 --out="$out" 2>&1 | tee -a "$out/sac_update.log"
    dense_pushing 230 --name=pushing_dense_230s
    timeout $((budget - SECONDS)) python3 benchmarks/env_throughput.py --impls=warp,jax \
      --nums=256,2048,8192 --steps=50 --repeats=2 --out="$out" 2>&1 | tee "$out/env_throughput.log" ;;
esac
