"""What `tinyembed embed INPUT -o OUTPUT` reads and writes.

Inputs, one record per non-blank line:
    text    each line is a text
    jsonl   each line is a JSON object; --field names the text (default "text"), --id-field an id
    batch   each line is an OpenAI batch request {"custom_id", "method", "url", "body"}
    parquet each row is a record; --field names the text column (default "text"), --id-field an id
Outputs:
    npy     one float32 row per input, in input order (numpy.load reads it)
    jsonl   one line per input: {"line", "id"?, "index"?, "tokens", "embedding"}
    batch   one OpenAI batch output line per record, a result or an error (jobs/format.py)
    parquet columns line, id (with --id-field), tokens, embedding (fixed-size list of float32);
            written block by block (bulk_blocks.py)

Writers append to OUTPUT.partial; `offset()` is where a resumed run truncates it back to. A
writer given no path writes one block into memory (`getvalue()`), for the block runs.
Parquet needs pyarrow (the `ray` or `parquet` extra).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from tinyembed.jobs import format as fmt
from tinyembed.common.errors import TinyEmbedError
from tinyembed.server.protocol import ApiError, EmbeddingRequest, decode_request, parse_input

INPUT_FORMATS = ("auto", "text", "jsonl", "batch", "parquet")
OUTPUT_FORMATS = ("auto", "npy", "jsonl", "batch", "parquet")


class BulkError(TinyEmbedError):
    """A problem with the input or the options; the message names the line."""


@dataclass
class Record:
    line: int  # 1-based line number in the input
    id: str | None  # custom_id (batch input), --id-field (jsonl), else None
    text: str | None = None  # text and jsonl input
    raw: bytes | None = None  # batch input: the whole line


@dataclass
class JobFiles:
    """A bulk command's input and output, checked, with their formats settled."""

    input: Path
    output: Path
    input_format: str
    output_format: str
    field: str

    @classmethod
    def from_args(cls, args) -> "JobFiles":
        source, output = Path(args.texts[0]), Path(args.output)
        if not source.is_file():
            raise BulkError(f"{source}: no such file")
        if not output.parent.is_dir():
            raise BulkError(f"{output.parent}: no such folder for the output")
        if args.chunk_size < 1 or args.batch_tokens < 1:
            raise BulkError("--chunk-size and --batch-tokens must be at least 1")
        input_format = detect_input_format(source, args.field) if args.input_format == "auto" else args.input_format
        output_format = (detect_output_format(output, input_format) if args.output_format == "auto"
                         else args.output_format)
        return cls(source, output, input_format, output_format, args.field or "text")


# -- reading -----------------------------------------------------------------------------------------

def detect_input_format(path: Path, field: str | None) -> str:
    if path.suffix == ".parquet":
        return "parquet"
    if field is not None:
        return "jsonl"
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    first = json.loads(raw)
                except ValueError:
                    return "text"
                if isinstance(first, dict) and "custom_id" in first and "body" in first:
                    return "batch"
                return "jsonl" if isinstance(first, dict) else "text"
    return "text"


def detect_output_format(path: Path, input_format: str) -> str:
    if path.suffix == ".npy":
        return "npy"
    if path.suffix == ".parquet":
        if input_format == "batch":
            raise BulkError("an OpenAI batch input gives batch output lines: name the output .jsonl")
        return "parquet"
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        return "batch" if input_format == "batch" else "jsonl"
    raise BulkError(f"cannot tell the output format from {path.name!r}: name it .npy, .jsonl or .parquet, "
                    "or pass --output-format")


_any_json = msgspec.json.Decoder()


def read_records(path: Path, input_format: str, field: str, id_field: str | None):
    """Yield a Record per non-blank line (per row of a parquet file), in order."""
    if input_format == "parquet":
        yield from _parquet_records(path, field, id_field)
        return
    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            stripped = raw.strip()
            if not stripped:
                continue
            if input_format == "batch":
                yield Record(line, fmt.custom_id_of(stripped), raw=stripped)
            elif input_format == "text":
                yield Record(line, None, text=_utf8(raw, line).rstrip("\r\n"))
            else:
                yield _jsonl_record(stripped, line, field, id_field)


