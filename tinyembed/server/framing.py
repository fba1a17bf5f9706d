"""What httptools does not tell us about a request's framing, read from the raw bytes.

llhttp (inside httptools) decodes chunked bodies but does not expose a chunk's declared size, so
a client could declare a 4 GiB chunk, send a byte, and hold the connection until the body
timeout. `Splitter` feeds the parser so that every line (request line, headers, chunk-size
lines, trailers) ends a feed: when the parser's `on_chunk_header` fires, the line just fed is
the chunk-size line, and its size can be checked against the body limit at once. Body bytes whose
count is known (a Content-Length body, a chunk's data) are fed in one piece, so a large body
costs no more calls than before.

Also here: which transfer codings the server implements (only `chunked`, RFC 9112 6.1: a
coding the server does not understand is answered 501).
"""

from __future__ import annotations

import re

LINE_KEEP = 64  # bytes of the current line kept: a chunk size is at its start
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")


class Splitter:
    """Cuts incoming data into the pieces the parser is fed (see the module docstring)."""

    __slots__ = ("bulk", "line", "line_done")

    def __init__(self):
        self.bulk = 0  # body bytes the parser will take next without reading a line
        self.line = bytearray()  # the start of the current line (at most LINE_KEEP bytes)
        self.line_done = False  # the last piece ended its line: the next piece starts a new one

    def pieces(self, data: bytes):
        """Yield the pieces of `data` in order (the caller feeds each to the parser, and may stop)."""
        pos, size = 0, len(data)
        while pos < size:
            if self.bulk > 0:  # body bytes: never part of a line we read
                end = min(size, pos + self.bulk)
                self.line_done = True
            else:
                newline = data.find(b"\n", pos)
                end = size if newline < 0 else newline + 1
                if self.line_done:
                    self.line.clear()
                    self.line_done = False
                if len(self.line) < LINE_KEEP:
                    self.line += data[pos:min(end, pos + LINE_KEEP - len(self.line))]
                self.line_done = newline >= 0
            piece = data[pos:end] if pos or end < size else data
            pos = end
            yield piece

    def took_body(self, n: int) -> None:
        """The parser delivered `n` body bytes."""
        self.bulk = max(0, self.bulk - n)

    def chunk_size(self) -> int | None:
        """In `on_chunk_header`: the size the chunk-size line just fed declares (None when the
        line cannot be read, which the parser would have refused anyway)."""
        if not self.line_done:
            return None
        match = _CHUNK_SIZE.match(bytes(self.line).lstrip(b" \t"))
        if match is None:
            return None
        digits = match.group().lstrip(b"0") or b"0"
        return int(digits, 16) if len(digits) <= 16 else 1 << 64

    def reset(self) -> None:
        """A message ended: what follows starts with a request line."""
        self.bulk = 0


def unsupported_coding(transfer_encoding: str | None) -> str | None:
    """The Transfer-Encoding header -> None when it is absent or exactly `chunked`, else the
    codings named (which the server does not implement)."""
    if transfer_encoding is None:
        return None
    codings = [c.strip().lower() for c in transfer_encoding.split(",")]
    return None if codings == ["chunked"] else transfer_encoding.strip()[:64]
