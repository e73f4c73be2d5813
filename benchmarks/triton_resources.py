"""Registers, spills and shared memory of the Pallas encoder kernels as Triton compiles them
for an H100, with no GPU present: how many programs an SM holds at once.

    pip install 'jax[cuda12]==<this jax version>' triton    # neither is a holdjax dependency
    JAX_PLATFORMS=cpu python benchmarks/triton_resources.py --tilings=64:8:16:1:576:1:1

The Pallas kernels (`holdjax/sac/pallas_conv.py`) gather their windows with computed
addresses, so their time on a GPU rests on how many warps an SM keeps resident to hide the
gathers' latency, which each program's registers and shared memory decide, and on spills
(local-memory traffic). The first GPU timing (NOTES.md) found them two thirds of an update.

For each tiling (`pallas_conv.Tiling`: output positions per block, forward and backward
warps, whether the backward pass gathers its windows again, the fewest backward programs,
whether the forward pass saves the backward's routes, whether the first layer's backward
multiplies patches)
this lowers a SAC encoder's two layers at batch 256 for the target
(`gpu_census.target_device`) with Pallas's ``debug=True``, which prints each kernel's Triton
IR, and compiles that IR with the `triton` package for sm_90, reading the binary's resource
use with the `cuobjdump` Triton ships. XLA compiles the same IR with its own copy of Triton,
possibly another version, so these figures are a proxy for XLA's: for choosing tilings, not
for replacing their timing on a GPU. ``128:4:4:0:0:0:0`` is the first GPU timing's tiling (run
here with today's kernel code).

Writes ``benchmarks/results/triton_resources-<target>[-<tag>]-<this machine>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import re
import subprocess
import sys
import tempfile
from unittest import mock

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_census  # noqa: E402
from gpu_census import compiling_for, target_device  # noqa: E402

from holdjax.sac import augment, networks, pallas_conv  # noqa: E402

# An H100 SM (CUDA occupancy limits for compute capability 9.0).
SMS = 132
REGISTERS_PER_SM = 65536
SHARED_PER_SM = 233472  # bytes, of which each block also takes 1 KB reserved
RESERVED_SHARED_PER_BLOCK = 1024
MAX_WARPS_PER_SM = 64
MAX_BLOCKS_PER_SM = 32
# A SAC encoder's layers: (name, input shape, kernel shape, kernels, input differentiated);
# "layer1_pair" is the critic's and the actor's first layers as one grouped call (fused
# encoders, `networks.encode_pair`). The first layer reads uint8 images through their random
# shifts, as an update gives them (`augment.ShiftedImages`; before 2026-12-06, bf16 images).
LAYERS = (("layer1", (48, 48, 3), (5, 5, 3, 8), 1, False),
          ("layer1_pair", (48, 48, 3), (5, 5, 3, 8), 2, False),
          ("layer2", (24, 24, 8), (5, 5, 8, 8), 1, True))
SHIFT_PAD = 4


def triton_modules(debug_output: str) -> list[tuple[str, str]]:
    """(kernel name, Triton IR) of each module Pallas printed with ``debug=True``, in order,
    with the debug printer's inline locations removed so that `triton` parses it."""
    found = []
    for match in re.finditer(r"^module @(\w+) \{.*?^\}", debug_output, re.S | re.M):
        ir = re.sub(r' "[^"\n]*"\(#loc\d*\)', "", match.group(0))
        ir = re.sub(r" \[unknown\]| #loc\d*", "", ir)
        # Upstream Triton does not parse XLA's spelling of the eviction hint; a discardable
        # attribute keeps the loads distinct as the hint does (it only steers caching).
        ir = ir.replace(" evictionPolicy = evict_first :", " {holdjax.evict_first} :")
        found.append((match.group(1), ir))
    return found


