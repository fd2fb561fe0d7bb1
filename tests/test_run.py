"""`catcap run`: every row out, in order, cells unchanged, captions appended; bad rows marked, never fatal."""

from __future__ import annotations

import csv
import http.server
import json
import threading
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import catcap, draw_product

CAPTION_COLS = ["caption", "caption_score", "caption_status", "caption_error"]


@pytest.fixture
def product_images(tmp_path) -> list[str]:
    folder = tmp_path / "pics"
    folder.mkdir()
    names = []
    for i, (colour, shape, fmt) in enumerate([("red", "square", "jpg"), ("blue", "circle", "png"),
                                               ("green", "triangle", "webp"), ("black", "square", "gif")]):
        name = f"pics/p{i}.{fmt}"
        draw_product(colour, shape, seed=100 + i).save(tmp_path / name)
        names.append(name)
    return names


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_csv_cells_survive_exactly_and_caption_columns_are_appended(tiny_bundle, tmp_path, product_images):
    rows = [
        {"sku": "000123", "image": product_images[0], "title": 'Shirt, "slim" fit', "note": ""},
        {"sku": "000124", "image": product_images[1], "title": "Line one\nline two", "note": "ünïcødé ✓"},
        {"sku": "000125", "image": "pics/missing.jpg", "title": "", "note": "  spaces  "},
        {"sku": "000126", "image": product_images[2], "title": "NA", "note": "null"},
    ]
    source = tmp_path / "catalog.csv"
    with open(source, "w", newline="", encoding="utf-8-sig") as handle:  # with a BOM
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out.csv"
    catcap("run", source, "--out", out, "--model", tiny_bundle)
    frame = _read_csv(out)
    assert list(frame.columns) == ["sku", "image", "title", "note", *CAPTION_COLS]
    assert frame[["sku", "image", "title", "note"]].to_dict("records") == rows  # every cell, in order
    assert list(frame["caption_status"]) == ["ok", "ok", "missing", "ok"]
    ok = frame[frame.caption_status == "ok"]
    assert all(c.startswith("Acme ") for c in ok["caption"])
    assert all(0 < float(s) <= 1 for s in ok["caption_score"]) and (ok["caption_error"] == "").all()
    bad = frame.iloc[2]
    assert bad["caption"] == "" and "no such file" in bad["caption_error"]


def test_captions_are_right_for_a_model_trained_on_these_shapes(tiny_bundle, shapes_catalog, tmp_path):
    out = tmp_path / "out.csv"
    catcap("run", shapes_catalog, "--out", out, "--model", tiny_bundle, "--caption-col", "predicted")
    frame = _read_csv(out)
    colour_hits = sum(c in p for c, p in zip(frame["baseColour"], frame["predicted"]))
    assert colour_hits / len(frame) >= 0.7, frame[["caption", "predicted"]].head(12)


def test_each_format_round_trips(tiny_bundle, tmp_path, product_images):
    base = pd.DataFrame({"id": [1, 2, 3], "image_path": [product_images[0], "pics/nope.png", product_images[1]],
                         "price": [9.5, None, 12.0]})
    # TSV
    base.to_csv(tmp_path / "c.tsv", sep="\t", index=False)
    catcap("run", tmp_path / "c.tsv", "--out", tmp_path / "o.tsv", "--model", tiny_bundle)
    tsv = pd.read_csv(tmp_path / "o.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(tsv["price"]) == ["9.5", "", "12.0"] and list(tsv["caption_status"]) == ["ok", "missing", "ok"]
    # Parquet keeps its types and nulls
    pq.write_table(pa.Table.from_pandas(base, preserve_index=False), tmp_path / "c.parquet")
    catcap("run", tmp_path / "c.parquet", "--out", tmp_path / "o.parquet", "--model", tiny_bundle)
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.schema.field("id").type == pa.int64() and table.schema.field("caption_score").type == pa.float64()
    assert table.column("price").to_pylist() == [9.5, None, 12.0]
    assert table.column("caption_status").to_pylist() == ["ok", "missing", "ok"]
    # JSON Lines keeps every key and value; a broken line is kept and marked
    lines = [json.dumps({"id": 1, "image": product_images[0], "tags": ["a", "b"], "price": None}), "{broken",
             json.dumps({"id": 3, "image": product_images[1], "extra": {"k": 1}})]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    catcap("run", tmp_path / "c.jsonl", "--out", tmp_path / "o.jsonl", "--model", tiny_bundle)
    records = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r.get("id") for r in records] == [1, None, 3]
    assert records[0]["tags"] == ["a", "b"] and records[0]["price"] is None and records[2]["extra"] == {"k": 1}
    assert records[1]["catcap_input_line"] == "{broken" and records[1]["caption_status"] == "bad_row"
    # Cross-format: CSV in, Parquet out (by extension), and --out-format
    base.to_csv(tmp_path / "c.csv", index=False)
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "x.parquet", "--model", tiny_bundle)
    assert pq.read_table(tmp_path / "x.parquet").column("id").to_pylist() == ["1", "2", "3"]  # CSV cells are text
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "x.data", "--out-format", "jsonl", "--model", tiny_bundle)
    assert len((tmp_path / "x.data").read_text().splitlines()) == 3


