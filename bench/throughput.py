"""Throughput benchmark for `catcap run` (issue: make run as fast as the model allows).

One process, one machine, the same N images and bundle for every measurement, each
after a warm-up:
  model       encoder + greedy decoder on images already decoded and preprocessed
              (pure ONNX Runtime time: the ceiling for this bundle on this machine)
  end-to-end  run_catalog() on a CSV of those images to an output CSV, in process; the
              CLI's own start-up is measured separately (a `catcap info` subprocess)
  keras       the same trained model through Keras/TensorFlow with a Python greedy loop,
              one image at a time as the TensorFlow tutorial's evaluate() does (and, for
              reference, the same loop batched); needs the train extra and the bundle's
              training run folder (--run), else skipped, saying so
  decoder     the decoder's share of model time
  retrieval   for a retrieval-augmented bundle, the nearest-title search's part of model time
  rss         peak RSS of `catcap run` on 1x and 10x the rows (the same images repeated)
Prints a table, then as its last line exactly:
  endtoend_over_model=R1 onnx_over_keras=R2 decoder_share=S images_per_s=X rss_growth=G

Usage: .venv/bin/python bench/throughput.py [--images 512] [--model DIR] [--run RUN_DIR] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "fashion-products"
sys.path.insert(0, str(ROOT))

from catalog_captioner import images  # noqa: E402
from catalog_captioner.captioner import Captioner  # noqa: E402
from catalog_captioner.progress import Reporter  # noqa: E402
from catalog_captioner.run import RunOptions, run_catalog  # noqa: E402


def image_paths(n: int, folder: Path) -> tuple[list[str], str]:
    """N real product photos from the shared catalog when present, else generated ones."""
    if (SHARED / "catalog.csv").is_file():
        import pandas as pd

        frame = pd.read_csv(SHARED / "catalog.csv", dtype=str, keep_default_na=False)
        chosen = frame.sample(n=min(n, len(frame)), random_state=0)["image"]
        return [str(SHARED / p) for p in chosen], f"{n} photos of the shared fashion catalog (mixed 224 px / 60x80)"
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import COLOURS, SHAPES, draw_product

    paths = []
    for i in range(n):
        path = folder / f"gen{i}.jpg"
        draw_product(list(COLOURS)[i % 4], SHAPES[i % 3], size=224, seed=i).save(path, quality=90)
        paths.append(str(path))
    return paths, f"{n} generated 224 px images (the shared catalog is absent)"


def timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_model(captioner: Captioner, pixels: np.ndarray, batch: int) -> tuple[float, float]:
    """Seconds for encoder+decoder over all pixels, and the decoder's part of it."""
    decoder_time = 0.0

    def once():
        nonlocal decoder_time
        decoder_time = 0.0
        for start in range(0, len(pixels), batch):
            memory, hidden = captioner.encode(pixels[start:start + batch])
            t = time.perf_counter()
            captioner._decoder.decode(memory, hidden)
            decoder_time += time.perf_counter() - t

    once()  # warm-up
    total = timed(once)
    return total, decoder_time


def measure_retrieval(captioner: Captioner, pixels: np.ndarray, batch: int) -> float | None:
    """Seconds of index search (the step between encoder and decoder) over all pixels, or None."""
    index = captioner.bundle.neighbours
    if index is None:
        return None
    name = captioner.bundle.encoder_names
    queries = [captioner.model.encoder.run([name.outputs["embedding"]], {name.inputs["image"]: pixels[s:s + batch]})[0]
               for s in range(0, len(pixels), batch)]
    k = captioner.bundle.neighbour_count
    return timed(lambda: [index.search(q, k) for q in queries])


def write_catalog(path: Path, cells: list[str], repeat: int = 1) -> Path:
    with open(path, "w") as handle:
        handle.write("id,image\n")
        for r in range(repeat):
            for i, cell in enumerate(cells):
                handle.write(f"{r * len(cells) + i},{cell}\n")
    return path


def measure_end_to_end(captioner: Captioner, catalog: Path, out: Path, batch: int, profile: bool):
    options = RunOptions(input=catalog, output=out, batch_size=batch, chunk_size=256)
    run_catalog(options, captioner, Reporter(quiet=True))  # warm-up (page cache, threads)
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    run_catalog(options, captioner, Reporter(quiet=True))
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - start
    report = None
    if profiler:
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(12)
        report = buffer.getvalue()
    return seconds, report


def cli_startup(model: str | None) -> float:
    args = [sys.executable, "-m", "catalog_captioner", "info", "--json", "--device", "cpu"]
    if model:
        args += ["--model", model]
    subprocess.run(args, capture_output=True, check=True)  # warm the page cache
    return timed(lambda: subprocess.run(args, capture_output=True, check=True), repeat=3)


