"""Block runs of `tinyembed embed -o`: the way a corpus is embedded by many workers (Ray actors,
integrations/ray_bulk.py) and the way a parquet output is written on one machine.

The input is cut into blocks of --chunk-size records, always the same way for the same input
and options. Each block is embedded anywhere (this process or a remote worker, by a
`ChunkEmbedder`, so the bytes are the ones a local run writes) and comes back here, where it
is written to OUTPUT.parts/block-NNNNNN (to a temporary name, fsynced, renamed) and only then
listed in OUTPUT.parts/manifest.jsonl (appended, fsynced). A rerun after a crash reads the
manifest and embeds only the blocks it does not list; a block written but not yet listed is
embedded again and replaces its file, so nothing is ever in the output twice. When every
block is in, they are joined into OUTPUT in input order and OUTPUT.parts is removed.
The manifest's first line holds the fingerprint of the input and the options: a rerun with
another input or other options starts over (as does --restart).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

from tinyembed.jobs.bulk_chunk import ChunkEmbedder
from tinyembed.jobs.bulk_io import (BatchWriter, BulkError, JobFiles, JsonlWriter, NpyWriter, ParquetWriter, Record,
                                    _parquet, fingerprint, read_records)
from tinyembed.jobs.progress import Progress, ProgressLines

INTERRUPTED = 130
BLOCK_WRITERS = {"jsonl": JsonlWriter, "batch": BatchWriter, "parquet": ParquetWriter}


@dataclass
class BlockResult:
    index: int
    data: bytes  # the block's output bytes (no .npy header; a whole parquet file for parquet)
    records: int
    rows: int
    tokens: int
    dims: int


class BlockExecutor(Protocol):
    def run(self, blocks: Iterator[tuple[int, list[Record]]]) -> Iterable[BlockResult]:
        """Embed blocks, pulling them lazily; yield results in any order as they finish."""
        ...


def embed_block(work: ChunkEmbedder, index: int, records: list[Record]) -> BlockResult:
    """Wherever a block runs: records -> its output bytes."""
    chunk, items = work.prepare(records)
    dims = work.args.dimensions or work.engine.info.dimensions
    writer = (NpyWriter(None, 0, 0, dims) if work.output_format == "npy" else BLOCK_WRITERS[work.output_format](None))
    rows, tokens = work.compute_and_write(writer, chunk, items)
    return BlockResult(index, writer.getvalue(), len(records), rows, tokens, dims)


class LocalBlocks:
    """Blocks embedded one after another in this process."""

    def __init__(self, work: ChunkEmbedder):
        self.work = work

    def run(self, blocks):
        for index, records in blocks:
            yield embed_block(self.work, index, records)


class BlockJob:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        files = JobFiles.from_args(args)
        self.input, self.output, self.field = files.input, files.output, files.field
        self.input_format, self.output_format = files.input_format, files.output_format
        if self.output_format == "parquet" and self.input_format == "batch":
            raise BulkError("an OpenAI batch input gives batch output lines: name the output .jsonl")
        self.parts = self.output.with_name(self.output.name + ".parts")
        self.manifest = self.parts / "manifest.jsonl"
        self.stamp = fingerprint(self.input, self.options())
        self.tag = "bulk" + self.stamp[:12]

    def options(self) -> dict:
        a = self.args
        return {"model": a.model, "dtype": a.dtype, "input_format": self.input_format,
                "output_format": self.output_format, "field": self.field, "id_field": a.id_field,
                "dimensions": a.dimensions, "truncate": a.truncate, "input_type": a.input_type,
                "chunk_size": a.chunk_size, "blocks": 1}

    def records(self) -> Iterator[Record]:
        return read_records(self.input, self.input_format, self.field, self.args.id_field)

    def block_path(self, index: int) -> Path:
        return self.parts / f"block-{index:06d}"

    # -- the manifest ------------------------------------------------------------------------------
    def finished_blocks(self) -> dict[int, dict]:
        """Blocks a previous run of this command listed (and whose file is whole)."""
        if self.args.restart or not self.manifest.is_file():
            return {}
        lines = self.manifest.read_bytes().split(b"\n")
        try:
            if json.loads(lines[0])["fingerprint"] != self.stamp:
                print("tinyembed embed: the input or options changed since the unfinished run; starting over",
                      file=sys.stderr)
                return {}
        except (ValueError, KeyError):
            return {}
        done = {}
        for line in lines[1:]:
            try:  # a torn last line (killed mid-write): that block is embedded again
                entry = json.loads(line)
                index = entry["block"]
            except (ValueError, KeyError):
                continue
            path = self.block_path(index)
            if path.is_file() and path.stat().st_size == entry["bytes"]:
                done[index] = entry
        return done

    def start_manifest(self) -> None:
        shutil.rmtree(self.parts, ignore_errors=True)
        self.parts.mkdir()
        self._append(self.manifest, {"fingerprint": self.stamp, "input": str(self.input)})

    def record_block(self, result: BlockResult) -> dict:
        path = self.block_path(result.index)
        temporary = path.with_name(path.name + ".tmp")
        with open(temporary, "wb") as f:
            f.write(result.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
        entry = {"block": result.index, "records": result.records, "rows": result.rows, "tokens": result.tokens,
                 "dims": result.dims, "bytes": len(result.data)}
        self._append(self.manifest, entry)
        return entry

    @staticmethod
    def _append(path: Path, entry: dict) -> None:
        with open(path, "ab") as f:
            f.write(json.dumps(entry).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    # -- the run -------------------------------------------------------------------------------------
    def run(self, executor: BlockExecutor) -> int:
        total_records = sum(1 for _ in self.records())
        total_blocks = -(-total_records // self.args.chunk_size)
        done = self.finished_blocks()
        if not done:
            self.start_manifest()
        quiet = self.args.quiet
        if done and not quiet:
            print(f"tinyembed embed: resuming: {len(done)} of {total_blocks} blocks were done", file=sys.stderr)
        done_records = sum(entry["records"] for entry in done.values())
        bar = (Progress(total_records, done_records, enabled=not quiet) if sys.stderr.isatty()
               else ProgressLines(total_records, done_records, "records", every=float("inf") if quiet else 10.0))
        embedded_now = 0
        try:
            for result in executor.run(self._missing(done)):
                done[result.index] = self.record_block(result)
                embedded_now += 1
                bar.update(result.records, result.tokens)
        except KeyboardInterrupt:
            bar.finish()
            print(f"tinyembed embed: interrupted with {len(done)} of {total_blocks} blocks done; run the same "
                  "command again to embed the rest", file=sys.stderr)
            return INTERRUPTED
        bar.finish()
        if len(done) != total_blocks:
            raise BulkError(f"only {len(done)} of {total_blocks} blocks came back; run the same command again")
        self.join([done[i] for i in range(total_blocks)])
        if not quiet:
            print(f"tinyembed embed: {total_blocks} blocks, {embedded_now} embedded by this run, "
                  f"{total_blocks - embedded_now} by an earlier one", file=sys.stderr)
        return 0

    def _missing(self, done: dict[int, dict]) -> Iterator[tuple[int, list[Record]]]:
        records, index = self.records(), 0
        while chunk := list(islice(records, self.args.chunk_size)):
            if index not in done:
                yield index, chunk
            index += 1

    def join(self, entries: list[dict]) -> None:
        """Every block's bytes, in input order, into OUTPUT (through a temporary name)."""
        partial = self.output.with_name(self.output.name + ".partial")
        if self.output_format == "parquet":
            self._join_parquet(entries, partial)
        else:
            with open(partial, "wb") as out:
                if self.output_format == "npy":
                    dims = entries[0]["dims"] if entries else (self.args.dimensions or 0)
                    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False,
                                                               "shape": (sum(e["rows"] for e in entries), dims)})
                for entry in entries:
                    with open(self.block_path(entry["block"]), "rb") as block:
                        shutil.copyfileobj(block, out)
                out.flush()
                os.fsync(out.fileno())
        os.replace(partial, self.output)
        shutil.rmtree(self.parts, ignore_errors=True)

    def _join_parquet(self, entries: list[dict], partial: Path) -> None:
        pq = _parquet()
        writer = None
        try:
            for entry in entries:
                table = pq.read_table(self.block_path(entry["block"]))
                writer = writer or pq.ParquetWriter(partial, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()


def run_local(args: argparse.Namespace, engine=None) -> int:
    """A block run in this process (parquet output without --ray)."""
    job = BlockJob(args)
    if engine is None:
        from tinyembed.engine import load_engine

        engine = load_engine(args.model, device=args.device, dtype=args.dtype)
    return job.run(LocalBlocks(ChunkEmbedder(engine, args, job.output_format, job.tag)))