def occupancy(registers: int, shared_bytes: int, warps: int) -> dict:
    """Programs and warps an SM holds at once, and what limits them."""
    per_warp = -(-registers // 8) * 8 * 32  # registers are allocated per warp, 8 at a time
    limits = {"registers": REGISTERS_PER_SM // (per_warp * warps),
              "shared": SHARED_PER_SM // (shared_bytes + RESERVED_SHARED_PER_BLOCK),
              "warps": MAX_WARPS_PER_SM // warps, "blocks": MAX_BLOCKS_PER_SM}
    programs = min(limits.values())
    return {"programs_per_sm": programs, "warps_per_sm": programs * warps,
            "limited_by": min(limits, key=limits.get)}


def lower_layer(device, shape, kernel_shape, groups: int, input_grad: bool, batch: int,
                dtype: str, conv: str, tiling: pallas_conv.Tiling) -> str:
    """Pallas's debug output of one layer's forward and backward kernels lowered for
    ``device`` (the images' layer, no input gradient: shifted uint8 images), with ``groups``
    kernels side by side (a tuple of kernels when more than one)."""
    layer = networks.CONV_RELU_POOL[conv]

    def apply(x, kernels, biases):
        if groups == 1:
            kernels, biases = kernels[0], biases[0]
        return layer(x, kernels, biases, dtype, tiling=tiling)

    def values_and_grads(x, kernels, biases):
        y, vjp = jax.vjp(apply, x, kernels, biases)
        return y, vjp(jnp.ones_like(y))

    sharding = jax.sharding.SingleDeviceSharding(device)

    def spec(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    x = spec((batch, *shape), dtype) if input_grad else augment.ShiftedImages(
        spec((batch, *shape), jnp.uint8), spec((batch, 2), jnp.int32), SHIFT_PAD)
    args = [x, (spec(kernel_shape, jnp.float32),) * groups,
            (spec((kernel_shape[-1],), jnp.float32),) * groups]
    printed = io.StringIO()
    pallas_call = functools.partial(pallas_conv.pl.pallas_call, debug=True)
    with (mock.patch.object(pallas_conv.pl, "pallas_call", pallas_call),
          contextlib.redirect_stdout(printed), compiling_for(device)):
        jax.jit(values_and_grads).lower(*args)
    return printed.getvalue()


def compile_resources(ir: str, warps: int, stages: int = pallas_conv.PIPELINE_STAGES) -> dict:
    """Registers, stack (spill) bytes and shared memory of ``ir`` compiled for sm_90 with
    ``warps`` warps and ``stages`` pipelining stages (the kernels' own, by default)."""
    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ttir")
        with open(path, "w") as f:
            f.write(ir)
        compiled = triton.compile(path, target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": warps, "num_stages": stages})
        cubin = os.path.join(folder, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                            "cuobjdump")
        usage = subprocess.run([tool, "-res-usage", cubin], capture_output=True, text=True,
                               check=True).stdout
    registers, stack, static_shared = map(int, re.search(
        r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", usage).groups())
    return {"registers": registers, "stack_bytes": stack,
            "shared_bytes": compiled.metadata.shared + static_shared}


def kernel_rows(debug_output: str, layer: str, tiling: pallas_conv.Tiling,
                positions: int) -> list[dict]:
    """One row per kernel of a layer: the pooled forward pass, the backward pass, and the
    input gradient's convolution (a forward kernel after the backward one)."""
    rows, seen_backward = [], False
    for name, ir in triton_modules(debug_output):
        backward = name.startswith("_backward")
        kind = "backward" if backward else ("input_gradient" if seen_backward else "forward")
        seen_backward |= backward
        warps = tiling.backward_warps if backward else tiling.forward_warps
        # the input gradient's convolution has 4x the (unpooled) positions
        blocks = -(-positions * (4 if kind == "input_gradient" else 1) // tiling.block)
        programs = -(-blocks // tiling.blocks_per_program(blocks)) if backward else blocks
        resources = compile_resources(ir, warps)
        fit = occupancy(resources["registers"], resources["shared_bytes"], warps)
        rows.append({"tiling": str(tiling), "layer": layer, "kernel": kind,
                     "warps": warps, "programs": programs, **resources, **fit,
                     "waves": (programs / (SMS * fit["programs_per_sm"])
                               if fit["programs_per_sm"] else None)})  # None: does not fit
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="h100", help="a gpu_targets/ name")
    # the first GPU timing's tiling; today's; the previous one (2 blocks a backward program);
    # the one before (8 backward warps, no loops, windows); today's without loops; patches
    # recomputing the routes
    parser.add_argument("--tilings", default="128:4:4:0:0:0:0,64:8:16:1:576:1:1,"
                        "64:8:16:1:1152:1:1,64:8:8:1:0:1:0,64:8:16:1:0:1:1,64:8:8:1:0:0:1",
                        help="comma-separated block:forward_warps:backward_warps:regather:"
                        "backward_programs:saved_routes:patches")
    parser.add_argument("--conv", default="pallas", choices=networks.PALLAS_CONVS)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
    parser.add_argument("--tag", default="", help="names a variant in the file name")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    if args.target == "cpu":
        raise SystemExit("--target must be a GPU (a gpu_targets/ name): the CPU runs no Triton")
    tilings = [pallas_conv.Tiling.parse(t) for t in args.tilings.split(",")]
    device, _ = target_device(args.target)
    print(f"{'tiling':>10} {'layer':>11} {'kernel':>14} {'warps':>5} {'regs':>4} {'spill':>5} "
          f"{'shared':>7} {'warps/SM':>8} {'limit':>9}")
    rows = []
    for tiling in tilings:
        for layer, shape, kernel_shape, groups, input_grad in LAYERS:
            text = lower_layer(device, shape, kernel_shape, groups, input_grad, args.batch,
                               args.dtype, args.conv, tiling)
            positions = args.batch * shape[0] * shape[1] // 4
            for row in kernel_rows(text, layer, tiling, positions):
                rows.append(row)
                print(f"{row['tiling']:>10} {layer:>11} {row['kernel']:>14} {row['warps']:>5} "
                      f"{row['registers']:>4} {row['stack_bytes']:>5} {row['shared_bytes']:>7} "
                      f"{row['warps_per_sm']:>8} {row['limited_by']:>9}", flush=True)
    import triton

    payload = {"conv": args.conv, "batch_size": args.batch, "dtype": args.dtype,
               "triton": triton.__version__, "rows": rows}
    return write_census("triton_resources", args, device.device_kind, payload)


if __name__ == "__main__":
    main()
