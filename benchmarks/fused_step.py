"""Environment steps/s of the whole fused training step, and where a step's time goes.

    python benchmarks/fused_step.py                              # defaults for this device
    python benchmarks/fused_step.py --rewards=sparse,holdc --nums=64,2048 --ratios=1,default

For each reward, world count N and update ratio, a one-seed pushing `Trainer` is built and its
jitted epoch (``--iterations`` fused steps: act, physics, render, reward, replay insert, SAC
updates) is timed: the first call (compilation included) separately, then the best of
``--repeats``. Ratio ``1`` is the reference's one update per environment step (N updates per
fused step); ``default`` is the config's own (one update per step on a GPU, one per fused step
on a CPU). Then the same step in parts, each jitted alone over the epoch's states: physics +
render (``env.step``), render alone, reward, and the fused step's updates; for HOLD-C and
HOLD-R also the network alone on the step's already-preprocessed frames, and
``reward_over_network``, the reward part's time over it (issue 4 asks HOLD-C's to stay
within 2: cropping, resizing and shaping must not dominate). Device memory is read where the
device reports it (GPUs; XLA:CPU does not): in use after a row's initial state (its state and
replay buffer) and the process's peak so far (JAX never resets it, so it is a row's own only
where it is above every earlier row's; rows run reward by reward in increasing N).

``holdc`` is HOLD-C with random weights at the configured size (default ResNet-50, 256 px),
``holdr`` HOLD-R with random weights (``--holdr_size``: the released ViViT-Large factorised
encoder at 256 px, or a tiny one for smoke tests); both are stored in the converted (orbax)
form the trainer restores: speed does not depend on the weights.
Writes ``benchmarks/results/fused_step[-<tag>]-<device>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import add_holdc_arguments, holdc_config, timed, write_results  # noqa: E402

from holdjax.config import TrainConfig  # noqa: E402
from holdjax.reward import holdc, holdr, scenic_checkpoint  # noqa: E402
from holdjax.train import get_trainer  # noqa: E402

HOLDR_SIZES = {
    "large": holdr.HoldRConfig(),  # hold-rewards' released ViViT-L
    "tiny": holdr.HoldRConfig(hidden_size=32, patch_size=(8, 8, 1), spatial_layers=1,
                              spatial_heads=2, spatial_mlp_dim=64, temporal_layers=1,
                              temporal_heads=2, temporal_mlp_dim=64, crop_size=32),
}


def random_checkpoint(variables: dict, directory: str) -> str:
    """A directory the trainer loads as a released checkpoint: a ``checkpoint_0``
    placeholder and its converted orbax copy ``checkpoint_0.orbax`` holding ``variables``."""
    os.makedirs(directory, exist_ok=True)
    placeholder = os.path.join(directory, "checkpoint_0")
    open(placeholder, "w").close()
    scenic_checkpoint.save_orbax(placeholder + ".orbax", variables)
    return directory


def memory_bytes(kind: str) -> int | None:
    """The device's ``bytes_in_use`` or ``peak_bytes_in_use`` (None where JAX keeps no count,
    as on a CPU). The peak is the process's so far, never reset: a row's own peak only where
    it is above every earlier row's."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get(kind)


def network_alone(reward: str, holdc_model: holdc.HoldCConfig, holdr_model: holdr.HoldRConfig,
                  variables: dict):
    """(prepare, run) for the reward network's own forward pass on a step's frames, or None:
    ``prepare`` crops, resizes and normalises (untimed), ``run`` is the network alone: what
    the reward's cost per step is compared with (HOLD-C's embedding; HOLD-R's one spatial
    pass per frame, the bulk of its per-step cost)."""
    if reward == "holdc":  # as the reward runs it: batch norms folded
        net, folded = (holdc.build_model(holdc_model, folded=True),
                       holdc.fold_batch_norm(holdc_model, variables))
        return (functools.partial(holdc.preprocess, holdc_model),
                jax.jit(lambda images: net.apply(folded, images.astype(holdc_model.dtype))))
    if reward == "holdr":  # as the reward runs it: its parameters cast once
        size, scoring = holdr_model.crop_size, holdr.scoring_variables(holdr_model, variables)
        return (lambda frames: holdr.preprocess(frames[:, None], size),
                jax.jit(lambda clip: holdr.HoldR(holdr_model).apply(
                    scoring, clip, method=holdr.HoldR.frame_tokens)))
    return None


def time_parts(trainer, state, replay, repeats: int, network=None) -> dict:
    """Milliseconds per fused step of its parts, each jitted alone on the run's states, and
    of the reward network alone (``network``: see :func:`network_alone`)."""
    env, reward_fn, n = trainer.env, trainer.reward_fn, trainer.num_envs
    actions = jax.random.uniform(jax.random.key(0), (n, env.action_dim), minval=-1, maxval=1)
    step = jax.jit(env.step)
    render = jax.jit(env.render)
    reward = jax.jit(reward_fn.__call__)
    updates = jax.jit(jax.vmap(trainer._updates))
    keys = jax.random.split(jax.random.key(1), trainer.num_seeds)
    parts = {
        "physics_and_render": lambda: step(state.env, actions).obs,
        "render": lambda: render(state.env.data),
        "reward": lambda: reward(state.env, state.reward)[0],
        "updates": lambda: updates(state.sac, replay, keys)[0].step,
    }
    if network is not None:
        prepare, run = network
        inputs = jax.block_until_ready(jax.jit(prepare)(state.env.obs))
        parts["reward_network"] = lambda: run(inputs)
    times = {f"{name}_ms": 1e3 * timed(fn, repeats)[1] for name, fn in parts.items()}
    if network is not None:
        times["reward_over_network"] = times["reward_ms"] / times["reward_network_ms"]
    return times


