"""holdjax tasks: batched MJX manipulation environments with on-device rendering."""

from __future__ import annotations

from holdjax.envs.base import EnvState, ManipulationEnv, Task, image_to_float, sanitize_action


def _task_classes() -> dict[str, type[Task]]:
    from holdjax.envs.pushing import Pushing

    return {cls.name: cls for cls in (Pushing,)}


TASKS = tuple(_task_classes())


def make_task(name: str) -> Task:
    """The task called ``name``; unknown names raise an error listing the valid ones."""
    classes = _task_classes()
    if name not in classes:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(classes)}")
    return classes[name]()


def make(name: str, impl: str = "warp", image_shape: tuple[int, int] | None = None):
    """A :class:`ManipulationEnv` of task ``name``."""
    return ManipulationEnv(make_task(name), impl=impl, image_shape=image_shape)


__all__ = [
    "TASKS", "EnvState", "ManipulationEnv", "Task", "image_to_float", "make", "make_task",
    "sanitize_action",
]
