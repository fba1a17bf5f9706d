"""A large embeddings reply, written block by block as the client reads it (issue 27).

2,048 inputs x 1,024 dims as JSON is ~50 MB of text built from ~2M Python floats; encoded whole,
the server held the floats, the JSON, and a second copy of the JSON joined to the headers.
Instead the reply goes out with `Transfer-Encoding: chunked`: the frame of the response
(object, model, usage, tier: encoded once by the same Struct as a small reply, so the bytes a
client parses are the same) and the rows in blocks of BLOCK_FLOATS floats, each encoded on
the worker pool only when the previous one has left our send buffer. What it holds at once: the
vectors, one block (as floats and as JSON) and the connection's send buffer; the memory budget
counts exactly that (scheduler/memory_budget.py, reply_held_bytes), and the request's
reservation is released here, when the last block is written or the client goes away.
"""

from __future__ import annotations

import asyncio
import base64 as b64

import numpy as np

from tinyembed.scheduler.memory_budget import BLOCK_FLOATS, reply_bytes
from tinyembed.server.protocol import Embedding, EmbeddingResponse, Usage, encode

_DATA = b'"data":[]'


class StreamedBody:
    """The body of a Response that http.py writes with `send` instead of all at once."""

    def __init__(self, vectors: np.ndarray, base64: bool, model: str, tokens: int, tier: str,
                 pool=None, reservation=None):
        self.vectors, self.base64, self.pool, self.reservation = vectors, base64, pool, reservation
        frame = encode(EmbeddingResponse(data=[], model=model, usage=Usage(tokens, tokens), service_tier=tier))
        cut = frame.index(_DATA) + len(_DATA) - 1  # just before the closing bracket of data
        self.head, self.tail = frame[:cut], frame[cut:]
        self.rows = max(1, BLOCK_FLOATS // max(1, vectors.shape[1]))

    def __len__(self) -> int:  # the access log's bytes and the trim threshold: an estimate until written
        return reply_bytes(*self.vectors.shape, self.base64) if self.vectors is not None else 0

    def encode_block(self, start: int) -> bytes:
        rows = self.vectors[start:start + self.rows]
        if self.base64:
            raw = np.ascontiguousarray(rows, dtype="<f4")
            data = [Embedding(index=start + i, embedding=b64.b64encode(row.tobytes()).decode("ascii"))
                    for i, row in enumerate(raw)]
        else:
            data = [Embedding(index=start + i, embedding=row) for i, row in enumerate(rows.tolist())]
        body = encode(data)[1:-1]  # the objects without the list's brackets
        return body if start == 0 else b"," + body

    async def send(self, conn, head: bytes) -> None:
        """Write the HTTP head and every block on `conn` (http.Connection), waiting while the
        client is slow (its write timeout still applies); frees the reservation at the end."""
        loop = asyncio.get_running_loop()
        try:
            if conn.closing:
                return
            conn.transport.write(head)
            _chunk(conn, self.head)
            for start in range(0, len(self.vectors), self.rows):
                block = await loop.run_in_executor(self.pool, self.encode_block, start)
                if conn.closing:
                    return
                _chunk(conn, block)
                del block
                await conn.wait_drained()
            _chunk(conn, self.tail)
            conn.transport.write(b"0\r\n\r\n")
        finally:
            self.vectors = None
            if self.reservation is not None:
                self.reservation.release()


def _chunk(conn, data: bytes) -> None:
    if data and not conn.closing:
        conn.transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
