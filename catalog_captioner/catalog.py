"""Catalog tables: one reader and one part-writer per format, streamed in chunks.

Readers keep every cell exactly as it was (CSV/TSV cells as text, Parquet with its
own types, JSON Lines objects as parsed) and the writers append the caption columns.
A chunk's output is written as a *part*; :func:`assemble` joins the parts into the
final file, so a crash never leaves a half-written table at the output path.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from catalog_captioner.errors import CatalogError, UsageError

FORMATS = ("csv", "tsv", "parquet", "jsonl")
_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
               ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
IMAGE_COLUMN_NAMES = ("image", "image_path", "image_url", "imageurl", "image_file", "image_link", "img",
                      "img_path", "img_url", "picture", "photo", "thumbnail", "path", "file", "filename",
                      "url", "link")


def format_of(path: Path, override: str | None) -> str:
    if override:
        value = override.lower().lstrip(".")
        value = {"ndjson": "jsonl", "json": "jsonl", "pq": "parquet", "tab": "tsv"}.get(value, value)
        if value not in FORMATS:
            raise UsageError(f"unknown format {override!r}; choose one of {', '.join(FORMATS)}")
        return value
    suffixes = [s.lower() for s in path.suffixes]
    for suffix in reversed(suffixes):
        if suffix in _EXTENSIONS:
            return _EXTENSIONS[suffix]
    raise UsageError(f"cannot tell the format of {path.name} from its extension; pass --format/--out-format "
                     f"({', '.join(FORMATS)})")


@dataclass(frozen=True)
class OutputColumns:
    caption: str = "caption"

    @property
    def names(self) -> tuple[str, str, str, str]:
        base = self.caption
        return (base, f"{base}_score", f"{base}_status", f"{base}_error")


@dataclass
class Chunk:
    """``rows`` input rows; ``payload`` is the format's own container for them."""

    index: int
    rows: int
    image_cells: list[Any]
    payload: Any
    bad_rows: dict[int, str]  # position in chunk -> why the row itself could not be parsed


def detect_image_column(columns: list[str], requested: str | None) -> str:
    if requested:
        if requested not in columns:
            raise UsageError(f"--image-col {requested!r} is not a column; the catalog has: {', '.join(columns)}")
        return requested
    lowered = {c.strip().lower(): c for c in columns}
    for name in IMAGE_COLUMN_NAMES:
        if name in lowered:
            return lowered[name]
    raise UsageError("no image column found (looked for "
                     f"{', '.join(IMAGE_COLUMN_NAMES[:8])}, ...); pass --image-col, one of: {', '.join(columns)}")


# ----------------------------------------------------------------------------- readers
class CsvReader:
    def __init__(self, path: Path, sep: str):
        self.path, self.sep = path, sep
        try:
            header = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                                 encoding="utf-8-sig", nrows=0)
        except FileNotFoundError:
            raise CatalogError(f"catalog {path} does not exist") from None
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
            raise CatalogError(f"cannot read {path} as {'TSV' if sep == chr(9) else 'CSV'}: {err}") from None
        self.columns = [str(c) for c in header.columns]

    def estimate_rows(self) -> int | None:
        with open(self.path, "rb") as handle:
            lines = sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 22), b""))
        return max(0, lines - 1)

    def chunks(self, size: int, image_col: str) -> Iterator[Chunk]:
        try:
            reader = pd.read_csv(self.path, sep=self.sep, dtype=str, keep_default_na=False, na_filter=False,
                                 encoding="utf-8-sig", chunksize=size)
            for index, frame in enumerate(reader):
                yield Chunk(index, len(frame), frame[image_col].tolist(), frame, {})
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise CatalogError(f"cannot parse {self.path}: {err}") from None


class ParquetReader:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.file = pq.ParquetFile(path)
        except FileNotFoundError:
            raise CatalogError(f"catalog {path} does not exist") from None
        except (pa.ArrowException, OSError) as err:
            raise CatalogError(f"cannot read {path} as Parquet: {err}") from None
        self.schema = self.file.schema_arrow
        self.columns = list(self.schema.names)

    def estimate_rows(self) -> int | None:
        return self.file.metadata.num_rows

    def chunks(self, size: int, image_col: str) -> Iterator[Chunk]:
        for index, batch in enumerate(self.file.iter_batches(batch_size=size)):
            cells = batch.column(image_col).to_pylist()
            yield Chunk(index, batch.num_rows, cells, batch, {})


class JsonlReader:
    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise CatalogError(f"catalog {path} does not exist")
        seen: dict[str, None] = {}
        try:
            with open(path, encoding="utf-8-sig") as handle:
                for number, line in enumerate(handle):
                    if number >= 1000:
                        break
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(record, dict):
                        seen.update(dict.fromkeys(record))
        except (UnicodeDecodeError, OSError) as err:
            raise CatalogError(f"cannot read {path} as JSON Lines: {err}") from None
        self.columns = list(seen)

    def estimate_rows(self) -> int | None:
        with open(self.path, "rb") as handle:
            return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 22), b""))

    def chunks(self, size: int, image_col: str) -> Iterator[Chunk]:
        records: list[Any] = []
        bad: dict[int, str] = {}
        index = 0
        with open(self.path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    if not isinstance(record, dict):
                        raise ValueError(f"a JSON {type(record).__name__}, not an object")
                except ValueError as err:
                    bad[len(records)] = f"line {number} is not a JSON object ({str(err).split(':')[0]})"
                    record = {"catcap_input_line": line.rstrip("\r\n")}
                records.append(record)
                if len(records) == size:
                    yield self._chunk(index, records, bad, image_col)
                    records, bad, index = [], {}, index + 1
        if records:
            yield self._chunk(index, records, bad, image_col)

    @staticmethod
    def _chunk(index, records, bad, image_col) -> Chunk:
        return Chunk(index, len(records), [r.get(image_col) for r in records], records, bad)


def open_reader(path: Path, fmt: str):
    if fmt in ("csv", "tsv"):
        return CsvReader(path, "," if fmt == "csv" else "\t")
    if fmt == "parquet":
        return ParquetReader(path)
    return JsonlReader(path)


def read_table(path: Path, image_col: str | None, fmt: str | None = None,
               limit: int | None = None) -> tuple[pd.DataFrame, str]:
    """A whole catalog as a frame of text cells (for training and evaluation, which fit in memory)."""
    reader = open_reader(path, format_of(path, fmt))
    column = detect_image_column(reader.columns, image_col)
    frames, rows = [], 0
    for chunk in reader.chunks(8192, column):
        frame = _frame_of(chunk, reader)
        frames.append(frame.astype(str).where(frame.notna(), ""))
        rows += len(frame)
        if limit is not None and rows >= limit:
            break
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=reader.columns)
    return (frame.iloc[:limit] if limit is not None else frame).reset_index(drop=True), column


