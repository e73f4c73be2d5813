"""Sequential SAC updates per second inside one jitted ``lax.scan``, as the trainer runs them.

    python benchmarks/sac_update.py                      # defaults for this device
    python benchmarks/sac_update.py --seeds=1,5 --updates=20 --repeats=2
    python benchmarks/sac_update.py --conv=lax           # the plain nn.Conv encoder, to compare
    XLA_FLAGS=... python benchmarks/sac_update.py --tag=cmdbuf --trace=/tmp/trace  # a variant

Reference networks (two [conv 8x5x5 SAME, ReLU, 2x2 max-pool] encoders, 256-256 MLPs), a replay
batch of ``--batch`` uint8 images of 48x48x3 with 2-D actions. For each seed count S one jitted
function runs ``--updates`` ``sac_update``s in a ``lax.scan`` (S > 1: the whole scan vmapped
over S learner states, keys and batches: each seed its own, as in training; before 2026-12-06
the seeds shared one batch). The first call, which includes
compilation, is reported separately; then the best of ``--repeats`` calls. Writes
``benchmarks/results/sac_update-<device>.json`` (``sac_update-<tag>-<device>.json`` with
``--tag``; the payload records ``XLA_FLAGS``) and prints a table. ``--unroll`` unrolls the scan
body that many times (fewer loop-condition round trips, fusion across updates). ``--trace=DIR``
profiles one more call of the one-seed scan and summarises its device kernels (count per
update, busy share of the wall time, the costliest kernels) into the payload's ``profile``.

The encoder's layers are `ConvReluPool`s; ``--conv`` picks their computation
(`holdjax.sac.networks.CONV_RELU_POOL`): ``canonical`` (custom-VJP convolutions, the default
everywhere), ``rows`` (each row tile one banded matrix product, written for GPU tensor cores),
``lax`` (``lax.conv_general_dilated`` and its autodiff, as ``nn.Conv``; on XLA:CPU that update
is ~30x slower inside the scan, so use few updates), ``pallas`` and ``pallas_banded`` (Pallas
kernels, `holdjax.sac.pallas_conv`; interpreted on the CPU). ``--check_against=CONV`` first
compares the encoder's features and gradients with CONV's on this device (payload's "check").
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import glob
import gzip
import json
import os
import sys
from unittest import mock

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import timed, write_results  # noqa: E402

from holdjax.sac import augment, networks, pallas_conv, replay  # noqa: E402
from holdjax.sac.update import SACConfig, init_sac, sac_update  # noqa: E402

IMAGE_SHAPE = (48, 48, 3)
ACTION_DIM = 2


def make_batch(key: jax.Array, batch_size: int) -> replay.Transition:
    k = jax.random.split(key, 4)
    images = jax.random.randint(k[0], (2, batch_size, *IMAGE_SHAPE), 0, 256).astype(jnp.uint8)
    return replay.Transition(
        obs=images[0],
        action=jax.random.uniform(k[1], (batch_size, ACTION_DIM), minval=-1, maxval=1),
        reward=jax.random.normal(k[2], (batch_size,)),
        next_obs=images[1],
        done=jnp.zeros((batch_size,)),
    )


def scan_updates(config: SACConfig, batch: replay.Transition, updates: int, unroll: int):
    """(state, key) -> (step, last critic loss) after ``updates`` sequential `sac_update`s."""

    def run_one(state, key):
        def body(state, key):
            state, metrics = sac_update(state, batch, key, config)
            return state, metrics["critic_loss"]

        keys = jax.random.split(key, updates)
        state, losses = jax.lax.scan(body, state, keys, unroll=unroll)
        return state.step, losses[-1]

    return run_one


def measure(num_seeds: int, updates: int, repeats: int, config: SACConfig, unroll: int,
            programs: dict | None = None) -> dict:
    """The update rate of ``num_seeds`` seeds; with one seed, ``programs["one_seed"]`` keeps
    its compiled scan (key -> result) for `profile`, which then compiles nothing again."""
    init = jax.jit(lambda key: init_sac(key, IMAGE_SHAPE, ACTION_DIM, config))

    def run_one(state, key, batch):
        return scan_updates(config, batch, updates, unroll)(state, key)

    if num_seeds == 1:
        state, keys = init(jax.random.key(0)), jax.random.key(2)
        batch = make_batch(jax.random.key(1), config.batch_size)
        run = jax.jit(run_one)
    else:
        state = jax.vmap(init)(jax.random.split(jax.random.key(0), num_seeds))
        keys = jax.random.split(jax.random.key(2), num_seeds)
        batch = jax.vmap(make_batch, (0, None))(jax.random.split(jax.random.key(1), num_seeds),
                                                 config.batch_size)
        run = jax.jit(jax.vmap(run_one))

    first, best = timed(lambda: run(state, keys, batch), repeats)
    if num_seeds == 1 and programs is not None:
        programs["one_seed"] = lambda key: run(state, key, batch)
    return {
        "num_seeds": num_seeds,
        "updates_per_scan": updates,
        "batch_size": config.batch_size,
        "ms_per_update": 1e3 * best / updates,
        "updates_per_s": updates / best,
        "seed_updates_per_s": num_seeds * updates / best,
        "compile_and_first_run_s": first,
        "unroll": unroll,
    }


def check_encoder(conv: str, reference: str, dtype: str, batch_size: int) -> dict:
    """How far ``conv``'s encoder features and gradients (of sum(sin(features)) with respect to
    every kernel and bias, at nonzero biases) are from ``reference``'s on this device, as the
    largest difference over the largest reference value, per leaf. Timings say nothing about
    whether a kernel computes the right thing; this does (rounding: ~1e-3 in float32 with
    TF32 products, ~1e-2 in bf16). ``conv`` reads randomly shifted uint8 images as the update
    gives them (`ShiftedImages`: a Pallas encoder reads them through the shifts), ``reference``
    their float conversion."""
    keys = jax.random.split(jax.random.key(1), 2)
    shifted = augment.ShiftedImages(
        jax.random.randint(keys[0], (batch_size, *IMAGE_SHAPE), 0, 256).astype(jnp.uint8),
        augment.random_shifts(keys[1], (batch_size,), 4), 4)
    params = networks.Encoder(conv=reference).init(jax.random.key(0), shifted.to_float())
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.linspace(-0.2, 0.1, x.size) if path[-1].key == "bias" else x, params)

    def grad(encoder, images):
        return jax.grad(lambda p: jnp.sum(jnp.sin(encoder.apply(p, images))))

    tested, compared = (networks.Encoder(conv=name, dtype=dtype) for name in (conv, reference))
    (features, grads), (ref_features, ref_grads) = (
        (jax.jit(encoder.apply)(params, images), jax.jit(grad(encoder, images))(params))
        for encoder, images in ((tested, shifted), (compared, shifted.to_float())))

    def relative(a, b):
        return float(jnp.abs(a - b).max() / jnp.abs(b).max())

    errors = {"features": relative(features, ref_features)}
    for path, g in jax.tree_util.tree_leaves_with_path(grads["params"]):
        key = "/".join(k.key for k in path)
        errors[key] = relative(g, ref_grads["params"][path[0].key][path[1].key])
    # Seeds are vmapped (the batching rule adds a grid axis to a Pallas kernel): seed 0 of two
    # must give the unbatched gradients.
    seeds = jax.tree.map(lambda x: jnp.stack([x, -x]), params)
    vmapped = jax.jit(jax.vmap(grad(tested, shifted)))
    errors["vmapped_seed_0"] = max(relative(a[0], b) for a, b in zip(
        jax.tree.leaves(vmapped(seeds)), jax.tree.leaves(grads), strict=True))
    return {"against": reference, "relative_errors": errors, "max": max(errors.values())}


def profile(trace_dir: str, updates: int, config: SACConfig, unroll: int,
            one_seed=None) -> dict:
    """Device kernels of one profiled one-seed scan: count per update, busy share, top 15.
    ``one_seed`` (key -> result) is the scan `measure` compiled and timed, if it ran one seed."""
    if one_seed is None:
        batch = make_batch(jax.random.key(1), config.batch_size)
        run = jax.jit(scan_updates(config, batch, updates, unroll))
        state = jax.jit(lambda key: init_sac(key, IMAGE_SHAPE, ACTION_DIM, config))(
            jax.random.key(0))
        jax.block_until_ready(run(state, jax.random.key(2)))
        one_seed = functools.partial(run, state)
    with jax.profiler.trace(trace_dir):
        jax.block_until_ready(one_seed(jax.random.key(3)))
    return summarize_trace(trace_dir, updates)


def summarize_trace(trace_dir: str, updates: int, device_prefix: str = "/device:") -> dict:
    """Kernel statistics from the newest ``*.trace.json.gz`` under ``trace_dir``."""
    paths = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz"))
    with gzip.open(max(paths, key=os.path.getmtime)) as f:
        events = json.load(f)["traceEvents"]
    device_pids = {
        e["pid"] for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
        and e["args"]["name"].startswith(device_prefix)
    }
    kernels = [e for e in events if e.get("ph") == "X" and e.get("pid") in device_pids]
    if not kernels:
        return {"device_events": 0}
    thread_names = {
        (e["pid"], e["tid"]): e["args"]["name"] for e in events
        if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("pid") in device_pids
    }
    by_thread = collections.defaultdict(lambda: [0, 0.0])
    for e in kernels:
        by_thread[thread_names.get((e["pid"], e["tid"]), str(e["tid"]))][0] += 1
        by_thread[thread_names.get((e["pid"], e["tid"]), str(e["tid"]))][1] += e["dur"]
    busy_us = sum(e["dur"] for e in kernels)
    span_us = max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)
    by_name = collections.defaultdict(lambda: [0, 0.0])
    for e in kernels:
        by_name[e["name"][:80]][0] += 1
        by_name[e["name"][:80]][1] += e["dur"]
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:15]
    return {
        "device_events": len(kernels),
        "events_per_update": len(kernels) / updates,
        "busy_us_per_update": busy_us / updates,
        "span_us_per_update": span_us / updates,
        "busy_share": busy_us / span_us,
        "threads": {
            name: {"events_per_update": n / updates, "busy_us_per_update": t / updates}
            for name, (n, t) in by_thread.items()
        },
        "top_kernels": [
            {"name": name, "count_per_update": n / updates, "us_per_update": t / updates}
            for name, (n, t) in top
        ],
    }


def format_row(row: dict) -> str:
    return (
        f"{row['num_seeds']:>5} {row['updates_per_scan']:>8} {row['batch_size']:>6} "
        f"{row['ms_per_update']:>10.1f} {row['updates_per_s']:>10.2f} "
        f"{row['seed_updates_per_s']:>12.2f} {row['compile_and_first_run_s']:>10.1f}"
    )


HEADER = (
    f"{'seeds':>5} {'updates':>8} {'batch':>6} {'ms/update':>10} {'updates/s':>10} "
    f"{'seed-upd/s':>12} {'first s':>10}"
)


def main(argv: list[str] | None = None) -> dict:
    gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="1,5", help="comma-separated seed counts")
    parser.add_argument("--updates", type=int, default=200 if gpu else 5, help="per scan")
    parser.add_argument("--repeats", type=int, default=3 if gpu else 2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--conv",
        choices=networks.ENCODER_CONVS,
        default="canonical",
        help="canonical: custom-VJP convolutions (the default); rows: banded matrix products "
        "(for GPUs); lax: nn.Conv's lax.conv_general_dilated; pallas, pallas_banded: Pallas "
        "(Triton) kernels per layer (GPUs; interpreted on the CPU)",
    )
    parser.add_argument("--encoder_dtype", default="float32", help="convolutions' compute type")
    parser.add_argument("--flat_optimizer", action="store_true", help="Adam on raveled params")
    parser.add_argument("--fused_encoders", type=int, choices=(0, 1), default=None,
                        help="critic and actor encoders as one (default: SACConfig's)")
    parser.add_argument("--batched_q_heads", type=int, choices=(0, 1), default=None,
                        help="the Q heads as one batched MLP (default: SACConfig's, by backend)")
    parser.add_argument("--lazy_augmentation", type=int, choices=(0, 1), default=None,
                        help="Pallas encoders read images through their random shifts "
                        "(default: SACConfig's)")
    parser.add_argument("--unroll", type=int, default=1, help="lax.scan unroll factor")
    parser.add_argument("--tag", default="", help="variant name for the results file")
    parser.add_argument("--trace", default="", help="profile one 1-seed scan into this folder")
    parser.add_argument("--check_against", default="", choices=("", *networks.ENCODER_CONVS),
                        help="first compare the encoder's features and gradients with this "
                        "computation's (payload's 'check')")
    parser.add_argument("--pallas_tiling", type=tiling_argument, default=None,
                        help="the Pallas kernels' block:forward_warps:backward_warps:regather:"
                        "backward_programs:saved_routes:patches (default: each computation's "
                        f"own, pallas {pallas_conv.TILING}, pallas_banded "
                        f"{pallas_conv.BANDED_TILING})")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    with pallas_tiling(args.pallas_tiling):
        return check_and_measure(args)


def tiling_argument(text: str) -> pallas_conv.Tiling:
    """A ``--pallas_tiling`` flag's value (argparse's error names the expected form)."""
    try:
        return pallas_conv.Tiling.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def pallas_tiling(tiling: pallas_conv.Tiling | None):
    """A context in which the networks' Pallas computations use ``tiling`` (they read them
    from `networks.CONV_RELU_POOL`); None: each its own default."""
    if tiling is None:
        return contextlib.nullcontext()
    return mock.patch.dict(networks.CONV_RELU_POOL, {
        name: functools.partial(networks.CONV_RELU_POOL[name], tiling=tiling)
        for name in networks.PALLAS_CONVS})


def check_and_measure(args: argparse.Namespace) -> dict:
    """The check (``--check_against``), then the rates of each seed count, then the profile;
    the results file is written after each."""
    conv_name = {"canonical": "ConvReluPool", "lax": "nn.Conv", "rows": "banded GEMM",
                 "pallas": "Pallas kernels", "pallas_banded": "Pallas kernels, banded windows",
                 }[args.conv]
    print(f"backend {jax.default_backend()}, encoder layers: {conv_name}", flush=True)
    check = None
    if args.check_against:
        check = check_encoder(args.conv, args.check_against, args.encoder_dtype, args.batch)
        print(f"check against {args.check_against}: {json.dumps(check['relative_errors'])}",
              flush=True)
    print(HEADER, flush=True)
    config = SACConfig(
        batch_size=args.batch,
        encoder_conv=args.conv,
        encoder_dtype=args.encoder_dtype,
        flat_optimizer=args.flat_optimizer,
        **({} if args.fused_encoders is None else {"fused_encoders": bool(args.fused_encoders)}),
        **({} if args.batched_q_heads is None else {"batched_q_heads": bool(args.batched_q_heads)}),
        **({} if args.lazy_augmentation is None
           else {"lazy_augmentation": bool(args.lazy_augmentation)}),
    )
    payload = {
        "image_shape": list(IMAGE_SHAPE),
        "action_dim": ACTION_DIM,
        "encoder_layers": conv_name,
        "encoder_conv": args.conv,
        "flat_optimizer": args.flat_optimizer,
        "fused_encoders": config.fused_encoders,
        "batched_q_heads": config.resolved_batched_q_heads,
        "lazy_augmentation": config.lazy_augmentation,
        "per_seed_batches": True,
        "encoder_dtype": args.encoder_dtype,
        "repeats": args.repeats,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        **({"pallas_tiling": str(args.pallas_tiling or pallas_conv.DEFAULT_TILINGS[args.conv])}
           if args.conv in networks.PALLAS_CONVS else {}),
        "rows": [],
        **({"check": check} if check else {}),
    }
    name = "sac_update" if args.conv == "canonical" else f"sac_update-{args.conv}"

    def save() -> str:  # after the check and each seed count: a part cut short keeps them
        return write_results(name, payload, out_dir=args.out, tag=args.tag)

    if check:
        save()
    programs = {}
    for num_seeds in map(int, args.seeds.split(",")):
        row = measure(num_seeds, args.updates, args.repeats, config, args.unroll, programs)
        payload["rows"].append(row)
        print(format_row(row), flush=True)
        save()
    if args.trace:
        try:
            payload["profile"] = profile(args.trace, args.updates, config, args.unroll,
                                         programs.get("one_seed"))
        except Exception as e:  # e.g. no CUPTI on this machine: keep the timings
            payload["profile"] = {"error": repr(e)[:300]}
        print(json.dumps(payload["profile"], indent=1), flush=True)
    print(f"wrote {save()}")
    return payload


if __name__ == "__main__":
    main()
