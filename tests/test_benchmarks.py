"""The benchmark scripts' own logic: summaries and result files (no timings asserted)."""

import gzip
import inspect
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import Lane

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import common  # noqa: E402
import env_throughput  # noqa: E402
import gpu_census  # noqa: E402
import headless_gl  # noqa: E402
import reference_loop  # noqa: E402
import reward_census  # noqa: E402
import reward_comparison  # noqa: E402
import run_all  # noqa: E402
import sac_update  # noqa: E402
import sample_efficiency  # noqa: E402
import task_success  # noqa: E402
import timestep_stability  # noqa: E402
import train_run  # noqa: E402
import triton_resources  # noqa: E402

from holdjax.config import config_from_args  # noqa: E402
from holdjax.envs import pushing  # noqa: E402
from holdjax.sac import networks, pallas_conv  # noqa: E402
from holdjax.sac.replay import replay_nbytes  # noqa: E402


def record(epoch, env_steps, wall_s, success):
    return {"epoch": epoch, "env_steps": env_steps, "wall_s": wall_s,
            "env_steps_per_s": 2 * env_steps / wall_s, "eval_success_rate": success}


def test_train_run_summary_of_a_stopped_two_seed_run():
    config, _ = config_from_args(["--seeds=2", "--num_envs=64", "--updates_per_step=0.25",
                                  "--epoch_length=5000", "--total_steps=100000"])
    records = [record(1, 5056, 50.0, [0.0, 0.1]), record(2, 10112, 60.0, [0.5, 0.2]),
               record(3, 15168, 70.0, [0.25, 0.3])]
    records[0]["eval_return"] = [1.0, 2.0]
    summary = train_run.summarize(records, config)

    assert not summary["completed"] and summary["epochs"] == 3
    assert summary["planned_env_steps"] == 20 * 79 * 64
    assert summary["env_steps_per_seed"] == 15168 and summary["wall_s"] == 70.0
    assert summary["best_eval_success_per_seed"] == [0.5, 0.3]
    assert summary["final_eval_success_per_seed"] == [0.25, 0.3]
    assert summary["steady_env_steps_per_s_per_seed"] == pytest.approx(10112 / 20.0)
    assert summary["steady_updates_per_s_per_seed"] == pytest.approx(10112 / 20.0 * 16 / 64)
    assert [point["env_steps"] for point in summary["curve"]] == [5056, 10112, 15168]
    assert summary["curve"][0]["eval_return"] == [1.0, 2.0]
    assert "eval_return" not in summary["curve"][1] and "train_return" not in summary["curve"][0]
    assert "steady_eval_share" not in summary  # metrics logged before the time split
    assert "setup_s" not in summary  # likewise before the set-up time


def test_train_run_summary_reports_the_set_up_time():
    config, _ = config_from_args(["--num_envs=64", "--epoch_length=5000"])
    records = [record(1, 5056, 50.0, [0.0]), record(2, 10112, 56.0, [0.1])]
    records[0].update(setup_s=112.5, init_s=80.0, started_at=1_800_000_130.0)
    summary = train_run.summarize(records, config, launched=1_800_000_000.0)
    assert summary["setup_s"] == 112.5 and summary["init_s"] == 80.0
    assert summary["launch_to_run_s"] == 130.0  # imports and set-up before the run's clock
    assert "launch_to_run_s" not in train_run.summarize(records, config)  # --metrics: unknown


def test_train_run_summary_of_a_resumed_run_counts_this_sessions_set_up():
    """A run resumed in a second call: its set-up and launch time are the second session's,
    and the steady rate leaves out each session's first (compiling) epoch."""
    config, _ = config_from_args(["--num_envs=64", "--epoch_length=5000"])
    records = [record(1, 5056, 50.0, [0.0]), record(2, 10112, 56.0, [0.1]),
               record(3, 15168, 100.0, [0.2]), record(4, 20224, 106.0, [0.3])]
    records[0].update(setup_s=112.5, init_s=80.0, started_at=1_800_000_130.0)
    records[2].update(setup_s=30.0, init_s=20.0, started_at=1_800_001_000.0)
    summary = train_run.summarize(records, config, launched=1_800_000_990.0)
    assert (summary["setup_s"], summary["init_s"], summary["launch_to_run_s"]) == (30.0, 20.0,
                                                                                 10.0)
    assert summary["steady_env_steps_per_s_per_seed"] == pytest.approx(2 * 5056 / 12.0)


def test_train_run_summary_splits_steady_epochs_into_training_and_evaluation():
    config, _ = config_from_args(["--num_envs=64", "--epoch_length=5000"])
    records = [record(1, 5056, 50.0, [0.0]), record(2, 10112, 56.0, [0.1]),
               record(3, 15168, 62.0, [0.2])]
    for r, train_s, eval_s in zip(records, (40.0, 4.0, 5.0), (9.0, 1.5, 0.5), strict=True):
        r.update(train_s=train_s, eval_s=eval_s)
    summary = train_run.summarize(records, config)
    assert summary["steady_train_s_per_epoch"] == pytest.approx(4.5)
    assert summary["steady_eval_s_per_epoch"] == pytest.approx(1.0)
    assert summary["steady_eval_share"] == pytest.approx(2.0 / 11.0)


def test_train_run_stops_a_run_with_sigint_then_kills_it(tmp_path, monkeypatch):
    """At the time limit the run gets SIGINT (and logs what it trained, as on Ctrl-C); one
    that ignores it is killed ``grace`` seconds later; a run that fails otherwise raises.
    (Each child says when it is ready for the signal, and the clock starts then.)"""
    ready, real_popen = tmp_path / "ready", subprocess.Popen

    def popen_once_ready(command):
        process = real_popen(command)
        deadline = time.monotonic() + 60
        while not ready.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        ready.unlink(missing_ok=True)
        return process

    monkeypatch.setattr(train_run.subprocess, "Popen", popen_once_ready)
    flag = tmp_path / "interrupted"
    polite = ("import time\ntry:\n"
              f"    open({str(ready)!r}, 'w').close()\n    time.sleep(60)\n"
              "except KeyboardInterrupt:\n"
              f"    open({str(flag)!r}, 'w').write('logged')\n    raise")
    start = time.perf_counter()
    train_run.run_until(0.2, [sys.executable, "-c", polite])
    assert flag.read_text() == "logged" and time.perf_counter() - start < 30
    stubborn = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                f"open({str(ready)!r}, 'w').close()\ntime.sleep(60)")
    start = time.perf_counter()
    train_run.run_until(0.2, [sys.executable, "-c", stubborn], grace=0.5)
    assert 0.7 <= time.perf_counter() - start < 30  # waited out the grace, then killed it
    with pytest.raises(subprocess.CalledProcessError):
        train_run.run_until(30, [sys.executable, "-c", "raise SystemExit(3)"])


def test_train_run_summary_needs_an_epoch():
    config, _ = config_from_args([])
    with pytest.raises(ValueError, match="no epochs"):
        train_run.summarize([], config)


