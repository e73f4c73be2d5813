"""R3M, the paper's figure-5 baseline: distances between frozen R3M ResNet embeddings.

R3M (Nair et al. 2022, "R3M: A Universal Visual Representation for Robot Manipulation",
github.com/facebookresearch/r3m) is a torchvision ResNet trained on Ego4D videos, its ``fc``
replaced by the identity, so the embedding is the pooled 2048-d ResNet-50 feature. The
reference (hold-policies ``dist_models/r3m.py``) loads it with ``r3m.load_r3m("resnet50")``
and scores a frame by the Euclidean distance between the embeddings of frame and goal.

Weights: the released ResNet-50 ``model.pt``, which ``r3m/__init__.py`` of the R3M repository
downloads from https://drive.google.com/uc?id=1Xu0ssuG0N1zjZS54wmWzJ7-nb0-7XzbA into
``~/.r3m/r3m_50/model.pt``. holdjax looks for it at ``$HOLD_TOP_DIR/r3m/r3m_50/model.pt``,
then at that ``~/.r3m`` path, unless given a path. The file is read without torch: it is a
``torch.save`` zip archive, unpickled here with only tensors, storages and dicts allowed
(see :func:`read_torch_checkpoint`). Its ``'r3m'`` entry is the state dict of the
DataParallel-wrapped R3M module (``module.convnet.<torchvision key>``, plus the language
heads, which are ignored). :func:`convert_to_orbax` saves the import as an orbax checkpoint,
and :func:`load_r3m` reads either form.

The flax ResNet mirrors torchvision's (v1.5: the stride sits on the 3x3 convolution of a
bottleneck; batch norm eps 1e-5, always with the running statistics). Its variables are
named after the torch keys, ``layer1.0.downsample.1.running_var`` becoming
``batch_stats/layer1_0/downsample_1/var``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from holdjax.reward import batch_norm
from holdjax.reward.scenic_checkpoint import (
    CheckpointMismatchError,
    leaf_problems,
    restore_variables,
    save_converted,
    save_orbax,
)

# Depth -> (blocks per stage, bottleneck blocks): torchvision's ResNets (R3M released 18/34/50).
LAYOUTS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
BN_EPSILON = 1e-5
# R3M's ``normlayer`` for ResNets: torchvision's ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class R3MConfig:
    """The R3M network and its input; defaults are the released ResNet-50 and the reference's
    ``Resize(256)`` + ``CenterCrop(224)``."""

    num_layers: int = 50
    num_filters: int = 64  # stem width; stage k has num_filters * 2**k (x4 out if bottleneck)
    resize_size: int = 256  # the shorter side is resized to this...
    crop_size: int = 224  # ...then the central crop_size square is the network's input
    # compute dtype ("bfloat16" for speed); the scoring (folded) parameters are cast to it once
    dtype: str = "float32"

    def __post_init__(self):
        if self.num_layers not in LAYOUTS:
            raise ValueError(f"num_layers {self.num_layers} not in {sorted(LAYOUTS)}")
        if not 0 < self.crop_size <= self.resize_size:
            raise ValueError(f"need 0 < crop_size {self.crop_size} <= resize_size "
                             f"{self.resize_size}")
        jnp.dtype(self.dtype)  # fails early on a bad dtype name

    @property
    def embedding_size(self) -> int:
        return self.num_filters * 8 * (4 if LAYOUTS[self.num_layers][1] else 1)

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]], **overrides) -> R3MConfig:
        """The ResNet a checkpoint holds (R3M released 18, 34 and 50), read from its leaf
        names and the stem's width: torchvision keys (``conv1.weight`` OIHW,
        ``layer1.0.conv3.weight``) or this module's (``params/conv1/kernel`` HWIO,
        ``params/layer1_0/conv3/kernel``). ``overrides`` set the input size and dtype."""
        if "conv1.weight" in shapes:
            width = shapes["conv1.weight"][0]
        elif "params/conv1/kernel" in shapes:
            width = shapes["params/conv1/kernel"][-1]
        else:
            raise CheckpointMismatchError("not a ResNet checkpoint: no conv1 (stem) weight")
        blocks, bottleneck = collections.defaultdict(set), False
        for name in shapes:
            if match := re.match(r"(?:params/)?layer(\d)[._](\d+)[./](\w+)", name):
                blocks[int(match[1])].add(int(match[2]))
                bottleneck |= match[3] == "conv3"
        layout = (tuple(len(blocks[i]) for i in range(1, 5)), bottleneck)
        depths = [depth for depth, known in LAYOUTS.items() if known == layout]
        if not depths:
            raise CheckpointMismatchError(
                f"blocks per stage {layout[0]} ({'bottleneck' if bottleneck else 'basic'} "
                f"blocks) match no torchvision ResNet ({sorted(LAYOUTS)})")
        return cls(num_layers=depths[0], num_filters=width, **overrides)


# Each convolution's batch norm, by torchvision's names.
CONV_NORMS = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3", "downsample_0": "downsample_1"}


def conv_norm(parent: nn.Module, x: jax.Array, features: int, kernel: int, stride: int,
              conv_name: str) -> jax.Array:
    """torchvision's convolution (no bias, symmetric padding kernel // 2) and batch norm."""
    return batch_norm.conv_norm(parent, x, features, kernel, stride, conv_name,
                                CONV_NORMS[conv_name], BN_EPSILON)


