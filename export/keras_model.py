"""Rebuild a trained run's Keras model from its run folder (for export and evaluation)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from catalog_captioner.errors import UsageError
from catalog_captioner.text import Vocabulary
from train.backbones import Backbone, build_backbone
from train.model import CaptionModel, ModelConfig, build_model


@dataclass
class TrainedRun:
    path: Path
    record: dict
    config: ModelConfig
    vocabulary: Vocabulary
    backbone: Backbone
    model: CaptionModel

    def encoder_function(self):
        """uint8 images -> (features, keys, hidden): the graph exported as encoder.onnx."""
        size = self.backbone.input_size
        spec = tf.TensorSpec((None, size, size, 3), tf.uint8, name="image")

        @tf.function(input_signature=[spec])
        def encoder(image):
            cached = self.backbone.bottom(tf.cast(image, tf.float32), training=False)
            return self.model.encode(cached, training=False)

        return encoder

    def decoder_function(self):
        """(token, features, keys, hidden) -> (logits, hidden, attention): exported as decoder.onnx."""
        c = self.config
        n_regions = int(np.prod(self.backbone.top.output.shape[1:3]))
        signature = [tf.TensorSpec((None,), tf.int32, name="token"),
                     tf.TensorSpec((None, n_regions, c.feature_dim), tf.float32, name="features"),
                     tf.TensorSpec((None, n_regions, c.attention_units), tf.float32, name="keys"),
                     tf.TensorSpec((None, c.units), tf.float32, name="hidden")]

        @tf.function(input_signature=signature)
        def decoder(token, features, keys, hidden):
            return self.model.step(token, features, keys, hidden, training=False)

        return decoder

    @property
    def regions(self) -> int:
        return int(np.prod(self.backbone.top.output.shape[1:3]))


def load_run(run_dir: Path) -> TrainedRun:
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    for name in ("config.json", "model.weights.h5", "backbone.weights.h5"):
        if not (run_dir / name).is_file():
            raise UsageError(f"{run_dir} is not a catcap training run: {name} is missing")
    record = json.loads(config_path.read_text())
    info = record["backbone"]
    backbone = build_backbone(info["name"], "none", info["input_size"], info["fine_tune_blocks"])
    backbone.bottom.load_weights(str(run_dir / "backbone.weights.h5"))
    config = ModelConfig.from_dict(record["model"])
    model = build_model(config, backbone.top, backbone.cache_shape)
    model.load_weights(str(run_dir / "model.weights.h5"))
    return TrainedRun(run_dir, record, config, Vocabulary(tuple(record["vocabulary"])), backbone, model)
