"""Show, Attend and Tell in Keras 3: encoder head + Bahdanau attention GRU decoder.

The decoder is written as a single step, ``step(token, features, keys, hidden)``,
used three ways: unrolled with teacher forcing for training, in a Python loop
for Keras-side decoding, and exported alone to ONNX for the runtime. ``keys`` is
the attention's image-side projection, computed once per image by ``encode``.

With ``neighbours > 0`` the decoder is retrieval-augmented: beside the image
regions it attends over the tokenised titles of the K most similar training
images (found by the runtime in the bundle's index) and may copy a word from
them through a pointer (See et al., 2017), so a brand or product-line name seen
on a near-identical photo can be written even when the pixels alone are vague.
Its ``logits`` output is then a log-probability vector (a valid logit vector).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
from keras import layers, ops


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    max_length: int  # words, <end> not counted
    feature_dim: int = 256
    embedding_dim: int = 256
    units: int = 512
    attention_units: int = 256
    dropout: float = 0.0
    feature_norm: bool = True  # LayerNorm on the region features: O(1) values, so ONNX parity holds to 1e-4
    attributes: tuple[tuple[str, int], ...] = ()  # auxiliary heads: (column, classes)
    neighbours: int = 0  # K retrieved titles the decoder reads (0: plain image decoder)
    neighbour_length: int = 0  # tokens kept per retrieved title, <end> included
    region_colours: bool = False  # each region's mean RGB joins its CNN features (train.colours)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        data["attributes"] = tuple(tuple(a) for a in data.get("attributes", ()))
        data.setdefault("feature_norm", False)  # runs made before the option existed
        return cls(**data)


class BahdanauAttention(layers.Layer):
    """score = v . tanh(W1 features + W2 hidden); W1 features is precomputed as ``keys``."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.w1 = layers.Dense(units, name="w1")
        self.w2 = layers.Dense(units, name="w2")
        self.v = layers.Dense(1, name="v")

    def project(self, features):
        return self.w1(features)

    def call(self, features, keys, hidden, mask=None):
        score = self.v(ops.tanh(keys + ops.expand_dims(self.w2(hidden), 1)))  # (N, L, 1)
        if mask is not None:  # (N, L): 1 = real entry, 0 = padding
            score = score + ops.expand_dims((1.0 - mask) * -1e9, -1)
        weights = ops.softmax(score, axis=1)
        context = ops.sum(weights * features, axis=1)
        return context, ops.squeeze(weights, -1)


