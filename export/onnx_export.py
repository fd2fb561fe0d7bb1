"""``catcap export``: Keras run -> encoder.onnx + decoder.onnx + model.json, with a parity proof.

Both graphs are converted with ``tf2onnx.convert.from_function`` (opset 17). The
parity check runs real validation images through Keras and ONNX Runtime and the
export fails, leaving nothing at OUT, if they disagree beyond the thresholds.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import tf2onnx

from catalog_captioner import bundle as bundles
from catalog_captioner import images
from catalog_captioner.errors import CatcapError, UsageError
from export.compress import round_decoder_weights, store_float16
from export.keras_model import TrainedRun, load_run
from export.parity import check_parity, greedy_tokens, validation_pixels

OPSET = 17
# ONNX names of the decoder outputs (an output may not reuse the input name "hidden").
DECODER_OUTPUT_NAMES = {"logits": "logits", "hidden": "next_hidden", "attention": "attention"}


class ExportError(CatcapError):
    """The exported graphs do not agree with Keras."""


@dataclass(frozen=True)
class ExportOptions:
    run_dir: Path
    out: Path
    parity_images: int = 64
    max_abs_diff: float = 1e-4
    min_greedy_match: float = 0.99
    name: str | None = None
    length_penalty: float = 0.6
    block_repeats: bool = True  # decoding default: never the same word twice in a row
    decoder_float16: bool = True  # store decoder weights as float16 (see export.compress)


def _rename_outputs(path: Path, names: list[str]) -> None:
    """tf2onnx names outputs Identity:0, Identity_1:0, ...; give them their roles' names."""
    model = onnx.load(str(path))
    mapping = {out.name: new for out, new in zip(model.graph.output, names)}
    for node in model.graph.node:
        node.output[:] = [mapping.get(o, o) for o in node.output]
        node.input[:] = [mapping.get(i, i) for i in node.input]
    for out in model.graph.output:
        out.name = mapping[out.name]
    onnx.save(model, str(path))


def convert(run: TrainedRun, folder: Path, decoder_float16: bool = False) -> dict:
    encoder_path, decoder_path = folder / "encoder.onnx", folder / "decoder.onnx"
    storage = {"decoder_weights": "float32"}
    if decoder_float16:
        storage["rounded_values"] = round_decoder_weights(run.model)
    fn = run.encoder_function()
    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=OPSET, output_path=str(encoder_path))
    _rename_outputs(encoder_path, list(bundles.ENCODER_OUTPUTS) +
                    (list(bundles.RETRIEVAL_ENCODER_OUTPUTS) if run.retrieval else []))
    if run.retrieval:
        shutil.copyfile(run.path / "neighbours.npz", folder / "neighbours.npz")
    fn = run.decoder_function()
    tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=OPSET, output_path=str(decoder_path))
    _rename_outputs(decoder_path, [DECODER_OUTPUT_NAMES[k] for k in bundles.DECODER_OUTPUTS])
    if decoder_float16:
        storage.update(store_float16(decoder_path), decoder_weights="float16 storage, float32 arithmetic")
    return storage


def _input_names(path: Path) -> list[str]:
    model = onnx.load(str(path))
    initialisers = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initialisers]


def _named(names: list[str], role: str) -> str:
    for name in names:
        if name == role or name.split(":")[0] == role:
            return name
    raise ExportError(f"the exported graph has no input named {role!r} (inputs: {', '.join(names)})")


def _retrieval_record(run: TrainedRun, folder: Path) -> dict:
    index = run.index
    return {"file": "neighbours.npz", "sha256": bundles.sha256_file(folder / "neighbours.npz"),
            "neighbours": run.config.neighbours, "title_length": index.title_length, "images": index.size,
            "key": "encoder output 'embedding': the frozen backbone map averaged over regions, unit length; "
                   "cosine similarity, exact search"}


