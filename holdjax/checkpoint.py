"""Orbax checkpoints of a training run: the training state, and optionally the replay buffer.

A run directory holds ``config.json`` (the resolved config) and ``checkpoints/<epoch>/``.
Restoring checks the saved config against the requested one and every array against the
expected tree, and fails with a message that says what to do, never silently restarting.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import orbax.checkpoint as ocp

from holdjax.reward.base import DISTANCE_REWARDS

# Config fields that change array shapes or the meaning of the saved training state: a
# resumed run must match them. Others (epochs, output frequencies, eval episodes, reward
# shaping) may change on resume.
STRUCTURAL_FIELDS = (
    "task", "reward", "num_envs", "seeds", "batch_size", "goal_based_policy", "use_subtasks",
    "epoch_length", "impl", "observation", "per_q_critic_optimizers",
)
# What a saved replay buffer (--save_replay) depends on besides those: its size (the resolved
# capacity, so that a replay_size of 0 and the size it stands for agree) and how its
# transitions' terminal flags and rewards were made (the distance model and its shaping, for
# a distance reward). A run resumed with its buffer must match them too, or it would mix
# transitions of two rewards in one buffer.
REPLAY_FIELDS = ("replay_capacity", "timeouts_as_terminal")
DISTANCE_REPLAY_FIELDS = (
    "reward_checkpoint", "holdc_layers", "holdc_filters", "holdc_embedding_size",
    "holdc_crop_size", "distance_type", "distance_params", "distance_normalizer",
    "distance_reward_weight", "env_reward_weight", "subtract_baseline_from_normalizer",
    "subtract_prev_distance", "env_reward_replace_threshold", "subtask_threshold",
    "subtask_cost", "subtask_hold_steps",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match the run being restored."""


def checkpoint_dir(run_dir: str) -> str:
    return os.path.abspath(os.path.join(run_dir, "checkpoints"))


def manager(run_dir: str, max_to_keep: int | None = None) -> ocp.CheckpointManager:
    """The run's checkpoints; saving through it keeps the newest ``max_to_keep`` (None: all)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(checkpoint_dir(run_dir), options=options)


def _leaves_by_path(tree) -> dict:
    """{path: leaf} of the non-empty leaves (orbax cannot store zero-size arrays, which
    MJX data has for absent features)."""
    return {jax.tree_util.keystr(path): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if leaf.size}


def _fill(tree_like, leaves: dict):
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: leaves.get(jax.tree_util.keystr(path), leaf), tree_like)


def save(mngr: ocp.CheckpointManager, epoch: int, state, replay=None) -> None:
    """Saves ``state`` (and ``replay`` if given) as checkpoint ``epoch``; blocks until done."""
    items = {"state": ocp.args.StandardSave(_leaves_by_path(state))}
    if replay is not None:
        items["replay"] = ocp.args.StandardSave(_leaves_by_path(replay))
    mngr.save(epoch, args=ocp.args.Composite(**items))
    mngr.wait_until_finished()


def latest_epoch(run_dir: str) -> int | None:
    if not os.path.isdir(checkpoint_dir(run_dir)):
        return None
    return manager(run_dir).latest_step()


def existing_epoch(run_dir: str, epoch: int | None = None) -> int:
    """``epoch`` (default: the latest) if the run holds its checkpoint; else a
    CheckpointError that lists the ones it holds."""
    if not os.path.isdir(checkpoint_dir(run_dir)):
        raise CheckpointError(
            f"no checkpoints in {run_dir}; train first, or check --run/--out points at a run")
    mngr = manager(run_dir)
    epoch = mngr.latest_step() if epoch is None else epoch
    if epoch is None or epoch not in mngr.all_steps():
        raise CheckpointError(
            f"checkpoint {epoch} not found in {checkpoint_dir(run_dir)}; "
            f"available: {sorted(mngr.all_steps())}")
    return epoch


def restore(run_dir: str, state_like, replay_like=None, epoch: int | None = None,
            only: tuple[str, ...] = ()):
    """Restores (epoch, state, replay or None) shaped like the given example trees. With
    ``only`` (path prefixes, e.g. ``".sac.actor_params"``), just the state's leaves under
    them are read, from a checkpoint that may hold a state of another shape elsewhere; the
    rest of ``state_like`` comes back as given."""
    epoch = existing_epoch(run_dir, epoch)
    mngr = manager(run_dir)

    def abstract(tree):
        """Restore targets: shapes and dtypes of ``tree``, on its devices (default: the
        first device), so a run saved on several devices restores on one and vice versa."""
        default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                           sharding=getattr(x, "sharding", None) or default),
            _leaves_by_path(tree))

    target = abstract(state_like)
    if only:
        target = {path: leaf for path, leaf in target.items() if path.startswith(only)}
        items = {"state": ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)}
    else:
        items = {"state": ocp.args.StandardRestore(target)}
    if replay_like is not None and holds_replay(run_dir, epoch):
        items["replay"] = ocp.args.StandardRestore(abstract(replay_like))
    try:
        restored = mngr.restore(epoch, args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types for corrupt or mismatched trees
        raise CheckpointError(
            f"checkpoint {epoch} in {run_dir} could not be restored into this run "
            f"({type(e).__name__}: {str(e)[:400]}). It is corrupt, or was written by a run "
            "with a different config or by a holdjax that laid the state out otherwise (the "
            "replay buffer's layout changed on 2026-11-27); start a new run with another "
            "--out, or resume with that run's config and version.") from e
    state = _fill(state_like, restored["state"])
    replay = _fill(replay_like, restored["replay"]) if "replay" in items else None
    return epoch, state, replay


def holds_replay(run_dir: str, epoch: int) -> bool:
    """Whether checkpoint ``epoch`` of the run holds its replay buffer (``--save_replay``)."""
    return os.path.isdir(os.path.join(checkpoint_dir(run_dir), str(epoch), "replay"))


def write_config(run_dir: str, config) -> None:
    """Writes the run's ``config.json`` whole or not at all (a temporary file renamed onto
    it): a kill while writing, or another process of the job reading it to resume, never
    meets half a file."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, "config.json")
    with open(f"{path}.{os.getpid()}.tmp", "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=1)
    os.replace(f.name, path)


def read_config(run_dir: str, config_type):
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{run_dir} has no config.json: is it a holdjax run directory?")
    with open(path) as f:
        fields = json.load(f)
    known = {f.name for f in dataclasses.fields(config_type)}
    # JSON turns tuples into lists; configs are frozen and hashable (jit static arguments).
    return config_type(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in fields.items() if k in known})


def check_resumable(saved, requested, with_replay: bool = False) -> None:
    """Raises if ``requested`` differs from the run's ``saved`` config in a structural field
    (or, resuming ``with_replay``, in one the saved replay buffer depends on)."""
    replay_fields = ()
    if with_replay:
        replay_fields = REPLAY_FIELDS + (
            DISTANCE_REPLAY_FIELDS if saved.reward in DISTANCE_REWARDS else ())
    differs = [name for name in STRUCTURAL_FIELDS + replay_fields
               if getattr(saved, name) != getattr(requested, name)]
    diffs = [f"{name}: saved {getattr(saved, name)!r}, requested {getattr(requested, name)!r}"
             for name in differs]
    if diffs:
        what = ("the run and the replay buffer saved with its checkpoint were"
                if set(differs) & set(replay_fields) else "the run was")
        raise CheckpointError(
            f"cannot resume: {what} made with a different config ("
            + "; ".join(diffs)
            + "). Resume with the same settings, or start a new run with another --out.")
