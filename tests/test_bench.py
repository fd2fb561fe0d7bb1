"""The throughput benchmark runs and ends with its one machine-readable line."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_prints_its_table_and_summary_line(tiny_bundle, tiny_run):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "throughput.py"), "--model", str(tiny_bundle), "--run", str(tiny_run),
         "--images", "12", "--rss-scale", "2", "--batch-size", "4"],
        capture_output=True, text=True, check=True, timeout=600)
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("model (ONNX Runtime") for line in lines)
    assert any(line.startswith("keras (TensorFlow") for line in lines)
    assert any(line.startswith("  keras, same loop batched") for line in lines)
    pattern = (r"endtoend_over_model=\d+\.\d+ onnx_over_keras=\d+\.\d+ decoder_share=\d+\.\d+ "
               r"images_per_s=\d+\.\d+ rss_growth=\d+\.\d+")
    assert re.fullmatch(pattern, lines[-1]), lines[-1]