def write_record(run: TrainedRun, folder: Path, parity: dict, options: ExportOptions, storage: dict) -> dict:
    enc_inputs, dec_inputs = _input_names(folder / "encoder.onnx"), _input_names(folder / "decoder.onnx")
    record = {
        "format": bundles.FORMAT,
        "format_version": bundles.FORMAT_VERSION if run.retrieval else 1,  # plain bundles stay readable by 1.x
        "name": options.name or run.path.name,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "backbone": run.backbone.name,
        "input": {"size": run.backbone.input_size, "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                  "preprocess": images.PREPROCESS_VERSION,
                  "preprocess_text": "EXIF-rotate, RGB on white, pad to a white square, bilinear resize; "
                                     "normalisation happens inside encoder.onnx"},
        "vocabulary": {"words": list(run.vocabulary.words), "pad": 0, "start": 1, "end": 2, "unk": 3,
                       "tokenizer": "lower-case words: [a-z0-9]+ joined by ' & + . -"},
        "max_length": run.config.max_length,
        "caption_case": "title",
        "decoding": {"default": "greedy", "length_penalty": options.length_penalty,
                     "block_repeats": options.block_repeats},
        "encoder": {
            "file": "encoder.onnx", "sha256": bundles.sha256_file(folder / "encoder.onnx"),
            "inputs": {"image": _named(enc_inputs, "image")},
            "outputs": {k: k for k in bundles.ENCODER_OUTPUTS + (bundles.RETRIEVAL_ENCODER_OUTPUTS if run.retrieval else ())},
            "shapes": {"image": ["N", run.backbone.input_size, run.backbone.input_size, 3],
                       "features": ["N", run.regions, run.config.feature_dim],
                       "keys": ["N", run.regions, run.config.attention_units], "hidden": ["N", run.config.units]},
            "regions": run.regions, "feature_dim": run.config.feature_dim,
        },
        "decoder": {
            "file": "decoder.onnx", "sha256": bundles.sha256_file(folder / "decoder.onnx"),
            "inputs": {role: _named(dec_inputs, role) for role in
                       bundles.DECODER_INPUTS + (bundles.RETRIEVAL_DECODER_INPUTS if run.retrieval else ())},
            "outputs": DECODER_OUTPUT_NAMES,
            "shapes": {"token": ["N"], "logits": ["N", len(run.vocabulary)], "attention": ["N", run.regions]},
            "units": run.config.units, "vocab_size": len(run.vocabulary),
        },
        **({"retrieval": _retrieval_record(run, folder)} if run.retrieval else {}),
        "training": {**run.record.get("training", {}), "run_dir": str(run.path.resolve()), "data": run.record.get("data", {}),
                     "backbone": run.record.get("backbone", {}), "model": run.record.get("model", {})},
        "metrics": run.record.get("metrics", {}),
        "parity": parity,
        "export": {"tool": f"tf2onnx {tf2onnx.__version__}", "opset": OPSET, "onnx": onnx.__version__, **storage},
    }
    (folder / "model.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def export(options: ExportOptions, log=None) -> Path:
    log = log or (lambda message: print(f"catcap export: {message}", flush=True))
    out = Path(options.out)
    if out.exists() and not (out / "model.json").is_file() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not a model bundle; choose an empty or new folder")
    run = load_run(options.run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pixels = validation_pixels(run, options.parity_images)  # loaded once for every check below
        changes_form = options.decoder_float16 or run.retrieval  # retrieval runs export a folded text memory
        reference = greedy_tokens(run, pixels, folded=False) if changes_form else None
        storage = convert(run, staging, options.decoder_float16)
        if reference is not None:
            rounded = greedy_tokens(run, pixels)
            storage["greedy_match_after_rounding"] = float(np.mean([a == b for a, b in zip(reference, rounded)]))
        log(f"converted: encoder {os.path.getsize(staging / 'encoder.onnx') / 1e6:.1f} MB, "
            f"decoder {os.path.getsize(staging / 'decoder.onnx') / 1e6:.1f} MB")
        parity = check_parity(run, staging, pixels)
        log(f"parity on {parity['images']} validation images: max |diff| features {parity['max_abs_diff_features']:.2e}, "
            f"logits {parity['max_abs_diff_logits']:.2e}; greedy captions identical {parity['greedy_match']:.3f}")
        if parity["max_abs_diff"] > options.max_abs_diff or parity["greedy_match"] < options.min_greedy_match:
            raise ExportError(f"ONNX disagrees with Keras: max_abs_diff {parity['max_abs_diff']:.2e} "
                              f"(limit {options.max_abs_diff:g}), greedy_match {parity['greedy_match']:.3f} "
                              f"(limit {options.min_greedy_match:g}); nothing was written to {out}")
        parity.update(limit_max_abs_diff=options.max_abs_diff, limit_greedy_match=options.min_greedy_match)
        write_record(run, staging, parity, options, storage)
        bundles.ModelBundle.load(staging)  # the bundle must pass the runtime's own checks
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"wrote {out}")
    return out
