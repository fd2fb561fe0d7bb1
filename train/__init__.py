"""Training: a pretrained CNN encoder + Bahdanau-attention GRU decoder (Keras 3 / TensorFlow).

Installed with ``pip install .[train]`` and imported only by ``catcap train``/``export``.
"""
