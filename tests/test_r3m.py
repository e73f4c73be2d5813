"""R3M: the torch-free reader of torch.save files, the mapping of torchvision ResNet state dicts
onto the flax network, the network against a hand-written forward pass, preprocessing against
PIL, and distances. Tiny networks (2 filters) and 32x32 inputs keep it fast on the CPU."""

import collections
import io
import os
import pickle
import zipfile

import jax
import numpy as np
import pytest
from flax import traverse_util
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from holdjax.reward import r3m
from holdjax.reward.scenic_checkpoint import CheckpointMismatchError

WIDTH, SIZE = 2, 32
# torchvision's resnet<depth>: blocks per stage, bottleneck (expansion 4) or basic blocks.
TORCHVISION = {18: ((2, 2, 2, 2), False), 50: ((3, 4, 6, 3), True)}
BN_LEAVES = ("weight", "bias", "running_mean", "running_var")


def config(depth: int, **kwargs) -> r3m.R3MConfig:
    return r3m.R3MConfig(num_layers=depth, num_filters=WIDTH, resize_size=SIZE, crop_size=SIZE,
                         **kwargs)


# --- an independent description of torchvision's ResNet state dict ---------------------------

def torchvision_shapes(depth: int, width: int = WIDTH) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``torchvision.models.resnet<depth>().state_dict()`` without ``fc``
    (torchvision/models/resnet.py: stride on conv2 of a Bottleneck, on conv1 of a BasicBlock;
    ``downsample`` where the stride or the channel count changes), with ``width`` for 64."""
    blocks, bottleneck = TORCHVISION[depth]
    expansion = 4 if bottleneck else 1
    shapes = {"conv1.weight": (width, 3, 7, 7)}

    def batch_norm(name, channels):
        shapes.update({f"{name}.{leaf}": (channels,) for leaf in BN_LEAVES})
        shapes[f"{name}.num_batches_tracked"] = ()

    batch_norm("bn1", width)
    inplanes = width
    for i, num_blocks in enumerate(blocks):
        planes = width * 2**i
        for j in range(num_blocks):
            block = f"layer{i + 1}.{j}"
            convs = ([(planes, inplanes, 1), (planes, planes, 3), (planes * 4, planes, 1)]
                     if bottleneck else [(planes, inplanes, 3), (planes, planes, 3)])
            for k, (out, cin, size) in enumerate(convs, 1):
                shapes[f"{block}.conv{k}.weight"] = (out, cin, size, size)
                batch_norm(f"{block}.bn{k}", out)
            if (i > 0 and j == 0) or inplanes != planes * expansion:
                shapes[f"{block}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                batch_norm(f"{block}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    return shapes


def random_state(depth: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random torchvision-keyed values: kernels with variance 1 / fan-in, batch norms that
    visibly scale and shift (so a value in the wrong place changes the output)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in torchvision_shapes(depth).items():
        leaf = key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            state[key] = np.array(rng.integers(1, 1000), np.int64)
        elif len(shape) == 4:
            state[key] = rng.normal(0, np.prod(shape[1:]) ** -0.5, shape).astype(np.float32)
        elif leaf in ("weight", "running_var"):
            state[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            state[key] = rng.normal(0, 0.2, shape).astype(np.float32)
    return state


# --- a torch.save writer without torch --------------------------------------------------------

class TorchName:
    """Stands for a torch global; pickled as torch pickles it (GLOBAL 'module name')."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants reduce targets callable; never called here
        raise NotImplementedError


REBUILD_TENSOR = TorchName("torch._utils", "_rebuild_tensor_v2")
STORAGE_TYPES = {np.dtype(np.float32): TorchName("torch", "FloatStorage"),
                 np.dtype(np.int64): TorchName("torch", "LongStorage")}


class Storage:
    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, np.ascontiguousarray(data).ravel()


