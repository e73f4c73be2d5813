"""The kernels and bytes of one SAC update as XLA compiles it for a GPU, with no GPU present.

    pip install 'jax[cuda12]==<this jax version>'    # XLA's CUDA compiler; runs without a GPU
    JAX_PLATFORMS=cpu python benchmarks/gpu_census.py --variants=canonical,rows --seeds=1,5
    python benchmarks/gpu_census.py --target=cpu      # the same census of XLA:CPU's compile

GPU time is the scarce thing here: sessions without a GPU can still see how XLA compiles the
update for one. ``--target=h100`` (or ``h200``) compiles `sac_update.py`'s scan of SAC updates
ahead of time for that card's description (`gpu_targets/<name>.txtpb`, a ``TargetConfig``
protobuf of XLA's `gpu_specs` kind) through `jax.experimental.topologies`, the deviceless
route of the CUDA plugin, and reads the optimized HLO of the scan's loop body: one iteration
is one update. Every instruction there that is not bookkeeping (parameters, tuples, bitcasts,
constants) is one kernel launch: a fusion, a cuDNN or cuBLAS custom call, a copy. For each
kernel it adds the bytes of its operands and results (a fused operand read only through
slices counts the slices' bytes), so ``mb_per_update`` is the HBM traffic if nothing stays
in L2. ``floor_us`` = bytes / the card's bandwidth + kernels x ``--kernel_floor_us`` (the
H100 profile in NOTES.md: 2.6 us on average for the kernels outside its 15 costliest) is a
lower bound on an update's time that ignores FLOPs and slow kernels; the timed figures come
from `sac_update.py` on the GPU. ``--sampled`` compiles the trainer's loop of updates instead
(`sampled_updates`: each batch gathered from a replay buffer; a gather counts the rows it
reads, not its whole operand). ``--hlo_dir`` keeps the HLO to read. Conv algorithms are not
autotuned without a device, and custom calls hide their internal kernels (cuDNN's layout
conversions), so GPU profiles count a few more kernels than this census.

Writes ``benchmarks/results/gpu_census-<target>[-<tag>]-<this machine>.json``, one row per
variant and seed count (this machine is the one that compiled: ``cpu`` for a deviceless
compile).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import math
import os
import re
import sys
import time
from contextlib import nullcontext

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sac_update  # noqa: E402
from common import write_census  # noqa: E402

from holdjax.sac import pallas_conv  # noqa: E402
from holdjax.sac.replay import init_replay  # noqa: E402
from holdjax.sac.update import SACConfig, init_sac, sampled_updates  # noqa: E402

TARGETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_targets")
UPDATES_PER_SCAN = 4
# `--sampled`'s replay buffer: figure 3a's 400k transitions from 256 worlds' 100-step episodes
SAMPLED_CAPACITY, SAMPLED_WORLDS, SAMPLED_EPISODE_LENGTH = 400_000, 256, 100
# Instructions that launch nothing.
BOOKKEEPING = {
    "parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
    "partition-id", "replica-id", "opt-barrier", "add-dependency", "call",
}
ELEMENT_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8,
}
ARRAY = re.compile(r"\b(" + "|".join(ELEMENT_BYTES) + r")\[([\d,]*)\]")
COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$")
INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%?([\w.\-]+) = (.+?) ([\w\-]+)\((.*?)\)(.*)$")

# The process compiles on the CPU backend, so each setting that defaults by backend is set
# here as a GPU's default would set it.
GPU_DEFAULTS = {"batched_q_heads": True}
VARIANTS = {
    "canonical": SACConfig(**GPU_DEFAULTS),
    "canonical_bf16": SACConfig(encoder_dtype="bfloat16", **GPU_DEFAULTS),
    "lax": SACConfig(encoder_conv="lax", **GPU_DEFAULTS),
    "rows": SACConfig(encoder_conv="rows", **GPU_DEFAULTS),
    "rows_bf16": SACConfig(encoder_conv="rows", encoder_dtype="bfloat16", **GPU_DEFAULTS),
    "rows_fused_bf16": SACConfig(encoder_conv="rows", encoder_dtype="bfloat16",
                                 fused_encoders=True, **GPU_DEFAULTS),
    "pallas": SACConfig(encoder_conv="pallas", **GPU_DEFAULTS),
    "pallas_bf16": SACConfig(encoder_conv="pallas", encoder_dtype="bfloat16", **GPU_DEFAULTS),
    "pallas_banded_bf16": SACConfig(encoder_conv="pallas_banded", encoder_dtype="bfloat16",
                                    **GPU_DEFAULTS),
    "pallas_fused_bf16": SACConfig(encoder_conv="pallas", encoder_dtype="bfloat16",
                                   fused_encoders=True, **GPU_DEFAULTS),
    # the images shifted and converted by XLA before the first layer, not read through shifts
    "pallas_fused_eager_bf16": SACConfig(encoder_conv="pallas", encoder_dtype="bfloat16",
                                         fused_encoders=True, lazy_augmentation=False,
                                         **GPU_DEFAULTS),
}


def shape_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string, e.g. ``(f32[2,3]{1,0}, u8[0]{0})`` -> 24."""
    return sum(
        ELEMENT_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
        for dtype, dims in ARRAY.findall(shape)
    )