# ----------------------------------------------------------------------------- writers
@dataclass
class Results:
    """The four appended columns for one chunk, in row order."""

    captions: list[str]
    scores: list[float]
    statuses: list[str]
    errors: list[str]


def _frame_of(chunk: Chunk, reader) -> pd.DataFrame:
    if isinstance(chunk.payload, pd.DataFrame):
        return chunk.payload
    if isinstance(chunk.payload, pa.RecordBatch):
        return chunk.payload.to_pandas(types_mapper=pd.ArrowDtype)  # nullable ints stay ints
    return pd.DataFrame.from_records(chunk.payload, columns=reader.columns)


class PartWriter:
    """Writes one chunk (input cells + caption columns) as a part file of the output format."""

    def __init__(self, fmt: str, columns: OutputColumns, input_columns: list[str], reader):
        self.fmt, self.columns, self.input_columns, self.reader = fmt, columns, input_columns, reader
        self.schema: pa.Schema | None = None
        if fmt == "parquet":
            base = reader.schema if isinstance(reader, ParquetReader) else None
            self.schema = _output_schema(base, input_columns, columns)

    def write(self, path: Path, chunk: Chunk, results: Results, first: bool) -> None:
        if self.fmt == "jsonl":
            self._write_jsonl(path, chunk, results)
        elif self.fmt == "parquet":
            self._write_parquet(path, chunk, results)
        else:
            frame = _frame_of(chunk, self.reader)
            frame = _with_results(frame, self.columns, results, as_text=True)
            text = frame.to_csv(index=False, header=first, sep="," if self.fmt == "csv" else "\t",
                                lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
            path.write_bytes(text.encode("utf-8"))

    def _write_jsonl(self, path: Path, chunk: Chunk, results: Results) -> None:
        if isinstance(chunk.payload, list):
            records = chunk.payload
        else:
            records = _frame_of(chunk, self.reader).to_dict(orient="records")
        names = self.columns.names
        buffer = io.StringIO()
        for i, record in enumerate(records):
            row = dict(record)
            for name, value in zip(names, (results.captions[i], results.scores[i], results.statuses[i],
                                           results.errors[i])):
                row[name] = value
            buffer.write(json.dumps(row, ensure_ascii=False, default=str))
            buffer.write("\n")
        path.write_bytes(buffer.getvalue().encode("utf-8"))

    def _write_parquet(self, path: Path, chunk: Chunk, results: Results) -> None:
        names = self.columns.names
        values = (results.captions, results.scores, results.statuses, results.errors)
        if isinstance(chunk.payload, pa.RecordBatch):
            table = pa.Table.from_batches([chunk.payload])
            for name, column in zip(names, values):
                if name in table.column_names:
                    table = table.set_column(table.column_names.index(name), name, pa.array(column))
                else:
                    table = table.append_column(name, pa.array(column))
        else:
            frame = _frame_of(chunk, self.reader).map(_as_text)
            frame = _with_results(frame, self.columns, results, as_text=False)
            table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table.cast(self.schema), path)


def _as_text(value):
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)


def _with_results(frame: pd.DataFrame, columns: OutputColumns, results: Results, as_text: bool) -> pd.DataFrame:
    frame = frame.copy()
    scores = [f"{s:.4f}" if as_text else s for s in results.scores]
    for name, values in zip(columns.names, (results.captions, scores, results.statuses, results.errors)):
        frame[name] = values
    return frame


def _output_schema(base: pa.Schema | None, input_columns: list[str], columns: OutputColumns) -> pa.Schema:
    types = {"caption": pa.string(), "score": pa.float64(), "status": pa.string(), "error": pa.string()}
    added = dict(zip(columns.names, types.values()))
    fields = []
    if base is not None:
        fields = [pa.field(f.name, added.get(f.name, f.type)) if f.name in added else f for f in base]
    else:
        fields = [pa.field(c, added.get(c, pa.string())) for c in input_columns]
    present = {f.name for f in fields}
    fields += [pa.field(n, t) for n, t in added.items() if n not in present]
    return pa.schema(fields)


def assemble(fmt: str, parts: list[Path], target: Path, schema: pa.Schema | None) -> None:
    """Join part files into ``target`` (streamed: memory does not grow with the catalog)."""
    if fmt == "parquet":
        with pq.ParquetWriter(target, schema) as writer:
            for part in parts:
                writer.write_table(pq.read_table(part).cast(schema))
        return
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                while block := handle.read(1 << 22):
                    out.write(block)
