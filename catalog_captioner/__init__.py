"""catcap: caption product catalogs with an exported ONNX encoder + attention decoder.

The runtime never imports TensorFlow; training and export live in the top-level
``train`` and ``export`` packages (``pip install .[train]``).
"""

from catalog_captioner.bundle import ModelBundle, default_model_dir
from catalog_captioner.captioner import Captioner, CaptionResult
from catalog_captioner.errors import CatcapError

__all__ = ["Captioner", "CaptionResult", "CatcapError", "ModelBundle", "default_model_dir"]
__version__ = "0.1.0"
