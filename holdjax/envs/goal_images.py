"""Goal images: renders of each task's solved states from the task camera.

    python -m holdjax.envs.goal_images            # re-render all into goal_images/
    python -m holdjax.envs.goal_images --check    # exit 1 if the committed files differ

The test suite re-renders them and checks they match (tests/test_envs.py).

Each image is stored as ``goal_images/<name>.npy`` (uint8, H x W x 3, as the policy and
reward model see it) with a PNG beside it for people.
"""

from __future__ import annotations

import argparse
import os
import sys

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np

from holdjax import envs


class GoalImageError(ValueError):
    """A goal image file is not the task camera's image (shape or dtype)."""


GOAL_IMAGES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "goal_images")


def render_goal_images(task: str, impl: str = "auto") -> dict[str, np.ndarray]:
    """name -> uint8 image of every solved state of ``task``."""
    env = envs.make(task, impl=impl)
    worlds = env.task.goal_worlds()
    qpos = jnp.stack([q for q, _ in worlds.values()])
    hand = jnp.stack([h for _, h in worlds.values()])
    images = np.asarray(jax.jit(env.render_worlds)(qpos, hand))
    return dict(zip(worlds, images, strict=True))


def load_goal_image(name: str, directory: str = GOAL_IMAGES_DIR) -> np.ndarray:
    """The committed goal image ``name`` (e.g. ``pushing``, ``drawer_open_step1``)."""
    path = os.path.join(directory, f"{name}.npy")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no goal image {path}; render them with `python -m holdjax.envs.goal_images`")
    return np.load(path)


def load_goal_images(task: envs.Task, directory: str = GOAL_IMAGES_DIR) -> np.ndarray:
    """The committed goal images of ``task``, one per subgoal in order: (G, H, W, 3) uint8,
    each checked to be the task camera's image (an edited or foreign file is named)."""
    expected = (*task.image_shape, 3)
    images = []
    for name in task.goal_worlds():
        image = load_goal_image(name, directory)
        if image.shape != expected or image.dtype != np.uint8:
            raise GoalImageError(
                f"goal image {os.path.join(directory, name + '.npy')} is {image.dtype} "
                f"{image.shape}; {type(task).__name__}'s camera gives uint8 {expected}: "
                "re-render it with `python -m holdjax.envs.goal_images`")
        images.append(image)
    return np.stack(images)


# Grey levels by which a fresh render may differ from a committed image (MuJoCo Warp's
# renderer on another machine or impl; tests/test_envs.py allows the same).
CHECK_TOLERANCE = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m holdjax.envs.goal_images")
    parser.add_argument("--tasks", default=",".join(envs.TASKS))
    parser.add_argument("--out", default=GOAL_IMAGES_DIR)
    parser.add_argument("--check", action="store_true",
                        help="compare with the files in --out instead of writing (within "
                             f"{CHECK_TOLERANCE} grey levels: renderers differ that much)")
    args = parser.parse_args(argv)
    tasks = args.tasks.split(",")
    for task in tasks:
        try:
            envs.task_class(task)
        except ValueError as e:
            parser.error(f"--tasks: {e}")
    mismatched = []
    for task in tasks:
        for name, image in render_goal_images(task).items():
            path = os.path.join(args.out, f"{name}.npy")
            if args.check:
                committed = np.load(path) if os.path.exists(path) else None
                if committed is None or committed.shape != image.shape or (
                        committed.dtype != image.dtype):
                    found = (f"no {path}" if committed is None else
                             f"{committed.dtype} {committed.shape}, the camera gives "
                             f"{image.dtype} {image.shape}")
                    print(f"{name}: DIFFERS ({found})")
                    mismatched.append(name)
                    continue
                difference = int(np.abs(committed.astype(int) - image).max())
                same = difference <= CHECK_TOLERANCE
                print(f"{name}: {'matches' if same else 'DIFFERS'} (largest difference "
                      f"{difference} grey levels)")
                mismatched += [] if same else [name]
                continue
            os.makedirs(args.out, exist_ok=True)
            np.save(path, image)
            imageio.imwrite(os.path.join(args.out, f"{name}.png"), image.repeat(4, 0).repeat(4, 1))
            print(f"wrote {path}")
    return 1 if mismatched else 0


if __name__ == "__main__":
    sys.exit(main())