def parse_hlo(text: str) -> dict[str, list[dict]]:
    """{computation name: its instructions as dicts of name, shape, opcode, operands, attrs}."""
    computations, current = {}, None
    for line in text.splitlines():
        header = COMPUTATION.match(line)
        if header:
            current = computations.setdefault(header.group(1), [])
            continue
        instruction = INSTRUCTION.match(line)
        if instruction and current is not None:
            name, shape, opcode, operands, attrs = instruction.groups()
            current.append({
                "name": name, "shape": shape, "opcode": opcode, "attrs": attrs,
                "operands": [o.strip().split(" ")[-1].lstrip("%")
                             for o in operands.split(",") if o.strip()],
            })
    return computations


def _operand_bytes(fused: list[dict], index: int, full: int) -> int:
    """Bytes a fusion reads of its ``index``-th operand: the slices' (or gathered rows') when
    it only slices (or gathers from) it, as a replay buffer's frames are sampled."""
    param = next((i for i in fused if i["opcode"] == "parameter"
                  and i["operands"] == [str(index)]), None)
    if param is None:
        return full
    users = [i for i in fused if param["name"] in i["operands"]]
    if users and all(i["opcode"] in ("slice", "dynamic-slice")
                     or (i["opcode"] == "gather" and i["operands"][0] == param["name"])
                     for i in users):
        return sum(shape_bytes(i["shape"]) for i in users)
    return full


def _kernel_kind(instruction: dict) -> str:
    if instruction["opcode"] == "custom-call":
        target = re.search(r'custom_call_target="([^"]+)"', instruction["attrs"])
        return target.group(1) if target else "custom-call"
    if instruction["opcode"] == "fusion":
        if "gemm_fusion" in instruction["name"] or "__triton_gemm" in instruction["attrs"]:
            return "gemm fusion"
        kind = re.search(r"kind=(\w+)", instruction["attrs"])
        return f"fusion {kind.group(1)}" if kind else "fusion"
    return instruction["opcode"]


def loop_body_kernels(hlo_text: str) -> list[dict]:
    """The kernels of the body of the entry computation's largest while loop (the scan of
    updates; a CPU compile of the sampled loop also has small loops drawing the replay's
    random indices before it) in optimized HLO: name, kind, bytes moved."""
    computations = parse_hlo(hlo_text)
    entry = re.search(r"^ENTRY %?([\w.\-]+)", hlo_text, re.MULTILINE)
    loops = [re.search(r"body=%?([\w.\-]+)", i["attrs"]).group(1)
             for i in computations.get(entry.group(1) if entry else "", [])
             if i["opcode"] == "while"]
    if not loops:
        raise ValueError("no while loop in this HLO's entry: compile a lax.scan of the update")
    body = max((computations[loop] for loop in loops), key=len)
    shapes = {i["name"]: i["shape"] for i in body}
    kernels = []
    for instruction in body:
        if instruction["opcode"] in BOOKKEEPING:
            continue
        calls = re.search(r"calls=%?([\w.\-]+)", instruction["attrs"])
        fused = computations.get(calls.group(1), []) if calls else []
        read = sum(
            _operand_bytes(fused, k, shape_bytes(shapes.get(name, "")))
            for k, name in enumerate(instruction["operands"]))
        kernels.append({"name": instruction["name"], "kind": _kernel_kind(instruction),
                        "bytes": read + shape_bytes(instruction["shape"])})
    return kernels