def peak_rss_mb(catalog: Path, out: Path, model: str | None, batch: int) -> float:
    code = ("from pathlib import Path; "
            "from catalog_captioner.captioner import Captioner; from catalog_captioner.progress import Reporter; "
            "from catalog_captioner.run import RunOptions, run_catalog; "
            f"c = Captioner.load({model!r}, device='cpu', beam_size=1); "
            f"run_catalog(RunOptions(input=Path({str(catalog)!r}), output=Path({str(out)!r}), batch_size={batch}), "
            "c, Reporter(quiet=True)); "
            # VmHWM: this process's own peak (ru_maxrss would include the pre-exec fork of the parent)
            "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(result.stdout.strip().splitlines()[-1]) / 1024


def measure_keras(run_dir: Path, pixels: np.ndarray, batch: int, max_length: int) -> tuple[float, float]:
    """Keras/TensorFlow with a Python greedy loop: (the notebook's way, batched).

    The notebook way is the TensorFlow attention-captioning tutorial's ``evaluate``: one
    image at a time, eager calls, one decoder call per word until <end>. The batched
    variant runs the same loop on ``batch`` images at once, for a kinder comparison.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from export.keras_model import load_run

    from train.colours import region_colours
    from train.neighbours import embed

    run = load_run(run_dir)
    model, bottom, vocab, index = run.model, run.backbone.bottom, run.vocabulary, run.index

    def caption(x):
        cached = bottom(tf.convert_to_tensor(x.astype(np.float32)), training=False)
        colours = region_colours(x, run.backbone.grid) if run.config.region_colours else None
        features, keys, hidden = model.encode(cached, colours)
        memory = None
        if index is not None:  # the same retrieval as the runtime, then the Keras text memory
            neighbours, similarity = index.search(embed(np.asarray(cached)), run.config.neighbours)
            memory = model.text_memory(neighbours, similarity)
        token = tf.fill([x.shape[0]], vocab.start_id)
        alive = np.ones(x.shape[0], bool)
        for _ in range(max_length):
            logits, hidden, _ = model.step(token, features, keys, hidden, memory)
            token = tf.cast(tf.argmax(logits, axis=-1), tf.int32)
            alive &= token.numpy() != vocab.end_id
            if not alive.any():
                break

    def notebook():
        for image in pixels:
            caption(image[None])

    def batched():
        for start in range(0, len(pixels), batch):
            caption(pixels[start:start + batch])

    notebook(), batched()  # warm-up
    return timed(notebook), timed(batched)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--model", default=None, help="bundle folder (default: the embedded model)")
    parser.add_argument("--run", default=None, help="the bundle's training run folder, for the keras row")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rss-scale", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the end-to-end run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--spinning", choices=("on", "off"), default="on",
                        help="ONNX Runtime worker threads busy-wait between ops (on) or yield (off)")
    args = parser.parse_args()

    captioner = Captioner.load(args.model, device=args.device, beam_size=1, spinning=args.spinning == "on")
    bundle = captioner.bundle
    tmp = Path(tempfile.mkdtemp(prefix="catcap-bench-"))
    cells, source = image_paths(args.images, tmp)
    n = len(cells)
    pixels = np.stack([images.load(c, captioner.input_size, images.LoadOptions()) for c in cells])

    model_s, decoder_s = measure_model(captioner, pixels, args.batch_size)
    retrieval_s = measure_retrieval(captioner, pixels, args.batch_size)
    catalog = write_catalog(tmp / "catalog.csv", cells)
    e2e_s, profile = measure_end_to_end(captioner, catalog, tmp / "out.csv", args.batch_size, args.profile)
    startup_s = cli_startup(args.model)

    keras_s = keras_batched_s = None
    keras_note = ""
    run_dir = Path(args.run) if args.run else Path(bundle.record.get("training", {}).get("run_dir", "/nonexistent"))
    try:
        import tensorflow  # noqa: F401

        if run_dir.is_dir():
            keras_s, keras_batched_s = measure_keras(run_dir, pixels, args.batch_size, bundle.max_length)
        else:
            keras_note = f"skipped: no training run folder for this bundle ({run_dir}); pass --run"
    except ImportError:
        keras_note = "skipped: the train extra (TensorFlow) is not installed"

    big = write_catalog(tmp / "catalog10.csv", cells, repeat=args.rss_scale)
    rss1 = peak_rss_mb(catalog, tmp / "o1.csv", args.model, args.batch_size)
    rss10 = peak_rss_mb(big, tmp / "o10.csv", args.model, args.batch_size)

    rows = [("model (ONNX Runtime, preprocessed images)", model_s),
            ("  of which decoder", decoder_s),
            *([("  of which retrieval (index search)", retrieval_s)] if retrieval_s is not None else []),
            ("end-to-end run_catalog (CSV in, CSV out)", e2e_s)]
    if keras_s is not None:
        rows.append(("keras (TensorFlow, Python greedy loop)", keras_s))
        rows.append(("  keras, same loop batched", keras_batched_s))
    print(f"catcap throughput: {source}; bundle {bundle.record.get('name')} ({bundle.record.get('backbone')}, "
          f"{bundle.input_size} px); greedy; batch {args.batch_size}; spinning {args.spinning}; "
          f"provider {captioner.model.provider}; "
          f"{os.cpu_count()} CPUs")
    print(f"{'measurement':<45} {'seconds':>9} {'images/s':>9} {'ms/image':>9}")
    for label, seconds in rows:
        print(f"{label:<45} {seconds:9.2f} {n / seconds:9.1f} {1000 * seconds / n:9.2f}")
    print(f"{'CLI start-up (catcap info, subprocess)':<45} {startup_s:9.2f}")
    if keras_note:
        print(f"keras: {keras_note}")
    print(f"peak RSS: {rss1:.0f} MB at {n} rows, {rss10:.0f} MB at {n * args.rss_scale} rows")
    if profile:
        print("profile of the end-to-end run (top functions by own time):")
        print(profile)
    onnx_over_keras = f"{keras_s / model_s:.3f}" if keras_s else "nan"
    print(f"endtoend_over_model={model_s / e2e_s:.3f} onnx_over_keras={onnx_over_keras} "
          f"decoder_share={decoder_s / model_s:.3f} images_per_s={n / e2e_s:.1f} rss_growth={rss10 / rss1:.3f}")


if __name__ == "__main__":
    main()
