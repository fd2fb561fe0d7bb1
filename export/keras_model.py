"""Rebuild a trained run's Keras model from its run folder (for export and evaluation)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from catalog_captioner.errors import UsageError
from catalog_captioner.neighbours import NeighbourIndex
from catalog_captioner.text import Vocabulary
from train.backbones import Backbone, build_backbone
from train.colours import region_colours_graph
from train.model import CaptionModel, ModelConfig, build_model


@dataclass
class TrainedRun:
    path: Path
    record: dict
    config: ModelConfig
    vocabulary: Vocabulary
    backbone: Backbone
    model: CaptionModel

    @property
    def retrieval(self) -> bool:
        return self.config.neighbours > 0

    @functools.cached_property
    def index(self) -> NeighbourIndex | None:
        """The training index the decoder reads titles from (retrieval-augmented runs), loaded once."""
        return NeighbourIndex.load(self.path / "neighbours.npz") if self.retrieval else None

    def encoder_function(self):
        """uint8 images -> (features, keys, hidden[, embedding]): the graph exported as encoder.onnx.

        ``embedding`` (retrieval-augmented runs) is the frozen map averaged over the
        regions and L2-normalised: the key the training index was built with.
        """
        size = self.backbone.input_size
        spec = tf.TensorSpec((None, size, size, 3), tf.uint8, name="image")

        @tf.function(input_signature=[spec])
        def encoder(image):
            pixels = tf.cast(image, tf.float32)
            cached = self.backbone.bottom(pixels, training=False)
            colours = region_colours_graph(pixels, self.backbone.grid) if self.config.region_colours else None
            features, keys, hidden = self.model.encode(cached, colours, training=False)
            if not self.retrieval:
                return features, keys, hidden
            pooled = tf.reduce_mean(cached, axis=[1, 2])
            return features, keys, hidden, pooled / (tf.norm(pooled, axis=-1, keepdims=True) + 1e-12)

        return encoder

    def decoder_function(self, folded: bool = True):
        """(token, features, keys, hidden[, neighbours, similarity]) -> (logits, hidden, attention):
        exported as decoder.onnx. ``folded=False`` is the training form of the text memory
        (see ``CaptionModel.text_memory``), the reference for what folding changed."""
        c = self.config
        signature = [tf.TensorSpec((None,), tf.int32, name="token"),
                     tf.TensorSpec((None, self.regions, c.feature_dim), tf.float32, name="features"),
                     tf.TensorSpec((None, self.regions, c.attention_units), tf.float32, name="keys"),
                     tf.TensorSpec((None, c.units), tf.float32, name="hidden")]
        if not self.retrieval:
            @tf.function(input_signature=signature)
            def decoder(token, features, keys, hidden):
                return self.model.step(token, features, keys, hidden, training=False)

            return decoder
        signature += [tf.TensorSpec((None, c.neighbours, c.neighbour_length), tf.int32, name="neighbours"),
                      tf.TensorSpec((None, c.neighbours), tf.float32, name="similarity")]

        @tf.function(input_signature=signature)
        def retrieval_decoder(token, features, keys, hidden, neighbours, similarity):
            memory = self.model.text_memory(neighbours, similarity, folded=folded)
            return self.model.step(token, features, keys, hidden, memory, training=False)

        return retrieval_decoder

    @property
    def regions(self) -> int:
        return int(np.prod(self.backbone.grid))


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
    if config.neighbours and not (run_dir / "neighbours.npz").is_file():
        raise UsageError(f"{run_dir} is a retrieval-augmented run but neighbours.npz is missing")
    return TrainedRun(run_dir, record, config, Vocabulary(tuple(record["vocabulary"])), backbone, model)
