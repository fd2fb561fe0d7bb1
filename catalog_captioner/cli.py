"""The ``catcap`` command line (Typer). Training/export/evaluation import lazily."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from catalog_captioner.errors import CatcapError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Caption product catalogs with an exported image-captioning model.")

EXIT_ERROR_RATE = 3

ModelOpt = typer.Option(None, "--model", help="Model bundle folder (default: the embedded model).")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when a session really runs there), cpu or cuda.")


def _fail(err: CatcapError) -> None:
    typer.echo(f"catcap: error: {err}", err=True)
    raise typer.Exit(err.exit_code)


@app.command()
def run(
    input: Path = typer.Argument(..., help="Catalog: .csv, .tsv, .parquet or .jsonl."),
    out: Path = typer.Option(..., "--out", "-o", help="Output table (written atomically)."),
    model: Optional[Path] = ModelOpt,
    format: Optional[str] = typer.Option(None, "--format", help="Input format, if the extension does not say."),
    out_format: Optional[str] = typer.Option(None, "--out-format", help="Output format (default: from --out)."),
    image_col: Optional[str] = typer.Option(None, "--image-col", help="Column with image paths or URLs."),
    image_root: Optional[Path] = typer.Option(None, "--image-root", help="Base folder for relative paths "
                                              "(default: the catalog's folder)."),
    caption_col: str = typer.Option("caption", "--caption-col", help="Name of the caption column."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing caption columns."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per model call."),
    chunk_size: int = typer.Option(1024, "--chunk-size", help="Rows per chunk (the unit of --resume)."),
    workers: int = typer.Option(8, "--workers", help="Threads loading and downloading images."),
    device: str = DeviceOpt,
    threads: int = typer.Option(0, "--threads", help="ONNX Runtime threads (0: all cores)."),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", help="1 = greedy; >1 = beam search "
                                            "(default: the bundle's own, 3 for the embedded model)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Longest caption in words."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N rows."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of the same command."),
    max_error_rate: Optional[float] = typer.Option(None, "--max-error-rate", help="Exit 3 when the share of "
                                                   "failed rows exceeds this (0..1)."),
    summary_json: Optional[Path] = typer.Option(None, "--summary-json", help="Write the run summary here."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary on stderr."),
) -> None:
    """Caption every row of a catalog and write the table back with caption columns."""
    from catalog_captioner.captioner import Captioner
    from catalog_captioner.progress import Reporter
    from catalog_captioner.run import RunOptions, run_catalog

    try:
        if beam_size is not None and beam_size < 1:
            raise UsageError("--beam-size must be at least 1")
        if max_error_rate is not None and not 0 <= max_error_rate <= 1:
            raise UsageError("--max-error-rate must be between 0 and 1")
        if limit is not None and limit < 0:
            raise UsageError("--limit must not be negative")
        reporter = Reporter(quiet=quiet)
        captioner = Captioner.load(model, device=device, beam_size=beam_size, max_length=max_length, threads=threads)
        if captioner.model.notice:
            reporter.notice(captioner.model.notice)
        options = RunOptions(input=input, output=out, in_format=format, out_format=out_format, image_col=image_col,
                             caption_col=caption_col, overwrite=overwrite, image_root=image_root,
                             batch_size=batch_size, chunk_size=chunk_size, workers=workers, limit=limit,
                             resume=resume, max_error_rate=max_error_rate)
        summary = run_catalog(options, captioner, reporter)
    except CatcapError as err:
        _fail(err)
    if summary_json:
        from dataclasses import asdict

        summary_json.write_text(json.dumps(asdict(summary), indent=2) + "\n")
    if summary.max_error_rate_exceeded:
        typer.echo(f"catcap: error rate {summary.error_rate:.4f} exceeds --max-error-rate {max_error_rate}", err=True)
        raise typer.Exit(EXIT_ERROR_RATE)


@app.command()
def info(model: Optional[Path] = ModelOpt, device: str = DeviceOpt,
         as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show a bundle's record and the execution providers that really work here."""
    import onnxruntime as ort

    from catalog_captioner.bundle import ModelBundle
    from catalog_captioner.session import DeviceOptions, open_model

    try:
        bundle = ModelBundle.load(model)
        session = open_model(bundle, DeviceOptions(device=device))
    except CatcapError as err:
        _fail(err)
    report = {"model": bundle.summary(), "onnxruntime": ort.__version__,
              "providers_installed": ort.get_available_providers(), "provider_in_use": session.provider,
              "encoder_providers": session.encoder.get_providers()}
    if session.notice:
        report["notice"] = session.notice
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(report, expand_all=False))