class Tensor:
    """Pickles like ``torch.Tensor.__reduce_ex__``: ``_rebuild_tensor_v2(storage, offset,
    size, stride, requires_grad, backward_hooks)``."""

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(map(int, size)), tuple(map(int, stride))

    def __reduce__(self):
        return REBUILD_TENSOR, (self.storage, self.offset, self.size, self.stride, False,
                                collections.OrderedDict())


class TorchPickler(pickle._Pickler):  # the Python pickler, whose dispatch table is extensible
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file):
        super().__init__(file, protocol=2)  # torch.save's default protocol
        self.storages: dict[str, Storage] = {}

    def save_torch_name(self, obj: TorchName):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[TorchName] = save_torch_name

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        self.storages[obj.key] = obj
        return ("storage", STORAGE_TYPES[obj.data.dtype], obj.key, "cpu", obj.data.size)


def write_torch_file(path, obj, prefix: str = "model"):
    """``obj`` saved in torch.save's zip layout (torch >= 1.6), tensors as stand-ins."""
    pickler = TorchPickler(buffer := io.BytesIO())
    pickler.dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", buffer.getvalue())
        archive.writestr(f"{prefix}/byteorder", "little")
        for key, storage in pickler.storages.items():
            archive.writestr(f"{prefix}/data/{key}", storage.data.astype(
                storage.data.dtype.newbyteorder("<")).tobytes())
        archive.writestr(f"{prefix}/version", "3\n")
    return path


def as_tensors(values: dict[str, np.ndarray]) -> collections.OrderedDict:
    """Stand-in tensors for ``values``, laid out as torch may save them: kernels channels-last
    (strided views), each batch norm's four vectors sharing one storage at offsets."""
    tensors, shared, count = collections.OrderedDict(), {}, iter(range(10**6))

    def storage(data):
        return Storage(str(next(count)), data)

    for key, value in values.items():
        module, leaf = key.rsplit(".", 1)
        if value.ndim == 4:
            out, cin, h, w = value.shape
            tensors[key] = Tensor(storage(value.transpose(0, 2, 3, 1)), 0, value.shape,
                                  (h * w * cin, 1, w * cin, cin))
        elif f"{module}.running_var" in values and leaf in BN_LEAVES:
            if module not in shared:
                group = [values[f"{module}.{name}"] for name in BN_LEAVES]
                offsets = np.cumsum([0] + [len(v) for v in group])
                shared[module] = storage(np.concatenate(group)), dict(
                    zip(BN_LEAVES, offsets.tolist(), strict=False))
            vectors, offsets = shared[module]
            tensors[key] = Tensor(vectors, offsets[leaf], value.shape, (1,))
        else:
            strides = np.array(value.strides, int) // value.itemsize
            tensors[key] = Tensor(storage(value), 0, value.shape, tuple(strides))
    return tensors


def r3m_checkpoint(state: dict[str, np.ndarray]) -> dict:
    """The layout of R3M's ``model.pt``: the DataParallel state dict of the R3M module under
    'r3m' (convnet and language heads), plus the trainer's global step."""
    values = {f"module.convnet.{k}": v for k, v in state.items()}
    values["module.lang_enc.model.embeddings.word_embeddings.weight"] = np.ones((5, 3), np.float32)
    values["module.lang_rew.pred.0.bias"] = np.zeros(4, np.float32)
    tensors = as_tensors(values)
    tensors._metadata = collections.OrderedDict({"": {"version": 1}})  # as state_dict() sets
    return {"r3m": tensors, "global_step": 7}


def write_r3m_checkpoint(path, depth: int, seed: int = 0, tamper=None):
    state = random_state(depth, seed)
    if tamper:
        tamper(state)
    return write_torch_file(path, r3m_checkpoint(state)), state


# --- reference forward pass in torch's layout (NCHW, OIHW) ------------------------------------

