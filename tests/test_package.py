"""What a plain (non-editable) ``pip install .`` ships: the built wheel holds the data files
that holdjax reads beside its code, where it looks for them."""

import os
import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT

from holdjax import envs
from holdjax.config import available_configs
from holdjax.envs import goal_images


def test_the_wheel_ships_goal_images_mjcf_and_configs(tmp_path):
    # Built from a copy: setuptools' build/ folder in the tree would keep files from an
    # earlier build (and the tree would keep the folder).
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "runs", ".device", ".whl", ".gl", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = [name for name in os.listdir(tmp_path) if name.endswith(".whl")]
    names = set(zipfile.ZipFile(tmp_path / wheel).namelist())
    # goal_images.py looks for the images in goal_images/ beside the holdjax package.
    root = os.path.dirname(os.path.dirname(os.path.dirname(goal_images.__file__)))
    folder = os.path.relpath(goal_images.GOAL_IMAGES_DIR, root)
    for task in envs.TASKS:
        for name in envs.make_task(task).goal_worlds():
            assert f"{folder}/{name}.npy" in names, name
    assets = os.path.join(os.path.dirname(envs.__file__), "assets")
    for xml in os.listdir(assets):
        assert f"holdjax/envs/assets/{xml}" in names, xml
    for config in available_configs():
        assert f"configs/{config}.py" in names, config
