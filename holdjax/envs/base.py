"""The batched reset/step contract shared by every holdjax task.

A :class:`Task` says what one world is (scene file, reset distribution, how an action
moves the mocap hand, the low-dimensional state, success and rewards, a scripted
expert). :class:`ManipulationEnv` runs a batch of such worlds on the accelerator: MJX
physics for all of them at once, then MJX's batch renderer for the camera image.

Why not brax's ``PipelineEnv`` + ``VmapWrapper`` + ``AutoResetWrapper``: the renderer
allocates Warp buffers for a fixed world count, so rendering is a batch-level call; and
brax's auto-reset returns every world to its *first* start state (no new puck position
per episode) and overwrites the final observation that the reward model must score. All
tasks have fixed-length episodes with no early termination, so every world ends its
episode on the same step and callers simply ``reset`` the batch.
"""

from __future__ import annotations

import abc
import functools
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import mujoco
from flax import struct
from mujoco import mjx

from holdjax.envs import arm
from holdjax.render import CameraRenderer, as_render_data, local_device, render_template

ASSETS_DIR = os.path.join(os.path.dirname(__file__), "assets")
PHYSICS_IMPLS = ("warp", "jax")


def check_impl(impl: str) -> None:
    """Raises on a physics impl other than ``auto`` or one of PHYSICS_IMPLS."""
    if impl != "auto" and impl not in PHYSICS_IMPLS:
        raise ValueError(f"unknown physics impl {impl!r}; valid: auto, {', '.join(PHYSICS_IMPLS)}")


def resolve_impl(impl: str) -> str:
    """``auto`` -> the measured-faster MJX impl for the default device (benchmarks/NOTES.md):
    ``jax`` on the CPU, ``warp`` (MuJoCo Warp kernels) on a GPU."""
    check_impl(impl)
    if impl == "auto":
        return "warp" if jax.default_backend() == "gpu" else "jax"
    return impl


def physics_overflow(data: mjx.Data) -> jax.Array:
    """(N,) int32 bits of ``mujoco_warp.OverflowType`` per world: MuJoCo Warp's record of
    dropped contacts or constraints and of solver or line-search iteration limits, kept
    until the world is reset. Zeros with ``impl="jax"``, whose solver keeps no such record.
    """
    overflow = getattr(data._impl, "overflow", None)
    if overflow is None:
        return jnp.zeros(data.qpos.shape[:1], jnp.int32)
    return overflow


def overflow_kinds(bits: int) -> list[str]:
    """Names of the ``mujoco_warp.OverflowType`` flags set in ``bits`` (`physics_overflow`)."""
    import mujoco_warp  # only to decode; the jax impl never sets a bit

    return [kind.name for kind in mujoco_warp.OverflowType if bits & kind]


@struct.dataclass
class EnvState:
    """A batch of worlds after a reset or a step (leading axis = worlds)."""

    data: mjx.Data  # physics state
    obs: jax.Array  # (N, H, W, 3) uint8 image from the task camera, after the step;
    # (N, 0, 0, 3) when the env does not render (ManipulationEnv(render_obs=False))
    state: jax.Array  # (N, S) float32 low-dimensional task state (experts, state policies)
    reward: jax.Array  # (N,) float32 the task's sparse reward (the reference's env reward)
    dense_reward: jax.Array  # (N,) float32 shaped reward, for tests and baselines
    success: jax.Array  # (N,) bool the task's success criterion
    subgoal: jax.Array  # (N,) int32 how many of the task's subgoals the state satisfies
    done: jax.Array  # (N,) bool the episode reached its time limit on this step
    step_count: jax.Array  # (N,) int32 steps taken in the current episode