class NumpyOps:
    @staticmethod
    def conv(x, w, stride):
        pad = w.shape[-1] // 2
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]
        return np.einsum("nchwij,ocij->nohw", windows, w)

    @staticmethod
    def batch_norm(x, weight, bias, mean, var):
        c = lambda v: v[None, :, None, None]  # noqa: E731
        return (x - c(mean)) / np.sqrt(c(var) + 1e-5) * c(weight) + c(bias)

    @staticmethod
    def max_pool(x):  # 3x3, stride 2, padding 1 (padding never wins the max)
        x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        return sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(-2, -1))

    @staticmethod
    def mean(x):
        return x.mean(axis=(2, 3))


def reference_forward(state, x, ops=NumpyOps):
    """torchvision's ResNet.forward without fc, from the state dict: NCHW images -> (N, E)."""
    def bn(y, name):
        return ops.batch_norm(y, *(state[f"{name}.{leaf}"] for leaf in BN_LEAVES))

    def relu(y):
        return y.clip(min=0)

    x = ops.max_pool(relu(bn(ops.conv(x, state["conv1.weight"], 2), "bn1")))
    for i in range(1, 5):
        j = 0
        while f"layer{i}.{j}.conv1.weight" in state:
            block, stride = f"layer{i}.{j}", 2 if i > 1 and j == 0 else 1
            num_convs = 3 if f"{block}.conv3.weight" in state else 2
            strided = 2 if num_convs == 3 else 1  # Bottleneck: conv2; BasicBlock: conv1
            y = x
            for k in range(1, num_convs + 1):
                w = state[f"{block}.conv{k}.weight"]
                y = bn(ops.conv(y, w, stride if k == strided else 1), f"{block}.bn{k}")
                y = relu(y) if k < num_convs else y
            if f"{block}.downsample.0.weight" in state:
                x = bn(ops.conv(x, state[f"{block}.downsample.0.weight"], stride),
                       f"{block}.downsample.1")
            x, j = relu(x + y), j + 1
    return ops.mean(x)