def _utf8(raw: bytes, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BulkError(f"line {line}: not UTF-8 text") from None


def _jsonl_record(raw: bytes, line: int, field: str, id_field: str | None) -> Record:
    try:
        value = _any_json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BulkError(f"line {line}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BulkError(f"line {line}: a JSON object is expected")
    text = value.get(field)
    if not isinstance(text, str) or not text:
        raise BulkError(f"line {line}: field {field!r} is missing or not a non-empty string (choose it with --field)")
    ident = value.get(id_field) if id_field else None
    return Record(line, None if ident is None else str(ident), text=text)


def _parquet_records(path: Path, field: str, id_field: str | None):
    pq = _parquet()
    try:
        source = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise BulkError(f"{path}: not a readable parquet file ({exc})") from None
    names = source.schema_arrow.names
    for name in (field, id_field):
        if name is not None and name not in names:
            raise BulkError(f"{path}: no column {name!r} (the columns are {', '.join(names)}; choose with --field "
                            "/ --id-field)")
    row = 0
    for batch in source.iter_batches(batch_size=4096, columns=[field] + ([id_field] if id_field else [])):
        texts = batch.column(0).to_pylist()
        ids = batch.column(1).to_pylist() if id_field else [None] * len(texts)
        for text, ident in zip(texts, ids):
            row += 1
            if not isinstance(text, str) or not text:
                raise BulkError(f"row {row}: column {field!r} is null, empty or not a string")
            yield Record(row, None if ident is None else str(ident), text=text)


def _parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BulkError("parquet needs pyarrow: pip install 'tinyembed[parquet]'") from None
    return pq


def batch_request(record: Record) -> EmbeddingRequest:
    """The /v1/embeddings body of a batch line; raises LineError or ApiError."""
    parsed = fmt.parse_line(record.raw, record.line)
    return decode_request(bytes(parsed.body), EmbeddingRequest)


def count_rows(records, input_format: str) -> int:
    """How many vectors the records give (for the .npy header); a batch line may hold many."""
    if input_format != "batch":
        return sum(1 for _ in records)
    rows = 0
    for record in records:
        try:
            texts, ids = parse_input(batch_request(record).input)
        except (fmt.LineError, ApiError) as exc:
            raise BulkError(f"line {record.line}: {getattr(exc, 'message', exc)} (write -o FILE.jsonl "
                            "--output-format batch to keep going past bad lines)") from None
        rows += len(texts if texts is not None else ids)
    return rows


def fingerprint(path: Path, options: dict) -> str:
    """Input bytes + the options that shape the output: a rerun resumes only if both match."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- writing -------------------------------------------------------------------------------------------

class Writer:
    """Appends to a file opened at `offset` (0 for a new run); `sync()` makes it durable."""

    def __init__(self, path: Path | None, offset: int = 0):
        if path is None:  # one block, in memory
            self.file = io.BytesIO()
            return
        self.file = open(path, "r+b" if offset else "wb")
        self.file.truncate(offset)
        self.file.seek(offset)

    def getvalue(self) -> bytes:
        return self.file.getvalue()

    def offset(self) -> int:
        return self.file.tell()

    def sync(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


class NpyWriter(Writer):
    def __init__(self, path: Path | None, offset: int, rows: int, dims: int):
        super().__init__(path, offset)
        self.dims = dims
        if path is not None and not offset:  # a block has no header: the join writes one
            np.lib.format.write_array_header_1_0(self.file, {"descr": "<f4", "fortran_order": False,
                                                             "shape": (rows, dims)})

    def write(self, job, records, items, vectors) -> None:
        """records[i] -> items[i] (its validated request) -> vectors[i] (its rows; None if it failed)."""
        rows = [item.engine.with_dimensions(v, item.request.dimensions) for item, v in zip(items, vectors)]
        for item, block in zip(items, rows):
            _float_only(item, "a .npy output")
            if block.shape[1] != self.dims:
                raise BulkError(f"line {item.line}: asks for {block.shape[1]} dimensions; this .npy output holds "
                                f"{self.dims} per row")
        if rows:
            self.file.write(np.ascontiguousarray(np.concatenate(rows), dtype="<f4").tobytes())


class JsonlWriter(Writer):
    _encode = msgspec.json.Encoder().encode

    def write(self, job, records, items, vectors) -> None:
        out = []
        for record, item, block in zip(records, items, vectors):
            rows = item.engine.with_dimensions(block, item.request.dimensions)
            rows = item.engine.quantize(rows, item.request.output_dtype or "float", item.request.dimensions).tolist()
            for index, (seq, row) in enumerate(zip(item.sequences, rows)):
                entry = {"line": item.line}
                if record.id is not None:
                    entry["id"] = record.id
                if record.raw is not None:
                    entry["index"] = index
                entry["tokens"] = len(seq)
                entry["embedding"] = row
                out.append(self._encode(entry))
        if out:
            self.file.write(b"\n".join(out) + b"\n")


class BatchWriter(Writer):
    def write(self, job, records, items, vectors) -> None:
        self.file.write(b"".join(job.output_line(item, block) for item, block in zip(items, vectors)))


class ParquetWriter(Writer):
    """One block's rows as a parquet file in memory (joined into OUTPUT by bulk_blocks.py)."""

    def __init__(self, path: None, offset: int = 0):
        super().__init__(None)
        self.rows: dict[str, list] = {"line": [], "id": [], "tokens": []}
        self.vectors: list[np.ndarray] = []

    def write(self, job, records, items, vectors) -> None:
        for record, item, block in zip(records, items, vectors):
            self.rows["line"].append(item.line)
            self.rows["id"].append(record.id)
            self.rows["tokens"].append(len(item.sequences[0]))
            _float_only(item, "a parquet output")
            self.vectors.append(item.engine.with_dimensions(block, item.request.dimensions)[0])
        self.with_id = job.args.id_field is not None

    def getvalue(self) -> bytes:
        import pyarrow as pa

        pq = _parquet()
        flat = np.concatenate(self.vectors) if self.vectors else np.zeros(0, np.float32)
        dims = len(self.vectors[0]) if self.vectors else 0
        columns = {"line": pa.array(self.rows["line"], pa.int64())}
        if getattr(self, "with_id", False):
            columns["id"] = pa.array(self.rows["id"], pa.string())
        columns["tokens"] = pa.array(self.rows["tokens"], pa.int32())
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dims)
        pq.write_table(pa.table(columns), self.file)
        return self.file.getvalue()


def _float_only(item, output: str) -> None:
    """issue 29: a line's output_dtype is kept where the output can hold it (jsonl, batch), refused elsewhere."""
    if (item.request.output_dtype or "float") != "float":
        raise BulkError(f"line {item.line}: output_dtype {item.request.output_dtype} needs a .jsonl output; "
                        f"{output} holds float32 vectors")
