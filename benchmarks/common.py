"""Helpers shared by the benchmark scripts: timing, device names, result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from collections.abc import Callable
from importlib import metadata

import jax

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
PACKAGES = ("jax", "jaxlib", "mujoco", "mujoco-mjx", "mujoco-warp", "warp-lang", "flax", "brax")


def device_name() -> str:
    """A file-name-safe name of the default device, e.g. ``cpu`` or ``nvidia-h100-80gb-hbm3``."""
    kind = jax.devices()[0].device_kind
    return re.sub(r"[^a-z0-9]+", "-", kind.lower()).strip("-")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first call seconds incl. compilation, best of ``repeats`` later calls in seconds)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return first, best


def write_results(name: str, payload: dict, out_dir: str | None = None,
                  device: str | None = None, tag: str = "") -> str:
    """Writes ``<out_dir>/<name>[-<tag>]-<device>.json`` (``out_dir`` default: RESULTS_DIR)
    with device and versions; returns the path.

    ``device`` names the machine for figures measured elsewhere (then platform and versions
    are this machine's, which summarised them, and the file says so).
    """
    out_dir = out_dir or RESULTS_DIR
    name = f"{name}-{tag}" if tag else name
    os.makedirs(out_dir, exist_ok=True)
    elsewhere = {} if device is None else {"measured_on": device, "summarised_here": True}
    payload = {
        "benchmark": name,
        "device": device or jax.devices()[0].device_kind,
        **elsewhere,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d"),
        **payload,
    }
    path = os.path.join(out_dir, f"{name}-{device or device_name()}.json")
    with open(path + ".tmp", "w") as f:  # replaced whole: a run killed mid-write keeps the last
        json.dump(payload, f, indent=1)
    os.replace(path + ".tmp", path)
    return path


def write_census(name: str, args: argparse.Namespace, target_device: str,
                 payload: dict) -> dict:
    """Writes a deviceless census (compiled here for ``args.target``, a `gpu_targets/` name or
    cpu) as ``<name>-<target>[-<args.tag>]-<this machine>.json`` in ``args.out``, says where,
    and returns its payload."""
    payload = {"target": args.target, "target_device": target_device, **payload}
    tag = "-".join(filter(None, (args.target, args.tag)))
    print(f"wrote {write_results(name, payload, out_dir=args.out, tag=tag)}")
    return payload


def add_holdc_arguments(parser: argparse.ArgumentParser) -> None:
    """The HOLD-C size flags of the speed benchmarks (default: the released ResNet-50, 256 px;
    bf16 on accelerators)."""
    parser.add_argument("--holdc_layers", type=int, default=50)
    parser.add_argument("--holdc_filters", type=int, default=64)
    parser.add_argument("--holdc_crop_size", type=int, default=256)
    parser.add_argument("--reward_dtype",
                        default="float32" if jax.default_backend() == "cpu" else "bfloat16")


def holdc_config(args: argparse.Namespace):
    """The `holdc.HoldCConfig` those flags describe."""
    from holdjax.reward import holdc

    return holdc.HoldCConfig(num_layers=args.holdc_layers, num_filters=args.holdc_filters,
                             crop_size=args.holdc_crop_size, dtype=args.reward_dtype)