def test_train_run_stopped_before_its_first_epoch_says_so(tmp_path, monkeypatch):
    """A time limit that ends the run before any epoch is logged gives an error naming the
    limit and what to change, not a missing-file trace."""
    def stopped_before_logging(time_limit, command, grace):
        assert time_limit == 5.0 and grace == train_run.STOP_GRACE_S

    monkeypatch.setattr(train_run, "run_until", stopped_before_logging)
    with pytest.raises(SystemExit, match="logged no epoch .* within the 5.0 s time limit"):
        train_run.main(["--time_limit=5", f"--out={tmp_path / 'run'}", "--reward=dense",
                        f"--results={tmp_path}"])
    assert not list(tmp_path.glob("train-*.json"))


def test_train_run_summarises_a_copied_metrics_file(tmp_path):
    """--metrics: the summary of a run measured elsewhere, filed under that device's name;
    an epoch logged twice (a run killed after logging it, then resumed) counts once."""
    metrics = tmp_path / "metrics-copied.jsonl"
    metrics.write_text("\n".join(json.dumps(record(e, 1000 * e, 10.0 * e, [0.1 * e]))
                                 for e in (1, 2, 2)) + "\n")
    train_run.main([f"--metrics={metrics}", "--device=some-gpu", f"--results={tmp_path}",
                    "--reward=dense", "--epoch_length=1000", "--num_envs=10",
                    "--updates_per_step=1", "--total_steps=2000"])
    written = json.loads((tmp_path / "train-pushing_dense-some-gpu.json").read_text())
    assert written["device"] == "some-gpu" and written["summarised_here"]
    assert written["completed"] and written["updates_per_iteration"] == 10
    assert written["steady_updates_per_s_per_seed"] == pytest.approx(100.0)


def test_train_run_measured_here_is_filed_as_this_machine_against_the_reference(
        tmp_path, monkeypatch):
    """A run measured by train_run itself names this machine as its device (not as figures
    "summarised here" from elsewhere); --reference_steps_per_s adds the ratio of env steps/s
    over all seeds and both times for the planned steps, holdjax's projected from the steady
    rate. (The run is stood in for by its metrics file.)"""
    def two_epochs_logged(time_limit, command, grace):
        assert command[-1] == "--resume"  # holdjax.train's own flag, passed on
        out = next(flag.split("=", 1)[1] for flag in command if flag.startswith("--out="))
        os.makedirs(out)
        with open(os.path.join(out, "metrics.jsonl"), "w") as f:
            for e in (1, 2):
                f.write(json.dumps(record(e, 1000 * e, 50.0 + 5.0 * (e - 1), [0.0, 0.0])) + "\n")

    monkeypatch.setattr(train_run, "run_until", two_epochs_logged)
    summary = train_run.main([
        "--time_limit=100", f"--out={tmp_path / 'run'}", "--seeds=2", "--num_envs=10",
        "--total_steps=4000", "--reference_steps_per_s=50", f"--results={tmp_path}",
        "--resume"])
    written = json.loads((tmp_path / f"train-pushing_sparse-{common.device_name()}.json")
                         .read_text())
    assert "summarised_here" not in written and "measured_on" not in written
    assert summary["steady_env_steps_per_s_per_seed"] == pytest.approx(200.0)
    assert written["ratio_to_reference_loop_steps_per_s"] == pytest.approx(2 * 200.0 / 50)
    assert written["reference_loop_s_for_planned_steps"] == pytest.approx(2 * 4000 / 50)
    assert written["projected_wall_s_for_planned_steps"] == pytest.approx(55.0 + 2000 / 200.0)


