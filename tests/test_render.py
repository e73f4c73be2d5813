"""MJX batch rendering: packing, mirroring, and the jax-physics -> Warp-render path."""

import dataclasses
import hashlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import cached_env
from mujoco import mjx

from holdjax.render import RENDER_FIELDS, CameraRenderer, as_render_data, unpack_rgb

# The render template's bytes, in a process of its own.
TEMPLATE_DIGEST = """
import hashlib, jax, numpy as np
from holdjax import envs
from holdjax.render import render_template
leaves = jax.tree.leaves(render_template(envs.make_task("pushing").mj_model))
print(hashlib.sha256(b"".join(np.asarray(leaf).tobytes() for leaf in leaves)).hexdigest())
"""


def test_unpack_rgb_decodes_abgr_and_mirrors():
    # Two pixels in one row, red then blue, packed as mjx.get_rgb decodes them (b lowest).
    packed = jnp.array([[0xFFFF0000, 0xFF0000FF]], jnp.uint32)
    rgb = unpack_rgb(packed, height=1, width=2, mirror=False)
    np.testing.assert_array_equal(rgb[0, 0], [[255, 0, 0], [0, 0, 255]])
    mirrored = unpack_rgb(packed, height=1, width=2, mirror=True)
    np.testing.assert_array_equal(mirrored[0, 0], [[0, 0, 255], [255, 0, 0]])
    assert rgb.dtype == jnp.uint8


def test_as_render_data_copies_only_poses():
    env = cached_env("pushing", "jax")
    qpos, hand = env.task.goal_worlds()["pushing"]
    data = jax.jit(env._world_at, static_argnums=2)(qpos, hand, 1)
    converted = as_render_data(env._render_template, data)
    for name in RENDER_FIELDS:
        np.testing.assert_array_equal(getattr(converted, name), getattr(data, name))
    assert converted.impl == env._render_template.impl
    # Everything else is the template's (with the poses put back, nothing differs).
    template = env._render_template
    restored = converted.replace(**{name: getattr(template, name) for name in RENDER_FIELDS})
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(template), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_camera_not_in_the_scene_is_named_with_the_scenes_cameras():
    env = cached_env("pushing", "jax")
    with pytest.raises(ValueError, match=r"camera 'top' is not in the scene; its cameras: "
                                         + env.task.camera):
        CameraRenderer(env.task.mj_model, env._render_model, "top", 48, 48, 1, False)


def test_a_renderer_refuses_a_jax_impl_model_and_another_world_count():
    env = cached_env("pushing", "jax")
    with pytest.raises(ValueError, match="needs a Warp-impl model"):
        CameraRenderer(env.task.mj_model, mjx.put_model(env.task.mj_model, impl="jax"),
                       env.task.camera, 48, 48, 1, False)
    renderer = env.renderer(2)
    with pytest.raises(ValueError, match="renderer built for 2 worlds, got 3"):
        renderer(types.SimpleNamespace(qpos=jnp.zeros((3, env.task.mj_model.nq))))


def test_the_render_template_is_the_same_in_every_process():
    """Its contacts (which `put_data` leaves partly as allocated) are zeroed, so the programs
    that render lower alike in every process and a persistent compilation cache serves them
    (a warm cache halved a tiny run's start on the CPU: NOTES.md)."""
    impl = cached_env("pushing", "jax")._render_template._impl
    contacts = [f.name for f in dataclasses.fields(impl) if f.name.startswith("contact__")]
    assert "contact__geomcollisionid" in contacts
    for name in contacts:
        assert not np.asarray(getattr(impl, name)).any(), name
    template = cached_env("pushing", "jax")._render_template
    here = hashlib.sha256(b"".join(np.asarray(leaf).tobytes()
                                   for leaf in jax.tree.leaves(template))).hexdigest()
    there = subprocess.run([sys.executable, "-c", TEMPLATE_DIGEST], capture_output=True,
                           text=True, check=True).stdout.split()[-1]
    assert there == here


def test_jax_physics_renders_like_warp_physics():
    """Same world under both MJX impls: the images agree (the conversion is correct)."""
    env_jax, env_warp = cached_env("pushing", "jax"), cached_env("pushing", "warp")
    qpos, hand = env_jax.task.goal_worlds()["pushing"]
    moved = qpos.at[env_jax.task.puck_qpos].add(-0.05)
    qpos, hand = jnp.stack([qpos, moved]), jnp.stack([hand, hand + 0.02])
    images_jax = np.asarray(jax.jit(env_jax.render_worlds)(qpos, hand)).astype(int)
    images_warp = np.asarray(jax.jit(env_warp.render_worlds)(qpos, hand)).astype(int)
    assert np.abs(images_jax - images_warp).max() <= 2
    assert np.abs(images_jax - images_warp).mean() < 0.05