class Block(nn.Module):
    """torchvision's ``Bottleneck`` (1x1, strided 3x3, 1x1 with 4x the filters) or
    ``BasicBlock`` (two 3x3), with a projection shortcut where the shape changes."""

    filters: int
    stride: int
    bottleneck: bool
    dtype: Any = jnp.float32
    folded: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.filters * 4 if self.bottleneck else self.filters
        if self.bottleneck:
            y = nn.relu(conv_norm(self, x, self.filters, 1, 1, "conv1"))
            y = nn.relu(conv_norm(self, y, self.filters, 3, self.stride, "conv2"))
            y = conv_norm(self, y, out, 1, 1, "conv3")
        else:
            y = nn.relu(conv_norm(self, x, out, 3, self.stride, "conv1"))
            y = conv_norm(self, y, out, 3, 1, "conv2")
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out:
            shortcut = conv_norm(self, x, out, 1, self.stride, "downsample_0")
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """torchvision's ResNet without ``fc``: (N, S, S, 3) normalised images -> (N, E)."""

    num_layers: int = 50
    num_filters: int = 64
    dtype: Any = jnp.float32
    folded: bool = False  # batch norms folded into the convolutions (`fold_batch_norm`)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        stages, bottleneck = LAYOUTS[self.num_layers]
        x = nn.relu(conv_norm(self, x, self.num_filters, 7, 2, "conv1"))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, num_blocks in enumerate(stages):
            for j in range(num_blocks):
                x = Block(self.num_filters * 2**stage, 2 if stage > 0 and j == 0 else 1,
                          bottleneck, self.dtype, self.folded, name=f"layer{stage + 1}_{j}")(x)
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


def build_model(config: R3MConfig, folded: bool = False) -> ResNet:
    return ResNet(config.num_layers, config.num_filters, jnp.dtype(config.dtype), folded)


def fold_batch_norm(config: R3MConfig, variables: dict) -> dict:
    """A checkpoint's {'params', 'batch_stats'} as the inference parameters of
    `build_model(config, folded=True)` (`batch_norm.fold_batch_norms`)."""
    return batch_norm.fold_batch_norms(variables, CONV_NORMS, BN_EPSILON,
                                       jnp.dtype(config.dtype))


def abstract_variables(config: R3MConfig) -> dict:
    """Shapes and dtypes of the model's variables {'params', 'batch_stats'}, computing none."""
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    return dict(jax.eval_shape(build_model(config).init, jax.random.key(0), images))


