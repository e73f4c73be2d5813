"""Sequential SAC updates per second inside one jitted ``lax.scan``, as the trainer runs them.

    python benchmarks/sac_update.py                      # defaults for this device
    python benchmarks/sac_update.py --seeds=1,5 --updates=20 --repeats=2
    python benchmarks/sac_update.py --conv=lax           # the plain nn.Conv encoder, to compare

Reference networks (two [conv 8x5x5 SAME, ReLU, 2x2 max-pool] encoders, 256-256 MLPs), a replay
batch of ``--batch`` uint8 images of 48x48x3 with 2-D actions. For each seed count S one jitted
function runs ``--updates`` ``sac_update``s in a ``lax.scan`` (S > 1: the whole scan vmapped
over S learner states, one shared batch, per-seed keys). The first call, which includes
compilation, is reported separately; then the best of ``--repeats`` calls. Writes
``benchmarks/results/sac_update-<device>.json`` and prints a table.

The encoder's layers are `ConvReluPool` (``--conv=canonical``, the default everywhere);
``--conv=lax`` makes the encoder use ``nn.Conv`` (``lax.conv_general_dilated`` and its autodiff)
on every backend, as it did before `holdjax.sac.networks.ConvReluPool`; on XLA:CPU that update
is ~30x slower inside the scan, so use few updates.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import timed, write_results  # noqa: E402

from holdjax.sac import networks, replay  # noqa: E402
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


def measure(num_seeds: int, updates: int, batch_size: int, repeats: int, conv: str) -> dict:
    config = SACConfig(batch_size=batch_size, encoder_conv=conv)
    batch = make_batch(jax.random.key(1), batch_size)
    init = jax.jit(lambda key: init_sac(key, IMAGE_SHAPE, ACTION_DIM, config))

    def run_one(state, key):
        def body(state, key):
            state, metrics = sac_update(state, batch, key, config)
            return state, metrics["critic_loss"]

        state, losses = jax.lax.scan(body, state, jax.random.split(key, updates))
        return state.step, losses[-1]

    if num_seeds == 1:
        state, keys = init(jax.random.key(0)), jax.random.key(2)
        run = jax.jit(run_one)
    else:
        state = jax.vmap(init)(jax.random.split(jax.random.key(0), num_seeds))
        keys = jax.random.split(jax.random.key(2), num_seeds)
        run = jax.jit(jax.vmap(run_one))

    first, best = timed(lambda: run(state, keys), repeats)
    return {
        "num_seeds": num_seeds,
        "updates_per_scan": updates,
        "batch_size": batch_size,
        "ms_per_update": 1e3 * best / updates,
        "updates_per_s": updates / best,
        "seed_updates_per_s": num_seeds * updates / best,
        "compile_and_first_run_s": first,
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
        help="canonical: ConvReluPool (custom-VJP convolutions, the default); lax: nn.Conv",
    )
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)

    conv_name = {"canonical": "ConvReluPool", "lax": "nn.Conv"}[args.conv]
    print(f"backend {jax.default_backend()}, encoder layers: {conv_name}", flush=True)
    print(HEADER, flush=True)
    rows = []
    for num_seeds in map(int, args.seeds.split(",")):
        row = measure(num_seeds, args.updates, args.batch, args.repeats, args.conv)
        rows.append(row)
        print(format_row(row), flush=True)

    payload = {
        "image_shape": list(IMAGE_SHAPE),
        "action_dim": ACTION_DIM,
        "encoder_layers": conv_name,
        "repeats": args.repeats,
        "rows": rows,
    }
    name = "sac_update" if args.conv == "canonical" else f"sac_update-{args.conv}"
    kwargs = {} if args.out is None else {"out_dir": args.out}
    path = write_results(name, payload, **kwargs)
    print(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