def summarize(kernels: list[dict], bandwidth: float, kernel_floor_us: float) -> dict:
    """Kernel count and bytes by kind, and the bandwidth-plus-launch floor of one update."""
    by_kind = collections.defaultdict(lambda: {"kernels": 0, "mb": 0.0})
    for k in kernels:
        by_kind[k["kind"]]["kernels"] += 1
        by_kind[k["kind"]]["mb"] += k["bytes"] / 1e6
    total = sum(k["bytes"] for k in kernels)
    return {
        "kernels_per_update": len(kernels),
        "mb_per_update": total / 1e6,
        "floor_us": 1e6 * total / bandwidth + kernel_floor_us * len(kernels),
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["mb"])),
        "largest": [{"name": k["name"], "kind": k["kind"], "mb": k["bytes"] / 1e6}
                    for k in sorted(kernels, key=lambda k: -k["bytes"])[:8]],
    }


def target_device(target: str) -> tuple[jax.Device, float]:
    """A compile-only device for ``target`` (a `gpu_targets` name, or ``cpu``) and its memory
    bandwidth in bytes/s (the CPU's is nominal: 20 GB/s)."""
    if target == "cpu":
        return jax.devices("cpu")[0], 20e9
    path = os.path.join(TARGETS_DIR, f"{target}.txtpb")
    if not os.path.exists(path):
        known = sorted(f.removesuffix(".txtpb") for f in os.listdir(TARGETS_DIR))
        raise SystemExit(f"unknown --target={target}; known: cpu, {', '.join(known)}")
    config = open(path).read()
    from jax.experimental import topologies

    try:
        topology = topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                                target_config=config)
    except (NotImplementedError, RuntimeError) as e:
        raise SystemExit(
            f"compiling for {target} needs XLA's CUDA compiler (no GPU needed): "
            f"pip install 'jax[cuda12]=={jax.__version__}', then run with JAX_PLATFORMS=cpu "
            f"({e})") from e
    bandwidth = float(re.search(r"memory_bandwidth: (\d+)", config).group(1))
    return topology.devices[0], bandwidth


def compile_updates(config: SACConfig, num_seeds: int, device: jax.Device,
                    sampled: bool = False) -> tuple[str, float]:
    """Optimized HLO text of `sac_update.scan_updates` for ``device``, and the compile time;
    ``sampled``: of `sampled_updates`, each update's batch drawn from a replay buffer as the
    trainer does (figure 3a's: 400k transitions, `SAMPLED_WORLDS` worlds)."""
    sharding = jax.sharding.SingleDeviceSharding(device)

    def abstract(tree, leading=()):
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct((*leading, *x.shape), x.dtype, sharding=sharding), tree)

    if sampled:
        def run(state, key, replay):
            state, metrics = sampled_updates(state, replay, key, config, UPDATES_PER_SCAN)
            return state.step, metrics["critic_loss"][-1]

        data = jax.eval_shape(functools.partial(
            init_replay, SAMPLED_CAPACITY, sac_update.IMAGE_SHAPE, sac_update.ACTION_DIM,
            SAMPLED_WORLDS, SAMPLED_EPISODE_LENGTH))
    else:
        def run(state, key, batch):
            return sac_update.scan_updates(config, batch, UPDATES_PER_SCAN, 1)(state, key)

        data = jax.eval_shape(functools.partial(sac_update.make_batch, jax.random.key(1),
                                                config.batch_size))
    state = jax.eval_shape(functools.partial(init_sac, jax.random.key(0), sac_update.IMAGE_SHAPE,
                                             sac_update.ACTION_DIM, config))
    key = jax.eval_shape(lambda: jax.random.key(2))
    seeds = () if num_seeds == 1 else (num_seeds,)
    # a batch (or replay buffer) per seed
    fn = jax.jit(run) if num_seeds == 1 else jax.jit(jax.vmap(run))
    start = time.perf_counter()
    with compiling_for(device):
        compiled = fn.lower(abstract(state, seeds), abstract(key, seeds),
                            abstract(data, seeds)).compile()
    return compiled.as_text(), time.perf_counter() - start