def preprocess(config: R3MConfig, frames: jax.Array) -> jax.Array:
    """uint8 (N, H, W, 3) -> float32 (N, C, C, 3) as the reference feeds R3M: torchvision's
    ``Resize(resize_size)`` of the shorter side (bilinear, antialiased like PIL) and
    ``CenterCrop(crop_size)``, done as one resampling of just the cropped pixels; then /255
    and the ImageNet mean and std. The reference resizes in PIL's 8-bit arithmetic; this
    resizes in float (under one grey level apart)."""
    chex.assert_rank(frames, 4)
    chex.assert_type(frames, jnp.uint8)
    chex.assert_axis_dimension(frames, 3, 3)
    n, h, w, _ = frames.shape
    short, long = sorted((h, w))
    resized_long = int(config.resize_size * long / short)  # torchvision truncates
    out_h, out_w = ((config.resize_size, resized_long) if h <= w
                    else (resized_long, config.resize_size))
    top = int(round((out_h - config.crop_size) / 2.0))  # torchvision's CenterCrop rounding
    left = int(round((out_w - config.crop_size) / 2.0))
    images = jax.image.scale_and_translate(
        frames.astype(jnp.float32), (n, config.crop_size, config.crop_size, 3), (1, 2),
        scale=jnp.array([out_h / h, out_w / w]), translation=jnp.array([-top, -left]),
        method="linear", antialias=True)
    return (images / 255.0 - jnp.array(IMAGENET_MEAN)) / jnp.array(IMAGENET_STD)


@functools.partial(jax.jit, static_argnums=0)
def embed(config: R3MConfig, variables: dict, frames: jax.Array) -> jax.Array:
    """Embeddings (N, E) float32 of uint8 frames (N, H, W, 3); ``variables`` a checkpoint's or
    `fold_batch_norm`'s."""
    images = preprocess(config, frames).astype(jnp.dtype(config.dtype))
    out = build_model(config, folded=batch_norm.is_folded(variables)).apply(variables, images)
    chex.assert_shape(out, (frames.shape[0], config.embedding_size))
    return out


@functools.partial(jax.jit, static_argnums=0)
def distance_to_embeddings(config: R3MConfig, variables: dict, frames: jax.Array,
                           goal_embeddings: jax.Array) -> jax.Array:
    """Euclidean distances (N, G) of frames to goals embedded once beforehand with
    :func:`embed` (the reference's ``np.linalg.norm(s1 - s2)``)."""
    chex.assert_shape(goal_embeddings, (None, config.embedding_size))
    diff = embed(config, variables, frames)[:, None, :] - goal_embeddings[None, :, :]
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1))


class R3MDistance(batch_norm.FoldedDistance):
    """An R3M model bound to its variables, callable as ``distance(frames, goals)``."""

    fold = staticmethod(fold_batch_norm)
    embed_frames = staticmethod(embed)
    distances = staticmethod(distance_to_embeddings)


# --- reading torch.save files without torch --------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": jnp.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    """What the pickle's ``torch.<Type>Storage`` global resolves to: the element dtype."""

    dtype: np.dtype


def _rebuild_tensor_v2(storage: np.ndarray, offset: int, size: tuple, stride: tuple,
                       *_unused) -> np.ndarray:
    """torch's tensor reconstructor: a strided view of a flat storage, copied, after checking
    it stays inside the storage (a crafted file must not read past it)."""
    if len(size) != len(stride) or offset < 0 or min(stride, default=0) < 0:
        raise pickle.UnpicklingError(f"bad tensor layout: size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise pickle.UnpicklingError(
            f"tensor of size {size}, stride {stride} at offset {offset} overruns its storage "
            f"of {storage.size} elements")
    strides = tuple(s * storage.itemsize for s in stride)
    return np.lib.stride_tricks.as_strided(storage[offset:], size, strides).copy()


def _rebuild_parameter(data: np.ndarray, *_unused) -> np.ndarray:
    return data