def normalised_nchw(frames: np.ndarray) -> np.ndarray:
    images = frames.astype(np.float64) / 255.0
    images = (images - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    return images.transpose(0, 3, 1, 2)


def frames(n: int, h: int = SIZE, w: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


# --- tests -------------------------------------------------------------------------------------

def flax_path(torch_key: str) -> tuple[str, ...]:
    """Where a torchvision key must land, by the naming rule r3m's docstring states."""
    *modules, leaf = torch_key.split(".")
    names = []
    for m in modules:
        if m.isdigit():
            names[-1] += f"_{m}"
        else:
            names.append(m)
    is_bn = modules[-1].startswith("bn") or modules[-2:] == ["downsample", "1"]
    collection, name = {"running_mean": ("batch_stats", "mean"),
                        "running_var": ("batch_stats", "var"),
                        "bias": ("params", "bias"),
                        "weight": ("params", "scale" if is_bn else "kernel")}[leaf]
    return (collection, *names, name)


@pytest.mark.parametrize("depth", [50, 18])
def test_import_puts_every_value_where_it_belongs(tmp_path, depth):
    path, state = write_r3m_checkpoint(tmp_path / "model.pt", depth)
    read = r3m.read_torch_checkpoint(str(path))
    assert read["global_step"] == 7 and list(read["r3m"])[0] == "module.convnet.conv1.weight"
    convnet = r3m.convnet_state_dict(read)
    expected = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert convnet.keys() == expected.keys()  # language heads and batch counters dropped
    for key, value in expected.items():  # strided kernels and shared storages read back
        np.testing.assert_array_equal(convnet[key], value, err_msg=key)

    variables = r3m.import_torch_checkpoint(str(path), config(depth))
    flat = traverse_util.flatten_dict(variables)
    assert flat.keys() == {flax_path(k) for k in expected}
    for key, value in expected.items():
        got = flat[flax_path(key)]
        assert got.dtype == np.float32
        want = np.einsum("oihw->hwio", value) if value.ndim == 4 else value
        np.testing.assert_array_equal(got, want, err_msg=key)
    kernel = flat["params", "layer2_0", "downsample_0", "kernel"]
    assert kernel.shape == ((1, 1, 4 * WIDTH, 8 * WIDTH) if depth == 50 else (1, 1, 2, 4))
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"],
                                  state["bn1.running_var"])


@pytest.mark.parametrize("depth", [50, 18])
def test_forward_pass_matches_numpy_torchvision(tmp_path, depth):
    path, state = write_r3m_checkpoint(tmp_path / "model.pt", depth, seed=1)
    model = r3m.load_r3m(str(path), config(depth))
    batch = frames(3, seed=2)  # at the input size: preprocessing only normalises
    got = np.asarray(model.embed(batch))
    want = reference_forward(state, normalised_nchw(batch))
    assert got.shape == (3, model.config.embedding_size) == want.shape
    assert model.config.embedding_size == (8 * 4 * WIDTH if depth == 50 else 8 * WIDTH)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    assert np.std(want) > 0.05  # the comparison is not between two near-constant outputs


def test_bfloat16_embedding_is_close_to_float32(tmp_path):
    path, _ = write_r3m_checkpoint(tmp_path / "model.pt", 18, seed=3)
    variables = r3m.import_torch_checkpoint(str(path), config(18))
    batch = frames(2, seed=4)
    full = r3m.embed(config(18), variables, batch)
    half = r3m.embed(config(18, dtype="bfloat16"), variables, batch)
    assert half.dtype == np.float32
    assert float(np.linalg.norm(half - full)) < 0.05 * float(np.linalg.norm(full))


def import_error(tmp_path, tamper, depth=50) -> str:
    path, _ = write_r3m_checkpoint(tmp_path / "model.pt", depth, tamper=tamper)
    with pytest.raises(CheckpointMismatchError) as error:
        r3m.import_torch_checkpoint(str(path), config(50))
    return str(error.value)


def test_missing_extra_and_misshaped_leaves_are_named(tmp_path):
    message = import_error(tmp_path, lambda s: s.pop("layer3.1.conv2.weight"))
    assert "missing leaf layer3.1.conv2.weight (expected shape (8, 8, 3, 3))" in message
    message = import_error(tmp_path, lambda s: s.update(
        {"layer4.2.bn4.running_mean": np.zeros(3, np.float32)}))
    assert "extra leaf layer4.2.bn4.running_mean" in message
    message = import_error(tmp_path, lambda s: s.update(
        {"layer1.0.bn2.weight": np.ones(5, np.float32)}))
    assert "mis-shaped leaf layer1.0.bn2.weight: checkpoint (5,), model (2,)" in message
    message = import_error(tmp_path, None, depth=18)  # a ResNet-18 read as a ResNet-50
    assert "missing leaf layer1.0.conv3.weight" in message and "ResNet-50" in message


def test_bare_torchvision_state_dict_and_fc_are_accepted(tmp_path):
    state = random_state(18, seed=5)
    values = {**state, "fc.weight": np.ones((10, 16), np.float32),
              "fc.bias": np.zeros(10, np.float32)}
    path = write_torch_file(tmp_path / "resnet18.pth", as_tensors(values), prefix="archive")
    variables = r3m.import_torch_checkpoint(str(path), config(18))
    np.testing.assert_array_equal(variables["params"]["layer4_1"]["bn2"]["bias"],
                                  state["layer4.1.bn2.bias"])


def test_disallowed_global_and_overrunning_tensor_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return TorchName("os", "system"), ("echo pwned",)

    path = write_torch_file(tmp_path / "evil.pt", {"r3m": {"x": Evil()}})
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        r3m.read_torch_checkpoint(str(path))

    storage = Storage("0", np.zeros(6, np.float32))
    path = write_torch_file(tmp_path / "overrun.pt", {"x": Tensor(storage, 2, (2, 3), (3, 1))})
    with pytest.raises(pickle.UnpicklingError, match="overruns its storage"):
        r3m.read_torch_checkpoint(str(path))

    (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"r3m": {}}))
    with pytest.raises(ValueError, match="not a torch.save zip archive"):
        r3m.read_torch_checkpoint(str(tmp_path / "legacy.pt"))


