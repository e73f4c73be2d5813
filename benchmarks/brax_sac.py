"""brax's own SAC against holdjax's trainer on the same task, state observations, dense reward.

    python benchmarks/brax_sac.py                                  # N=16, 20k env steps
    python benchmarks/brax_sac.py --num_envs=256 --total_steps=400000 --updates_per_step=0.25

Both learners train on holdjax's task physics (the same MJX functions, no rendering) from the
task's low-dimensional state with its dense reward, with equal settings: N worlds, network
sizes (holdjax's SACConfig.hidden_sizes, 256x256), batch, learning rate, discount, tau,
gradient updates per environment step (``round(updates_per_step * N)`` per step of all N
worlds), transitions collected before the first update, replay capacity (all steps) and
total environment steps. The run is cut into ``--evals`` equal epochs, each followed by
``--eval_episodes`` deterministic episodes per seed. Reported per learner:

- ``env_steps_per_s``: environment steps (all seeds) per second of training after the first
  epoch (evaluation excluded); ``compile_s``: the first epoch's time beyond that rate
  (compilation, plus brax's replay prefill call);
- ``env_steps_to_target`` / ``wall_s_to_target`` per seed: at the first evaluation whose
  success rate reaches ``--target_success`` (null if none does), in training time
  (compilation included, evaluation excluded);
- ``ratio_holdjax_to_brax_steps_per_s``.

holdjax trains ``--seeds`` seeds in one program; brax's ``sac.train`` takes one seed per
call, so its seeds run one after another (each call compiles again).

Why an adapter (:class:`BraxTaskEnv`): brax's ``sac.train`` drives a ``brax.envs.Env`` whose
``reset(rng)``/``step(state, action)`` act on one world, and adds the batch, time limit and
auto-reset itself (``VmapWrapper``, ``EpisodeWrapper``, ``AutoResetWrapper``).
``holdjax.envs.ManipulationEnv`` is a batch by design (one render call for all worlds, all
worlds reset together; see its module docstring), so the adapter exposes the per-world
pieces the batched env vmaps itself (``Task.init_world``, the world builder and the
substepped control step, ``Task.observe``, ``Task.evaluate``): brax's vmap then runs the
same physics that holdjax's does. Brax's own choices are kept, and they differ from
holdjax's in ways that change learning, not the work per step: auto-reset returns each world
to its *first* start state (holdjax draws a new one per episode); time-limit transitions are
dropped from the critic loss (holdjax bootstraps through them); target entropy -|A|/2
(holdjax: -|A|); Lecun-uniform initialisation (holdjax: Glorot); the temperature's Adam
always uses 3e-4; the replay prefill acts with the initial policy (so holdjax runs with
``initial_random_steps=0`` here).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from brax import envs as brax_envs
from brax.training.agents.sac import networks as brax_sac_networks
from brax.training.agents.sac import train as brax_sac

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import write_results  # noqa: E402

from holdjax import envs  # noqa: E402
from holdjax.config import TrainConfig  # noqa: E402
from holdjax.envs.base import ManipulationEnv, resolve_impl, sanitize_action  # noqa: E402
from holdjax.train import get_trainer  # noqa: E402

FRAMEWORKS = ("holdjax", "brax")


class BraxTaskEnv(brax_envs.Env):
    """One world of a holdjax task behind brax's ``Env`` interface (see the module docstring).

    ``num_worlds`` is the batch brax will vmap this over: MuJoCo Warp sizes its contact
    buffer for all worlds together, as holdjax's batched reset does. The ``first_success``
    metric is 1 on the step an episode first succeeds, so brax's evaluator (which sums
    metrics over one episode from reset, then averages over episodes) reports the fraction
    of episodes that ever succeed, holdjax's ``eval_success_rate``.
    """

    def __init__(self, env: ManipulationEnv, num_worlds: int):
        self._env = env
        self._num_worlds = num_worlds

    def reset(self, rng: jax.Array) -> brax_envs.State:
        data = self._env._world_at(*self._env.task.init_world(rng), self._num_worlds)
        obs = self._env.task.observe(data)
        zero = jnp.zeros((), jnp.float32)
        return brax_envs.State(pipeline_state=data, obs=obs, reward=zero, done=zero,
                               metrics={"first_success": zero},
                               info={"succeeded": jnp.zeros((), bool)})

    def step(self, state: brax_envs.State, action: jax.Array) -> brax_envs.State:
        """One control period; ``done`` stays 0 (fixed-length episodes: brax's
        ``EpisodeWrapper`` ends them). Updates ``metrics``/``info`` in place, as brax envs
        do (its wrappers keep their own entries in the same dicts)."""
        data = self._env._step_world(state.pipeline_state, sanitize_action(action))
        obs = self._env.task.observe(data)
        metrics = self._env.task.evaluate(obs)
        succeeded = state.info["succeeded"]
        state.metrics["first_success"] = (metrics["success"] & ~succeeded).astype(jnp.float32)
        state.info["succeeded"] = succeeded | metrics["success"]
        return state.replace(pipeline_state=data, obs=obs,
                             reward=metrics["dense_reward"].astype(jnp.float32))

    @property
    def observation_size(self) -> int:
        return self._env.task.state_dim

    @property
    def action_size(self) -> int:
        return self._env.task.action_dim

    @property
    def backend(self) -> str:
        return "mjx"


def device_put_replicated(tree, devices):
    """``jax.device_put_replicated``, removed in jax 0.10 but still called by brax 0.14's
    ``sac.train``: JAX's documented drop-in (one copy per device on a new sharded axis)."""
    mesh = jax.sharding.Mesh(np.array(devices), ("i",))  # brax's pmap axis name
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("i"))
    return jax.device_put(jax.tree.map(lambda x: jnp.stack([x] * len(devices)), tree), sharding)


