"""Import of the released HOLD-C and HOLD-R scenic checkpoints, without TensorFlow or scenic.

scenic saves its train state with ``flax.training.checkpoints.save_checkpoint``: a file
``<workdir>/checkpoint_<step>`` holding the msgpack of the state dict. hold-rewards' state
(``func_dist/train_utils.TrainState``, flax.optim era) is

    {global_step, optimizer: {target: <params>, state: {step, param_states}},
     model_state: {batch_stats: ...}, rng, accum_train_time}

and newer scenic's has ``params`` and ``opt_state`` in place of ``optimizer``. Only the
parameters and the batch statistics are used; every one of their leaves must match the model,
and any missing, extra or mis-shaped leaf is an error that names it. The import is done once
and saved as an orbax checkpoint, which restores fast and checks shapes against the model.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import core, serialization, traverse_util

from holdjax.reward import holdc, holdr

CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")


class CheckpointMismatchError(ValueError):
    """A checkpoint's variables do not match the model they are loaded into."""


def default_checkpoint_path(model: str = "holdc") -> str:
    """Where the reference keeps a released checkpoint: ``$HOLD_TOP_DIR/hold/<model>/checkpoint``
    (``model`` is holdc or holdr)."""
    top = os.environ.get("HOLD_TOP_DIR")
    if not top:
        raise FileNotFoundError(
            f"HOLD_TOP_DIR is not set: set it to the directory holding hold/{model}/checkpoint "
            "(the released checkpoint), or pass the checkpoint path explicitly")
    return os.path.join(top, "hold", model, "checkpoint")


# Files in every orbax checkpoint directory (newer flax's ``save_checkpoint`` writes one).
ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA")


def find_checkpoint(path: str) -> str:
    """``path`` itself if it is a checkpoint (a file, or an orbax checkpoint directory), else
    the latest ``checkpoint_<step>`` in the directory ``path`` (flax's rule, which the
    reference's restore follows)."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    if any(os.path.exists(os.path.join(path, marker)) for marker in ORBAX_MARKERS):
        return path
    steps = {int(m.group(1)): name for name in os.listdir(path)
             if (m := CHECKPOINT_NAME.fullmatch(name))}
    if not steps:
        raise FileNotFoundError(f"no checkpoint_<step> file in the directory {path}")
    return os.path.join(path, steps[max(steps)])


def _read_train_state(path: str) -> dict:
    """The raw state dict of a scenic checkpoint: a flax msgpack file, or a directory written
    by flax's orbax-backed ``save_checkpoint``."""
    path = find_checkpoint(path)
    if os.path.isdir(path):
        restored = ocp.PyTreeCheckpointer().restore(os.path.abspath(path))
        return jax.tree.map(np.asarray, restored)
    with open(path, "rb") as f:
        try:
            state = serialization.msgpack_restore(f.read())
        except ValueError as e:  # msgpack's errors for bad or cut-off data are ValueErrors
            state = e
    if not isinstance(state, dict):
        raise CheckpointMismatchError(
            f"{path} is not a flax msgpack checkpoint ({type(state).__name__}: {state}); a "
            "download cut short or corrupted reads like this: download it again (see the README)")
    return state


def _train_state_variables(state: dict) -> dict:
    """{'params', <model_state collections>} of a scenic train state dict."""
    if "optimizer" in state:
        params = state["optimizer"].get("target")
        source = "optimizer/target"
    else:
        params = state.get("params")
        source = "params"
    if not isinstance(params, dict):
        raise CheckpointMismatchError(
            f"not a scenic train state: no optimizer/target or params in its keys "
            f"{sorted(state)}")
    if set(params) == {"params"}:
        raise CheckpointMismatchError(
            f"{source} holds a pre-Linen parameter tree ({source}/params), which is not "
            "supported")
    model_state = state.get("model_state") or {}
    return {"params": params, **model_state}


def _flat(tree: dict) -> dict:
    return traverse_util.flatten_dict(tree, sep="/")


HOLDC_MODEL = "the HOLD-C model (check num_layers, num_filters and embedding_size)"
HOLDR_MODEL = "HOLD-R's layout for the configuration its shapes describe"


def leaf_problems(got: dict[str, tuple], want: dict[str, tuple]) -> list[str]:
    """Every missing, extra and mis-shaped leaf of ``got`` against ``want`` (name -> shape)."""
    problems = [f"missing leaf {k} (expected shape {want[k]})"
                for k in sorted(want.keys() - got.keys())]
    problems += [f"extra leaf {k} (shape {got[k]})" for k in sorted(got.keys() - want.keys())]
    problems += [f"mis-shaped leaf {k}: checkpoint {got[k]}, model {want[k]}"
                 for k in sorted(got.keys() & want.keys()) if got[k] != want[k]]
    return problems


def _match_variables(restored: dict, expected: dict, model: str = HOLDC_MODEL) -> dict:
    """``restored`` as numpy arrays of ``expected``'s dtypes, after checking its leaves against
    ``expected`` (arrays or shape structs) one by one; the error lists every offending leaf."""
    got, want = _flat(restored), _flat(expected)
    problems = leaf_problems({k: tuple(np.shape(v)) for k, v in got.items()},
                             {k: tuple(v.shape) for k, v in want.items()})
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint does not match {model}:\n  " + "\n  ".join(problems))
    flat = {k: np.asarray(got[k], dtype=want[k].dtype) for k in want}
    return traverse_util.unflatten_dict(flat, sep="/")