@pytest.mark.parametrize("shape, resized, corner", [
    ((48, 48), (256, 256), (16, 16)),  # pushing / drawer_open frames
    ((120, 180), (256, 384), (16, 80)),  # DVD tabletop frames
    ((60, 45), (341, 256), (58, 16)),  # portrait, non-integer long side (341.33 -> 341)
])
def test_preprocessing_matches_the_references_pil_transform(shape, resized, corner):
    """hold-policies: PIL ``Resize(256)`` (shorter side, bilinear), ``CenterCrop(224)``,
    /255, then R3M's ImageNet normalisation."""
    batch = frames(2, *shape, seed=6)
    got = np.asarray(r3m.preprocess(r3m.R3MConfig(), batch))
    assert got.shape == (2, 224, 224, 3)
    top, left = corner
    for image, frame in zip(got, batch, strict=True):
        pil = np.asarray(Image.fromarray(frame).resize(resized[::-1], Image.BILINEAR))
        want = pil[top:top + 224, left:left + 224].astype(np.float64)
        pixels = (image * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406]))
        # PIL rounds to whole grey levels after each of its two passes.
        np.testing.assert_allclose(pixels * 255.0, want, atol=1.01)


def test_to_goals_distances(tmp_path):
    path, _ = write_r3m_checkpoint(tmp_path / "model.pt", 18, seed=7)
    model = r3m.load_r3m(str(path), config(18))
    goals = frames(2, 40, 48, seed=8)
    batch = np.concatenate([frames(2, 40, 48, seed=9), goals[1:]])
    distance = model.to_goals(goals)
    got = np.asarray(distance(batch))
    assert got.shape == (3, 2)
    assert abs(got[2, 1]) < 1e-5 and np.all(got[:2] > 1e-3)  # a frame equal to its goal: zero
    np.testing.assert_allclose(got, model(batch, goals), rtol=1e-6)
    emb_f, emb_g = model.embed(batch), model.embed(goals)
    np.testing.assert_allclose(got, np.linalg.norm(emb_f[:, None] - emb_g[None], axis=-1),
                               rtol=1e-5, atol=1e-6)


