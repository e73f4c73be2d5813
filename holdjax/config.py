"""Training configuration: one typed dataclass, reference runs in ``configs/``, CLI overrides.

    python -m holdjax.train --config=fig3a_pushing_sac --seeds=5
    python -m holdjax.train --task=pushing --reward=dense --total_steps=4000 --num_envs=16

Every field can be overridden as ``--field=value``. ``--total_steps`` sets ``num_epochs``
from ``epoch_length``. Malformed values are errors that name the valid choices, and unknown
fields errors that name the closest known one.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import pkgutil
import re
import types
import typing

from holdjax.envs.base import check_impl
from holdjax.reward.base import REWARDS
from holdjax.reward.holdc import check_distance
from holdjax.reward.holdr import check_attention
from holdjax.reward.shaping import ShapingConfig
from holdjax.sac.networks import check_encoder_conv
from holdjax.sac.replay import held_transitions, replay_rows
from holdjax.sac.update import SACConfig

CONFIGS_PACKAGE = "configs"
OBSERVATIONS = ("pixels", "state")
COMPUTE_DTYPES = ("float32", "bfloat16")


def device_default(value, on_cpu, on_accelerator):
    """``value``, or where it is 0 (unset) the default for the device JAX runs on."""
    if value:
        return value
    import jax

    return on_cpu if jax.default_backend() == "cpu" else on_accelerator


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training run. Defaults are the reference's plain-SAC pushing run on more worlds."""

    name: str = ""  # run name; "" -> "<task>_<reward>"
    task: str = "pushing"  # pushing | drawer_open | close_drawer | cup_forward | faucet_right
    reward: str = "sparse"  # sparse | dense | l2 | holdc | holdr | r3m
    # What policy, critics and replay see: the camera image (the reference's) or the
    # task's low-dimensional state (no rendering unless the reward scores images).
    observation: str = "pixels"  # pixels | state

    ## Distance models: the released checkpoint and HOLD-C's released architecture.
    # The released checkpoint (HOLD-R's architecture is read from it; R3M's model.pt; for
    # HOLD-C also a holdjax.reward.train model directory).
    # "" -> $HOLD_TOP_DIR/hold/<holdc|holdr>/checkpoint, R3M: $HOLD_TOP_DIR/r3m/r3m_50/model.pt
    reward_checkpoint: str = ""
    holdc_layers: int = 50
    holdc_filters: int = 64
    holdc_embedding_size: int = 32
    holdc_crop_size: int = 256  # hold-rewards' holdc/resnet50.py crop_size
    distance_type: str = "eucl"  # eucl | sq_eucl | sq_eucl_huber
    distance_params: tuple[float, ...] = ()  # comma-separated; sq_eucl_huber takes 3
    reward_dtype: str = "float32"  # bfloat16 for speed on accelerators
    # HOLD-R's attention: auto (cuDNN's flash attention on a GPU in bf16, else flax's) | flax
    # | cudnn (holdjax.reward.holdr.attention_function)
    holdr_attention: str = "auto"

    ## Reward shaping (SPEC.md "Reward"); used by distance rewards (l2, HOLD-C/R, R3M).
    # Defaults are the reference's command-line defaults; its runs (configs/) set their own.
    distance_normalizer: float = 100.0
    distance_reward_weight: float = 1.0
    env_reward_weight: float = 1.0
    subtract_baseline_from_normalizer: bool = False
    subtract_prev_distance: bool = False
    # > 0: the env reward becomes 1[pred < threshold] (pred: the shaped distance before
    # normalising, shaping.py); 0: off, the reference's None (its 0 would zero the env reward,
    # as pred >= 0).
    env_reward_replace_threshold: float = 0.0
    use_subtasks: bool = False
    subtask_threshold: float = 1.0
    subtask_cost: float = 20.0  # added per subtask still ahead, so later subgoals pay less
    subtask_hold_steps: int = 3
    goal_based_policy: bool = False

    ## Schedule, in environment steps (summed over worlds), as the reference counts them.
    num_epochs: int = 400  # --total_steps sets it
    epoch_length: int = 1000  # env steps per seed between evaluations, logs, checkpoints
    num_envs: int = 16  # worlds stepped at once, per seed
    seeds: int = 1  # independent seeds trained in one program
    seed: int = 0  # seed k of --seeds=K trains as --seed=seed+k would alone
    # Gradient updates per environment step. 0 = auto: 1 (the reference's) on an
    # accelerator; 1 / num_envs (one update per fused step) on a CPU, where a batch-256
    # image update takes ~0.1-0.4 s and the reference's ratio would take days.
    updates_per_step: float = 0.0
    # SAC updates unrolled per step of the fused step's update scan. 0 = auto: 4 on an
    # accelerator (10% more updates/s on an H100, twice the compile time), 1 on a CPU.
    update_unroll: int = 0
    initial_random_steps: int = 1000
    # Transitions per seed before updates start; 0 -> the reference's: the initial random
    # steps' (at least one episode, at most what the replay holds).
    learning_starts: int = 0
    # Transitions kept per seed (rounded up to whole steps of all worlds); 0 -> min(1e6,
    # num_epochs * epoch_length), at least one batch. The reference took min(1e6, num_epochs
    # * 1000) whatever the epoch length (a quirk: 40k for its 400k-step drawer runs, 80k for
    # the 400k-step figure-5 runs); --replay_size=40000 etc. reproduces that.
    replay_size: int = 0
    timeouts_as_terminal: bool = False  # the reference's quirk; off = correct bootstrapping
    eval_episodes: int = 20
    # Epochs whose policies are evaluated together, as one batched rollout after the last of
    # them (the same episodes and results as evaluating after each; an accelerator runs many
    # worlds in the time of a few, so a run's sequential evaluations are 1 / eval_batch as
    # many). Each checkpoint and video epoch ends a batch. 0 -> 10 on an accelerator, 1 on
    # the CPU.
    eval_batch: int = 0

    ## SAC (the reference's settings).
    learning_rate: float = 3e-4
    discount: float = 0.99
    tau: float = 5e-3
    batch_size: int = 256
    aug_pad: int = 4
    # The SAC encoders' convolution compute type: "float32" (the reference's) or "bfloat16"
    # (half the bytes; parameters, MLPs and losses stay float32).
    encoder_dtype: str = "float32"
    # How the encoders' convolutions are computed (same values; networks.ENCODER_CONVS):
    # "canonical" (custom-VJP convolutions), "rows" (banded matrix products, for GPUs),
    # "pallas" or "pallas_banded" (Pallas kernels per layer, for GPUs; H100 timings in
    # benchmarks/NOTES.md) or "auto": rows on an accelerator (1.2-1.3x the updates/s on an
    # H200), canonical on the CPU.
    encoder_conv: str = "auto"
    # Critic and actor encoders run as one encoder of twice the width on each image batch
    # (same values, half the convolutions; SACConfig.fused_encoders).
    fused_encoders: bool = False
    # The critic's two Q heads as one batched MLP (same values; SACConfig.batched_q_heads).
    # Unset: on for an accelerator (fewer kernels), off for the CPU (slower there).
    batched_q_heads: bool | None = None
    # The reference's quirk: each Q network has its own Adam, so the encoder they share takes
    # two Adam steps an update, one per Q loss (SACConfig.per_q_optimizers; a second backward
    # pass through the critic; not with fused_encoders). Off: one Adam on the summed Q losses,
    # the usual shared-encoder SAC.
    per_q_critic_optimizers: bool = False
    # The reference's augmentation quirk: zero padding and one random shift for the whole
    # batch (obs and next obs one each), as its tf.image.random_crop of the padded batch
    # does. Off: edge padding and a shift per image (DrQ's form of the same augmentation).
    reference_augmentation: bool = False

    ## Output.
    out: str = ""  # "" -> $HOLD_TOP_DIR/hold_policies/<name> or runs/<name>
    checkpoint_frequency: int = 10  # epochs
    save_replay: bool = False
    # Checkpoints kept, the newest; 0: every one (evaluate --step reads any), or the newest 3
    # with --save_replay, since each then holds the replay buffer (gigabytes in a long run).
    keep_checkpoints: int = 0
    path_save_frequency: int = 50  # epochs between eval videos; 0 = never
    impl: str = "auto"  # MJX physics impl

    @property
    def run_name(self) -> str:
        return self.name or f"{self.task}_{self.reward}"

    @property
    def out_dir(self) -> str:
        if self.out:
            return self.out
        top = os.environ.get("HOLD_TOP_DIR")
        base = os.path.join(top, "hold_policies") if top else "runs"
        return os.path.join(base, self.run_name)

    @property
    def total_steps(self) -> int:
        return self.num_epochs * self.epoch_length

    @property
    def replay_capacity(self) -> int:
        """Transitions kept per seed: the run's whole length up to the reference's million,
        and at least one batch (a run shorter than a batch still trains)."""
        return self.replay_size or max(self.batch_size, min(1_000_000, self.total_steps))

    @property
    def min_replay(self) -> int:
        """Transitions per seed that the buffer holds before updates start: learning_starts,
        or, as the reference, the initial random steps' transitions (its updates begin
        after its random steps; it also waits for one episode, which only matters with fewer
        random steps), capped at what the replay holds so that a short run still trains."""
        if self.learning_starts:
            return self.learning_starts
        from holdjax import envs

        wanted = max(self.initial_random_steps, envs.task_class(self.task).episode_length)
        return min(wanted, self.replay_held)

    @property
    def replay_held(self) -> int:
        """Transitions per seed the replay holds: its capacity rounded up to whole rows (one
        transition of every world)."""
        return held_transitions(replay_rows(self.replay_capacity, self.num_envs), self.num_envs)

    @property
    def iterations_per_epoch(self) -> int:
        """Fused steps per epoch: each steps every world once."""
        return -(-self.epoch_length // self.num_envs)

    @property
    def scheduled_env_steps(self) -> int:
        """Env steps per seed the run takes: `total_steps`, each epoch rounded up to whole
        fused steps."""
        return self.num_epochs * self.iterations_per_epoch * self.num_envs

    @property
    def resolved_updates_per_step(self) -> float:
        return device_default(self.updates_per_step, 1.0 / self.num_envs, 1.0)

    @property
    def resolved_keep_checkpoints(self) -> int | None:
        """How many checkpoints a run keeps (None: all); see ``keep_checkpoints``."""
        return self.keep_checkpoints or (3 if self.save_replay else None)

    @property
    def resolved_eval_batch(self) -> int:
        return device_default(self.eval_batch, 1, 10)

    @property
    def resolved_update_unroll(self) -> int:
        return device_default(self.update_unroll, 1, 4)

    @property
    def updates_per_iteration(self) -> int:
        """Updates per fused step of all worlds: updates_per_step x num_envs to the nearest
        whole number (halves up), at least one."""
        return max(1, math.floor(self.resolved_updates_per_step * self.num_envs + 0.5))

    @property
    def effective_updates_per_step(self) -> float:
        """The update ratio a run gets: whole updates per fused step over its worlds."""
        return self.updates_per_iteration / self.num_envs

    def program_key(self) -> TrainConfig:
        """This config with the fields that do not change the compiled program reset, so
        runs that differ only in output, length or logging share one trainer."""
        return dataclasses.replace(self, name="", out="", num_epochs=1, checkpoint_frequency=1,
                                   save_replay=False, keep_checkpoints=0,
                                   path_save_frequency=0, eval_batch=0,
                                   replay_size=self.replay_capacity)

    @property
    def sac(self) -> SACConfig:
        return SACConfig(
            learning_rate=self.learning_rate,
            discount=self.discount,
            tau=self.tau,
            batch_size=self.batch_size,
            aug_pad=self.aug_pad,
            encoder_dtype=self.encoder_dtype,
            encoder_conv=self.encoder_conv,
            fused_encoders=self.fused_encoders,
            batched_q_heads=self.batched_q_heads,
            per_q_optimizers=self.per_q_critic_optimizers,
            reference_augmentation=self.reference_augmentation,
        )

    @property
    def shaping(self) -> ShapingConfig:
        return ShapingConfig(
            normalizer=self.distance_normalizer,
            distance_weight=self.distance_reward_weight,
            env_weight=self.env_reward_weight,
            subtract_baseline_from_normalizer=self.subtract_baseline_from_normalizer,
            subtract_prev_distance=self.subtract_prev_distance,
            env_reward_replace_threshold=self.env_reward_replace_threshold,
            use_subtasks=self.use_subtasks,
            subtask_threshold=self.subtask_threshold,
            subtask_cost=self.subtask_cost,
            subtask_hold_steps=self.subtask_hold_steps,
        )

    def validate(self) -> TrainConfig:
        from holdjax import envs

        envs.task_class(self.task)  # an unknown task is an error naming the valid ones
        if self.reward not in REWARDS:
            raise ValueError(f"unknown reward {self.reward!r}; valid rewards: {', '.join(REWARDS)}")
        if self.observation not in OBSERVATIONS:
            raise ValueError(f"unknown observation {self.observation!r}; valid observations: "
                             f"{', '.join(OBSERVATIONS)}")
        if self.observation == "state" and self.goal_based_policy:
            raise ValueError("goal_based_policy puts the goal image beside the frame: it needs "
                             "observation=pixels")
        for name in ("num_epochs", "epoch_length", "num_envs", "seeds", "batch_size",
                     "eval_episodes", "checkpoint_frequency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.update_unroll < 0:
            raise ValueError("update_unroll must be >= 1 (or 0 for the device default)")
        if self.updates_per_step < 0:
            raise ValueError("updates_per_step must be positive (or 0 for the device default)")
        for name in ("encoder_dtype", "reward_dtype"):
            if getattr(self, name) not in COMPUTE_DTYPES:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; valid: "
                                 f"{', '.join(COMPUTE_DTYPES)}")
        check_distance(self.distance_type, self.distance_params)
        if self.reward != "holdc" and (self.distance_type != "eucl" or self.distance_params):
            raise ValueError(
                f"--distance_type and --distance_params set HOLD-C's embedding distance; "
                f"--reward={self.reward} has its own (R3M's is Euclidean, as the reference's): "
                "drop them or use --reward=holdc")
        check_attention(self.holdr_attention, "holdr_attention")
        check_impl(self.impl)
        check_encoder_conv(self.encoder_conv)
        self.sac  # noqa: B018 (SACConfig checks its own combinations)
        for name in ("initial_random_steps", "learning_starts", "replay_size", "aug_pad",
                     "path_save_frequency", "eval_batch", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name, low, high in (("learning_rate", 0.0, None), ("tau", 0.0, 1.0),
                                ("distance_normalizer", 0.0, None)):
            value = getattr(self, name)
            if not (value > low and (high is None or value <= high)):
                bound = f"in ({low}, {high}]" if high is not None else f"> {low}"
                raise ValueError(f"{name} must be {bound}, got {value}")
        if not 0.0 <= self.discount <= 1.0:
            raise ValueError(f"discount must be in [0, 1], got {self.discount}")
        if self.subtask_hold_steps < 1:
            raise ValueError(f"subtask_hold_steps must be at least 1, got "
                             f"{self.subtask_hold_steps}")
        if self.replay_size and self.replay_size < self.batch_size:
            raise ValueError(f"replay_size {self.replay_size} is smaller than one batch "
                             f"({self.batch_size}); use 0 for the reference's size")
        held = self.replay_held
        if self.min_replay > held:
            raise ValueError(
                f"updates would never start: they wait for {self.min_replay} transitions "
                f"(--learning_starts) but the replay holds {held}; "
                "lower --learning_starts or raise --replay_size")
        return self


def available_configs() -> list[str]:
    package = importlib.import_module(CONFIGS_PACKAGE)
    return sorted(m.name for m in pkgutil.iter_modules(package.__path__))


def load_config(name: str) -> TrainConfig:
    """The reference run ``configs/<name>.py`` (its ``CONFIG``)."""
    names = available_configs()
    if name not in names:
        raise ValueError(f"unknown config {name!r}; available: {', '.join(names)}")
    return importlib.import_module(f"{CONFIGS_PACKAGE}.{name}").CONFIG


def reference_config_name(task: str, reward: str) -> str | None:
    """The config of the reference's run of ``task`` with ``reward`` (the one that keeps
    the env reward, not its ``_only`` twin), or None when the reference has no such run."""
    names = [name for name in available_configs()
             if (config := load_config(name)).task == task and config.reward == reward
             and config.env_reward_weight != 0]
    return names[0] if names else None


def field_help() -> dict[str, str]:
    """Each `TrainConfig` field's comment in this file (the lines above it and the one after
    it; "##" lines title sections), for ``--help``: the comments are the fields'
    documentation, kept in one place."""
    import inspect

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    comments: list[str] = []
    found = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        text = line.strip()
        if text.startswith("##"):  # a section's title, not a field's comment
            continue
        if text.startswith("#"):
            comments.append(text.lstrip("# "))
            continue
        field = re.match(r"(\w+): [^=]+=[^#]*(?:#\s*(.*))?$", text)
        if field and field.group(1) in names:
            found[field.group(1)] = " ".join([*comments, field.group(2) or ""]).strip()
        comments = []
    return found


def parse_value(name: str, kind: type, text: str | None):
    """``--name=text`` as a value of type ``kind``, or an error naming the flag; ``text`` is
    None for a bare ``--name``, which only a boolean flag may be (it means true)."""
    if isinstance(kind, types.UnionType):
        kind = next(t for t in typing.get_args(kind) if t is not type(None))
    if text is None:
        if kind is bool:
            return True
        raise ValueError(f"--{name} needs a value: --{name}=...")
    if typing.get_origin(kind) is tuple:
        try:
            return tuple(float(v) for v in text.split(",") if v)
        except ValueError:
            raise ValueError(f"--{name} expects comma-separated numbers, got {text!r}") from None
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--{name} expects true or false, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        article = "an" if kind.__name__[0] in "aeiou" else "a"
        raise ValueError(f"--{name} expects {article} {kind.__name__}, got {text!r}") from None


def config_from_args(args: list[str], base: TrainConfig | None = None
                     ) -> tuple[TrainConfig, dict[str, str]]:
    """Builds a config from ``--config=NAME`` (else ``base``, else the reference's run of
    ``--task`` with ``--reward`` (`reference_config_name`), named as a run of its own, else
    the defaults) and ``--field=value`` overrides.

    Returns the config and the flags that are not config fields (the caller's own, such
    as ``--resume``; None for a bare ``--flag``), which the caller must consume or reject.
    """
    hints = typing.get_type_hints(TrainConfig)
    kinds = {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}
    flags: dict[str, str | None] = {}
    for arg in args:
        if not arg.startswith("--"):
            raise ValueError(f"unexpected argument {arg!r}; use --field=value")
        key, equals, value = arg[2:].partition("=")
        flags[key] = value if equals else None
    if "config" in flags:
        config = load_config(parse_value("config", str, flags.pop("config")))
    elif base is not None:
        config = base
    else:
        task, reward = (parse_value(key, str, flags[key]) if key in flags
                        else getattr(TrainConfig, key) for key in ("task", "reward"))
        reference = reference_config_name(task, reward)
        config = (dataclasses.replace(load_config(reference), name="") if reference
                  else TrainConfig())
    overrides, rest = {}, {}
    has_total_steps = "total_steps" in flags
    total_steps = flags.pop("total_steps", None)
    for key, value in flags.items():
        if key in kinds:
            overrides[key] = parse_value(key, kinds[key], value)
        else:
            rest[key] = value
    config = dataclasses.replace(config, **overrides)
    if has_total_steps:
        steps = parse_value("total_steps", int, total_steps)
        if steps < 1:
            raise ValueError(f"--total_steps must be at least 1, got {steps}")
        # Whole epochs: rounded up to a multiple of epoch_length.
        config = dataclasses.replace(config, num_epochs=-(-steps // config.epoch_length))
    return config, rest