def import_scenic_checkpoint(path: str, config: holdc.HoldCConfig) -> dict:
    """The model variables {'params', 'batch_stats'} of a scenic HOLD-C checkpoint."""
    variables = _train_state_variables(_read_train_state(path))
    return _match_variables(variables, holdc.abstract_variables(config))


def holdr_variables(params: dict, config: holdr.HoldRConfig) -> dict:
    """HOLD-R's variables ``{'params': ...}`` from scenic's parameter tree
    (``train_state.optimizer.target``), every leaf checked as HOLD-C's are: a silent partial
    load would give a plausible-looking but wrong reward."""
    return _match_variables({"params": core.unfreeze(params)},
                            holdr.variable_shapes(config), HOLDR_MODEL)


def save_orbax(directory: str, variables: dict) -> None:
    """Writes ``variables`` as an orbax checkpoint at ``directory`` (created; must not exist)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(os.path.abspath(directory), variables)
        checkpointer.wait_until_finished()


def save_converted(directory: str, variables: dict) -> None:
    """Saves released weights' converted ``variables`` (HOLD-C, HOLD-R, R3M) as their orbax
    copy at ``directory``, except in a multi-process job, whose processes would all write it
    at once: there each reads the released file, every run, until a one-process command (such
    as ``python -m holdjax.reward.check --model=<checkpoint>``) has converted it. A copy that
    cannot be written (a folder the user cannot write to, or another run's copy finished
    first) leaves the loaded variables in use, never stops the run."""
    if jax.process_count() == 1:
        try:
            # Checked before orbax starts: its save threads, once started, wait minutes for
            # a step folder that cannot be made.
            parent = os.path.dirname(os.path.abspath(directory))
            os.makedirs(parent, exist_ok=True)
            os.rmdir(tempfile.mkdtemp(dir=parent))
            save_orbax(directory, variables)
        except (OSError, ValueError) as e:  # orbax refuses an existing destination
            if not os.path.isdir(directory):  # else another run converted it meanwhile
                print(f"warning: could not write the orbax copy of the released weights "
                      f"at {directory} ({type(e).__name__}: {e}); the released file will be "
                      "read again next time", file=sys.stderr)
    elif jax.process_index() == 0:
        print(f"note: no orbax copy of the released weights at {directory}; each process "
              "of this job reads the released file instead (a one-process run that loads it, "
              "e.g. python -m holdjax.reward.check --model=<checkpoint>, converts it once)",
              file=sys.stderr)


def restore_variables(directory: str, target: dict, model: str) -> dict:
    """Variables saved by :func:`save_orbax`, restored into ``target``'s shapes (abstract
    variables) and checked leaf by leaf; ``model`` names what they should fit in errors."""
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            restored = checkpointer.restore(os.path.abspath(directory), target)
        except (ValueError, KeyError) as e:
            raise CheckpointMismatchError(
                f"orbax checkpoint {directory} does not match {model}: {e}") from e
    return _match_variables(restored, target, model)


def restore_orbax(directory: str, config: holdc.HoldCConfig) -> dict:
    """HOLD-C variables saved by :func:`save_orbax`, checked against the model's shapes."""
    return restore_variables(directory, holdc.abstract_variables(config), HOLDC_MODEL)


def load_holdc_variables(config: holdc.HoldCConfig, path: str | None = None,
                         orbax_dir: str | None = None) -> dict:
    """HOLD-C variables from the orbax copy of the scenic checkpoint at ``path`` (default:
    the reference's location), converting it on first use. The copy is
    ``<checkpoint file>.orbax`` unless ``orbax_dir`` says otherwise."""
    source = find_checkpoint(path or default_checkpoint_path())
    orbax_dir = orbax_dir or source + ".orbax"
    if os.path.isdir(orbax_dir):
        return restore_orbax(orbax_dir, config)
    variables = import_scenic_checkpoint(source, config)
    save_converted(orbax_dir, variables)
    return variables


def load_holdc(config: holdc.HoldCConfig | None = None, path: str | None = None,
               orbax_dir: str | None = None) -> holdc.HoldCDistance:
    """The released HOLD-C distance model, ready to score frames against goals."""
    config = config or holdc.HoldCConfig()
    return holdc.HoldCDistance(config, load_holdc_variables(config, path, orbax_dir))


def load_holdr(path: str | None = None, orbax_dir: str | None = None,
               **overrides) -> holdr.HoldRDistance:
    """The released HOLD-R model from the scenic checkpoint at ``path`` (default: the
    reference's location), converted to an orbax copy (``<checkpoint file>.orbax``) on first
    use as HOLD-C's is. Its architecture is read from the parameter shapes
    (:meth:`holdr.HoldRConfig.from_params`), since the checkpoint stores no config;
    ``overrides`` set ``dtype`` and ``attention``."""
    source = find_checkpoint(path or default_checkpoint_path("holdr"))
    orbax_dir = orbax_dir or source + ".orbax"
    converted = os.path.isdir(orbax_dir)
    if converted:
        with ocp.StandardCheckpointer() as checkpointer:
            params = checkpointer.restore(os.path.abspath(orbax_dir))["params"]
    else:
        params = _train_state_variables(_read_train_state(source))["params"]
    try:
        config = holdr.HoldRConfig.from_params(params, **overrides)
        variables = holdr_variables(params, config)
    except ValueError as e:
        raise CheckpointMismatchError(
            f"{orbax_dir if converted else source} is not a HOLD-R checkpoint: {e}") from None
    if not converted:
        save_converted(orbax_dir, variables)
    return holdr.HoldRDistance(config, variables)