class CaptionModel(keras.Model):
    """Inputs: cached backbone maps + caption tokens (teacher forcing). Outputs: logits per step."""

    def __init__(self, config: ModelConfig, backbone_top: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.backbone_top = backbone_top
        self.project_features = layers.Dense(config.feature_dim, activation="relu", name="encoder_dense")
        self.feature_norm = layers.LayerNormalization(name="feature_norm") if config.feature_norm else None
        self.init_state = layers.Dense(config.units, activation="tanh", name="init_state")
        self.embedding = layers.Embedding(config.vocab_size, config.embedding_dim, name="embedding")
        self.attention = BahdanauAttention(config.attention_units, name="attention")
        self.gru = layers.GRUCell(config.units, name="gru")
        self.fc1 = layers.Dense(config.units, activation="relu", name="fc1")
        self.fc2 = layers.Dense(config.vocab_size, name="fc2")
        self.drop = layers.Dropout(config.dropout) if config.dropout else None
        self.heads = {name: layers.Dense(classes, name=f"attr_{name}") for name, classes in config.attributes}
        if config.neighbours:
            self.text_position = layers.Embedding(config.neighbour_length, config.embedding_dim, name="text_position")
            self.text_rank = layers.Embedding(config.neighbours, config.embedding_dim, name="text_rank")
            self.text_similarity = layers.Dense(config.embedding_dim, name="text_similarity")
            self.text_values = layers.Dense(config.feature_dim, name="text_values")
            self.text_attention = BahdanauAttention(config.attention_units, name="text_attention")
            self.copy_gate = layers.Dense(1, name="copy_gate")

    # -- encoder side -------------------------------------------------------------------------
    def encode(self, cached, colours=None, training=False):
        """Backbone map [+ region colours (N,h,w,3)] -> (features (N,L,D), keys (N,L,A), initial hidden (N,U))."""
        fmap = self.backbone_top(cached, training=training)
        if self.config.region_colours:
            fmap = ops.concatenate([fmap, ops.cast(colours, fmap.dtype)], axis=-1)
        n_regions = fmap.shape[1] * fmap.shape[2]
        regions = ops.reshape(fmap, (-1, n_regions, fmap.shape[3]))
        features = self.project_features(regions)
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        if self.drop is not None:
            features = self.drop(features, training=training)
        keys = self.attention.project(features)
        hidden = self.init_state(ops.mean(features, axis=1))
        return features, keys, hidden

    def text_memory(self, neighbours, similarity, folded=False):
        """Retrieved titles (N,K,T) int + their cosine similarity (N,K) -> values, keys, mask, token ids (N,K*T).

        ``folded`` (the exported form) computes the same linear maps in another order:
        per-word tables (word embedding @ W, rounded to float16 so the bundle stores them
        in half the bytes) that depend only on weights, so each decoding step gathers
        rows instead of running two Dense layers over all K*T retrieved tokens.
        """
        c = self.config
        k, t = c.neighbours, c.neighbour_length
        neighbours = ops.cast(neighbours, "int32")
        if folded:
            values, keys = self._folded_text_memory(neighbours, similarity, k, t)
        else:
            x = self.embedding(neighbours)  # (N,K,T,E): the decoder's own word embedding
            x = x + ops.reshape(self.text_position(ops.arange(t)), (1, 1, t, -1))
            x = x + ops.reshape(self.text_rank(ops.arange(k)), (1, k, 1, -1))
            x = x + ops.expand_dims(self.text_similarity(ops.expand_dims(ops.cast(similarity, "float32"), -1)), 2)
            values = self.text_values(x)
            keys = self.text_attention.project(values)
        tokens = ops.reshape(neighbours, (-1, k * t))
        mask = ops.cast(ops.not_equal(tokens, 0), "float32")
        return (ops.reshape(values, (-1, k * t, c.feature_dim)), ops.reshape(keys, (-1, k * t, c.attention_units)),
                mask, tokens)

    def _folded_text_memory(self, neighbours, similarity, k, t):
        """(N,K,T,D) values and (N,K,T,A) keys from float16 per-word tables + weight-only offsets."""
        half = lambda x: ops.cast(ops.cast(x, "float16"), "float32")  # noqa: E731
        wv, bv = self.text_values.kernel, self.text_values.bias
        w1, b1 = self.text_attention.w1.kernel, self.text_attention.w1.bias
        value_table = ops.matmul(self.embedding.embeddings, wv)  # (V,D): weights only
        offset = (ops.reshape(ops.matmul(self.text_position.embeddings, wv), (1, 1, t, -1))
                  + ops.reshape(ops.matmul(self.text_rank.embeddings, wv), (1, k, 1, -1))
                  + ops.matmul(ops.expand_dims(self.text_similarity.bias, 0), wv) + bv)  # (1,K,T,D)
        per_similarity = ops.matmul(self.text_similarity.kernel, wv)  # (1,D)
        sim = ops.reshape(ops.cast(similarity, "float32"), (-1, k, 1, 1))
        values = ops.take(half(value_table), neighbours, axis=0) + offset + sim * per_similarity
        keys = (ops.take(half(ops.matmul(value_table, w1)), neighbours, axis=0) + ops.matmul(offset, w1) + b1
                + sim * ops.matmul(per_similarity, w1))
        return values, keys

    # -- one decoding step --------------------------------------------------------------------
    def step(self, token, features, keys, hidden, memory=None, training=False):
        """(token (N,), features, keys, hidden[, text memory]) -> (logits (N,V), new hidden, attention (N,L))."""
        context, weights = self.attention(features, keys, hidden)
        parts = [context]
        if memory is not None:
            values, text_keys, mask, tokens = memory
            text_context, text_weights = self.text_attention(values, text_keys, hidden, mask)
            parts.append(text_context)
        x = ops.concatenate([*parts, self.embedding(token)], axis=-1)
        out, new_state = self.gru(x, [hidden], training=training)
        new_hidden = new_state[0] if isinstance(new_state, (list, tuple)) else new_state
        h = self.fc1(ops.concatenate([out, *parts], axis=-1))
        if self.drop is not None:
            h = self.drop(h, training=training)
        logits = self.fc2(h)
        if memory is None:
            return logits, new_hidden, weights
        # Pointer: mix the vocabulary distribution with copying a retrieved token, in log space
        # (1 - sigmoid(z) in float32 loses every digit when the gate is nearly shut).
        z = self.copy_gate(ops.concatenate([out, *parts], axis=-1))  # (N,1): logit of P(generate)
        copy = _scatter_rows(tokens, text_weights, self.config.vocab_size)
        log_generate = -ops.softplus(-z) + ops.log_softmax(logits, axis=-1)
        log_copy = -ops.softplus(z) + ops.log(copy + 1e-9)
        top = ops.maximum(log_generate, log_copy)  # logaddexp without Log1p (no ONNX op for it)
        return top + ops.log(ops.exp(log_generate - top) + ops.exp(log_copy - top)), new_hidden, weights

    # -- teacher forcing ----------------------------------------------------------------------
    def call(self, inputs, training=False):
        cached, tokens = inputs["cached"], inputs["tokens"]
        features, keys, hidden = self.encode(ops.cast(cached, "float32"), inputs.get("colours"), training=training)
        memory = (self.text_memory(inputs["neighbours"], inputs["similarity"])
                  if self.config.neighbours else None)
        outputs = []
        for t in range(tokens.shape[1]):
            logits, hidden, _ = self.step(tokens[:, t], features, keys, hidden, memory, training=training)
            outputs.append(logits)
        result = {"caption": ops.stack(outputs, axis=1)}
        pooled = ops.mean(features, axis=1)
        for name, head in self.heads.items():
            result[f"attr_{name}"] = head(pooled)
        return result


def _scatter_rows(tokens, weights, vocab_size):
    """Sum each row's weights (N,M) into a (N,V) vector at its token ids (N,M): ONNX ScatterND add."""
    import tensorflow as tf

    n = tf.shape(tokens)[0]
    m = tf.shape(tokens)[1]
    rows = tf.tile(tf.expand_dims(tf.range(n), 1), tf.stack([1, m]))
    index = tf.reshape(tf.stack([rows, tokens], axis=-1), (-1, 2))
    zeros = tf.zeros(tf.stack([n, vocab_size]), weights.dtype)
    return tf.tensor_scatter_nd_add(zeros, index, tf.reshape(weights, (-1,)))


class MaskedCaptionLoss(keras.losses.Loss):
    """Cross-entropy over real tokens only (``<pad>`` = 0 ignored), with label smoothing."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "caption_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "int32")
        logp = ops.log_softmax(y_pred, axis=-1)
        nll = -ops.squeeze(ops.take_along_axis(logp, ops.expand_dims(y_true, -1), axis=-1), -1)
        if self.label_smoothing:
            nll = (1 - self.label_smoothing) * nll - self.label_smoothing * ops.mean(logp, axis=-1)
        mask = ops.cast(ops.not_equal(y_true, 0), nll.dtype)
        return ops.sum(nll * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class AttributeLoss(keras.losses.Loss):
    """Sparse cross-entropy that ignores rows whose attribute is unknown (label -1)."""

    def call(self, y_true, y_pred):
        y_true = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        known = ops.cast(ops.greater_equal(y_true, 0), "float32")
        logp = ops.log_softmax(y_pred, axis=-1)
        nll = -ops.squeeze(ops.take_along_axis(logp, ops.expand_dims(ops.maximum(y_true, 0), -1), axis=-1), -1)
        return nll * known


def build_model(config: ModelConfig, backbone_top: keras.Model, cache_shape: tuple[int, ...]) -> CaptionModel:
    model = CaptionModel(config, backbone_top)
    import numpy as np

    inputs = {"cached": np.zeros((1, *cache_shape), "float32"), "tokens": np.zeros((1, config.max_length + 1), "int32")}
    if config.region_colours:
        inputs["colours"] = np.zeros((1, *backbone_top.output.shape[1:3], 3), "float32")
    if config.neighbours:
        inputs["neighbours"] = np.ones((1, config.neighbours, config.neighbour_length), "int32")
        inputs["similarity"] = np.zeros((1, config.neighbours), "float32")
    model(inputs)  # create every weight
    return model