@app.command()
def train(
    catalog: Path = typer.Argument(..., help="Training catalog (same formats and image rules as run)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder for weights, vocabulary, history."),
    image_col: Optional[str] = typer.Option(None, "--image-col"),
    caption_col: str = typer.Option("caption", "--caption-col"),
    image_root: Optional[Path] = typer.Option(None, "--image-root"),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone",
                                 help="efficientnet_lite0, efficientnet_lite2 or inception_resnet_v2."),
    backbone_weights: Optional[str] = typer.Option(None, "--backbone-weights",
                                                   help="imagenet (default), none, or a local weights file."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Override the backbone's input size."),
    fine_tune_blocks: int = typer.Option(0, "--fine-tune-blocks", help="Train the backbone's last N blocks."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = typer.Option(64, "--batch-size"),
    learning_rate: float = typer.Option(1e-3, "--learning-rate"),
    patience: int = typer.Option(3, "--patience", help="Early-stopping patience on validation loss."),
    lr_decay: float = typer.Option(1.0, "--lr-decay", help="Multiply the learning rate by this after each epoch "
                                   "without improvement (1 = constant rate)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction"),
    seed: int = typer.Option(13, "--seed"),
    min_count: int = typer.Option(2, "--min-count", help="Words seen fewer times become <unk>."),
    max_length: int = typer.Option(20, "--max-length", help="Cap on caption length in words."),
    embedding_dim: int = typer.Option(256, "--embedding-dim"),
    units: int = typer.Option(512, "--units", help="GRU units."),
    feature_dim: int = typer.Option(256, "--feature-dim", help="Encoder Dense width per region."),
    attribute_cols: str = typer.Option("", "--attribute-cols", help="Comma-separated catalog columns to "
                                       "predict as auxiliary heads (e.g. gender,baseColour,subCategory)."),
    label_smoothing: float = typer.Option(0.0, "--label-smoothing"),
    dropout: float = typer.Option(0.0, "--dropout"),
    neighbours: int = typer.Option(0, "--neighbours", help="Retrieval-augmented decoder: read the titles of the K "
                                   "most similar training images (0 = off)."),
    region_colours: bool = typer.Option(False, "--region-colours", help="Give each attention region its mean "
                                        "RGB beside the CNN features (aimed at the colour word; within noise on "
                                        "the default model, see the README)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N catalog rows."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature cache "
                                             "(default: $CATCAP_CACHE or ~/.cache/catcap)."),
) -> None:
    """Train the encoder + attention decoder on a catalog (needs the `train` extra)."""
    trainer = _import_train("train.trainer")
    options = trainer.TrainOptions(
        catalog=catalog, out=out, image_col=image_col, caption_col=caption_col, image_root=image_root,
        backbone=backbone, backbone_weights=backbone_weights, input_size=input_size,
        fine_tune_blocks=fine_tune_blocks, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate,
        patience=patience, lr_decay=lr_decay, val_fraction=val_fraction, seed=seed, min_count=min_count,
        max_length=max_length,
        embedding_dim=embedding_dim, units=units, feature_dim=feature_dim,
        attribute_cols=tuple(c.strip() for c in attribute_cols.split(",") if c.strip()),
        label_smoothing=label_smoothing, dropout=dropout, neighbours=neighbours,
        region_colours=region_colours, limit=limit, cache_dir=cache_dir)
    try:
        trainer.train(options)
    except CatcapError as err:
        _fail(err)


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A folder written by `catcap train`."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write."),
    parity_images: int = typer.Option(64, "--parity-images", help="Validation images for the parity check."),
    max_abs_diff: float = typer.Option(1e-4, "--max-abs-diff"),
    min_greedy_match: float = typer.Option(0.99, "--min-greedy-match"),
    length_penalty: float = typer.Option(0.6, "--length-penalty", help="Beam search's GNMT length penalty "
                                         "recorded as the bundle's default."),
    decoder_float16: bool = typer.Option(True, "--decoder-float16/--decoder-float32",
                                         help="Store decoder weights as float16 (half the file; arithmetic stays "
                                         "float32; Keras weights are rounded the same way before the parity check)."),
    block_repeats: bool = typer.Option(True, "--block-repeats/--allow-repeats",
                                       help="Bundle's decoding default: never write the same word twice in a row."),
) -> None:
    """Export a trained run to an ONNX bundle and prove it agrees with Keras."""
    import os

    # TensorFlow's oneDNN kernels reorder float sums more freely than its Eigen kernels;
    # with Eigen the Keras reference of the parity check sits closer to exact float32.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    exporter = _import_train("export.onnx_export")
    try:
        exporter.export(exporter.ExportOptions(run_dir=run_dir, out=out, parity_images=parity_images,
                                               max_abs_diff=max_abs_diff, min_greedy_match=min_greedy_match,
                                               decoder_float16=decoder_float16, length_penalty=length_penalty,
                                               block_repeats=block_repeats))
    except CatcapError as err:
        _fail(err)


