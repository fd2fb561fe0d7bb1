"""Crash safety: no half-written file at OUTPUT, and --resume after kill -9 gives the identical file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import catcap, draw_product


@pytest.fixture
def long_catalog(tmp_path):
    for i in range(8):
        draw_product(["red", "blue", "green", "black"][i % 4], ["square", "circle"][i % 2], seed=i).save(
            tmp_path / f"p{i}.jpg")
    rows = [f"{n},p{n % 8}.jpg,\"note {n}, with comma\"" for n in range(3000)]
    rows[17] = "17,missing.jpg,x"
    path = tmp_path / "big.csv"
    path.write_text("id,image,note\n" + "\n".join(rows) + "\n")
    return path


def _parts_dir(out):
    return out.with_name(out.name + ".catcap-parts")


def test_kill_9_then_resume_gives_a_byte_identical_file(tiny_bundle, long_catalog, tmp_path):
    reference = tmp_path / "reference.csv"
    catcap("run", long_catalog, "--out", reference, "--model", tiny_bundle, "--chunk-size", "100")

    out = tmp_path / "out.csv"
    args = [sys.executable, "-m", "catalog_captioner", "run", str(long_catalog), "--out", str(out), "--model",
            str(tiny_bundle), "--chunk-size", "100"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = _parts_dir(out) / "manifest.json"
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and process.poll() is None:
        try:
            done = len(json.loads(manifest.read_text())["parts"])
        except (OSError, ValueError):
            done = 0
        if done >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed; make the catalog longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists(), "a killed run must not leave a file at OUTPUT"

    result = catcap("run", long_catalog, "--out", out, "--model", tiny_bundle, "--chunk-size", "100", "--resume")
    assert "resuming after" in result.stderr
    assert out.read_bytes() == reference.read_bytes()
    assert not _parts_dir(out).exists()


def test_resume_refuses_a_different_command(tiny_bundle, long_catalog, tmp_path):
    out = tmp_path / "out.csv"
    parts = _parts_dir(out)
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"version": 1, "fingerprint": "other", "parts": []}))
    result = catcap("run", long_catalog, "--out", out, "--model", tiny_bundle, "--resume", check=False)
    assert result.returncode == 2 and "different input, model or options" in result.stderr


def test_a_rerun_without_resume_starts_over_and_says_so(tiny_bundle, long_catalog, tmp_path):
    out = tmp_path / "out.csv"
    parts = _parts_dir(out)
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"version": 1, "fingerprint": "x", "parts": []}))
    result = catcap("run", long_catalog, "--out", out, "--model", tiny_bundle, "--limit", "50")
    assert "starting over" in result.stderr and len(out.read_text().splitlines()) == 51
