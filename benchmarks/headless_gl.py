"""Picks a headless OpenGL platform for MuJoCo before anything imports ``mujoco``.

``MUJOCO_GL=egl`` on a machine without libEGL makes ``import mujoco`` itself fail (PyOpenGL
raises an AttributeError that mujoco does not catch), as on the GPU machines here. So the
scripts that render with ``mujoco.Renderer`` call :func:`choose_mujoco_gl` first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

PLATFORMS = (("egl", "EGL"), ("osmesa", "OSMesa"))


def choose_mujoco_gl() -> str:
    """Sets ``MUJOCO_GL`` (unless the user did) to the first of egl, osmesa whose library
    loads, else to ``disabled`` (no ``mujoco.Renderer``); returns the value."""
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "disabled"
        for platform, library in PLATFORMS:
            name = ctypes.util.find_library(library)
            try:
                if name:
                    ctypes.CDLL(name)
                    os.environ["MUJOCO_GL"] = platform
                    break
            except OSError:
                continue
    return os.environ["MUJOCO_GL"]