class Task(abc.ABC):
    """One world of a manipulation task. Methods act on a single world; the env vmaps."""

    name: ClassVar[str]
    xml_file: ClassVar[str]
    episode_length: ClassVar[int]
    action_dim: ClassVar[int]
    state_dim: ClassVar[int]
    num_subgoals: ClassVar[int]
    camera: ClassVar[str] = "task"
    image_shape: ClassVar[tuple[int, int]]  # (height, width) the reference's policy sees
    mirror_image: ClassVar[bool] = True
    control_period: ClassVar[float]  # seconds of simulated time per environment step
    timestep: ClassVar[float]  # holdjax's physics timestep (benchmarks/NOTES.md)
    # MuJoCo Warp preallocates contacts and constraint rows; these bound one world's.
    max_contacts: ClassVar[int] = 16
    max_constraint_rows: ClassVar[int] = 128
    # holdjax: the most (metres, per axis) the hand's mocap target may run ahead of the
    # hand; None lets it run on to its bounds, as the reference's does.
    max_lead: ClassVar[float | None] = None

    def __init__(self, timestep: float | None = None):
        self.mj_model = mujoco.MjModel.from_xml_path(os.path.join(ASSETS_DIR, self.xml_file))
        self.timestep = self.timestep if timestep is None else timestep
        self.mj_model.opt.timestep = self.timestep
        self.substeps = round(self.control_period / self.timestep) if self.timestep > 0 else 0
        if self.substeps < 1 or abs(self.substeps * self.timestep - self.control_period) > 1e-9:
            raise ValueError(f"{self.name}: the timestep must be positive and divide the "
                             f"control period ({self.control_period} s), got {self.timestep}")
        self.hand_body = self.mj_model.body("hand").id
        self.hand_target_mocap = self.mocap_id("hand_target")
        self.arm_mocaps = jnp.array([self.mocap_id(b) for b in ("upper_arm", "elbow", "forearm")])

    def mocap_id(self, body: str) -> int:
        return int(self.mj_model.body_mocapid[self.mj_model.body(body).id])

    @abc.abstractmethod
    def init_world(self, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Samples (qpos, hand mocap position) of a fresh episode."""

    @abc.abstractmethod
    def apply_action(self, data: mjx.Data, action: jax.Array) -> mjx.Data:
        """Sets mocap target and actuator controls from an action in [-1, 1]."""

    @abc.abstractmethod
    def observe(self, data: mjx.Data) -> jax.Array:
        """The low-dimensional state, shape (state_dim,)."""

    @abc.abstractmethod
    def evaluate(self, state: jax.Array) -> dict[str, jax.Array]:
        """success (bool), reward (sparse), dense_reward and subgoal (int) of a state."""

    @abc.abstractmethod
    def expert_action(self, state: jax.Array) -> jax.Array:
        """The scripted expert's action in [-1, 1] for a low-dimensional state."""

    @abc.abstractmethod
    def goal_worlds(self) -> dict[str, tuple[jax.Array, jax.Array]]:
        """Solved states whose renders are the goal images: file stem -> (qpos, hand pos)."""

    def hand_pos(self, data: mjx.Data) -> jax.Array:
        """Hand position from its slide joints (valid before kinematics are recomputed)."""
        return self.mj_model.body_pos[self.hand_body] + data.qpos[self.hand_qpos_slice]

    @property
    def hand_qpos_slice(self) -> slice:
        adr = self.mj_model.jnt_qposadr[self.mj_model.joint("hand_x").id]
        return slice(int(adr), int(adr) + 3)

    def moved_hand_target(self, data: mjx.Data, delta: jax.Array, low: jax.Array,
                          high: jax.Array) -> jax.Array:
        """The hand's mocap target moved by ``delta`` (3,): at most ``max_lead`` ahead of the
        hand, then clipped to the task's bounds ``low``/``high``."""
        target = data.mocap_pos[self.hand_target_mocap] + delta
        if self.max_lead is not None:
            hand = self.hand_pos(data)
            target = jnp.clip(target, hand - self.max_lead, hand + self.max_lead)
        return jnp.clip(target, low, high)

    def place_hand(self, qpos: jax.Array, hand: jax.Array) -> jax.Array:
        """``qpos`` with the hand's slide joints putting the hand at ``hand`` (3,)."""
        return qpos.at[self.hand_qpos_slice].set(hand - self.mj_model.body_pos[self.hand_body])


def ramp(x: jax.Array) -> jax.Array:
    """``x`` clipped to [0, 1]: the scripted experts' soft switches."""
    return jnp.clip(x, 0.0, 1.0)


def success_metrics(
    success: jax.Array, dense_reward: jax.Array, subgoal: jax.Array | None = None
) -> dict[str, jax.Array]:
    """``Task.evaluate``'s dict for tasks whose sparse reward is their success (all of the
    reference's); ``subgoal`` defaults to success for single-goal tasks."""
    return {
        "success": success,
        "reward": success.astype(jnp.float32),
        "dense_reward": dense_reward,
        "subgoal": (success if subgoal is None else subgoal).astype(jnp.int32),
    }


def sanitize_action(action: jax.Array) -> jax.Array:
    """Maps actions into [-1, 1]: out-of-range values are clipped, NaN means "no motion".

    A NaN from a diverged policy would otherwise reach the mocap target and poison the
    physics state of that world for good; +-inf clip to the bounds like any large value.
    """
    return jnp.clip(jnp.where(jnp.isnan(action), 0.0, action), -1.0, 1.0)


def image_to_float(obs: jax.Array) -> jax.Array:
    """uint8 image (as stored) -> float32 in [0, 1] (as networks see it)."""
    return obs.astype(jnp.float32) / 255.0


def central_crop(images: jax.Array) -> jax.Array:
    """The central square of images (..., H, W, C), as the reference crops the frames that
    its reward models score (odd margins floored)."""
    height, width = images.shape[-3:-1]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return images[..., top:top + side, left:left + side, :]


def crop_for_model(frames: jax.Array, size: int, zero_centering: bool) -> jax.Array:
    """uint8 frames (..., H, W, 3) as the HOLD models see them: the central square, resized
    bilinearly (jax's, antialiased) to ``size``, in [0, 1], or [-1, 1] when zero-centred."""
    images = image_to_float(central_crop(frames))
    images = jax.image.resize(images, (*images.shape[:-3], size, size, 3), method="bilinear")
    return images * 2.0 - 1.0 if zero_centering else images


def render_device(shard: int, devices: list, process_index: int) -> str:
    """The Warp device (``cuda:<this host's index>``) for the renderer of mesh position
    ``shard``, the trainer's ``devices[shard]``. Every process builds every position's
    renderer (each is a branch of one switch), but runs only its own: another process's
    position gets a placeholder context on this process's first device, as Warp cannot
    reach other hosts' devices."""
    device = devices[shard]
    if device.process_index != process_index:
        device = next(d for d in devices if d.process_index == process_index)
    return f"cuda:{device.local_hardware_id}"


class ManipulationEnv:
    """A batch of worlds of one task: jittable ``reset(key, num_envs)`` and ``step``."""

    def __init__(
        self,
        task: Task,
        impl: str = "auto",
        device_axis: tuple[str, int] | None = None,
        render_obs: bool = True,
    ):
        """``device_axis=(name, D)``: the env runs inside ``shard_map`` over a mesh axis of
        D devices, each stepping its own share of the worlds with its own renderer.
        ``render_obs=False``: ``reset``/``step`` skip the camera (``obs`` is empty), for
        policies and rewards that read only ``state``; ``render``/``render_worlds`` still work.
        """
        impl = resolve_impl(impl)
        self.task = task
        self.device_axis = device_axis
        self.render_obs = render_obs
        self.impl = impl
        self.image_shape = task.image_shape
        self.model = mjx.put_model(task.mj_model, impl=impl, device=local_device())
        self._render_model = (self.model if impl == "warp" else
                              mjx.put_model(task.mj_model, impl="warp", device=local_device()))
        self._renderers: dict[int, CameraRenderer] = {}
        if impl == "jax":
            self._render_template = render_template(task.mj_model)

    @property
    def episode_length(self) -> int:
        return self.task.episode_length

    @property
    def action_dim(self) -> int:
        return self.task.action_dim

    def renderer(self, num_envs: int, shard: int = 0) -> CameraRenderer:
        """The renderer for this batch size on device ``shard`` (Warp fixes the world count
        and the buffers of a render context)."""
        if (num_envs, shard) not in self._renderers:
            height, width = self.image_shape
            device = (render_device(shard, jax.devices(), jax.process_index())
                      if self.device_axis and jax.default_backend() == "gpu" else None)
            self._renderers[num_envs, shard] = CameraRenderer(
                self.task.mj_model, self._render_model, self.task.camera, height, width, num_envs,
                self.task.mirror_image, device,
            )
        return self._renderers[num_envs, shard]

    def render(self, data: mjx.Data) -> jax.Array:
        """uint8 images (N, H, W, 3) of a batch of worlds."""
        num_envs = data.qpos.shape[0]
        if self.impl == "jax":
            data = jax.vmap(as_render_data, in_axes=(None, 0))(self._render_template, data)
        if self.device_axis is None:
            return self.renderer(num_envs)(data)
        # Under shard_map each device must render into its own context's buffers.
        axis, count = self.device_axis
        shards = [self.renderer(num_envs, shard) for shard in range(count)]
        return jax.lax.switch(jax.lax.axis_index(axis), shards, data)

    def reset(self, key: jax.Array, num_envs: int) -> EnvState:
        """Fresh episodes for ``num_envs`` worlds, one independent key each."""
        return self.reset_with_keys(jax.random.split(key, num_envs))

    def reset_with_keys(self, keys: jax.Array) -> EnvState:
        """Fresh episodes, world i drawn with ``keys[i]`` (N, 2)."""
        return self.reset_at(*jax.vmap(self.task.init_world)(keys))

    def reset_at(self, qpos: jax.Array, hand_mocap: jax.Array) -> EnvState:
        """Fresh episodes from given worlds: positions ``qpos`` (N, nq), hand target (N, 3)."""
        return self._finish(self._worlds_at(qpos, hand_mocap),
                            jnp.zeros((qpos.shape[0],), jnp.int32))

    def step(self, state: EnvState, action: jax.Array) -> EnvState:
        """Advances every world by one control period; ``action`` is (N, action_dim)."""
        num_envs = state.step_count.shape[0]
        if action.shape != (num_envs, self.task.action_dim):
            raise ValueError(
                f"{self.task.name} takes actions of shape (worlds, {self.task.action_dim}) = "
                f"({num_envs}, {self.task.action_dim}), each component in [-1, 1]; got "
                f"{action.shape}")
        action = sanitize_action(action.astype(jnp.float32))
        data = jax.vmap(self._step_world)(state.data, action)
        return self._finish(data, state.step_count + 1)

    def render_worlds(self, qpos: jax.Array, hand_pos: jax.Array) -> jax.Array:
        """Images of worlds posed at ``qpos`` (N, nq) with the hand target at (N, 3)."""
        return self.render(self._worlds_at(qpos, hand_pos))

    def _worlds_at(self, qpos: jax.Array, hand_mocap: jax.Array) -> mjx.Data:
        return jax.vmap(functools.partial(self._world_at, num_envs=qpos.shape[0]))(
            qpos, hand_mocap)

    def _world_at(self, qpos: jax.Array, hand_mocap: jax.Array, num_envs: int) -> mjx.Data:
        if self.impl == "warp":  # Warp sizes its contact buffer for all worlds together
            data = mjx.make_data(self.task.mj_model, impl="warp", device=local_device(),
                                 naconmax=self.task.max_contacts * num_envs,
                                 njmax=self.task.max_constraint_rows)
        else:
            data = mjx.make_data(self.task.mj_model, impl="jax", device=local_device())
        mocap_pos = data.mocap_pos.at[self.task.hand_target_mocap].set(hand_mocap)
        data = data.replace(qpos=qpos, mocap_pos=mocap_pos)
        return self._pose_arm_and_forward(data)

    def _step_world(self, data: mjx.Data, action: jax.Array) -> mjx.Data:
        data = self.task.apply_action(data, action)
        data = jax.lax.fori_loop(
            0, self.task.substeps, lambda _, d: mjx.step(self.model, d), data
        )
        return self._pose_arm_and_forward(data)

    def _pose_arm_and_forward(self, data: mjx.Data) -> mjx.Data:
        """Draws the arm at the hand and recomputes kinematics for the current state.

        mj_step leaves poses one substep behind qpos (the reference renders that lagged
        state, a quirk not reproduced): the forward pass makes image and state agree.
        """
        positions, quats = arm.arm_link_poses(self.task.hand_pos(data))
        data = data.replace(
            mocap_pos=data.mocap_pos.at[self.task.arm_mocaps].set(positions),
            mocap_quat=data.mocap_quat.at[self.task.arm_mocaps].set(quats),
        )
        return mjx.forward(self.model, data)

    def _camera(self, data: mjx.Data) -> jax.Array:
        """The observation images, or empty ones (no render at all) when not ``render_obs``."""
        if self.render_obs:
            return self.render(data)
        return jnp.zeros((data.qpos.shape[0], 0, 0, 3), jnp.uint8)

    def _finish(self, data: mjx.Data, step_count: jax.Array) -> EnvState:
        state = jax.vmap(self.task.observe)(data)
        metrics = jax.vmap(self.task.evaluate)(state)
        return EnvState(
            data=data,
            obs=self._camera(data),
            state=state,
            reward=metrics["reward"].astype(jnp.float32),
            dense_reward=metrics["dense_reward"].astype(jnp.float32),
            success=metrics["success"],
            subgoal=metrics["subgoal"].astype(jnp.int32),
            done=step_count >= self.task.episode_length,
            step_count=step_count,
        )
