"""holdjax tasks: batched MJX manipulation environments with on-device rendering."""

from __future__ import annotations

from holdjax.envs.base import EnvState, ManipulationEnv, Task, image_to_float, sanitize_action


def _task_classes() -> dict[str, type[Task]]:
    from holdjax.envs.drawer_open import DrawerOpen
    from holdjax.envs.pushing import Pushing
    from holdjax.envs.tabletop import CloseDrawer, CupForward, FaucetRight

    return {cls.name: cls for cls in (Pushing, DrawerOpen, CloseDrawer, CupForward, FaucetRight)}


TASKS = tuple(_task_classes())


def task_class(name: str) -> type[Task]:
    """The class of task ``name`` (its constants, without building its model); unknown names
    raise an error listing the valid ones."""
    classes = _task_classes()
    if name not in classes:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(classes)}")
    return classes[name]


def make_task(name: str, timestep: float | None = None) -> Task:
    """The task called ``name``.

    ``timestep`` overrides the physics timestep (the control period stays the reference's).
    """
    return task_class(name)(timestep)


def make(
    name: str,
    impl: str = "auto",
    timestep: float | None = None,
    device_axis: tuple[str, int] | None = None,
) -> ManipulationEnv:
    """A :class:`ManipulationEnv` of task ``name`` (physics impl ``auto``, ``jax``, ``warp``)."""
    return ManipulationEnv(make_task(name, timestep), impl=impl, device_axis=device_axis)


__all__ = [
    "TASKS", "EnvState", "ManipulationEnv", "Task", "image_to_float", "make", "make_task",
    "sanitize_action", "task_class",
]
