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
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

from tinyembed.jobs.bulk_chunk import ChunkEmbedder
from tinyembed.jobs.progress import Progress
from tinyembed.jobs.bulk_io import (INPUT_FORMATS, OUTPUT_FORMATS, BatchWriter, BulkError, JobFiles, JsonlWriter, NpyWriter,
                      count_rows, fingerprint,
                      read_records)

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
    parser.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                        help="embed the blocks on Ray actors (needs the `ray` extra); ADDRESS: a cluster "
                             "(host:port or ray://host:10001), default RAY_ADDRESS or a local one. Finished blocks "
                             "are kept in OUTPUT.parts/: rerun the same command after a crash to embed only the rest")
    parser.add_argument("--actors", type=int, default=None,
                        help="with --ray: how many actors (default one per GPU of the cluster, else one per CPU)")


def run(args: argparse.Namespace, engine=None) -> int:
    if len(args.texts) != 1:
        print("tinyembed embed: error: with -o, give exactly one INPUT file", file=sys.stderr)
        return 2
    try:
        if args.actors is not None and args.ray is None:
            raise BulkError("--actors goes with --ray")
        if args.ray is not None or _parquet_output(args):  # block runs: jobs/bulk_blocks.py
            return _block_run(args, engine)
        job = BulkJob(args, engine)
        return job.run()
    except BulkError as exc:
        print(f"tinyembed embed: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the first chunk: nothing to keep
        print("tinyembed embed: interrupted", file=sys.stderr)
        return INTERRUPTED


def _parquet_output(args: argparse.Namespace) -> bool:
    return args.output_format == "parquet" or (args.output_format == "auto" and args.output.endswith(".parquet"))


def _block_run(args: argparse.Namespace, engine) -> int:
    if args.actors is not None and args.actors < 1:
        raise BulkError("--actors must be at least 1")
    if args.ray is None:
        from tinyembed.jobs.bulk_blocks import run_local

        return run_local(args, engine)
    try:
        import ray  # noqa: F401 - only to say clearly when it is missing
    except ImportError:
        raise BulkError("--ray needs Ray: pip install 'tinyembed[ray]'") from None
    return args.ray_runner(args)


class BulkJob:
    def __init__(self, args: argparse.Namespace, engine=None):
        self.args = args
        files = JobFiles.from_args(args)
        self.input, self.output, self.field = files.input, files.output, files.field
        self.input_format, self.output_format = files.input_format, files.output_format
        self.partial = self.output.with_name(self.output.name + ".partial")
        self.progress = self.output.with_name(self.output.name + ".progress")
        if engine is None:
            from tinyembed.engine import load_engine

            engine = load_engine(args.model, device=args.device, dtype=args.dtype)
        self.engine = engine

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
        self.work = ChunkEmbedder(self.engine, self.args, self.output_format, "bulk" + stamp[:12])
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
            upcoming = pool.submit(self.work.prepare, next(chunks, []))
            while True:
                chunk, items = upcoming.result()
                if not chunk:
                    break
                upcoming = pool.submit(self.work.prepare, next(chunks, []))  # tokenized while this one computes
                written_rows, tokens = self.work.compute_and_write(writer, chunk, items)
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
