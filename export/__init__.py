"""Export a trained run to the runtime's ONNX bundle and prove it agrees with Keras."""
