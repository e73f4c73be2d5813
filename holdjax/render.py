"""On-device batch rendering of task cameras with MJX's renderer (MuJoCo Warp).

The renderer needs Warp-impl model and data. Physics may run under either MJX impl:
with ``impl='jax'`` the few kinematic fields the renderer reads are copied into a
Warp-impl data template (:func:`as_render_data`), which XLA turns into plain buffer
copies; ``tests/test_render.py`` checks the images are identical either way.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import mujoco
import warp
from mujoco import mjx

warp.config.log_level = warp.LOG_WARNING  # else Warp prints a line per kernel module loaded

# Pose fields of mjx.Data that MJX's BVH refit and renderer read (mujoco/mjx/warp/bvh.py,
# render.py). Lights are read too, from the template: holdjax scenes fix them to the world.
RENDER_FIELDS = ("geom_xpos", "geom_xmat", "cam_xpos", "cam_xmat")


class CameraRenderer:
    """Renders one named camera of a scene for a fixed number of worlds.

    MuJoCo Warp allocates its buffers per world count, so a renderer is built for one
    ``num_worlds``; :class:`holdjax.envs.base.ManipulationEnv` caches one per batch size
    (and per device when the batch is split over devices). ``device`` is the Warp device
    (e.g. ``cuda:1``) whose buffers it uses; default: Warp's default device.
    Images come back as uint8 (N, H, W, 3), mirrored left-right when ``mirror`` is set,
    as the reference's final images are.
    """

    def __init__(
        self,
        mj_model: mujoco.MjModel,
        render_model: mjx.Model,
        camera: str,
        height: int,
        width: int,
        num_worlds: int,
        mirror: bool,
        device: str | None = None,
    ):
        cam_id = mujoco.mj_name2id(mj_model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            cameras = [mj_model.camera(i).name for i in range(mj_model.ncam)]
            raise ValueError(f"camera {camera!r} is not in the scene; its cameras: "
                             f"{', '.join(cameras) or 'none'}")
        self.height, self.width, self.num_worlds, self.mirror = height, width, num_worlds, mirror
        if render_model.impl != mjx.Impl.WARP:
            raise ValueError("the renderer needs a Warp-impl model (mjx.put_model(impl='warp'))")
        self.model = render_model
        cam_active = [i == cam_id for i in range(mj_model.ncam)]
        self.context = mjx.create_render_context(
            mjm=mj_model,
            nworld=num_worlds,
            cam_res=(width, height),
            cam_active=cam_active,
            render_rgb=True,
            render_depth=False,
            use_textures=False,
            use_shadows=False,
            enabled_geom_groups=[0, 1, 2],
            devices=[device] if device else None,
        )

    def __call__(self, data: mjx.Data) -> jax.Array:
        """Renders a batch of Warp-impl data (leading axis = worlds) to uint8 images."""
        n = data.qpos.shape[0]
        if n != self.num_worlds:
            raise ValueError(f"renderer built for {self.num_worlds} worlds, got {n}")
        ctx = self.context.pytree()
        data = jax.vmap(mjx.refit_bvh, in_axes=(None, 0, None))(self.model, data, ctx)
        packed, _, _ = jax.vmap(mjx.render, in_axes=(None, 0, None))(self.model, data, ctx)
        return unpack_rgb(packed, self.height, self.width, self.mirror)


def unpack_rgb(packed: jax.Array, height: int, width: int, mirror: bool) -> jax.Array:
    """Unpacks MuJoCo Warp's uint32 ABGR pixels (one camera) into uint8 RGB images."""
    packed = packed[..., : height * width]
    channels = [(packed >> shift) & 0xFF for shift in (16, 8, 0)]
    rgb = jnp.stack(channels, axis=-1).astype(jnp.uint8)
    rgb = rgb.reshape(packed.shape[:-1] + (height, width, 3))
    return jnp.flip(rgb, axis=-2) if mirror else rgb


def local_device() -> jax.Device:
    """Where MJX puts models and data: this process's first device. MJX's own default,
    ``jax.devices()[0]``, belongs to process 0 in a multi-process job, and an array there
    cannot enter another process's programs."""
    return jax.local_devices()[0]


def render_template(mj_model: mujoco.MjModel) -> mjx.Data:
    """One world's Warp-impl data after a forward pass, for :func:`as_render_data`. Its
    contacts, which the renderer never reads, are zeroed: ``put_data`` leaves one of their
    arrays as allocated, and its garbage would otherwise become a constant of every program
    that renders, different in each process, so that no persistent compilation cache
    (``JAX_COMPILATION_CACHE_DIR``) could give one run the programs another compiled."""
    data = mujoco.MjData(mj_model)
    mujoco.mj_forward(mj_model, data)
    template = mjx.put_data(mj_model, data, impl="warp", device=local_device())
    impl = template._impl
    contacts = {field.name: jnp.zeros_like(getattr(impl, field.name))
                for field in dataclasses.fields(impl) if field.name.startswith("contact__")}
    return template.replace(_impl=impl.replace(**contacts))


def as_render_data(template: mjx.Data, data: mjx.Data) -> mjx.Data:
    """Copies the poses the renderer reads from any-impl data into Warp-impl data.

    ``template`` is one world's Warp-impl data after a forward pass (it supplies the
    world-fixed light poses); ``data`` may be batched, in which case call under vmap.
    """
    return template.replace(**{name: getattr(data, name) for name in RENDER_FIELDS})
