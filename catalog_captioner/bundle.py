"""The model bundle: ``model.json`` + ``encoder.onnx`` + ``decoder.onnx`` in one folder.

A retrieval-augmented bundle (format 2, ``retrieval`` in model.json) adds
``neighbours.npz``, the index of training images the decoder reads titles from;
its encoder has the extra output ``embedding`` and its decoder the extra inputs
``neighbours`` and ``similarity``.

``model.json`` holds everything the runtime needs and nothing it must guess.
Loading verifies it completely and fails with one sentence naming the problem.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from catalog_captioner.errors import BundleError
from catalog_captioner.neighbours import NeighbourIndex
from catalog_captioner.text import SPECIALS, Vocabulary

FORMAT = "catcap-bundle"
FORMAT_VERSION = 2
READS_VERSIONS = (1, 2)

ENCODER_OUTPUTS = ("features", "keys", "hidden")
DECODER_INPUTS = ("token", "features", "keys", "hidden")
DECODER_OUTPUTS = ("logits", "hidden", "attention")
RETRIEVAL_ENCODER_OUTPUTS = ("embedding",)
RETRIEVAL_DECODER_INPUTS = ("neighbours", "similarity")


def default_model_dir() -> Path:
    """The bundle embedded in the package (``catalog_captioner/default_model``)."""
    return Path(__file__).resolve().parent / "default_model"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TensorNames:
    inputs: dict[str, str]
    outputs: dict[str, str]


@dataclass(frozen=True)
class ModelBundle:
    """A verified bundle on disk; sessions are created by :mod:`catalog_captioner.session`."""

    path: Path
    record: dict
    vocabulary: Vocabulary
    input_size: int
    max_length: int
    caption_case: str
    regions: int
    feature_dim: int
    units: int
    encoder_file: Path
    decoder_file: Path
    encoder_names: TensorNames
    decoder_names: TensorNames
    neighbours: NeighbourIndex | None = None  # retrieval-augmented bundles only
    neighbour_count: int = 0  # K titles per image

    @classmethod
    def load(cls, path: str | Path | None = None) -> "ModelBundle":
        folder = Path(path) if path is not None else default_model_dir()
        if path is None and not (folder / "model.json").is_file():
            raise BundleError("this installation has no embedded default model; pass --model DIR")
        if not folder.is_dir():
            raise BundleError(f"model folder {folder} does not exist")
        meta_path = folder / "model.json"
        if not meta_path.is_file():
            raise BundleError(f"{folder} is not a model bundle: model.json is missing")
        try:
            record = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{meta_path} is not valid JSON: {err}") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise BundleError(f"{meta_path} is not a catcap bundle (format must be '{FORMAT}')")
        version = record.get("format_version")
        if version not in READS_VERSIONS:
            raise BundleError(
                f"{meta_path} has format version {version!r}; this catcap reads versions "
                f"{', '.join(map(str, READS_VERSIONS))}"
            )
        try:
            return cls._from_record(folder, record)
        except KeyError as err:
            raise BundleError(f"{meta_path} lacks the required field {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise BundleError(f"{meta_path} is malformed: {err}") from None

    @classmethod
    def _from_record(cls, folder: Path, record: dict) -> "ModelBundle":
        vocab_record = record["vocabulary"]
        words = tuple(vocab_record["words"])
        if words[: len(SPECIALS)] != SPECIALS:
            raise BundleError(f"the vocabulary in {folder / 'model.json'} must start with {', '.join(SPECIALS)}")
        files = {}
        retrieval = record.get("retrieval")
        for part in ("encoder", "decoder", *(("retrieval",) if retrieval else ())):
            entry = record[part]
            file = folder / entry["file"]
            if not file.is_file():
                raise BundleError(f"the bundle {folder} is missing {entry['file']}")
            actual = sha256_file(file)
            if actual != entry["sha256"]:
                raise BundleError(
                    f"{file} fails its checksum (model.json says {entry['sha256'][:12]}..., file is {actual[:12]}...)"
                )
            files[part] = file
        encoder, decoder = record["encoder"], record["decoder"]
        enc_names = TensorNames(dict(encoder["inputs"]), dict(encoder["outputs"]))
        dec_names = TensorNames(dict(decoder["inputs"]), dict(decoder["outputs"]))
        missing = [k for k in ("image",) if k not in enc_names.inputs]
        missing += [k for k in ENCODER_OUTPUTS if k not in enc_names.outputs]
        missing += [k for k in DECODER_INPUTS if k not in dec_names.inputs]
        missing += [k for k in DECODER_OUTPUTS if k not in dec_names.outputs]
        index, count = None, 0
        if retrieval:
            missing += [k for k in RETRIEVAL_ENCODER_OUTPUTS if k not in enc_names.outputs]
            missing += [k for k in RETRIEVAL_DECODER_INPUTS if k not in dec_names.inputs]
            index, count = NeighbourIndex.load(files["retrieval"]), int(retrieval["neighbours"])
            if index.title_length != int(retrieval["title_length"]) or index.size < count:
                raise BundleError(f"{files['retrieval']} does not match model.json (titles of "
                                  f"{index.title_length} tokens, {index.size} images; K = {count})")
            if int(index.tokens.max(initial=0)) >= len(words):
                raise BundleError(f"{files['retrieval']} holds token ids beyond the vocabulary")
        if missing:
            raise BundleError(f"model.json names no tensor for: {', '.join(missing)}")
        vocab_size = int(decoder["vocab_size"])
        if vocab_size != len(words):
            raise BundleError(f"vocabulary has {len(words)} words but model.json says the decoder has {vocab_size}")
        return cls(
            path=folder,
            record=record,
            vocabulary=Vocabulary(words),
            input_size=int(record["input"]["size"]),
            max_length=int(record["max_length"]),
            caption_case=str(record.get("caption_case", "title")),
            regions=int(encoder["regions"]),
            feature_dim=int(encoder["feature_dim"]),
            units=int(decoder["units"]),
            encoder_file=files["encoder"],
            decoder_file=files["decoder"],
            encoder_names=enc_names,
            decoder_names=dec_names,
            neighbours=index,
            neighbour_count=count,
        )

    @property
    def preprocess(self) -> str:
        return str(self.record["input"].get("preprocess", ""))

    def summary(self) -> dict:
        """The parts of the record a person asks about first (``catcap info``)."""
        keys = ("name", "backbone", "created", "training", "metrics", "parity", "export")
        out = {k: self.record[k] for k in keys if k in self.record}
        if isinstance(out.get("metrics"), dict):  # the id sample is for tests, not for people
            out["metrics"] = {k: v for k, v in out["metrics"].items() if k != "validation_ids_sample"}
        out.update(
            path=str(self.path),
            input_size=self.input_size,
            vocabulary_size=len(self.vocabulary),
            max_length=self.max_length,
            regions=self.regions,
            encoder_mb=round(self.encoder_file.stat().st_size / 1e6, 2),
            decoder_mb=round(self.decoder_file.stat().st_size / 1e6, 2),
        )
        if self.neighbours is not None:
            out.update(retrieval_images=self.neighbours.size, neighbours_per_image=self.neighbour_count,
                       index_mb=round((self.path / self.record["retrieval"]["file"]).stat().st_size / 1e6, 2))
        return out