@app.command()
def evaluate(
    catalog: Path = typer.Argument(..., help="A catalog with reference captions (e.g. RUN/val.csv)."),
    out: Path = typer.Option(Path("catcap-eval"), "--out", "-o", help="Folder for report.md/.json, "
                             "predictions.csv and contact_sheet.png."),
    model: Optional[Path] = ModelOpt,
    caption_col: str = typer.Option("caption", "--caption-col", help="The reference caption column."),
    image_col: Optional[str] = typer.Option(None, "--image-col"),
    image_root: Optional[Path] = typer.Option(None, "--image-root"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Training catalog for the nearest-"
                                             "neighbour retrieval peer (e.g. RUN/train.csv)."),
    beam_size: Optional[int] = typer.Option(None, "--beam-size", help="Default: the bundle's own."),
    limit: Optional[int] = typer.Option(None, "--limit"),
    contact_sheet: int = typer.Option(24, "--contact-sheet", help="Images on the contact sheet (0: none)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Feature cache for the retrieval peer "
                                             "(as for catcap train)."),
    device: str = DeviceOpt,
) -> None:
    """Score a model's captions (BLEU, ROUGE-L, CIDEr-D, attribute accuracy) beside retrieval."""
    module = _import_train("catalog_captioner.evaluate")
    options = module.EvaluateOptions(catalog=catalog, out=out, model=model, caption_col=caption_col,
                                     image_col=image_col, image_root=image_root, reference=reference, limit=limit,
                                     beam_size=beam_size, device=device, contact_sheet=contact_sheet,
                                     cache_dir=cache_dir)
    try:
        report = module.evaluate(options, log=lambda m: typer.echo(f"catcap evaluate: {m}", err=True))
    except CatcapError as err:
        _fail(err)
    typer.echo(module.markdown_report(report))


@app.command()
def explain(
    image: str = typer.Argument(..., help="An image path or URL."),
    out: Path = typer.Option(Path("attention.png"), "--out", "-o", help="The figure to write (PNG)."),
    model: Optional[Path] = ModelOpt,
    beam_size: Optional[int] = typer.Option(None, "--beam-size", help="Default: the bundle's own."),
    device: str = DeviceOpt,
) -> None:
    """Caption one image and draw each word's attention over the image regions."""
    module = _import_train("catalog_captioner.explain")
    try:
        caption = module.attention_figure(image, out, model=model, beam_size=beam_size, device=device)
    except CatcapError as err:
        _fail(err)
    typer.echo(f"{caption}\nwrote {out}")


def _import_train(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in {"tensorflow", "keras", "tf2onnx", "onnx", "matplotlib", "pycocoevalcap"}:
            typer.echo(f"catcap: error: this command needs the training extra ({err.name} is missing): "
                       "pip install 'catalog-captioner[train]'", err=True)
            raise typer.Exit(1)
        raise


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("catcap: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