def measure(base: TrainConfig, reward: str, num_envs: int, ratio: str, iterations: int,
            repeats: int, network=None) -> dict:
    config = dataclasses.replace(
        base, reward=reward, num_envs=num_envs, epoch_length=iterations * num_envs,
        updates_per_step=0.0 if ratio == "default" else float(ratio),
        # Start updating at once, so that every timed fused step does its updates.
        initial_random_steps=0, learning_starts=1,
        replay_size=max(base.batch_size, 4 * iterations * num_envs))
    start = time.perf_counter()
    trainer = get_trainer(config, num_devices=1)  # N worlds on one device, whatever the host
    state, replay = trainer.init(config.seed)
    jax.block_until_ready(state)
    build_s = time.perf_counter() - start
    in_use = memory_bytes("bytes_in_use")  # this row's state and replay (earlier rows' freed)
    carry = {"state": state, "replay": replay}

    def epoch():
        carry["state"], carry["replay"], _ = trainer.train_epoch(carry["state"], carry["replay"])
        return carry["state"].env_steps

    first, best = timed(epoch, repeats)
    row = {
        "reward": reward,
        "num_envs": num_envs,
        "ratio": ratio,
        "updates_per_fused_step": config.updates_per_iteration,
        "updates_per_env_step": config.updates_per_iteration / num_envs,
        "env_steps_per_s": iterations * num_envs / best,
        "updates_per_s": iterations * config.updates_per_iteration / best,
        "fused_step_ms": 1e3 * best / iterations,
        "build_and_init_s": build_s,
        "compile_s": first - best,
        **time_parts(trainer, carry["state"], carry["replay"], repeats, network),
        "bytes_in_use_after_init": in_use,
        "peak_bytes_so_far": memory_bytes("peak_bytes_in_use"),
    }
    return row


def main(argv: list[str] | None = None) -> dict:
    gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rewards", default="sparse,l2,holdc,holdr")
    parser.add_argument("--nums", default="1,64,512,2048,8192" if gpu else "1,16")
    parser.add_argument("--ratios", default="1,default")
    parser.add_argument("--iterations", type=int, default=20 if gpu else 2,
                        help="fused steps per timed epoch")
    parser.add_argument("--repeats", type=int, default=3 if gpu else 1)
    parser.add_argument("--batch_size", type=int, default=256)
    add_holdc_arguments(parser)
    parser.add_argument("--holdr_size", choices=sorted(HOLDR_SIZES), default="large")
    parser.add_argument("--tag", default="", help="variant name for the results file")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)

    model = holdc_config(args)
    base = TrainConfig(task="pushing", batch_size=args.batch_size, eval_episodes=1,
                       holdc_layers=model.num_layers, holdc_filters=model.num_filters,
                       holdc_embedding_size=model.embedding_size,
                       holdc_crop_size=model.crop_size, reward_dtype=model.dtype)
    rewards = args.rewards.split(",")
    holdr_model = dataclasses.replace(HOLDR_SIZES[args.holdr_size],
                                      dtype=jnp.dtype(args.reward_dtype))
    draws = {"holdc": lambda: holdc.random_variables(model),
             "holdr": lambda: holdr.random_variables(holdr_model)}
    variables = {name: draw() for name, draw in draws.items() if name in rewards}
    checkpoints = {name: random_checkpoint(v, tempfile.mkdtemp(prefix=f"{name}_random_"))
                   for name, v in variables.items()}
    settings = {"task": "pushing", "iterations": args.iterations, "batch_size": args.batch_size,
                "holdc": {"layers": args.holdc_layers, "filters": args.holdc_filters,
                          "crop_size": args.holdc_crop_size, "dtype": args.reward_dtype},
                "holdr": {"size": args.holdr_size, "dtype": args.reward_dtype,
                          **{k: v for k, v in dataclasses.asdict(
                              HOLDR_SIZES[args.holdr_size]).items() if k != "dtype"}}}
    rows = []
    print(f"{'reward':>6} {'N':>5} {'ratio':>7} {'env steps/s':>12} {'updates/s':>10} "
          f"{'step ms':>8} {'phys+rend':>9} {'reward':>7} {'updates':>8} {'compile s':>9}",
          flush=True)
    for reward in rewards:
        config = dataclasses.replace(base, reward_checkpoint=checkpoints.get(reward, ""))
        network = network_alone(reward, model, holdr_model, variables.get(reward))
        for num_envs in map(int, args.nums.split(",")):
            for ratio in args.ratios.split(","):
                try:
                    row = measure(config, reward, num_envs, ratio, args.iterations,
                                  args.repeats, network)
                except Exception as e:  # e.g. out of memory at large N: record and go on
                    row = {"reward": reward, "num_envs": num_envs, "ratio": ratio,
                           "error": repr(e)[:300]}
                rows.append(row)
                print(format_row(row), flush=True)
                path = write_results("fused_step", {**settings, "rows": rows},  # so far
                                     out_dir=args.out, tag=args.tag)
    print("wrote", path)
    return {**settings, "rows": rows}


def format_row(row: dict) -> str:
    head = f"{row['reward']:>6} {row['num_envs']:>5} {row['ratio']:>7}"
    if "error" in row:
        return f"{head}  failed: {row['error']}"
    return (f"{head} {row['env_steps_per_s']:>12.0f} {row['updates_per_s']:>10.0f} "
            f"{row['fused_step_ms']:>8.1f} {row['physics_and_render_ms']:>9.1f} "
            f"{row['reward_ms']:>7.1f} {row['updates_ms']:>8.1f} {row['compile_s']:>9.1f}")


if __name__ == "__main__":
    jnp.zeros(())  # initialise the backend before argparse picks device defaults
    main()
