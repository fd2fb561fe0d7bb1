"""Shared fixtures: generated product-like images and a real tiny bundle built by `catcap train/export`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets" / "fashion-products"
COLOURS = {"red": (200, 30, 30), "blue": (30, 60, 200), "green": (30, 160, 60), "black": (20, 20, 20)}
SHAPES = ("square", "circle", "triangle")

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def draw_product(colour: str, shape: str, size: int = 96, seed: int = 0) -> Image.Image:
    """A 'product photo': one coloured shape on white, jittered so no two are identical."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    m = int(size * rng.uniform(0.12, 0.22))
    box = (m, m, size - m - int(rng.integers(0, 6)), size - m - int(rng.integers(0, 6)))
    fill = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[colour])
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fill)
    return image


def make_catalog(folder: Path, per_class: int = 6) -> Path:
    """A CSV catalog of generated images with 'Acme <colour> <shape>' captions."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = ["id,image,caption,baseColour"]
    n = 0
    for colour in COLOURS:
        for shape in SHAPES:
            for k in range(per_class):
                path = folder / "img" / f"{colour}_{shape}_{k}.jpg"
                draw_product(colour, shape, seed=n).save(path, quality=92)
                rows.append(f"{n},img/{path.name},Acme {colour.title()} {shape.title()},{colour.title()}")
                n += 1
    (folder / "catalog.csv").write_text("\n".join(rows) + "\n")
    return folder / "catalog.csv"


def catcap(*args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (exit codes and stderr as a user sees them)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, "-m", "catalog_captioner", *map(str, args)], capture_output=True,
                            text=True, env=env, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"catcap {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def shapes_catalog(tmp_path_factory) -> Path:
    return make_catalog(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def tiny_run(shapes_catalog, tmp_path_factory) -> Path:
    """A real (tiny) training run: lite0 with ImageNet weights at 96 px, small decoder."""
    pytest.importorskip("tensorflow", reason="the train extra is not installed")
    out = tmp_path_factory.mktemp("run") / "run"
    cache = out.parent / "cache"  # tests of the feature cache reuse it
    catcap("train", shapes_catalog, "--out", out, "--input-size", "96", "--epochs", "12", "--batch-size", "16",
           "--units", "64", "--embedding-dim", "32", "--feature-dim", "64", "--val-fraction", "0.2",
           "--learning-rate", "0.005", "--patience", "12", "--min-count", "1", "--cache-dir", cache,
           "--attribute-cols", "baseColour")
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run, tmp_path_factory) -> Path:
    """The tiny run exported with `catcap export` (the real tf2onnx path and parity check)."""
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    catcap("export", tiny_run, "--out", out)
    return out


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path) -> Path:
    """A private copy of the tiny bundle for tests that damage it."""
    import shutil

    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target
