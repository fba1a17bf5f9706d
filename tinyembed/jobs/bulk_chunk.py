"""One chunk of `tinyembed embed -o`: records -> validated, tokenized requests -> vectors ->
output bytes. The local run (bulk.py) and the block runs (bulk_blocks.py, in-process or on Ray
actors) share it, so a record gives the same output bytes wherever it is embedded.
"""

from __future__ import annotations

import argparse

import numpy as np
from msgspec import Raw

from tinyembed.jobs import format as fmt
from tinyembed.jobs.bulk_io import BulkError, Record
from tinyembed.server.config import RequestLimits
from tinyembed.server.protocol import ApiError, EmbeddingRequest


class ChunkEmbedder:
    """What a chunk needs: the engine, the options that shape the output, the batch-id tag."""

    def __init__(self, engine, args: argparse.Namespace, output_format: str, tag: str):
        self.engine = engine
        self.args = args
        self.output_format = output_format
        self.tag = tag
        self.limits = RequestLimits()
        self._plain = EmbeddingRequest(model=args.model, input=Raw(b'""'), dimensions=args.dimensions,
                                       input_type=args.input_type, prompt_name=args.prompt_name)

    def prepare(self, chunk: list[Record]) -> tuple[list[Record], list[fmt.LineRequest]]:
        """A chunk's records -> validated, tokenized requests (errors kept on the item)."""
        items = []
        for record in chunk:
            if record.raw is None:
                item = fmt.LineRequest(record.line, record.id or f"line-{record.line}", request=self._plain,
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

    def compute_and_write(self, writer, chunk: list[Record], items: list[fmt.LineRequest]) -> tuple[int, int]:
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