def test_image_column_detection_and_clear_errors(tiny_bundle, tmp_path, product_images):
    (tmp_path / "c.csv").write_text(f"name,Picture\nx,{product_images[0]}\n")
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle)
    assert _read_csv(tmp_path / "o.csv")["caption_status"].tolist() == ["ok"]
    (tmp_path / "d.csv").write_text(f"name,where\nx,{product_images[0]}\n")
    result = catcap("run", tmp_path / "d.csv", "--out", tmp_path / "o2.csv", "--model", tiny_bundle, check=False)
    assert result.returncode == 2 and "--image-col" in result.stderr and "name, where" in result.stderr
    catcap("run", tmp_path / "d.csv", "--out", tmp_path / "o2.csv", "--model", tiny_bundle, "--image-col", "where")
    result = catcap("run", tmp_path / "d.csv", "--out", tmp_path / "o3.csv", "--model", tiny_bundle,
                    "--image-col", "nope", check=False)
    assert result.returncode == 2 and "'nope' is not a column" in result.stderr and "Traceback" not in result.stderr


def test_existing_caption_column_needs_overwrite_or_a_new_name(tiny_bundle, tmp_path, product_images):
    (tmp_path / "c.csv").write_text(f"image,caption\n{product_images[0]},old title\n")
    result = catcap("run", tmp_path / "c.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle, check=False)
    assert result.returncode == 2 and "--overwrite" in result.stderr
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle, "--overwrite")
    frame = _read_csv(tmp_path / "o.csv")
    assert list(frame.columns) == ["image", *CAPTION_COLS] and frame["caption"][0].startswith("Acme")
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "p.csv", "--model", tiny_bundle, "--caption-col", "auto")
    frame = _read_csv(tmp_path / "p.csv")
    assert list(frame.columns) == ["image", "caption", "auto", "auto_score", "auto_status", "auto_error"]
    assert frame["caption"][0] == "old title"


def test_error_kinds_exit_codes_and_max_error_rate(tiny_bundle, tmp_path, product_images):
    (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    cells = [product_images[0], "", "bad.jpg", "nope.jpg", "ftp://x/y.jpg", product_images[1]]
    (tmp_path / "c.csv").write_text("n,image\n" + "\n".join(f"{i},{c}" for i, c in enumerate(cells)) + "\n")
    summary = tmp_path / "s.json"
    result = catcap("run", tmp_path / "c.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle,
                    "--summary-json", summary)
    assert result.returncode == 0
    frame = _read_csv(tmp_path / "o.csv")
    assert frame["caption_status"].tolist() == ["ok", "missing", "unreadable", "missing", "bad_url", "ok"]
    assert all(frame["caption_error"][1:5] != "")
    report = json.loads(summary.read_text())
    assert report["rows"] == 6 and report["ok"] == 2
    assert report["errors"] == {"missing": 2, "unreadable": 1, "bad_url": 1}
    assert "done: 6 rows, 2 ok" in result.stderr
    result = catcap("run", tmp_path / "c.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle,
                    "--max-error-rate", "0.5", check=False)
    assert result.returncode == 3 and "exceeds --max-error-rate" in result.stderr
    assert len(_read_csv(tmp_path / "o.csv")) == 6  # the output is still complete


def test_fatal_problems_exit_nonzero_with_one_clear_line(tiny_bundle, tmp_path):
    for args, code, text in [
        (["run", tmp_path / "nope.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle], 1, "does not exist"),
        (["run", tmp_path / "x.xlsx", "--out", tmp_path / "o.csv", "--model", tiny_bundle], 2, "--format"),
        (["run", tmp_path / "nope.csv", "--out", tmp_path / "o.csv", "--model", tmp_path], 1, "model.json is missing"),
        (["run", tmp_path / "nope.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle, "--beam-size", "0"], 2,
         "--beam-size"),
    ]:
        result = catcap(*args, check=False)
        assert result.returncode == code, result.stderr
        assert text in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "empty.csv").write_text("")
    result = catcap("run", tmp_path / "empty.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle, check=False)
    assert result.returncode == 1 and "cannot read" in result.stderr


def test_header_only_catalog_gives_header_only_output(tiny_bundle, tmp_path):
    (tmp_path / "c.csv").write_text("id,image\n")
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle)
    assert (tmp_path / "o.csv").read_text().splitlines() == ["id,image," + ",".join(CAPTION_COLS)]


def test_limit_batch_and_chunk_sizes_do_not_change_results(tiny_bundle, tmp_path, product_images):
    cells = [product_images[i % 4] for i in range(23)]
    (tmp_path / "c.csv").write_text("image,n\n" + "\n".join(f"{c},{i}" for i, c in enumerate(cells)) + "\n")
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "a.csv", "--model", tiny_bundle)
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "b.csv", "--model", tiny_bundle, "--batch-size", "3",
           "--chunk-size", "5", "--workers", "2")
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "l.csv", "--model", tiny_bundle, "--limit", "7",
           "--chunk-size", "5")
    limited = _read_csv(tmp_path / "l.csv")
    assert limited["n"].tolist() == [str(i) for i in range(7)]


