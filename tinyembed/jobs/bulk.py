"""`tinyembed embed INPUT -o OUTPUT`: embed a whole file on this machine, resumably.

The input is read in chunks of --chunk-size records. While the engine embeds one chunk, a
thread tokenizes the next; each finished chunk is appended to OUTPUT.partial and fsynced, and
only then is it recorded in OUTPUT.progress. Interrupted (Ctrl-C, a crash), the same command
resumes: it cuts OUTPUT.partial back to the last recorded chunk and goes on from there. The
finished file is renamed to OUTPUT, so OUTPUT never holds a partial result. The progress file
starts with a fingerprint of the input bytes and of every option that shapes the output; a run
whose fingerprint differs starts over.

A progress bar (rate, ETA) is drawn on stderr when it is a terminal; otherwise nothing is
printed but errors and, when a run resumes, one line saying how far the last one got.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
from msgspec import Raw

from tinyembed.jobs import format as fmt
from tinyembed.jobs.bulk_io import (INPUT_FORMATS, OUTPUT_FORMATS, BatchWriter, BulkError, JsonlWriter, NpyWriter, Record,
                      count_rows, detect_input_format, detect_output_format, fingerprint,
                      read_records)
from tinyembed.server.config import RequestLimits
from tinyembed.server.protocol import ApiError, EmbeddingRequest

WRITERS = {"npy": NpyWriter, "jsonl": JsonlWriter, "batch": BatchWriter}
INTERRUPTED = 130  # the shell's code for "stopped by SIGINT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Bulk options for the `embed` subcommand; -o turns bulk mode on (INPUT is then a file)."""
    parser.add_argument("-o", "--output", default=None,
                        help="bulk mode: embed the file given as the one argument into OUTPUT (.npy or .jsonl); "
                             "rerun the same command to resume after an interruption")
    parser.add_argument("--input-format", choices=INPUT_FORMATS, default="auto",
                        help="text lines, JSONL objects, or an OpenAI batch file (auto: from the first line)")
    parser.add_argument("--field", default=None, help="JSONL input: the field holding the text (default 'text')")
    parser.add_argument("--id-field", default=None, help="JSONL input: a field copied into each output line as 'id'")
    parser.add_argument("--output-format", choices=OUTPUT_FORMATS, default="auto",
                        help="npy, jsonl, or OpenAI batch output lines (auto: from OUTPUT's suffix and the input)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="records per checkpoint")
    parser.add_argument("--batch-tokens", type=int, default=16384, help="tokens per forward pass")
    parser.add_argument("--restart", action="store_true", help="discard a previous unfinished run's progress")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, even on a terminal")


def run(args: argparse.Namespace, engine=None) -> int:
    if len(args.texts) != 1:
        print("tinyembed embed: error: with -o, give exactly one INPUT file", file=sys.stderr)
        return 2
    try:
        job = BulkJob(args, engine)
        return job.run()
    except BulkError as exc:
        print(f"tinyembed embed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the first chunk: nothing to keep
        print("tinyembed embed: interrupted", file=sys.stderr)
        return INTERRUPTED


class BulkJob:
    def __init__(self, args: argparse.Namespace, engine=None):
        self.args = args
        self.input = Path(args.texts[0])
        self.output = Path(args.output)
        if not self.input.is_file():
            raise BulkError(f"{self.input}: no such file")
        if not self.output.parent.is_dir():
            raise BulkError(f"{self.output.parent}: no such folder for the output")
        if args.chunk_size < 1 or args.batch_tokens < 1:
            raise BulkError("--chunk-size and --batch-tokens must be at least 1")
        self.input_format = (detect_input_format(self.input, args.field) if args.input_format == "auto"
                             else args.input_format)
        self.output_format = (detect_output_format(self.output, self.input_format) if args.output_format == "auto"
                              else args.output_format)
        self.field = args.field or "text"
        self.partial = self.output.with_name(self.output.name + ".partial")
        self.progress = self.output.with_name(self.output.name + ".progress")
        if engine is None:
            from tinyembed.engine import load_engine

            engine = load_engine(args.model, device=args.device, dtype=args.dtype)
        self.engine = engine
        self.limits = RequestLimits()

    def _records(self):
        return read_records(self.input, self.input_format, self.field, self.args.id_field)

    def options(self) -> dict:
        a = self.args
        return {"model": a.model, "device": a.device, "dtype": a.dtype, "input_format": self.input_format,
                "output_format": self.output_format, "field": self.field, "id_field": a.id_field,
                "dimensions": a.dimensions, "truncate": a.truncate, "input_type": a.input_type,
                "prompt_name": a.prompt_name,
                "chunk_size": a.chunk_size, "batch_tokens": a.batch_tokens}

    # -- resume ---------------------------------------------------------------------------------------
    def _resume_point(self, stamp: str) -> tuple[int, int, int]:
        """-> (records done, partial-file offset, rows done) of a previous run of this command."""
        if self.args.restart or not self.progress.is_file() or not self.partial.is_file():
            return 0, 0, 0
        lines = self.progress.read_bytes().split(b"\n")
        try:
            if json.loads(lines[0])["fingerprint"] != stamp:
                print("tinyembed embed: the input or options changed since the unfinished run; starting over",
                      file=sys.stderr)
                return 0, 0, 0
        except (ValueError, KeyError):
            return 0, 0, 0
        done = (0, 0, 0)
        for line in lines[1:]:
            try:  # a torn last line (killed mid-write) is ignored: that chunk is redone
                entry = json.loads(line)
                done = (entry["records"], entry["bytes"], entry["rows"])
            except (ValueError, KeyError):
                break
        return done

    def _record_progress(self, records: int, offset: int, rows: int) -> None:
        with open(self.progress, "ab") as f:
            f.write(json.dumps({"records": records, "bytes": offset, "rows": rows}).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    # -- the run ----------------------------------------------------------------------------------------
    def run(self) -> int:
        stamp = fingerprint(self.input, self.options())
        self.tag = "bulk" + stamp[:12]
        total_records = sum(1 for _ in self._records())
        rows = count_rows(self._records(), self.input_format) if self.output_format == "npy" else 0
        done, offset, rows_done = self._resume_point(stamp)
        if done and not self.args.quiet:
            print(f"tinyembed embed: resuming: {done} of {total_records} records were done", file=sys.stderr)
        if not done:
            self.progress.write_bytes(json.dumps({"fingerprint": stamp, "input": str(self.input)}).encode() + b"\n")
        dims = self.args.dimensions or self.engine.info.dimensions
        writer = (NpyWriter(self.partial, offset, rows, dims) if self.output_format == "npy"
                  else WRITERS[self.output_format](self.partial, offset))
        bar = Progress(total_records, done, enabled=sys.stderr.isatty() and not self.args.quiet)
        records = self._records()
        for _ in islice(records, done):
            pass
        pool = ThreadPoolExecutor(1, thread_name_prefix="tinyembed-bulk-prepare")
        try:
            chunks = iter(lambda: list(islice(records, self.args.chunk_size)), [])
            upcoming = pool.submit(self._prepare, next(chunks, []))
            while True:
                chunk, items = upcoming.result()
                if not chunk:
                    break
                upcoming = pool.submit(self._prepare, next(chunks, []))  # tokenized while this one computes
                written_rows, tokens = self._compute_and_write(writer, chunk, items)
                writer.sync()
                done, rows_done = done + len(chunk), rows_done + written_rows
                self._record_progress(done, writer.offset(), rows_done)
                bar.update(len(chunk), tokens)
        except KeyboardInterrupt:
            bar.finish()
            print(f"tinyembed embed: interrupted after {done} of {total_records} records; run the same command "
                  "again to resume", file=sys.stderr)
            return INTERRUPTED
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            writer.close()
        os.replace(self.partial, self.output)
        self.progress.unlink(missing_ok=True)
        bar.finish()
        return 0

    def _prepare(self, chunk: list[Record]) -> tuple[list[Record], list[fmt.LineRequest]]:
        """Worker thread: a chunk's records -> validated, tokenized requests (errors on the item)."""
        items = []
        for record in chunk:
            if record.raw is None:
                item = fmt.LineRequest(record.line, record.id or f"line-{record.line}", request=self._plain_request(),
                                       engine=self.engine, texts=[record.text], truncate=self.args.truncate)
            else:
                item = fmt.LineRequest(record.line, record.id)
                try:
                    parsed = fmt.parse_line(record.raw, record.line)
                except fmt.LineError as exc:
                    item.error = exc
                    items.append(item)
                    continue
                fmt.validate_body(item, bytes(parsed.body), lambda model: self.engine, self.limits.max_inputs,
                                  self.args.truncate)
                if item.error is None and self.args.input_type and item.request.input_type is None:
                    item.request.input_type = self.args.input_type
                if item.error is None and self.args.prompt_name and item.request.prompt_name is None:
                    item.request.prompt_name = self.args.prompt_name
            items.append(item)
        fmt.tokenize(items, self.limits.max_tokens_per_request)
        return chunk, items

    def _plain_request(self) -> EmbeddingRequest:
        if not hasattr(self, "_plain"):
            self._plain = EmbeddingRequest(model=self.args.model, input=Raw(b'""'), dimensions=self.args.dimensions,
                                           input_type=self.args.input_type, prompt_name=self.args.prompt_name)
        return self._plain

    def _compute_and_write(self, writer, chunk: list[Record], items: list[fmt.LineRequest]) -> tuple[int, int]:
        """Embed a chunk's valid items and append them; -> (rows written, tokens embedded)."""
        failed = [item for item in items if item.error is not None]
        if failed and self.output_format != "batch":
            item = failed[0]
            raise BulkError(f"line {item.line}: {getattr(item.error, 'message', item.error)} (write -o FILE.jsonl "
                            "--output-format batch to keep going past bad lines)")
        sequences = [s for item in items if item.error is None for s in item.sequences]
        vectors = self.engine.embed_sequences(sequences, max_batch_tokens=self.args.batch_tokens)
        per_item, at = [], 0
        for item in items:
            n = 0 if item.error is not None else len(item.sequences)
            per_item.append(vectors[at:at + n] if n else None)
            at += n
        writer.write(self, chunk, items, per_item)
        return at, sum(item.tokens for item in items if item.error is None)

    def output_line(self, item: fmt.LineRequest, vectors: np.ndarray | None) -> bytes:
        """The OpenAI batch output line of one record."""
        if isinstance(item.error, fmt.LineError):
            return fmt.failed_line(self.tag, item.line, item.custom_id, item.error.code, item.error.message)
        if isinstance(item.error, ApiError):
            return fmt.refused_line(self.tag, item.line, item.custom_id, item.error)
        return fmt.ok_line(self.tag, item.line, item.custom_id, fmt.response_body(item, vectors, "default"))


class Progress:
    """`[#####.....]  45.1%  4,510/10,000  1,234 texts/s  15,678 tok/s  ETA 0:00:04` on a terminal."""

    WIDTH = 24

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled = total, done, enabled
        self.start_done, self.started, self.tokens = done, time.monotonic(), 0
        self.drawn = False
        if enabled:
            self._draw()

    def update(self, records: int, tokens: int) -> None:
        self.done += records
        self.tokens += tokens
        if self.enabled:
            self._draw()

    def _draw(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        share = self.done / self.total if self.total else 1.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        filled = int(share * self.WIDTH)
        text = (f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share:6.1%}  {self.done:,}/{self.total:,}  "
                f"{rate:,.0f} texts/s  {self.tokens / elapsed:,.0f} tok/s  ETA {_clock(eta)}")
        sys.stderr.write(text)
        sys.stderr.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.drawn = False


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
