"""``catcap run``: stream a catalog through loader -> encoder -> decoder -> writer.

Loading overlaps inference: while ONNX Runtime works on one batch, a thread pool
decodes (or downloads) the next chunk's images. Each finished chunk becomes a part
file renamed into place, recorded in a manifest; ``--resume`` skips recorded parts,
and the final table is assembled beside OUTPUT and renamed over it at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from catalog_captioner import catalog, images
from catalog_captioner.captioner import Captioner
from catalog_captioner.errors import UsageError
from catalog_captioner.progress import Reporter

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class RunOptions:
    input: Path
    output: Path
    in_format: str | None = None
    out_format: str | None = None
    image_col: str | None = None
    caption_col: str = "caption"
    overwrite: bool = False
    image_root: Path | None = None
    batch_size: int = 32
    chunk_size: int = 1024
    workers: int = 8
    limit: int | None = None
    resume: bool = False
    max_error_rate: float | None = None


@dataclass
class RunSummary:
    rows: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images_per_s: float = 0.0
    resumed_rows: int = 0
    output: str = ""
    provider: str = ""
    error_rate: float = 0.0
    max_error_rate_exceeded: bool = False

    def add(self, statuses: list[str]) -> None:
        self.rows += len(statuses)
        counts = Counter(statuses)
        self.ok += counts.pop("ok", 0)
        for kind, n in counts.items():
            self.errors[kind] = self.errors.get(kind, 0) + n


def _fingerprint(options: RunOptions, captioner: Captioner, image_col: str, out_fmt: str) -> str:
    """What must not change between a crashed run and its --resume."""
    stat = options.input.stat()
    decoding = captioner.decoding
    key = {
        "input": str(options.input.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
        "model": [captioner.bundle.record[part]["sha256"] for part in ("encoder", "decoder", "retrieval")
                  if part in captioner.bundle.record],
        "decoding": [decoding.length_penalty, decoding.block_repeats],
        "image_col": image_col, "caption_col": options.caption_col, "out_format": out_fmt,
        "chunk_size": options.chunk_size, "limit": options.limit, "beam": decoding.beam_size,
        "max_length": decoding.max_length, "image_root": str(options.image_root or ""),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class PartStore:
    """The folder of finished parts beside OUTPUT, with an atomically updated manifest."""

    def __init__(self, output: Path, fingerprint: str, resume: bool, reporter: Reporter):
        self.dir = output.with_name(output.name + ".catcap-parts")
        self.manifest_path = self.dir / "manifest.json"
        self.parts: list[dict] = []
        manifest = self._read()
        if resume and manifest and manifest.get("fingerprint") == fingerprint:
            self.parts = manifest["parts"]
            for n, part in enumerate(self.parts):  # trust only parts whose files are really there
                if not (self.dir / part["file"]).is_file():
                    self.parts = self.parts[:n]
                    break
        elif resume and manifest:
            raise UsageError(f"--resume: the unfinished run in {self.dir} was started with a different input, model "
                             "or options; rerun without --resume to start over")
        elif manifest and not resume:
            reporter.notice(f"starting over: an unfinished run was left in {self.dir} (use --resume to continue it)")
        if not self.parts and self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = fingerprint
        self._save()

    def _read(self) -> dict | None:
        try:
            data = json.loads(self.manifest_path.read_text())
            return data if data.get("version") == MANIFEST_VERSION else None
        except (OSError, ValueError):
            return None

    def _save(self) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": MANIFEST_VERSION, "fingerprint": self.fingerprint,
                                   "parts": self.parts}))
        os.replace(tmp, self.manifest_path)

    @property
    def rows_done(self) -> int:
        return sum(p["rows"] for p in self.parts)

    def new_part_path(self, index: int) -> Path:
        return self.dir / f"part-{index:07d}.tmp"

    def commit(self, tmp: Path, index: int, rows: int, statuses: list[str]) -> None:
        final = self.dir / f"part-{index:07d}"
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        self.parts.append({"file": final.name, "rows": rows, "statuses": dict(Counter(statuses))})
        self._save()

    def files(self) -> list[Path]:
        return [self.dir / p["file"] for p in self.parts]

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _limited(chunks, limit: int | None):
    if limit is None:
        yield from chunks
        return
    left = limit
    for chunk in chunks:
        if left <= 0:
            return
        if chunk.rows > left:
            chunk = _truncate(chunk, left)
        left -= chunk.rows
        yield chunk


def _truncate(chunk: catalog.Chunk, n: int) -> catalog.Chunk:
    payload = chunk.payload
    payload = payload.iloc[:n] if hasattr(payload, "iloc") else payload.slice(0, n) if hasattr(payload, "slice") else payload[:n]
    return catalog.Chunk(chunk.index, n, chunk.image_cells[:n], payload,
                         {k: v for k, v in chunk.bad_rows.items() if k < n})


class ImageLoader:
    """Loads catalog cells on a thread pool, a bounded window ahead of the model.

    At most ``depth`` images are loading or waiting at any time, across chunk
    boundaries, so memory does not grow with the chunk size or the catalog, while
    the next batches decode (or download) as ONNX Runtime works on the current one.
    """

    def __init__(self, pool: ThreadPoolExecutor, size: int, options: images.LoadOptions, depth: int):
        self.pool, self.size, self.options, self.depth = pool, size, options, max(1, depth)

    def _load(self, cell):
        if cell is _BAD_ROW:
            return None
        try:
            return images.load(cell, self.size, self.options)
        except images.ImageFailure as failure:
            return failure
        except Exception as err:  # a loader bug must still only cost its row
            return images.ImageFailure("unreadable", f"unexpected {type(err).__name__}: {err}")

    def stream(self, chunks) -> Iterator[tuple[catalog.Chunk, int, Future]]:
        """(chunk, row, future) for every row of every chunk, in order."""
        window: deque = deque()
        for chunk in chunks:
            for row, cell in enumerate(chunk.image_cells):
                job = self.pool.submit(self._load, _BAD_ROW if row in chunk.bad_rows else cell)
                window.append((chunk, row, job))
                if len(window) > self.depth:
                    yield window.popleft()
        while window:
            yield window.popleft()


_BAD_ROW = object()


class ChunkCaptions:
    """Collects one chunk's rows into model batches and its four result columns."""

    def __init__(self, captioner: Captioner, chunk: catalog.Chunk, batch_size: int):
        n = chunk.rows
        self.captioner, self.chunk, self.batch_size = captioner, chunk, batch_size
        self.results = catalog.Results([""] * n, [0.0] * n, ["ok"] * n, [""] * n)
        self.pending: list[tuple[int, np.ndarray]] = []

    def add(self, row: int, value) -> None:
        results = self.results
        if row in self.chunk.bad_rows:
            results.statuses[row], results.errors[row] = "bad_row", self.chunk.bad_rows[row]
        elif isinstance(value, images.ImageFailure):
            results.statuses[row], results.errors[row] = value.kind, str(value)
        else:
            self.pending.append((row, value))
            if len(self.pending) == self.batch_size:
                self._flush()

    def _flush(self) -> None:
        captions = self.captioner.caption_pixels(np.stack([p for _, p in self.pending]))
        for (row, _), result in zip(self.pending, captions):
            self.results.captions[row], self.results.scores[row] = result.caption, result.score
        self.pending.clear()

    def finish(self) -> catalog.Results:
        if self.pending:
            self._flush()
        return self.results


