"""Store the decoder's weights as float16 without changing what the graph computes.

The Keras decoder weights are first rounded to float16 precision (so the Keras
reference of the parity check computes with the very same numbers); after
conversion, every float32 initializer of decoder.onnx that is exactly
representable in float16 is stored as float16 and cast back to float32 at load
(ONNX Runtime folds the Cast once per session). The decoder file halves; its
arithmetic stays float32. The encoder stays float32: tf2onnx folds batch norm
into its convolutions, so its weights are not float16 values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def round_decoder_weights(model) -> int:
    """Round the decoder-side Keras weights to float16 precision in place; returns how many values."""
    layers = [model.embedding, model.attention.w2, model.attention.v, model.gru, model.fc1, model.fc2]
    if model.config.neighbours:
        layers += [model.text_position, model.text_rank, model.text_similarity, model.text_values,
                   model.text_attention, model.copy_gate]
    count = 0
    for layer in layers:
        for variable in layer.weights:
            value = np.asarray(variable.numpy())
            if value.dtype == np.float32:
                variable.assign(value.astype(np.float16).astype(np.float32))
                count += value.size
    return count


def store_float16(path: Path, min_size: int = 1024) -> dict:
    """Rewrite exactly-representable float32 initializers of ``path`` as float16 + Cast."""
    model = onnx.load(str(path))
    graph = model.graph
    kept, converted, nodes = [], 0, []
    for init in graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size >= min_size:
            half = array.astype(np.float16)
            if np.array_equal(half.astype(np.float32), array):
                name16 = init.name + "__f16"
                kept.append(numpy_helper.from_array(half, name16))
                nodes.append(helper.make_node("Cast", [name16], [init.name], to=onnx.TensorProto.FLOAT,
                                              name=init.name + "__cast"))
                converted += array.size
                continue
        kept.append(init)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in reversed(nodes):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"float16_values": int(converted)}