_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(np.dtype(dtype)) for name, dtype in _STORAGE_DTYPES.items()},
}


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch.save ``data.pkl`` into numpy arrays, refusing every other global
    (a pickle can otherwise run arbitrary code)."""

    def __init__(self, data: bytes, read_storage: Callable[[str], bytes], byteorder: str):
        super().__init__(io.BytesIO(data))
        self._read_storage = read_storage
        self._byteorder = byteorder
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"the checkpoint references {module}.{name}, which the torch-free reader does "
                "not load (it allows only tensors, parameters, storages and OrderedDicts)"
            ) from None

    def persistent_load(self, pid: Any) -> np.ndarray:
        """``('storage', <storage type>, key, location, numel)`` -> the flat storage
        ``data/<key>`` of the archive (shared by every tensor viewing it)."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            storage = np.frombuffer(self._read_storage(key), storage_type.dtype)
            if self._byteorder == "big":
                storage = storage.byteswap()
            if storage.size != numel:
                raise pickle.UnpicklingError(
                    f"storage {key} holds {storage.size} elements, the pickle says {numel}")
            self._storages[key] = storage
        return self._storages[key]


def read_torch_checkpoint(path: str) -> Any:
    """The object a ``torch.save`` zip archive (torch >= 1.6) holds, with numpy arrays for
    tensors: ``<prefix>/data.pkl`` pickles it, each storage lies raw in ``<prefix>/data/<key>``
    (in the byte order ``<prefix>/byteorder`` names, little-endian when absent)."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a torch.save zip archive; the legacy (pre-1.6) format "
                         "is not supported: re-save it with a newer torch")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one <prefix>/data.pkl, found {pickles}")
        prefix = pickles[0][:-len("data.pkl")]
        names = set(archive.namelist())
        byteorder = (archive.read(prefix + "byteorder").decode().strip()
                     if prefix + "byteorder" in names else "little")
        return _TorchUnpickler(archive.read(pickles[0]),
                               lambda key: archive.read(f"{prefix}data/{key}"), byteorder).load()


# --- mapping the R3M state dict onto the flax model ------------------------------------------

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def _torch_layout(config: R3MConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """torchvision key -> (flax variable path, torch shape) for every variable of the model:
    modules ``layer1_0/downsample_1`` are ``layer1.0.downsample.1``, kernels are OIHW."""
    layout = {}
    for path, leaf in traverse_util.flatten_dict(abstract_variables(config)).items():
        modules = ".".join(m.replace("_", ".") for m in path[1:-1])
        shape = leaf.shape
        if path[-1] == "kernel":  # flax HWIO, torch OIHW
            shape = (shape[3], shape[2], shape[0], shape[1])
        layout[f"{modules}.{_TORCH_LEAF[path[-1]]}"] = (path, tuple(shape))
    return layout


def convnet_state_dict(checkpoint: Any) -> dict[str, np.ndarray]:
    """The ResNet's entries of an R3M checkpoint (``{'r3m': state_dict, ...}``) or of a bare
    state dict, keyed as in torchvision: ``module.`` and ``convnet.`` stripped; the language
    heads, ``num_batches_tracked`` and ``fc`` (R3M's is the identity) dropped."""
    state = checkpoint.get("r3m", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise CheckpointMismatchError(
            f"not an R3M checkpoint or state dict: {type(checkpoint).__name__}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("convnet.") for k in state):
        state = {k.removeprefix("convnet."): v for k, v in state.items()
                 if k.startswith("convnet.")}
    return {k: v for k, v in state.items()
            if not k.endswith(".num_batches_tracked") and not k.startswith("fc.")}


def _model_name(config: R3MConfig) -> str:
    return (f"the R3M ResNet-{config.num_layers} with {config.num_filters} filters "
            "(check num_layers and num_filters)")


def _variables_from_state_dict(state: dict[str, np.ndarray], config: R3MConfig) -> dict:
    """Model variables {'params', 'batch_stats'} (float32) from torchvision-keyed arrays:
    kernels OIHW -> HWIO, batch norm weight -> scale, running_mean/var -> batch_stats."""
    layout = _torch_layout(config)
    problems = leaf_problems({k: tuple(np.shape(v)) for k, v in state.items()},
                             {k: tuple(shape) for k, (_, shape) in layout.items()})
    if problems:
        raise CheckpointMismatchError(
            f"the R3M checkpoint does not match {_model_name(config)}:\n  "
            + "\n  ".join(problems))
    flat = {}
    for key, (path, _) in layout.items():
        value = np.asarray(state[key], np.float32)
        flat[path] = value.transpose(2, 3, 1, 0) if path[-1] == "kernel" else value
    return traverse_util.unflatten_dict(flat)


def import_torch_checkpoint(path: str, config: R3MConfig) -> dict:
    """The model variables of an R3M ``model.pt`` (or any torchvision ResNet state dict)."""
    return _variables_from_state_dict(convnet_state_dict(read_torch_checkpoint(path)), config)


def restore_orbax(directory: str, config: R3MConfig) -> dict:
    """Variables saved by :func:`convert_to_orbax`, checked against the model's shapes."""
    return restore_variables(directory, abstract_variables(config), _model_name(config))


def convert_to_orbax(src: str, dst: str, config: R3MConfig = R3MConfig()) -> dict:
    """Imports the torch checkpoint ``src`` and saves it as an orbax checkpoint at ``dst``
    (created; must not exist). Returns the variables."""
    variables = import_torch_checkpoint(src, config)
    save_orbax(dst, variables)
    return variables


WHERE_TO_GET_R3M = (
    "download the released ResNet-50 model.pt "
    "(https://drive.google.com/uc?id=1Xu0ssuG0N1zjZS54wmWzJ7-nb0-7XzbA) to "
    "$HOLD_TOP_DIR/r3m/r3m_50/model.pt or ~/.r3m/r3m_50/model.pt, or pass its path "
    "(holdjax.train: --reward_checkpoint; holdjax.reward.check: --model)")


def default_weights_path() -> str:
    """The released R3M ResNet-50 ``model.pt``: ``$HOLD_TOP_DIR/r3m/r3m_50/model.pt``, else
    where the r3m package downloads it, ``~/.r3m/r3m_50/model.pt``."""
    candidates = [os.path.expanduser(os.path.join("~", ".r3m", "r3m_50", "model.pt"))]
    if top := os.environ.get("HOLD_TOP_DIR"):
        candidates.insert(0, os.path.join(top, "r3m", "r3m_50", "model.pt"))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"no R3M weights at {' or '.join(candidates)}: {WHERE_TO_GET_R3M}")


def load_r3m(path: str | None = None, config: R3MConfig | None = None,
             **overrides) -> R3MDistance:
    """The R3M distance model from a torch ``model.pt`` (default: :func:`default_weights_path`)
    or an orbax directory written by :func:`convert_to_orbax`. A ``model.pt`` is converted
    once, to ``<model.pt>.orbax`` beside it, and restored from there afterwards. Without
    ``config`` the architecture is read from the weights (:meth:`R3MConfig.from_shapes`),
    with ``overrides`` (dtype, input size) on top."""
    path = path or default_weights_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"no R3M weights at {path}: {WHERE_TO_GET_R3M}")
    converted = path if os.path.isdir(path) else path + ".orbax"
    if os.path.isdir(converted):
        if config is None:
            with ocp.StandardCheckpointer() as checkpointer:
                metadata = checkpointer.metadata(os.path.abspath(converted))
            tree = getattr(metadata, "item_metadata", metadata)
            shapes = {k: tuple(v.shape) for k, v in
                      traverse_util.flatten_dict(dict(tree), sep="/").items()}
            config = R3MConfig.from_shapes(shapes, **overrides)
        return R3MDistance(config, restore_orbax(converted, config))
    state = convnet_state_dict(read_torch_checkpoint(path))  # the file is read once
    if config is None:
        config = R3MConfig.from_shapes({k: np.shape(v) for k, v in state.items()}, **overrides)
    variables = _variables_from_state_dict(state, config)
    save_converted(converted, variables)
    return R3MDistance(config, variables)