def run_catalog(options: RunOptions, captioner: Captioner, reporter: Reporter) -> RunSummary:
    if options.batch_size < 1 or options.chunk_size < 1 or options.workers < 1:
        raise UsageError("--batch-size, --chunk-size and --workers must be at least 1")
    if options.output.resolve() == options.input.resolve():
        raise UsageError("--out must differ from the input catalog (catcap never overwrites its input)")
    in_fmt = catalog.format_of(options.input, options.in_format)
    out_fmt = catalog.format_of(options.output, options.out_format or (None if options.output.suffix else in_fmt))
    reader = catalog.open_reader(options.input, in_fmt)
    image_col = catalog.detect_image_column(reader.columns, options.image_col)
    columns = catalog.OutputColumns(options.caption_col)
    clash = [c for c in columns.names if c in reader.columns]
    if clash and not options.overwrite:
        raise UsageError(f"the catalog already has column(s) {', '.join(clash)}; pass --overwrite to replace them "
                         "or --caption-col to choose another name")
    if not options.output.parent.exists():
        raise UsageError(f"the output folder {options.output.parent} does not exist")

    loading = replace(captioner.loading, image_root=options.image_root or options.input.resolve().parent)
    store = PartStore(options.output, _fingerprint(options, captioner, image_col, out_fmt), options.resume, reporter)
    writer = catalog.PartWriter(out_fmt, columns, reader.columns, reader)
    summary = RunSummary(output=str(options.output), provider=captioner.model.provider)
    for part in store.parts:
        summary.add([k for k, n in part["statuses"].items() for _ in range(n)])
    summary.resumed_rows = summary.rows
    skip = len(store.parts)
    estimate = reader.estimate_rows()
    total = estimate if options.limit is None else min(options.limit, estimate if estimate is not None else options.limit)
    reporter.start(total, already=summary.rows, label=options.input.name)
    started = time.perf_counter()
    processed = 0
    depth = max(2 * options.batch_size, 2 * options.workers)
    with ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="catcap-load") as pool:
        loader = ImageLoader(pool, captioner.input_size, loading, depth)
        chunks = (c for c in _limited(reader.chunks(options.chunk_size, image_col), options.limit) if c.index >= skip)
        current: ChunkCaptions | None = None
        for chunk, row, job in loader.stream(chunks):
            if current is None or current.chunk is not chunk:
                current = ChunkCaptions(captioner, chunk, options.batch_size)
            current.add(row, job.result())
            if row == chunk.rows - 1:
                results = current.finish()
                tmp = store.new_part_path(chunk.index)
                writer.write(tmp, chunk, results, first=chunk.index == 0)
                store.commit(tmp, chunk.index, chunk.rows, results.statuses)
                summary.add(results.statuses)
                processed += chunk.rows
                reporter.advance(chunk.rows, summary)
    if not store.parts:  # an empty catalog still gets its header
        _write_header_only(reader, image_col, writer, store)
    summary.seconds = round(time.perf_counter() - started, 3)
    summary.images_per_s = round(processed / summary.seconds, 2) if summary.seconds > 0 else 0.0
    tmp_out = options.output.with_name(f".{options.output.name}.catcap-tmp")
    catalog.assemble(out_fmt, store.files(), tmp_out, writer.schema)
    os.replace(tmp_out, options.output)
    store.remove()
    errors = sum(summary.errors.values())
    summary.error_rate = round(errors / summary.rows, 6) if summary.rows else 0.0
    if options.max_error_rate is not None and summary.error_rate > options.max_error_rate:
        summary.max_error_rate_exceeded = True
    reporter.finish(summary)
    return summary


def _write_header_only(reader, image_col: str, writer: catalog.PartWriter, store: PartStore) -> None:
    tmp = store.new_part_path(0)
    writer.write(tmp, _empty_chunk(reader), catalog.Results([], [], [], []), first=True)
    store.commit(tmp, 0, 0, [])


def _empty_chunk(reader) -> catalog.Chunk:
    if isinstance(reader, catalog.CsvReader):
        return catalog.Chunk(0, 0, [], pd.DataFrame(columns=reader.columns, dtype=str), {})
    if isinstance(reader, catalog.ParquetReader):
        return catalog.Chunk(0, 0, [], pa.RecordBatch.from_pylist([], schema=reader.schema), {})
    return catalog.Chunk(0, 0, [], [], {})