def test_beam_search_gives_valid_captions(tiny_bundle, tmp_path, product_images):
    (tmp_path / "c.csv").write_text("image\n" + "\n".join(product_images) + "\n")
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle, "--beam-size", "3",
           "--max-length", "5")
    frame = _read_csv(tmp_path / "o.csv")
    assert (frame["caption_status"] == "ok").all()
    assert all(1 <= len(c.split()) <= 5 for c in frame["caption"])


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(2)  # the client has given up by now: close without an answer
            return
        if self.path.startswith("/flaky"):
            self.server.hits = getattr(self.server, "hits", 0) + 1
            if self.server.hits == 1:
                self.send_error(503)
                return
            self.path = "/pics/p0.jpg"
        return super().do_GET()


@pytest.fixture
def http_server(tmp_path, product_images):
    handler = lambda *a, **k: _Handler(*a, directory=str(tmp_path), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_urls_are_downloaded_concurrently_with_retries_and_clear_failures(tiny_bundle, tmp_path, http_server,
                                                                          product_images):
    (tmp_path / "huge.jpg").write_bytes(b"\xff" * (40 * 1024 * 1024))
    cells = [f"{http_server}/{product_images[0]}", f"{http_server}/pics/none.jpg", f"{http_server}/flaky/x.jpg",
             f"{http_server}/huge.jpg", (tmp_path / product_images[1]).as_uri(), f"{http_server}/{product_images[2]}"]
    (tmp_path / "c.csv").write_text("url\n" + "\n".join(cells) + "\n")
    catcap("run", tmp_path / "c.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle)
    frame = _read_csv(tmp_path / "o.csv")
    assert frame["caption_status"].tolist() == ["ok", "download_failed", "ok", "too_large", "ok", "ok"]
    assert "HTTP 404" in frame["caption_error"][1]


def test_download_timeout_is_a_row_error(tmp_path, http_server):
    from catalog_captioner import images

    with pytest.raises(images.ImageFailure) as err:
        images.fetch(f"{http_server}/slow/x.jpg", images.LoadOptions(timeout_s=0.5, retries=1))
    assert err.value.kind == "download_failed" and "2 attempt" in str(err.value)


def test_no_tensorflow_is_imported_by_the_runtime(tiny_bundle, tmp_path, product_images):
    import subprocess
    import sys

    code = ("import sys; from catalog_captioner import Captioner; from catalog_captioner import cli, run; "
            f"c = Captioner.load({str(tiny_bundle)!r}, device='cpu'); c.caption([{str(tmp_path / product_images[0])!r}]); "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx', 'train', 'export')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_python_api_captions_paths_images_and_failures(tiny_bundle, tmp_path, product_images):
    from catalog_captioner import Captioner

    captioner = Captioner.load(tiny_bundle, device="cpu")
    pil = draw_product("blue", "circle", seed=5)
    results = captioner.caption([tmp_path / product_images[0], pil, tmp_path / "nope.jpg"])
    assert [r.status for r in results] == ["ok", "ok", "missing"]
    assert results[0].caption.startswith("Acme") and 0 < results[0].score <= 1
    assert results[1].words[0] == "acme"


def test_progress_is_plain_log_lines_when_not_a_terminal(tiny_bundle, tmp_path, product_images):
    (tmp_path / "c.csv").write_text("image\n" + "\n".join(product_images * 3) + "\n")
    result = catcap("run", tmp_path / "c.csv", "--out", tmp_path / "o.csv", "--model", tiny_bundle,
                    "--chunk-size", "4")
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("catcap:") and "\x1b[" not in result.stderr  # no bar or colour codes in cron mail
    assert lines[-1].startswith("catcap: done: 12 rows, 12 ok")