def test_orbax_round_trip_and_default_path(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "r3m" / "r3m_50"
    weights.mkdir(parents=True)
    path, _ = write_r3m_checkpoint(weights / "model.pt", 18, seed=10)
    monkeypatch.setenv("HOLD_TOP_DIR", str(tmp_path))
    assert r3m.default_weights_path() == str(path)
    imported = r3m.convert_to_orbax(str(path), str(tmp_path / "orbax"), config(18))
    restored = r3m.load_r3m(str(tmp_path / "orbax"), config(18)).variables  # folded
    folded = jax.jit(r3m.fold_batch_norm, static_argnums=0)(config(18), imported)
    for want, got in zip(jax.tree.leaves(folded), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(CheckpointMismatchError, match="orbax checkpoint"):
        r3m.restore_orbax(str(tmp_path / "orbax"), config(50))
    # A model.pt is converted once, beside it, then restored from the copy.
    first = r3m.load_r3m(str(path), config(18)).variables
    assert os.path.isdir(str(path) + ".orbax")
    path.write_bytes(b"not read again")
    again = r3m.load_r3m(str(path), config(18)).variables
    for want, got in zip(jax.tree.leaves(first), jax.tree.leaves(again), strict=True):
        np.testing.assert_array_equal(got, want)
    # Where the copy cannot go (here a file is in the way), the weights still load.
    blocked, _ = write_r3m_checkpoint(tmp_path / "blocked.pt", 18, seed=10)
    (tmp_path / "blocked.pt.orbax").write_text("")
    for want, got in zip(jax.tree.leaves(first), jax.tree.leaves(
            r3m.load_r3m(str(blocked), config(18)).variables), strict=True):
        np.testing.assert_array_equal(got, want)
    assert "warning: could not write the orbax copy" in capsys.readouterr().err


def test_real_torch_save_reads_identically(tmp_path):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    state = random_state(50, seed=11)
    tensors = collections.OrderedDict(
        (f"module.convnet.{k}", torch.from_numpy(v.copy())) for k, v in state.items())
    # A channels-last kernel and a parameter: strided storage and _rebuild_parameter.
    tensors["module.convnet.conv1.weight"] = tensors["module.convnet.conv1.weight"].to(
        memory_format=torch.channels_last)
    tensors["module.convnet.bn1.bias"] = torch.nn.Parameter(tensors["module.convnet.bn1.bias"])
    tensors["module.lang_rew.pred.0.bias"] = torch.zeros(4)
    torch.save({"r3m": tensors, "global_step": 3}, tmp_path / "model.pt")
    write_r3m_checkpoint(tmp_path / "ours.pt", 50, seed=11)
    real = r3m.import_torch_checkpoint(str(tmp_path / "model.pt"), config(50))
    ours = r3m.import_torch_checkpoint(str(tmp_path / "ours.pt"), config(50))
    for want, got in zip(jax.tree.leaves(ours), jax.tree.leaves(real), strict=True):
        np.testing.assert_array_equal(got, want)

    class TorchOps:
        conv = staticmethod(lambda x, w, s: F.conv2d(x, w, stride=s, padding=w.shape[-1] // 2))
        batch_norm = staticmethod(lambda x, w, b, m, v: F.batch_norm(x, m, v, w, b, eps=1e-5))
        max_pool = staticmethod(lambda x: F.max_pool2d(x, 3, 2, 1))
        mean = staticmethod(lambda x: x.mean(dim=(2, 3)))

    batch = frames(2, seed=12)
    with torch.no_grad():
        want = reference_forward({k: torch.from_numpy(v) for k, v in state.items()},
                                 torch.from_numpy(normalised_nchw(batch).astype(np.float32)),
                                 TorchOps).numpy()
    got = np.asarray(r3m.embed(config(50), real, batch))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("depth", [50, 18])
def test_architecture_read_from_the_weights(tmp_path, depth):
    """R3M released ResNet-18, 34 and 50: the depth and width come from the file, and from
    its orbax copy afterwards."""
    path, _ = write_r3m_checkpoint(tmp_path / "model.pt", depth, seed=3)
    want = r3m.R3MConfig(num_layers=depth, num_filters=WIDTH, dtype="bfloat16")
    assert r3m.load_r3m(str(path), dtype="bfloat16").config == want  # from model.pt
    assert r3m.load_r3m(str(path), dtype="bfloat16").config == want  # from its orbax copy
    layer4 = [k for k in random_state(depth, 0) if k.startswith("layer4.1.")]
    shapes = {k: np.shape(v) for k, v in random_state(depth, 0).items() if k not in layer4}
    with pytest.raises(CheckpointMismatchError, match="match no torchvision ResNet"):
        r3m.R3MConfig.from_shapes(shapes)


def test_r3m_is_a_training_reward(tmp_path, pushing, monkeypatch):
    """--reward=r3m: the run's goal images embedded once; a goal scores zero against itself."""
    from holdjax.config import TrainConfig
    from holdjax.reward.base import make_reward

    env, _, _ = pushing
    path, _ = write_r3m_checkpoint(tmp_path / "model.pt", 18, seed=4)
    fn = make_reward(TrainConfig(reward="r3m", reward_checkpoint=str(path)), env)
    assert fn.kind == "r3m" and fn.distance(fn.goals).shape == (1, 1)
    np.testing.assert_allclose(fn.baselines, [0.0], atol=1e-4)
    monkeypatch.delenv("HOLD_TOP_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match="download the released ResNet-50"):
        make_reward(TrainConfig(reward="r3m"), env)
    with pytest.raises(FileNotFoundError, match=r"no R3M weights at .*nope.pt: download the "):
        make_reward(TrainConfig(reward="r3m", reward_checkpoint=str(tmp_path / "nope.pt")), env)
