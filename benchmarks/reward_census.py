"""The kernels and bytes of a reward network's forward pass on N frames as XLA compiles it for
a GPU, with no GPU present, in two forms each: HOLD-C's and R3M's ResNets as the checkpoint
has them (each convolution, then its batch norm) and folded, as the reward runs them
(`holdjax.reward.batch_norm`); HOLD-R's per-frame spatial transformer (the fused step's
per-step part) with flax's attention, with cuDNN's flash attention (`HoldRConfig.attention`),
and with that and its parameters cast to bf16 once (`holdr.scoring_variables`), as the reward
runs it.

    JAX_PLATFORMS=cpu python benchmarks/reward_census.py --models=holdc,r3m,holdr --frames=512

The same deviceless compile as `gpu_census.py` (which see for the method and its limits): the
forward pass of a `lax.scan` over two batches of frames, the pushing camera's 48x48 uint8
images as the fused step renders them, preprocessing included; one scan step is one batch.
``floor_ms`` = bytes / the card's bandwidth + kernels x ``--kernel_floor_us``. Writes
``benchmarks/results/reward_census-<target>[-<tag>]-<this machine>.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import write_census  # noqa: E402
from gpu_census import compiling_for, loop_body_kernels, summarize, target_device  # noqa: E402

from holdjax.reward import holdc, holdr, r3m  # noqa: E402

FRAME_SHAPE = (48, 48, 3)  # the pushing camera's
FORMS = {"holdc": ("checkpoint", "folded"), "r3m": ("checkpoint", "folded"),
         "holdr": ("flax_attention", "cudnn_attention", "cudnn_cast_once")}
CROP_SIZES = {"holdc": 256, "r3m": 224, "holdr": 256}  # the released models'


def model_and_variables(model: str, form: str, layers: int, filters: int, crop_size: int,
                        dtype: str):
    """(config, abstract variables of ``form``, function (config, variables, frames) ->
    per-frame output) of a reward network. ``layers`` and ``filters`` size the ResNets
    (HOLD-R is the released ViViT-L, or a 1-layer ViT of width ``filters`` where ``layers``
    is below 24, for tests)."""
    if model == "holdc":
        config = holdc.HoldCConfig(num_layers=layers, num_filters=filters, crop_size=crop_size,
                                   dtype=dtype)
        variables = holdc.abstract_variables(config)
        if form == "folded":
            variables = jax.eval_shape(lambda v: holdc.fold_batch_norm(config, v), variables)
        return config, variables, holdc.embed
    if model == "r3m":
        config = r3m.R3MConfig(num_layers=layers, num_filters=filters, crop_size=crop_size,
                               resize_size=crop_size, dtype=dtype)
        variables = r3m.abstract_variables(config)
        if form == "folded":
            variables = jax.eval_shape(lambda v: r3m.fold_batch_norm(config, v), variables)
        return config, variables, r3m.embed
    if model == "holdr":
        small = {} if layers >= 24 else dict(
            hidden_size=filters * 16, spatial_layers=1, spatial_heads=2,
            spatial_mlp_dim=filters * 32, temporal_layers=1, temporal_heads=2,
            temporal_mlp_dim=filters * 32)
        config = holdr.HoldRConfig(crop_size=crop_size, dtype=jnp.dtype(dtype),
                                   attention="flax" if form == "flax_attention" else "cudnn",
                                   **small)
        variables = holdr.variable_shapes(config)
        if form == "cudnn_cast_once":  # as the reward runs it
            variables = jax.eval_shape(lambda v: holdr.scoring_variables(config, v), variables)
        return config, variables, holdr.frame_features
    raise SystemExit(f"unknown model {model!r}; valid: {', '.join(FORMS)}")


def compile_forward(model: str, form: str, frames: int, device: jax.Device,
                    **network) -> tuple[str, float]:
    """Optimized HLO of a scan of the model's forward pass over two batches of ``frames``,
    and the compile time."""
    config, variables, embed = model_and_variables(model, form, **network)
    sharding = jax.sharding.SingleDeviceSharding(device)
    variables = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), variables)
    batches = jax.ShapeDtypeStruct((2, frames, *FRAME_SHAPE), jnp.uint8, sharding=sharding)

    def run(variables, batches):
        return jax.lax.scan(lambda c, f: (c, embed(config, variables, f)), 0, batches)[1]

    start = time.perf_counter()
    with compiling_for(device):
        compiled = jax.jit(run).lower(variables, batches).compile()
    return compiled.as_text(), time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="h100", help="cpu, or a gpu_targets/ name")
    parser.add_argument("--models", default="holdc,r3m,holdr",
                        help="comma-separated: holdc, r3m, holdr")
    parser.add_argument("--frames", type=int, default=512, help="frames a batch (worlds)")
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--crop_size", type=int, default=0,
                        help="the network's input side (0: each model's released)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--kernel_floor_us", type=float, default=2.0)
    parser.add_argument("--tag", default="", help="names a variant of the code in the file name")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)

    device, bandwidth = target_device(args.target)
    print(f"{'model':>6} {'form':>15} {'kernels':>8} {'MB':>9} {'floor ms':>9} "
          f"{'compile s':>9}")
    rows = []
    for model in args.models.split(","):
        if model not in FORMS:
            raise SystemExit(f"unknown model {model!r}; valid: {', '.join(FORMS)}")
        crop = args.crop_size or CROP_SIZES[model]
        for form in FORMS[model]:
            text, compile_s = compile_forward(
                model, form, args.frames, device, layers=args.layers,
                filters=args.filters, crop_size=crop, dtype=args.dtype)
            summary = summarize(loop_body_kernels(text), bandwidth, args.kernel_floor_us)
            row = {"model": model, "form": form, "frames": args.frames, "crop_size": crop,
                   "compile_s": compile_s, "kernels": summary.pop("kernels_per_update"),
                   "mb": summary.pop("mb_per_update"),
                   "floor_ms": summary.pop("floor_us") / 1e3, **summary}
            rows.append(row)
            print(f"{model:>6} {form:>15} {row['kernels']:>8} {row['mb']:>9.0f} "
                  f"{row['floor_ms']:>9.2f} {compile_s:>9.1f}", flush=True)
    payload = {"bandwidth_bytes_per_s": bandwidth, "kernel_floor_us": args.kernel_floor_us,
               "frame_shape": list(FRAME_SHAPE), "layers": args.layers,
               "filters": args.filters, "dtype": args.dtype, "rows": rows}
    return write_census("reward_census", args, device.device_kind, payload)


if __name__ == "__main__":
    main()