def compiling_for(device: jax.Device):
    """A context in which lowering targets ``device``: Pallas's Triton lowering asks the
    current (abstract) mesh for the GPU it compiles for (jax >= 0.11), and with no GPU
    attached that is the compile-only device (the CPU needs none)."""
    if device.platform == "cpu":
        return nullcontext()
    return jax.sharding.use_abstract_mesh(
        jax.sharding.Mesh(np.array([device]), ("device",)).abstract_mesh)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="h100", help="cpu, or a gpu_targets/ name")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="1,5", help="comma-separated seed counts")
    parser.add_argument("--kernel_floor_us", type=float, default=2.0)
    parser.add_argument("--hlo_dir", default="", help="also write each optimized HLO here")
    parser.add_argument("--pallas_tiling", type=sac_update.tiling_argument,
                        default=None, help="the pallas variants' tiling (default: each "
                        "computation's own; block:"
                        "forward_warps:backward_warps:regather:backward_programs:saved_routes:patches)")
    parser.add_argument("--sampled", action="store_true",
                        help="each update samples its batch from a replay buffer, as the "
                        "trainer does (default: one given batch, as sac_update.py times)")
    parser.add_argument("--tag", default="", help="names a variant of the code in the file name")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    # Settings that change the counts name the file too, so that no run overwrites another's.
    settings = (["sampled"] if args.sampled else []) + (
        ["tiling-" + str(args.pallas_tiling).replace(":", "-")] if args.pallas_tiling else [])
    args.tag = "-".join(filter(None, [args.tag, *settings]))
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown --variants {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")

    device, bandwidth = target_device(args.target)
    print(f"{'variant':>23} {'seeds':>5} {'kernels':>8} {'MB':>8} {'floor us':>9} {'compile s':>9}")
    rows = []
    for variant in args.variants.split(","):
        for num_seeds in map(int, args.seeds.split(",")):
            config = VARIANTS[variant]
            if args.target == "cpu":  # the CPU's own defaults
                config = dataclasses.replace(config, **dict.fromkeys(GPU_DEFAULTS))
            with sac_update.pallas_tiling(args.pallas_tiling):
                text, compile_s = compile_updates(config, num_seeds, device, args.sampled)
            if args.hlo_dir:
                os.makedirs(args.hlo_dir, exist_ok=True)
                with open(os.path.join(args.hlo_dir, f"{variant}-{num_seeds}.hlo"), "w") as f:
                    f.write(text)
            row = {"variant": variant, "num_seeds": num_seeds, "compile_s": compile_s,
                   **summarize(loop_body_kernels(text), bandwidth, args.kernel_floor_us)}
            rows.append(row)
            print(f"{variant:>23} {num_seeds:>5} {row['kernels_per_update']:>8} "
                  f"{row['mb_per_update']:>8.0f} {row['floor_us']:>9.0f} {compile_s:>9.1f}",
                  flush=True)
    payload = {"bandwidth_bytes_per_s": bandwidth, "kernel_floor_us": args.kernel_floor_us,
               "batch_size": SACConfig().batch_size, "image_shape": list(sac_update.IMAGE_SHAPE),
               "xla_flags": os.environ.get("XLA_FLAGS", ""),
               "per_seed_batches": True,  # before 2026-12-06 the seeds shared one batch
               "sampled": args.sampled,
               **{f"{conv}_tiling": str(args.pallas_tiling or tiling)
                  for conv, tiling in pallas_conv.DEFAULT_TILINGS.items()},
               "rows": rows}
    return write_census("gpu_census", args, device.device_kind, payload)


if __name__ == "__main__":
    main()