def test_gpu_session_refuses_an_unknown_part_before_touching_the_device():
    """A misspelt part of the GPU script exits at once (before nvidia-smi or any install),
    naming the parts; the script parses."""
    script = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_session.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    done = subprocess.run(["bash", script, "sparse400K"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == ""
    assert "unknown part 'sparse400K'; parts: envs sac " in done.stderr
    assert " sparse400k sparse400k5 " in done.stderr


def test_write_results_names_the_device(tmp_path):
    path = common.write_results("probe", {"rows": [1]}, out_dir=str(tmp_path))
    payload = json.loads(open(path).read())
    assert path.endswith(f"probe-{common.device_name()}.json")
    assert payload["rows"] == [1] and "jax" in payload["versions"]


# A scan's loop body as XLA prints optimized HLO: a fusion that reads a tenth of its operand
# through a slice, one that gathers 3 of its 100 rows (a replay buffer's sampled frames), a
# cuDNN call, and bookkeeping that launches nothing.
CENSUS_HLO = """HloModule jit_run, entry_computation_layout={(f32[100]{0})->f32[100]{0}}

%fused_slice (param_0.1: f32[100]) -> f32[10] {
  %param_0.1 = f32[100]{0} parameter(0)
  %slice.1 = f32[10]{0} slice(%param_0.1), slice={[0:10]}
  ROOT %add.1 = f32[10]{0} add(%slice.1, %slice.1)
}

%fused_gather (param_0.2: f32[100,8], param_1.2: s32[3,1]) -> f32[3,8] {
  %param_0.2 = f32[100,8]{1,0} parameter(0)
  %param_1.2 = s32[3,1]{1,0} parameter(1)
  ROOT %gather.1 = f32[3,8]{1,0} gather(%param_0.2, %param_1.2), slice_sizes={1,8}
}

%body (p: (s32[], f32[100], f32[4,8])) -> (s32[], f32[100], f32[4,8]) {
  %p = (s32[], f32[100]{0}, f32[4,8]{1,0}) parameter(0)
  %v = f32[100]{0} get-tuple-element(%p), index=1
  %w = f32[4,8]{1,0} get-tuple-element(%p), index=2
  %frames = f32[100,8]{1,0} bitcast(%v)
  %rows = s32[3,1]{1,0} constant({ {4}, {50}, {7} })
  %loop_slice_fusion = f32[10]{0} fusion(%v), kind=kLoop, calls=%fused_slice
  %loop_gather_fusion = f32[3,8]{1,0} fusion(%frames, %rows), kind=kLoop, calls=%fused_gather
  %conv = (f32[4,8]{1,0}, u8[0]{0}) custom-call(%w, %w), custom_call_target="__cudnn$convForward"
  %b = f32[32]{0} bitcast(%w)
  ROOT %t = (s32[], f32[100]{0}, f32[4,8]{1,0}) tuple(%p, %v, %w)
}

ENTRY %main (a: (s32[], f32[100], f32[4,8])) -> (s32[], f32[100], f32[4,8]) {
  %a = (s32[], f32[100]{0}, f32[4,8]{1,0}) parameter(0)
  ROOT %while.1 = (s32[], f32[100]{0}, f32[4,8]{1,0}) while(%a), condition=%cond, body=%body
}
"""


def test_gpu_census_counts_the_loop_bodys_kernels_and_bytes():
    kernels = gpu_census.loop_body_kernels(CENSUS_HLO)
    assert [(k["kind"], k["bytes"]) for k in kernels] == [
        ("fusion kLoop", 10 * 4 + 10 * 4),  # the slice it reads, its output
        ("fusion kLoop", 3 * 8 * 4 + 3 * 4 + 3 * 8 * 4),  # the rows, the indices, the output
        ("__cudnn$convForward", 2 * 32 * 4 + 32 * 4),  # two operands, an output
    ]
    summary = gpu_census.summarize(kernels, bandwidth=1e9, kernel_floor_us=2.0)
    assert summary["kernels_per_update"] == 3
    assert summary["floor_us"] == pytest.approx(1e6 * (464 + 204) / 1e9 + 6.0)
    with pytest.raises(ValueError, match="no while loop"):
        gpu_census.loop_body_kernels(CENSUS_HLO.replace("while(", "call("))


@pytest.fixture(scope="module")
def cpu_censuses(tmp_path_factory):
    """gpu_census's XLA:CPU compiles of the update, plain and ``--sampled``, into one folder."""
    out = tmp_path_factory.mktemp("gpu_census")
    argv = ["--target=cpu", "--variants=canonical", "--seeds=1", f"--out={out}"]
    return out, gpu_census.main(argv), gpu_census.main([*argv, "--sampled"])


def test_gpu_census_of_the_cpu_compile(cpu_censuses):
    """--target=cpu needs no CUDA plugin: the same census of XLA:CPU's compile of the update."""
    out, payload, sampled = cpu_censuses
    (row,) = payload["rows"]
    assert row["variant"] == "canonical" and row["kernels_per_update"] > 10
    assert row["mb_per_update"] > 1 and sum(k["kernels"] for k in row["by_kind"].values()) == \
        row["kernels_per_update"]
    written = json.loads((out / "gpu_census-cpu-cpu.json").read_text())
    assert written["target"] == "cpu" and written["target_device"] == "cpu"
    assert written["rows"] == json.loads(json.dumps(payload["rows"]))
    assert not written["sampled"]
    # A setting that changes the counts names the file, beside the plain census's.
    written = json.loads((out / "gpu_census-cpu-sampled-cpu.json").read_text())
    assert written["sampled"] and written["rows"] == json.loads(json.dumps(sampled["rows"]))
    with pytest.raises(SystemExit, match="known: cpu, h100, h200"):
        gpu_census.main(["--target=tpu9", f"--out={out}"])
    with pytest.raises(SystemExit, match="unknown --variants"):
        gpu_census.main(["--target=cpu", "--variants=fast", f"--out={out}"])


def test_gpu_census_of_sampled_updates_adds_the_replay_gathers(cpu_censuses):
    """--sampled: each update of the loop gathers its batch from a 400k-transition replay
    buffer, then runs the same update as the plain census's: at least its kernels and bytes,
    plus the gathers', which count the rows they read, not the whole buffer."""
    _, payload, sampled = cpu_censuses
    (plain,), (row,) = payload["rows"], sampled["rows"]
    assert row["kernels_per_update"] >= plain["kernels_per_update"]
    buffer_mb = replay_nbytes(gpu_census.SAMPLED_CAPACITY, sac_update.IMAGE_SHAPE,
                              sac_update.ACTION_DIM, gpu_census.SAMPLED_WORLDS,
                              gpu_census.SAMPLED_EPISODE_LENGTH) / 1e6
    assert plain["mb_per_update"] <= row["mb_per_update"] < buffer_mb


def test_pallas_encoders_compile_for_an_h100(tmp_path):
    """Where XLA's CUDA compiler is installed (not in CI: 5 GB), the Pallas encoder kernels
    lower to Triton and compile for an H100 without one: 16 Triton kernels in an update (the
    critic's encoder on obs twice in each layer: saving routes in the critic's loss, not in
    the actor's, where nothing differentiates it)."""
    pytest.importorskip("jax_cuda12_plugin")
    payload = gpu_census.main(["--target=h100", "--variants=pallas_bf16", "--seeds=1",
                               f"--out={tmp_path}"])
    (row,) = payload["rows"]
    assert row["by_kind"]["__gpu$xla.gpu.triton"]["kernels"] == 16


TINY_RESNETS = ["--layers=18", "--filters=4", "--crop_size=32", "--frames=2"]


def test_reward_census_of_the_cpu_compile(tmp_path):
    payload = reward_census.main(["--target=cpu", "--dtype=float32", "--models=holdc,r3m",
                                  *TINY_RESNETS,
                                  f"--out={tmp_path}"])
    assert [(r["model"], r["form"]) for r in payload["rows"]] == [
        ("holdc", "checkpoint"), ("holdc", "folded"), ("r3m", "checkpoint"), ("r3m", "folded")]
    for row in payload["rows"]:
        assert row["kernels"] > 10 and row["mb"] > 0 and row["frames"] == 2
        assert sum(k["kernels"] for k in row["by_kind"].values()) == row["kernels"]
    written = json.loads((tmp_path / "reward_census-cpu-cpu.json").read_text())
    assert written["target"] == "cpu" and written["layers"] == 18
    with pytest.raises(SystemExit, match="unknown model 'vit'"):
        reward_census.main(["--target=cpu", "--models=vit", f"--out={tmp_path}"])


def test_reward_networks_scoring_forms_for_an_h100(tmp_path):
    """Where XLA's CUDA compiler is installed (not in CI): for an H100, every convolution of
    the folded ResNets is a cuDNN convolution with bias and activation, none a plain one
    followed by an elementwise pass; HOLD-R's cuDNN attention is one fused kernel a layer.
    Each scoring form has fewer kernels or bytes than the other."""
    pytest.importorskip("jax_cuda12_plugin")
    rows = reward_census.main(["--target=h100", *TINY_RESNETS, f"--out={tmp_path}"])["rows"]
    forms = {(r["model"], r["form"]): r for r in rows}
    for model in ("holdc", "r3m"):
        checkpoint, folded = forms[model, "checkpoint"], forms[model, "folded"]
        assert "__cudnn$convForward" in checkpoint["by_kind"]
        assert "__cudnn$convForward" not in folded["by_kind"]
        assert folded["by_kind"]["__cudnn$convBiasActivationForward"]["kernels"] > 10
        assert folded["kernels"] < checkpoint["kernels"] and folded["mb"] < checkpoint["mb"]
    flax_attention, cudnn = forms["holdr", "flax_attention"], forms["holdr", "cudnn_attention"]
    assert cudnn["by_kind"]["__cudnn$fmhaSoftmax"]["kernels"] == 1  # one spatial layer
    assert "__cudnn$fmhaSoftmax" not in flax_attention["by_kind"]
    assert cudnn["kernels"] < flax_attention["kernels"]
    assert forms["holdr", "cudnn_cast_once"]["kernels"] < cudnn["kernels"]


DEBUG_OUTPUT = """The Triton module for pallas_call _forward_kernel at pallas_conv.py:1:
module @_forward_kernel {
  tt.func public @_forward_kernel(%arg0: !tt.ptr<bf16>) {
    %c1 = arith.constant 1 : i32 "mul:"(#loc15)
    %0 = tt.load %1, %2, %3 evictionPolicy = evict_first : tensor<64x!tt.ptr<bf16>> [unknown]
    tt.return [unknown]
  } [unknown]
} [unknown]
The grid mapping for pallas_call _forward_kernel at pallas_conv.py:1:
module @_backward_kernel {
  tt.return
}
"""


def test_triton_resources_reads_pallas_ir_and_counts_resident_warps():
    """Each printed module is found, named, and cleaned of the debug printer's locations;
    an SM's resident programs follow CUDA's register, shared-memory and warp limits."""
    (forward, ir), (backward, _) = triton_resources.triton_modules(DEBUG_OUTPUT)
    assert (forward, backward) == ("_forward_kernel", "_backward_kernel")
    assert "loc" not in ir and "unknown" not in ir and "evictionPolicy" not in ir
    assert ir.startswith("module @_forward_kernel {") and ir.endswith("}")
    assert "{holdjax.evict_first} : tensor<64x!tt.ptr<bf16>>" in ir
    # 255 registers x 8 warps fill the 65,536 registers: one program
    assert triton_resources.occupancy(255, 0, 8) == {
        "programs_per_sm": 1, "warps_per_sm": 8, "limited_by": "registers"}
    assert triton_resources.occupancy(59, 19456, 8)["warps_per_sm"] == 32  # 64 regs a thread
    assert triton_resources.occupancy(255, 201728, 4) == {
        "programs_per_sm": 1, "warps_per_sm": 4, "limited_by": "shared"}


def test_triton_resources_of_the_pallas_kernels_for_an_h100(tmp_path):
    """Where XLA's CUDA compiler and Triton are installed (not in CI), each layer's kernels
    lower and compile for an H100: layer 1 without an input gradient (alone and as the fused
    encoders' pair), layer 2 with one."""
    pytest.importorskip("jax_cuda12_plugin")
    pytest.importorskip("triton")
    payload = triton_resources.main(["--tilings=32:4:4:1:2:1:1", "--batch=2", f"--out={tmp_path}"])
    assert [(row["layer"], row["kernel"]) for row in payload["rows"]] == [
        ("layer1", "forward"), ("layer1", "backward"), ("layer1_pair", "forward"),
        ("layer1_pair", "backward"), ("layer2", "forward"), ("layer2", "backward"),
        ("layer2", "input_gradient")]
    assert all(0 < row["registers"] <= 255 and row["warps_per_sm"] > 0
               for row in payload["rows"])


def measured_row(num_seeds: int) -> dict:
    """A stand-in for `sac_update.measure`'s row, for tests of what is around the timing."""
    return {"num_seeds": num_seeds, "updates_per_scan": 2, "batch_size": 4,
            "ms_per_update": 1.0, "updates_per_s": 1000.0, "seed_updates_per_s": 1000.0,
            "compile_and_first_run_s": 0.0, "unroll": 1}


def test_sac_update_times_the_pallas_kernels_at_a_given_tiling(tmp_path, monkeypatch):
    """--pallas_tiling puts that tiling in the networks' table for the run, and only then."""
    seen = []

    def measure(num_seeds, *args):
        seen.append(networks.CONV_RELU_POOL["pallas"].keywords["tiling"])
        return measured_row(num_seeds)

    monkeypatch.setattr(sac_update, "measure", measure)
    payload = sac_update.main(["--seeds=1", "--conv=pallas", "--pallas_tiling=32:2:4:0:16:0:0",
                               f"--out={tmp_path}"])
    assert seen == [pallas_conv.Tiling(32, 2, 4, False, 16, False, False)]
    assert payload["pallas_tiling"] == "32:2:4:0:16:0:0"
    assert networks.CONV_RELU_POOL["pallas"] is pallas_conv.pallas_conv_relu_pool
    with pytest.raises(SystemExit):
        sac_update.main(["--conv=pallas", "--pallas_tiling=64:8"])


@pytest.mark.parametrize("flag", [[], ["--lazy_augmentation=0"]])
def test_sac_update_records_whether_pallas_reads_images_through_their_shifts(
        flag, tmp_path, monkeypatch):
    configs = []

    def measure(num_seeds, updates, repeats, config, unroll, programs):
        configs.append(config)
        return measured_row(num_seeds)

    monkeypatch.setattr(sac_update, "measure", measure)
    payload = sac_update.main(["--seeds=1", "--conv=pallas", f"--out={tmp_path}", *flag])
    assert configs[0].lazy_augmentation == payload["lazy_augmentation"] == (not flag)


@pytest.mark.parametrize("conv", ["pallas", "pallas_banded"])
def test_sac_update_without_a_tiling_records_each_computations_default(conv, tmp_path,
                                                                       monkeypatch):
    """With no --pallas_tiling the networks' table is left alone: pallas runs TILING and
    pallas_banded BANDED_TILING (its windows are never patched), and the payload says which."""
    function = {"pallas": pallas_conv.pallas_conv_relu_pool,
                "pallas_banded": pallas_conv.pallas_banded_conv_relu_pool}[conv]

    def measure(num_seeds, *args):
        assert networks.CONV_RELU_POOL[conv] is function
        return measured_row(num_seeds)

    monkeypatch.setattr(sac_update, "measure", measure)
    payload = sac_update.main(["--seeds=1", f"--conv={conv}", f"--out={tmp_path}"])
    used = inspect.signature(function).parameters["tiling"].default
    assert payload["pallas_tiling"] == str(used)
    assert used == pallas_conv.DEFAULT_TILINGS[conv]


TINY_HOLDC = ["--holdc_layers=18", "--holdc_filters=2", "--holdc_crop_size=32"]
# HOLD-R only: its fused step is the one no other test times (HOLD-C's trains in test_train).
FUSED_STEP_ARGS = ["--rewards=holdr", "--holdr_size=tiny", "--nums=2", "--ratios=1",
                   "--iterations=2", "--repeats=1", "--batch_size=8"]
FUSED_STEP_SCRIPT = """
import json, sys
sys.path.insert(0, "benchmarks")
import fused_step
print(json.dumps(fused_step.main(sys.argv[1:])))
"""


@pytest.fixture(scope="module", autouse=True)
def fused_step_run(tmp_path_factory):
    """(out folder, future of fused_step.main's result): the smoke run of fused_step.py, in a
    background process (conftest.Lane) started with the module, which compiles a HOLD-C
    trainer (about a minute) while the other tests here run."""
    out = tmp_path_factory.mktemp("fused_step")
    lane = Lane()
    yield out, lane.submit("-c", FUSED_STEP_SCRIPT, *FUSED_STEP_ARGS, f"--out={out}")
    lane.close()


def test_sac_update_checks_an_encoder_against_another(tmp_path, monkeypatch):
    """--check_against compares features and gradients before timing: rows agrees with the
    canonical layers (the Pallas ones are compared in test_pallas_conv and test_sac); a layer
    that computes something else is reported far off."""
    payload = sac_update.main(["--seeds=1,2", "--updates=2", "--repeats=1", "--batch=4",
                               "--conv=rows", "--check_against=canonical", f"--out={tmp_path}"])
    assert payload["check"]["max"] < 1e-5 and payload["rows"][0]["updates_per_s"] > 0
    assert payload["rows"][1]["num_seeds"] == 2 and payload["per_seed_batches"]
    assert set(payload["check"]["relative_errors"]) == {
        "features", "Conv_0/kernel", "Conv_0/bias", "Conv_1/kernel", "Conv_1/bias",
        "vmapped_seed_0"}
    assert json.loads((tmp_path / "sac_update-rows-cpu.json").read_text())["check"]
    monkeypatch.setitem(networks.CONV_RELU_POOL, "rows",
                        lambda x, k, b, dtype: networks.conv_relu_pool(x, 1.1 * k, b, dtype))
    assert sac_update.check_encoder("rows", "canonical", "float32", 4)["max"] > 0.05


def test_sac_update_keeps_what_a_cut_run_measured(tmp_path, monkeypatch):
    """The results file is written after the check and after each seed count, so a part that
    its time limit stops keeps the check and the rates it finished."""
    monkeypatch.setattr(sac_update, "check_encoder",
                        lambda *args: {"against": "canonical", "relative_errors": {}, "max": 0.001})
    written = []

    def measure(num_seeds, *args):
        path = tmp_path / "sac_update-rows-cpu.json"
        written.append(json.loads(path.read_text()) if path.exists() else None)
        if num_seeds == 5:
            raise KeyboardInterrupt  # the time limit's signal, say
        return measured_row(num_seeds)

    monkeypatch.setattr(sac_update, "measure", measure)
    with pytest.raises(KeyboardInterrupt):
        sac_update.main(["--seeds=1,5", "--conv=rows", "--check_against=canonical",
                         f"--out={tmp_path}"])
    assert written[0]["check"]["max"] == 0.001 and written[0]["rows"] == []
    kept = json.loads((tmp_path / "sac_update-rows-cpu.json").read_text())
    assert [row["num_seeds"] for row in kept["rows"]] == [1] and kept["check"]
    assert not list(tmp_path.glob("*.tmp"))


def write_trace(trace_dir, run, events):
    """A profiler trace where `jax.profiler.trace` leaves it:
    <trace_dir>/plugins/profile/<run>/<host>.trace.json.gz."""
    folder = trace_dir / "plugins" / "profile" / run
    folder.mkdir(parents=True)
    with gzip.open(folder / "host.trace.json.gz", "wt") as f:
        json.dump({"displayTimeUnit": "ns", "traceEvents": events}, f)
    return folder / "host.trace.json.gz"


def test_sac_update_summarizes_the_device_kernels_of_the_newest_trace(tmp_path):
    """--trace's summary: only the device's complete ("X") events, per update, per stream
    (named by its thread_name, else its id) and per kernel name (cut to 80 characters), the
    busy share of the span from the first kernel's start to the last one's end; of the
    newest trace in the folder."""
    def meta(kind, pid, name, tid=None):
        return {"ph": "M", "name": kind, "pid": pid, **({"tid": tid} if tid else {}),
                "args": {"name": name}}

    def kernel(name, tid, ts, dur, pid=7):
        return {"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur}

    template = "void cutlass::Kernel<" + "x" * 59  # 80 characters: two instantiations merge
    events = [
        meta("process_name", 7, "/device:GPU:0"), meta("process_name", 3, "/host:CPU"),
        meta("thread_name", 7, "Stream #13(Compute)", 1),
        meta("thread_name", 7, "Stream #14(MemcpyD2D)", 2), meta("thread_name", 3, "python", 1),
        kernel(template + "A>", 1, 100, 10), kernel(template + "B>", 1, 120, 10),
        kernel("gemm", 1, 140, 40), kernel("copy", 2, 150, 24), kernel("memset", 5, 284, 16),
        kernel("PjitFunction(run)", 1, 0, 1000, pid=3),  # the host's: not a kernel
        {"ph": "C", "name": "memory", "pid": 7, "ts": 400, "args": {"bytes": 1}},
    ]
    newest = write_trace(tmp_path, "2026_12_07_20_00_00", events)
    older = write_trace(tmp_path, "2026_12_07_21_00_00", events[:3] + [kernel("old", 1, 0, 5)])
    os.utime(older, (newest.stat().st_mtime - 60,) * 2)  # later by name, earlier by time

    assert len(template) == 80
    assert sac_update.summarize_trace(str(tmp_path), updates=2) == {
        "device_events": 5,
        "events_per_update": 2.5,
        "busy_us_per_update": 50.0,  # 100 us of kernels
        "span_us_per_update": 100.0,  # from 100 us to 300 us
        "busy_share": 0.5,
        "threads": {
            "Stream #13(Compute)": {"events_per_update": 1.5, "busy_us_per_update": 30.0},
            "Stream #14(MemcpyD2D)": {"events_per_update": 0.5, "busy_us_per_update": 12.0},
            "5": {"events_per_update": 0.5, "busy_us_per_update": 8.0},
        },
        "top_kernels": [  # by time
            {"name": "gemm", "count_per_update": 0.5, "us_per_update": 20.0},
            {"name": "copy", "count_per_update": 0.5, "us_per_update": 12.0},
            {"name": template, "count_per_update": 1.0, "us_per_update": 10.0},
            {"name": "memset", "count_per_update": 0.5, "us_per_update": 8.0},
        ],
    }
    assert sac_update.summarize_trace(str(tmp_path), 2, device_prefix="/device:TPU") == {
        "device_events": 0}


def test_reference_loop_smoke(tmp_path):
    result = reference_loop.main(["--steps=3", "--warmup=1", "--batch_size=8",
                                  f"--out={tmp_path}", *TINY_HOLDC])
    assert result["env_steps_per_s"] > 0 and result["holdc"]["layers"] == 18
    assert set(result["parts_ms"]) == set(reference_loop.PARTS)
    assert all(ms > 0 for ms in result["parts_ms"].values())


def test_reference_world_follows_holdjax_pushing():
    """The C-engine world moves the hand as holdjax's task does and scores success alike."""
    world = reference_loop.OneWorld(np.random.default_rng(0))
    frame = world.reset()
    assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8
    start = world.data.mocap_pos[world.mocap].copy()
    world.step(np.array([1.0, 0.0]))
    np.testing.assert_allclose(world.data.mocap_pos[world.mocap][0], start[0] + 0.02)
    assert not world.success()
    world.data.qpos[world.puck:world.puck + 2] = np.asarray(reference_loop.pushing.GOAL)
    assert world.success()


def test_reference_world_renders_without_opengl():
    """Where OpenGL is missing the loop renders its one world with holdjax's MJX renderer:
    the same camera and orientation as mujoco.Renderer's frame, up to shading."""
    opengl = reference_loop.OneWorld(np.random.default_rng(0), "opengl")
    mjx = reference_loop.OneWorld(np.random.default_rng(0), "mjx")
    assert (opengl.renderer_name, mjx.renderer_name) == ("opengl", "mjx")
    frame, mjx_frame = opengl.reset(), mjx.reset()
    assert mjx_frame.shape == frame.shape and mjx_frame.dtype == np.uint8
    difference = np.abs(frame.astype(int) - mjx_frame.astype(int)).mean()
    assert difference < 15  # measured 7.6; flipped upside down it is 29


def test_choose_mujoco_gl_falls_back_to_disabled(monkeypatch):
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.setattr(headless_gl.ctypes.util, "find_library", lambda name: None)
    assert headless_gl.choose_mujoco_gl() == "disabled"
    monkeypatch.setenv("MUJOCO_GL", "osmesa")  # the user's choice stands
    assert headless_gl.choose_mujoco_gl() == "osmesa"


def test_run_all_ratios_and_failed_parts(tmp_path, monkeypatch):
    """run_all's own logic on canned parts: the ratios to the reference loop, and a failing
    part recorded with its error while the others still count."""
    rows = [{"reward": "holdc", "ratio": "1", "env_steps_per_s": 600.0},
            {"reward": "holdc", "ratio": "1", "env_steps_per_s": 650.0},
            {"reward": "holdc", "ratio": "0.0625", "env_steps_per_s": 6500.0}]
    monkeypatch.setattr(run_all.fused_step, "main", lambda argv: {"rows": rows})
    loop = {"env_steps_per_s": 50.0, "parts_ms": {"render": 10.0, "update": 5.0}}
    monkeypatch.setattr(run_all.reference_loop, "main", lambda argv: loop)

    def brax_fails(argv):
        raise RuntimeError("no brax here")

    monkeypatch.setattr(run_all.brax_sac, "main", brax_fails)
    summary = run_all.main([f"--out={tmp_path}"])
    assert summary["ratio_fused_to_reference_one_update"] == pytest.approx(13.0)
    assert summary["ratio_fused_to_reference_0.0625"] == pytest.approx(130.0)
    # 20 ms a step less its 10 ms render: 100 steps/s with rendering free.
    assert summary["reference_loop_render_free_env_steps_per_s"] == pytest.approx(100.0)
    assert summary["ratio_fused_to_render_free_reference_one_update"] == pytest.approx(6.5)
    assert summary["ratio_holdjax_to_brax_steps_per_s"] is None
    path = next(tmp_path.glob("run_all-*.json"))
    written = json.loads(path.read_text())
    assert "no brax here" in written["brax_sac"]["error"]
    skipped = run_all.main([f"--out={tmp_path / 'skipped'}", "--brax_steps=0"])  # not run
    assert skipped["ratio_holdjax_to_brax_steps_per_s"] is None
    assert "brax_sac" not in json.loads(next((tmp_path / "skipped").glob("run_all-*.json"))
                                        .read_text())

    # A file written before a figure existed gains it from its stored parts.
    del written["ratio_fused_to_render_free_reference_0.0625"]
    path.write_text(json.dumps(written))
    assert run_all.main([f"--resummarize={path}"]) == summary
    assert json.loads(path.read_text())["ratio_fused_to_render_free_reference_0.0625"] == \
        pytest.approx(65.0)


def test_sample_efficiency_rows(tmp_path, monkeypatch):
    """One train_run per (N, ratio) with the right update ratio; steps and seconds to the
    success level from the mean over seeds; the file is rewritten after each training."""
    calls = []

    def fake_run(argv):
        if calls:  # the file already holds the trainings before this one
            written = json.loads(next(tmp_path.glob("sample_efficiency-*.json")).read_text())
            assert len(written["rows"]) == len(calls)
        calls.append(argv)
        curve = [{"env_steps": 1000, "wall_s": 10.0, "eval_success_rate": [0.2, 0.2]},
                 {"env_steps": 2000, "wall_s": 20.0, "eval_success_rate": [0.5, 0.2]}]
        return {"env_steps_per_seed": 2000, "wall_s": 20.0, "curve": curve,
                "best_eval_success_per_seed": [0.5, 0.2],
                "final_eval_success_per_seed": [0.5, 0.2]}

    monkeypatch.setattr(sample_efficiency.train_run, "main", fake_run)
    result = sample_efficiency.main(["--nums=4,16", "--ratios=1,fused", "--level=0.3",
                                     f"--results={tmp_path}", "--observation=state"])
    per_step = [next(float(f.split("=")[1]) for f in argv
                     if f.startswith("--updates_per_step=")) for argv in calls]
    assert per_step == [1.0, 0.25, 1.0, 1 / 16]
    assert all("--reward=dense" in argv and "--observation=state" in argv for argv in calls)
    row = result["rows"][0]
    assert (row["env_steps_to_0.3"], row["wall_s_to_0.3"]) == (2000, 20.0)
    assert row["best_eval_success_mean"] == pytest.approx(0.35)


def test_random_released_checkpoint_loads_at_the_configured_size():
    """--random_reward_weights: a folder the trainer reads as the released HOLD-C checkpoint,
    holding weights of the size the config names."""
    from holdjax.reward import base, holdc, scenic_checkpoint

    config, _ = config_from_args(["--reward=holdc", "--holdc_layers=18", "--holdc_filters=2",
                                  "--holdc_crop_size=32"])
    source = base.released_checkpoint(train_run.random_released_checkpoint(config))
    model = holdc.HoldCConfig(num_layers=18, num_filters=2, crop_size=32)
    variables = scenic_checkpoint.load_holdc_variables(model, source)
    shapes = jax.tree.map(lambda leaf: leaf.shape, holdc.abstract_variables(model))
    assert jax.tree.map(lambda leaf: leaf.shape, variables) == shapes
    with pytest.raises(ValueError, match="needs reward holdc or holdr"):
        train_run.random_released_checkpoint(config_from_args(["--reward=dense"])[0])


def test_reward_comparison_at_equal_env_steps(tmp_path, monkeypatch):
    """Each config trained under the same flags; success means over seeds per eval, over all
    evals and over the last ones; the distance reward beats the baseline only on both."""
    curves = {"fig3a_pushing_sac": [[0.0, 0.0], [0.0, 0.1], [0.2, 0.0]],
              "fig3a_pushing_holdc": [[0.0, 0.2], [0.4, 0.2], [0.6, 0.8]],
              "fig5a_pushing_l2": [[0.4, 0.4], [0.0, 0.0], [0.0, 0.0]]}
    calls = []

    def fake_run(argv):
        calls.append(argv)
        config = next(f.split("=")[1] for f in argv if f.startswith("--config="))
        curve = [{"env_steps": 1000 * (i + 1), "wall_s": 1.0, "eval_success_rate": s}
                 for i, s in enumerate(curves[config])]
        return {"reward": config.split("_")[-1], "seeds": 2, "completed": True, "wall_s": 3.0,
                "curve": curve, "final_eval_success_per_seed": curve[-1]["eval_success_rate"],
                **({"first_epoch_s": 2.0, "steady_env_steps_per_s_per_seed": 500.0}
                   if len(curve) > 1 else {})}

    monkeypatch.setattr(reward_comparison.train_run, "main", fake_run)
    configs = "--configs=fig3a_pushing_sac,fig3a_pushing_holdc,fig5a_pushing_l2"
    result = reward_comparison.main([configs, "--last=2", "--seeds=2", f"--results={tmp_path}"])
    assert all("--seeds=2" in argv for argv in calls)
    sac, holdc, l2 = result["rows"]
    assert sac["mean_success_per_eval"] == pytest.approx([0.0, 0.05, 0.1])
    assert sac["eval_success_per_seed"] == [[0.0, 0.0, 0.2], [0.0, 0.1, 0.0]]
    assert sac["mean_success_all_evals"] == pytest.approx(0.05)
    assert holdc["mean_success_last_evals"] == pytest.approx(0.5)
    assert holdc["beats_baseline"] and "beats_baseline" not in sac
    assert sac["steady_env_steps_per_s_per_seed"] == 500.0 and sac["first_epoch_s"] == 2.0
    assert not l2["beats_baseline"]  # better over all evals (0.133), worse over the last two
    written = json.loads(next(tmp_path.glob("reward_comparison-*.json")).read_text())
    assert written["rows"][1]["beats_baseline"]

    # A run stopped early (a time limit) is compared over the evals both reached.
    curves["fig5a_pushing_l2"] = curves["fig5a_pushing_l2"][:2]
    sac, l2 = reward_comparison.main(["--configs=fig3a_pushing_sac,fig5a_pushing_l2",
                                      "--last=1", f"--results={tmp_path}"])["rows"]
    assert sac["evals_compared"] == l2["evals_compared"] == 2
    assert sac["env_steps"] == l2["env_steps"] == [1000, 2000]
    assert sac["eval_success_per_seed"] == [[0.0, 0.0], [0.0, 0.1]]
    assert sac["mean_success_all_evals"] == pytest.approx(0.025)
    assert sac["mean_success_last_evals"] == pytest.approx(0.05)
    assert not l2["beats_baseline"]  # ahead over both evals (0.2), behind at the last (0.0)
    # Other schedules (not a prefix of each other) do not compare at equal steps.
    rows = [{"config": c, "env_steps": steps, "mean_success_per_eval": [0.0, 0.0]}
            for c, steps in (("a", [1000, 2000]), ("b", [500, 1000]))]
    with pytest.raises(ValueError, match="different env steps"):
        reward_comparison.compare(rows, last=1)


def test_reward_comparison_pools_runs_made_on_other_seeds(tmp_path):
    """Rows of earlier results on disjoint seeds average per eval, weighted by their seeds;
    shared seeds, unequal env steps, a missing config and training flags are refused."""
    def result(name, seed_flag, rows):
        path = tmp_path / name
        path.write_text(json.dumps({"flags": ["--total_steps=2000", *seed_flag], "rows": [
            {"config": c, "reward": c.split("_")[-1], "seeds": n, "env_steps": [1000, 2000],
             "final_eval_success_per_seed": [curve[-1]] * n, "mean_success_per_eval": curve}
            for c, n, curve in rows]}))
        return str(path)

    first = result("a.json", ["--seeds=3"], [("fig3a_pushing_sac", 3, [0.0, 0.3]),
                                              ("fig3a_pushing_holdc", 3, [0.2, 0.1])])
    second = result("b.json", ["--seed=3", "--seeds=1"], [("fig3a_pushing_sac", 1, [0.4, 0.7]),
                                                           ("fig3a_pushing_holdc", 1, [0.6, 0.9])])
    got = reward_comparison.main([f"--pool={first},{second}", "--last=1",
                                  f"--results={tmp_path}", "--tag=pooled"])
    sac, holdc = got["rows"]
    assert sac["seed_list"] == holdc["seed_list"] == [0, 1, 2, 3]
    assert sac["mean_success_per_eval"] == pytest.approx([0.1, 0.4])
    assert holdc["mean_success_per_eval"] == pytest.approx([0.3, 0.3])
    assert holdc["mean_success_all_evals"] == pytest.approx(0.3)
    assert not holdc["beats_baseline"]  # ahead over all evals, behind at the last
    assert [s["file"] for s in holdc["sources"]] == ["a.json", "b.json"]
    assert got["flags"] == ["--total_steps=2000"]
    with pytest.raises(ValueError, match="share seeds"):
        reward_comparison.main([f"--pool={first},{first}", f"--results={tmp_path}"])
    # A file's row of one config only: the baseline from a, the HOLD-C row from b alone.
    got = reward_comparison.main([f"--pool={first}:fig3a_pushing_sac,{second}", "--last=1",
                                  f"--results={tmp_path}"])
    assert got["rows"][1]["mean_success_per_eval"] == pytest.approx([0.6, 0.9])
    assert got["rows"][0]["seed_list"] == [0, 1, 2, 3] and got["rows"][1]["seed_list"] == [3]
    shorter = json.loads((tmp_path / "b.json").read_text())
    for row in shorter["rows"]:
        row["env_steps"] = [500, 1000]
    (tmp_path / "c.json").write_text(json.dumps(shorter))
    with pytest.raises(ValueError, match="different env steps"):
        reward_comparison.main([f"--pool={first},{tmp_path / 'c.json'}",
                                f"--results={tmp_path}"])
    # Each config from its own file, one stopped an eval earlier: compared where both were.
    early = result("d.json", ["--seeds=3"], [("fig3a_pushing_holdc", 3, [0.5])])
    json_early = json.loads((tmp_path / "d.json").read_text())
    json_early["rows"][0]["env_steps"] = [1000]
    (tmp_path / "d.json").write_text(json.dumps(json_early))
    got = reward_comparison.main([f"--pool={first}:fig3a_pushing_sac,{early}", "--last=1",
                                  f"--results={tmp_path}"])
    assert [r["evals_compared"] for r in got["rows"]] == [1, 1]
    assert got["rows"][0]["mean_success_per_eval"] == pytest.approx([0.0])
    assert got["rows"][1]["beats_baseline"]
    with pytest.raises(ValueError, match="no row of fig5a_pushing_l2"):
        reward_comparison.main([f"--pool={first}", "--configs=fig5a_pushing_l2",
                                f"--results={tmp_path}"])
    with pytest.raises(SystemExit):
        reward_comparison.main([f"--pool={first}", "--seeds=3"])


def test_brax_sac_writes_well_formed_results(tmp_path, monkeypatch):
    """Both learners train and evaluate through the benchmark's own code (brax through the
    adapter and its wrappers) and the JSON holds every figure. The physics is a kinematic
    stand-in (`kinematic.py`): compiling MJX's pushing step for the ~9 programs of the two
    learners takes minutes on 2 cores, and the real physics runs in the benchmark itself."""
    import brax_sac
    from kinematic import use_kinematic_physics

    use_kinematic_physics(monkeypatch, poses=False)  # state observations: nothing rendered
    brax_sac.main(["--num_envs=4", "--total_steps=800", "--evals=2", "--learning_starts=100",
                   "--batch_size=32", "--eval_episodes=4", f"--out={tmp_path}"])
    written = json.loads((tmp_path / f"brax_sac-{common.device_name()}.json").read_text())
    assert (written["task"], written["reward"], written["observation"]) == (
        "pushing", "dense", "state")
    assert written["settings"]["total_steps"] == 800
    assert written["settings"]["updates_per_fused_step"] == 4
    for name in brax_sac.FRAMEWORKS:
        result = written[name]
        assert result["env_steps_per_s"] > 0 and result["train_s"] > 0
        assert result["env_steps_per_seed"] >= 800
        assert [len(curve) for curve in result["curves"]] == [2]
        (curve,) = result["curves"]  # one seed
        steps, seconds = [p["env_steps"] for p in curve], [p["train_s"] for p in curve]
        assert result["env_steps_per_seed"] == steps[-1] and result["train_s"] == seconds[-1]
        # the steady rate is the second epoch's; the first epoch's excess time is compilation
        assert result["env_steps_per_s"] == pytest.approx(
            (steps[1] - steps[0]) / (seconds[1] - seconds[0]))
        assert result["compile_s"] == pytest.approx(
            seconds[0] - steps[0] / result["env_steps_per_s"])
        assert result["final_eval_success"] == curve[-1]["eval_success"]
        # each evaluation's success rate is a share of its --eval_episodes=4 episodes
        assert all(4 * s == round(4 * s) for p in curve for s in p["eval_success"])
        hit = next((p for p in curve if p["eval_success"][0] >= 0.8), None)  # --target_success
        assert result["env_steps_to_target"] == [hit and hit["env_steps"]]
        assert result["wall_s_to_target"] == [hit and round(hit["train_s"], 2)]
    # holdjax: --evals=2 epochs of whole fused steps of --num_envs=4 worlds, 800 steps in all
    assert [p["env_steps"] for p in written["holdjax"]["curves"][0]] == [400, 800]
    assert written["ratio_holdjax_to_brax_steps_per_s"] == pytest.approx(
        written["holdjax"]["env_steps_per_s"] / written["brax"]["env_steps_per_s"])
    assert written["brax_complete"]
    # A time limit that kills brax after two of its epochs keeps holdjax's figures and brax's
    # so far: the file is rewritten after each brax epoch.
    def killed_after_two_epochs(config, seed, on_epoch):
        on_epoch(written["brax"]["curves"][0][:1])
        on_epoch(written["brax"]["curves"][0][:2])
        raise KeyboardInterrupt

    monkeypatch.setattr(brax_sac, "run_brax", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        brax_sac.main(["--num_envs=4", "--total_steps=800", "--evals=2", "--learning_starts=100",
                       "--batch_size=32", "--eval_episodes=4", f"--out={tmp_path}", "--tag=cut"])
    cut = json.loads((tmp_path / f"brax_sac-cut-{common.device_name()}.json").read_text())
    assert not cut["brax_complete"] and cut["holdjax"]["env_steps_per_s"] > 0
    assert cut["brax"]["curves"] == written["brax"]["curves"]
    assert "ratio_holdjax_to_brax_steps_per_s" in cut


# Last in the module: by now the background process has run it (see fused_step_run).
def test_fused_step_smoke(fused_step_run):
    """A HOLD-R row (random tiny ViViT in the trainer's checkpoint form) has its rate and
    every part of the step. (One trainer only: each costs about a minute of compilation on a
    CI machine.)"""
    out, future = fused_step_run
    result = json.loads(future.result().strip().splitlines()[-1])
    (row,) = result["rows"]
    assert row["reward"] == "holdr" and row["ratio"] == "1"
    assert result["holdr"]["size"] == "tiny" and result["holdr"]["hidden_size"] == 32
    assert row["updates_per_fused_step"] == 2  # the reference's one update per env step
    assert row["env_steps_per_s"] > 0 and row["compile_s"] >= 0
    assert all(row[f"{part}_ms"] > 0 for part in
               ("physics_and_render", "render", "reward", "updates", "reward_network"))
    assert row["reward_over_network"] == pytest.approx(
        row["reward_ms"] / row["reward_network_ms"])
    assert json.loads(next(out.glob("fused_step-*.json")).read_text())["rows"]


def test_env_throughput_physics_only_row_records_the_solver_limit(tmp_path):
    """Warp physics without rendering, the line-search limit overridden: a well-formed row
    that says what it ran and which of Warp's limits were hit."""
    summary = env_throughput.main(["--tasks=close_drawer", "--impls=warp", "--nums=1",
                                   "--steps=1", "--repeats=1", "--no_render",
                                   "--ls_iterations=10", f"--out={tmp_path}"])
    (row,) = summary["rows"]
    assert (row["rendered"], row["ls_iterations"], row["num_envs"]) == (False, 10, 1)
    assert row["env_steps_per_s"] > 0 and row["render_frames_per_s"] is None
    assert row["overflow_worlds"] == 0 and row["overflow_kinds"] == []
    written = json.load(open(tmp_path / "env_throughput-cpu.json"))
    assert written["best_env_steps_per_s"] == {"close_drawer": row["env_steps_per_s"]}


def test_task_success_runs_each_policy_through_the_envs_cli(tmp_path, monkeypatch):
    """Per task: the expert, the expert with action noise 0.3 and random actions, each one
    `python -m holdjax.envs --json` call (stubbed here: the CLI has its own tests), a row per
    call with its wall time, written to the results file."""
    calls = []

    def envs_cli(argv):
        calls.append(argv)
        flags = dict(a[2:].split("=", 1) for a in argv if "=" in a)
        return {"task": flags["task"], "policy": flags["policy"], "success_rate": 0.5}

    monkeypatch.setattr(task_success, "envs_cli", envs_cli)
    payload = task_success.main(["--tasks=pushing,drawer_open", "--episodes=3", "--impl=jax",
                                 f"--out={tmp_path}"])
    assert calls[:3] == [["--task=pushing", f"--policy={policy}", f"--noise={noise}",
                          "--episodes=3", "--impl=jax", "--json"]
                         for policy, noise in (("expert", 0.0), ("expert", 0.3),
                                               ("random", 0.0))]
    assert [(r["task"], r["policy"]) for r in payload["rows"]] == [
        (task, policy) for task in ("pushing", "drawer_open")
        for policy in ("expert", "expert", "random")]
    assert all(r["wall_s_with_compile"] >= 0 for r in payload["rows"])
    assert json.load(open(tmp_path / "task_success-cpu.json"))["rows"] == payload["rows"]


def test_timestep_stability_row(tmp_path):
    """A candidate timestep's row: substeps for the fixed control period, expert success,
    the blow-up and tunnelling indicators."""
    payload = timestep_stability.main(["--task=pushing", "--timesteps=0.01", "--num_envs=2",
                                       f"--out={tmp_path}", "--tag=n2"])
    (row,) = payload["rows"]
    assert (row["timestep"], row["substeps"], row["episodes"]) == (0.01, 10, 2)
    assert row["impl"] == "jax"  # auto: MJX's own physics on a CPU, MuJoCo Warp on a GPU
    # Stable at 0.01 s: the noisy expert (fixed keys) pushes the mug onto the goal in both
    # episodes, nothing blows up (the hand moves at most 0.02 m per 0.1 s control step) and
    # the mug stays on the table (its centre at its half-height, less contact penetration).
    assert row["expert_success_rate"] == 1.0
    assert row["max_abs_qvel"] < 1.0
    assert row["lowest_free_body_z"] == pytest.approx(pushing.PUCK_HALF_HEIGHT, abs=0.005)
    assert row["env_steps_per_s"] > 0
    assert json.load(open(tmp_path / "timestep-pushing-n2-cpu.json"))["rows"] == payload["rows"]


def test_reward_check_trains_and_scores_each_seed_then_l2(tmp_path, monkeypatch):
    """Per training seed: a model trained with the overridden settings and scored by
    reward.check (both stubbed: they have their own tests), then the L2 baseline once; the
    HOLD-C means are over the seeds."""
    import reward_check

    trained = []

    def train(config, model_dir):
        trained.append((config.seed, config.steps, config.layers))
        return {"render_s": 1.0, "train_s": 2.0, "final_loss": 0.1}

    def evaluate(reward, env, seed):
        score = {"holdc": 0.9 + 0.01 * len(trained), "l2": 0.3}[reward[1]]
        return {"spearman_time": score, "spearman_state": score / 2}

    monkeypatch.setattr(reward_check.reward_train, "task_env", lambda task: task)
    monkeypatch.setattr(reward_check.reward_train, "train", train)
    monkeypatch.setattr(reward_check.check, "reward_for", lambda task, model, *path: (task, model))
    monkeypatch.setattr(reward_check.check, "evaluate", evaluate)
    payload = reward_check.main(["--task=pushing", "--seeds=0,3", "--steps=7",
                                 f"--out={tmp_path}", "--tag=smoke"])
    default_layers = reward_check.reward_train.RewardTrainConfig().layers
    assert trained == [(0, 7, default_layers), (3, 7, default_layers)]
    assert [(r["model"], r.get("seed")) for r in payload["rows"]] == [
        ("holdc", 0), ("holdc", 3), ("l2", None)]
    assert payload["overrides"] == {"steps": 7}
    assert payload["holdc_mean_spearman_time"] == pytest.approx((0.91 + 0.92) / 2)
    written = json.load(open(tmp_path / "reward_check-pushing-smoke-cpu.json"))
    assert written["rows"] == payload["rows"]