def holdjax_config(args) -> TrainConfig:
    """holdjax's run with the benchmark's settings: ``--evals`` epochs of whole fused steps."""
    steps_per_epoch = -(-args.total_steps // (args.evals * args.num_envs)) * args.num_envs
    return TrainConfig(
        task=args.task, reward="dense", observation="state", num_envs=args.num_envs,
        seeds=args.seeds, seed=args.seed, num_epochs=args.evals, epoch_length=steps_per_epoch,
        updates_per_step=args.updates_per_step, initial_random_steps=0,
        learning_starts=args.learning_starts, replay_size=args.evals * steps_per_epoch,
        eval_episodes=args.eval_episodes, learning_rate=args.learning_rate,
        discount=args.discount, tau=args.tau, batch_size=args.batch_size, impl=args.impl,
    ).validate()


def run_holdjax(config: TrainConfig) -> list[dict]:
    """Curve of (env steps per seed, cumulative training seconds, eval success per seed)."""
    trainer = get_trainer(config)
    state, replay = trainer.init(config.seed)
    jax.block_until_ready(state)
    curve, train_s = [], 0.0
    for epoch in range(config.num_epochs):
        start = time.perf_counter()
        state, replay, _ = trainer.train_epoch(state, replay)
        jax.block_until_ready(state)
        train_s += time.perf_counter() - start
        stats, _ = trainer.evaluate_policies(state.sac.actor_params,
                                             trainer.eval_keys(config.seed, epoch))
        curve.append({"env_steps": int(state.env_steps), "train_s": train_s,
                      "eval_success": [float(s) for s in stats["eval_success_rate"]]})
    return curve


def run_brax(config: TrainConfig, seed: int,
             on_epoch: Callable[[list[dict]], None] = lambda curve: None) -> list[dict]:
    """The same curve for one seed of brax's ``sac.train`` (its own timing of each epoch);
    ``on_epoch`` sees the curve so far after each epoch."""
    if not hasattr(jax, "device_put_replicated"):
        jax.device_put_replicated = device_put_replicated
    env = ManipulationEnv(envs.make_task(config.task), impl=config.impl, render_obs=False)
    curve = []

    def progress(step: int, metrics: dict) -> None:
        if "training/walltime" in metrics:  # not the evaluation before training
            curve.append({"env_steps": int(step), "train_s": float(metrics["training/walltime"]),
                          "eval_success": [float(metrics["eval/episode_first_success"])]})
            on_epoch(curve)

    brax_sac.train(
        BraxTaskEnv(env, config.num_envs),
        num_timesteps=config.num_epochs * config.epoch_length,
        episode_length=env.episode_length,
        num_envs=config.num_envs,
        num_eval_envs=config.eval_episodes,
        learning_rate=config.learning_rate,
        discounting=config.discount,
        tau=config.tau,
        seed=seed,
        batch_size=config.batch_size,
        num_evals=config.num_epochs + 1,
        min_replay_size=config.learning_starts,
        max_replay_size=config.replay_capacity,
        grad_updates_per_step=config.updates_per_iteration,
        deterministic_eval=True,
        network_factory=functools.partial(brax_sac_networks.make_sac_networks,
                                          hidden_layer_sizes=config.sac.hidden_sizes),
        progress_fn=progress,
        eval_env=BraxTaskEnv(env, config.eval_episodes),
    )
    return curve


def summarize(curves: list[list[dict]], seeds_per_curve: int, target: float) -> dict:
    """Steady rate, first-epoch overhead and time to target of one learner's curves.

    ``curves``: one per program run (holdjax: one for all seeds; brax: one per seed).
    """
    steady_steps = sum(c[-1]["env_steps"] - c[0]["env_steps"] for c in curves) * seeds_per_curve
    steady_s = sum(c[-1]["train_s"] - c[0]["train_s"] for c in curves)
    rate = steady_steps / steady_s
    compile_s = [c[0]["train_s"] - c[0]["env_steps"] * seeds_per_curve / rate for c in curves]
    steps_to_target, wall_to_target, final = [], [], []
    for curve in curves:
        for k in range(seeds_per_curve):
            hit = next((p for p in curve if p["eval_success"][k] >= target), None)
            steps_to_target.append(None if hit is None else hit["env_steps"])
            wall_to_target.append(None if hit is None else round(hit["train_s"], 2))
            final.append(curve[-1]["eval_success"][k])
    return {
        "env_steps_per_s": rate,
        "compile_s": sum(compile_s) / len(compile_s),
        "env_steps_per_seed": curves[0][-1]["env_steps"],
        "train_s": sum(c[-1]["train_s"] for c in curves),
        "env_steps_to_target": steps_to_target,
        "wall_s_to_target": wall_to_target,
        "final_eval_success": final,
        "curves": curves,
    }


def results_payload(config: TrainConfig, args, results: dict, brax_complete: bool) -> dict:
    """The results file's settings and the learners measured so far."""
    return {
        "task": config.task,
        "reward": config.reward,
        "observation": config.observation,
        "settings": {
            "num_envs": config.num_envs, "seeds": config.seeds,
            "total_steps": config.num_epochs * config.epoch_length, "evals": config.num_epochs,
            "updates_per_step": config.updates_per_iteration / config.num_envs,
            "updates_per_fused_step": config.updates_per_iteration,
            "batch_size": config.batch_size, "hidden_sizes": list(config.sac.hidden_sizes),
            "learning_rate": config.learning_rate, "discount": config.discount,
            "tau": config.tau, "learning_starts": config.learning_starts,
            "eval_episodes": config.eval_episodes, "target_success": args.target_success,
            "impl": resolve_impl(config.impl),
        },
        **results,
        "brax_complete": brax_complete,
    }


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="pushing")
    parser.add_argument("--num_envs", type=int, default=16, help="worlds stepped at once")
    parser.add_argument("--total_steps", type=int, default=20_000, help="env steps per seed")
    parser.add_argument("--updates_per_step", type=float, default=1.0,
                        help="gradient updates per environment step")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evals", type=int, default=10, help="epochs, each then evaluated")
    parser.add_argument("--eval_episodes", type=int, default=20, help="per seed and eval")
    parser.add_argument("--target_success", type=float, default=0.8)
    parser.add_argument("--learning_starts", type=int, default=1000,
                        help="transitions collected before the first update")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument("--discount", type=float, default=0.99)
    parser.add_argument("--tau", type=float, default=5e-3)
    parser.add_argument("--impl", default="auto", help="MJX physics impl, for both")
    parser.add_argument("--tag", default="", help="variant name for the results file")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.evals < 2:
        parser.error("--evals must be at least 2 (the first epoch includes compilation)")
    if args.learning_starts >= args.total_steps:
        parser.error("--learning_starts must be below --total_steps")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Trains holdjax, then brax seed by seed, rewriting the results file after holdjax and
    after each of brax's epochs: a run cut short by a time limit keeps what it measured
    (``brax_complete`` false; brax's figures then cover its epochs so far)."""
    args = parse_args(argv)
    config = holdjax_config(args)
    results = {"holdjax": summarize([run_holdjax(config)], config.seeds, args.target_success)}
    payload, path = {}, None
    brax_curves: list[list[dict]] = []

    def write(curves: list[list[dict]], complete: bool) -> None:
        nonlocal payload, path
        payload = results_payload(config, args, results, complete)
        started = [c for c in curves if len(c) > 1]  # a rate needs two of a curve's epochs
        if started:
            payload["brax"] = summarize(started, 1, args.target_success)
            payload["ratio_holdjax_to_brax_steps_per_s"] = (
                results["holdjax"]["env_steps_per_s"] / payload["brax"]["env_steps_per_s"])
        path = write_results("brax_sac", payload, out_dir=args.out, tag=args.tag)

    write([], complete=False)
    for k in range(config.seeds):
        curve = run_brax(config, config.seed + k,
                         on_epoch=lambda curve: write(brax_curves + [curve], complete=False))
        brax_curves.append(curve)
    write(brax_curves, complete=True)
    results["brax"] = payload["brax"]
    print(f"{config.task}, state, dense: N={config.num_envs}, {payload['settings']['total_steps']}"
          f" env steps x {config.seeds} seed(s), {config.updates_per_iteration} updates per "
          f"{config.num_envs} env steps, on {jax.devices()[0].device_kind}")
    print(f"{'':8} {'env steps/s':>12} {'compile s':>10} {'steps to target':>16} "
          f"{'s to target':>12} {'final success':>14}")
    for name in FRAMEWORKS:
        r = results[name]
        print(f"{name:8} {r['env_steps_per_s']:12.0f} {r['compile_s']:10.1f} "
              f"{str(r['env_steps_to_target']):>16} {str(r['wall_s_to_target']):>12} "
              f"{str(r['final_eval_success']):>14}")
    print(f"ratio holdjax/brax env steps/s: {payload['ratio_holdjax_to_brax_steps_per_s']:.2f}")
    print("wrote", path)
    return payload


if __name__ == "__main__":
    main()
