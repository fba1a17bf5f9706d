"""HTTP/1.1 on asyncio.Protocol with httptools parsing.

One `Connection` per socket. Requests are parsed as bytes arrive and queued; one task per
connection answers them in order (pipelining), so a response never overtakes an earlier one.
What a client may cost is bounded: header and body size (413 from Content-Length or a chunk's
declared size, before the body is read), header/body/idle timeouts and a short deadline for a new
connection's first byte (a slow or silent client is cut off), a connection cap that closes idle
connections first and keeps /health and /ready answerable (slots.py), how many pipelined
requests are read ahead, and how long a reply may sit unread: once more than
`send_buffer_bytes` wait to be sent, reading from that client pauses, and if the client has not
taken all of it within `write_timeout` the connection is cut (its buffered reply freed). A client that disconnects cancels the task
answering it, so its queued work is dropped.

Body memory. Nothing is held for a body before the server's `gate` (app.py: route, method, API
key, content type) has accepted the request's head; a refused request's body is read and thrown
away, and the refusal answered after it (so the connection stays usable). An accepted body is
buffered as its bytes arrive, never sized from Content-Length in advance.
`Server.buffered_body_bytes()` says how many bytes request bodies hold right now (for a memory
budget to count).

The handler (app.py) turns a `Request` into a `Response` and never raises.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import socket
import struct
import time
from collections import deque
from typing import Awaitable, Callable

import httptools

from tinyembed.server import slots as slots_
from tinyembed.server.config import HttpLimits
from tinyembed.server.framing import Splitter, unsupported_coding
from tinyembed.server.protocol import error_body, reason
from tinyembed.server.reply_writer import StreamedBody

log = logging.getLogger("tinyembed.server.http")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_request_ids = itertools.count(1)
_ID_PREFIX = os.urandom(3).hex()


class Request:
    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive", "id", "arrived", "client", "hold")

    def __init__(self, method: str, path: str, query: str, headers: dict[str, str], body: bytes,
                 keep_alive: bool, arrived: float, client: str):
        self.method, self.path, self.query, self.headers = method, path, query, headers
        self.body, self.keep_alive, self.arrived, self.client = body, keep_alive, arrived, client
        self.hold = None  # issue 27: the body's memory reservation (released once answered)
        given = headers.get("x-request-id", "")
        self.id = given if _REQUEST_ID.match(given) else f"{_ID_PREFIX}-{next(_request_ids)}"


class Response:
    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int, body: bytes = b"", content_type: str = "application/json",
                 headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = ()):
        self.status, self.body, self.content_type, self.headers = status, body, content_type, headers


def error_response(status: int, code: str, message: str, param: str | None = None,
                   headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, error_body(status, code, message, param), headers=headers)


Handler = Callable[[Request], Awaitable[Response]]


class _Reject(Exception):
    """Raised inside parser callbacks: answer with this error, then close the connection.
    (httptools wraps callback exceptions in its own error type, so the parser callbacks also
    keep the response on the connection: see `Connection._reject`.)"""

    def __init__(self, response: Response):
        self.response = response


Gate = Callable[[str, str, dict], "tuple[bool, Response | None]"]


def _open_gate(method: str, path: str, headers: dict) -> tuple[bool, Response | None]:
    return True, None


class Server:
    """Owns the listening socket and the set of open connections; drains them on shutdown.
    `gate(method, path, headers) -> (read_body, refusal)` judges a request by its head: the
    body is buffered only when read_body is true and there is no refusal."""

    def __init__(self, handler: Handler, limits: HttpLimits,
                 on_reject: Callable[[Response], None] | None = None, gate: Gate | None = None, body_gate=None):
        self.handler = handler
        self.limits = limits
        self.on_reject = on_reject or (lambda response: None)
        self.gate = gate or _open_gate
        # issue 27: body_gate(Content-Length) -> a hold with release(), or a Response refusing the body
        self.body_gate = body_gate
        self.slots = slots_.Slots(limits.max_connections)
        self.connections: set[Connection] = self.slots.open
        self.body_bytes = 0  # held by request bodies being received or queued, all connections
        self.draining = False
        self._server: asyncio.base_events.Server | None = None
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    def buffered_body_bytes(self) -> int:
        """Bytes of request bodies the server holds now (received, not yet answered)."""
        return self.body_bytes

    async def listen(self, host: str, port: int) -> list[tuple]:
        self.slots.cap = slots_.fit_fd_limit(self.slots.cap, self.slots.probe_slots)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), host, port, backlog=1024)
        return [sock.getsockname() for sock in self._server.sockets]

    def opened(self, conn: "Connection") -> str:
        self._all_closed.clear()
        return self.slots.arrive(conn)

    def closed(self, conn: "Connection") -> None:
        self.slots.gone(conn)
        if not self.connections:
            self._all_closed.set()

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let in-flight requests finish (up to `timeout`), close the rest."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.drain()
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("shutdown: %d connections still busy after %.0fs; closing them",
                        len(self.connections), timeout)
            for conn in list(self.connections):
                conn.abort()


class Connection(asyncio.Protocol):
    def __init__(self, server: Server):
        self.server = server
        self.limits = server.limits
        self.parser = httptools.HttpRequestParser(self)
        self.splitter = Splitter()
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.queue: deque[Request | Response] = deque()
        self.task: asyncio.Task | None = None  # answers the queue, one request at a time
        self.parsing = False  # inside a request whose end has not arrived yet
        self.discarding = False  # a final error was queued: input is read and thrown away
        self.closing = False
        self.limited = False  # admitted above the cap: /health and /ready only (slots.py)
        self.eof = False  # the client half-closed: answer what it sent, then close
        self.reading_paused = False
        self.write_paused = False
        self._drained: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None  # runs while a reply waits on the client
        self._rejected: Response | None = None
        self._linger_after: Request | None = None  # answered, then the connection lingers and closes
        self._http11 = True  # the last request's version: 1xx replies only to HTTP/1.1
        self._reset_request()

    def _reset_request(self) -> None:
        self._url = b""
        self._method = ""
        self._path = ""
        self._query = ""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: bytearray | None = None  # grows as the bytes arrive; None: the body is not kept
        self._body_size = 0
        self._arrived = 0.0
        self._body_hold = None  # issue 27 (a hold dropped unreleased is released by its finalizer)

    def _drop_body(self) -> None:
        if self._body is not None:
            self.server.body_bytes -= len(self._body)
            self._body = None

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        # low=0: resume_writing means the reply is wholly sent, which ends its write deadline
        transport.set_write_buffer_limits(high=self.limits.send_buffer_bytes, low=0)
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else "local"
        kind = self.server.opened(self)
        if kind == slots_.REFUSE:
            self._fail(error_response(503, "server_overloaded", "Too many open connections; retry shortly.",
                                      headers=(("Retry-After", "1"),)))
        elif self.server.draining:
            self._close()
        else:
            self.limited = kind == slots_.LIMITED
            self._set_timer(min(self.limits.first_byte_timeout, self.limits.idle_timeout), self._idle_timeout)

    def connection_lost(self, exc) -> None:
        self.closing = True
        self._cancel_timer()
        self._cancel_write_timer()
        self._drop_body()
        for item in self.queue:
            if isinstance(item, Request):
                self.server.body_bytes -= len(item.body)
        self.queue.clear()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client is gone: drop its queued work
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self.server.closed(self)

    def eof_received(self):
        """The client sent FIN. A half-close (shutdown(SHUT_WR)) and a close look the same until
        the server writes: requests it sent in full are answered, then the connection closes,
        and a request cut off by the FIN is dropped. To drop the work of a client that really
        left, an interim `100 Continue` goes out at once (HTTP/1.1 clients skip 1xx replies): a
        closed socket answers it with a reset, which `_check_peer` sees, and the work is dropped
        as for any disconnect. Returning True keeps the transport open for the replies."""
        self.eof = True
        self._drop_body()
        if not (self.queue or not self._idle_task()):
            return None  # nothing to answer: close
        self.parsing = False
        self._cancel_timer()
        if self._http11:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._check_peer(0)
        return True

    def _check_peer(self, turn: int) -> None:
        """While a half-closed client waits: has it reset the connection (it had closed)?"""
        if self.closing:
            return
        sock = self.transport.get_extra_info("socket")
        try:
            gone = sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
        except OSError:
            gone = True
        if gone:
            self.abort()
            return
        asyncio.get_running_loop().call_later(PEER_CHECKS[min(turn, len(PEER_CHECKS) - 1)], self._check_peer, turn + 1)

    def evict(self) -> None:
        """Closed to make room for a new connection (slots.py): it was idle, nothing is lost."""
        self.closing = True
        self._close()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.transport.pause_reading()  # no new requests from a client that does not read replies
        if self._write_timer is None:
            self._write_timer = asyncio.get_running_loop().call_later(self.limits.write_timeout, self._write_timeout)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._cancel_write_timer()
        if not self.reading_paused and not self.closing and not self.eof:
            self.transport.resume_reading()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _write_timeout(self) -> None:
        self._write_timer = None
        log.info("closing a connection from %s: its reply was not read within %.0fs", self.client,
                 self.limits.write_timeout)
        self.reset()

    def reset(self) -> None:
        """Abort with a TCP reset: a plain close would leave the kernel sending the unread reply
        (up to its send buffer, megabytes) to a client that never takes it."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        try:
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.abort()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def data_received(self, data: bytes) -> None:
        if self.discarding or self.closing:
            return
        self.server.slots.active(self)
        try:
            for piece in self.splitter.pieces(data):  # each line ends a feed: see framing.py
                if self.discarding or self.closing:
                    break
                self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade:
            self._fail(error_response(400, "invalid_request", "Protocol upgrades and CONNECT are not supported."))
        except (httptools.HttpParserError, _Reject) as exc:
            if self._rejected is not None:
                self._fail(self._rejected)
            else:
                self._fail(error_response(400, "invalid_request", _malformed(exc)))

    def _reject(self, response: Response) -> _Reject:
        self._rejected = response
        return _Reject(response)

    # -- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = True
        self._reset_request()
        self._arrived = time.monotonic()
        self._set_timer(self.limits.header_timeout, self._read_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        if len(self._headers) >= self.limits.max_headers:
            raise self._reject(error_response(431, "invalid_request", f"More than {self.limits.max_headers} headers."))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self._headers[key] = f"{self._headers[key]}, {text}" if key in self._headers else text

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            raise self._reject(error_response(431, "invalid_request",
                                         f"Request line and headers exceed {self.limits.max_header_bytes} bytes."))

    def on_headers_complete(self) -> None:
        self._method = self.parser.get_method().decode("ascii", "replace")
        self._http11 = self.parser.get_http_version() == "1.1"
        if self._method == "CONNECT":
            raise self._reject(error_response(400, "invalid_request", "CONNECT is not supported: this is not a proxy."))
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise self._reject(error_response(400, "invalid_request", "Malformed request target.")) from None
        self._path = url.path.decode("latin-1") if url.path else ""
        self._query = (url.query or b"").decode("latin-1")
        if not self._path.startswith("/"):
            raise self._reject(error_response(400, "invalid_request", "The request target must be a path."))
        coding = unsupported_coding(self._headers.get("transfer-encoding"))
        if coding is not None:
            raise self._reject(error_response(
                501, "not_implemented", f"Transfer-Encoding {coding!r} is not supported; send the body with "
                "Content-Length or 'Transfer-Encoding: chunked'."))
        length = self._headers.get("content-length", "").strip()
        declared = int(length) if length.isascii() and length.isdigit() else 0
        if declared > self.limits.max_body_bytes:
            raise self._reject(_too_large(self.limits.max_body_bytes))
        if self.limited and not (self._method in ("GET", "HEAD") and self._path in slots_.PROBE_PATHS):
            raise self._reject(error_response(503, "server_overloaded", "Too many open connections; retry shortly.",
                                              headers=(("Retry-After", "1"),)))
        self.splitter.bulk = declared
        read_body, refusal = self.server.gate(self._method, self._path, self._headers)
        continue_ = self._headers.get("expect", "").lower() == "100-continue"
        if refusal is not None and continue_:  # the client waits: refuse now, its body never comes
            self._finish(b"", keep_alive=False)
            self._linger_after = self.queue[-1]
            self.discarding = True
            return
        if read_body and refusal is None and self.server.body_gate is not None and declared:
            # issue 27: memory for an accepted body, held before its bytes are kept (the route
            # and key are known to be good: the gate above ran first)
            hold = self.server.body_gate(declared)
            if isinstance(hold, Response):
                raise self._reject(hold)
            self._body_hold = hold
        if read_body and refusal is None:
            self._body = bytearray()
        self._set_timer(self.limits.body_timeout, self._read_timeout)
        if continue_ and not self.queue and self._idle_task():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_chunk_header(self) -> None:
        size = self.splitter.chunk_size()
        if size is not None:
            if self._body_size + size > self.limits.max_body_bytes:
                raise self._reject(_too_large(self.limits.max_body_bytes))
            self.splitter.bulk = size

    def on_body(self, chunk: bytes) -> None:
        if self.discarding:
            return
        self.splitter.took_body(len(chunk))
        self._body_size += len(chunk)
        if self._body_size > self.limits.max_body_bytes:  # chunked bodies have no Content-Length
            raise self._reject(_too_large(self.limits.max_body_bytes))
        if self._body is not None:  # else: a body nobody reads (refused, or a GET's) is not kept
            self._body += chunk
            self.server.body_bytes += len(chunk)

    def on_message_complete(self) -> None:
        self.splitter.reset()
        if self.discarding:
            return
        body = self._body if self._body is not None else b""
        self._body = None  # the Request holds it now (still counted in server.body_bytes)
        self._finish(body, self.parser.should_keep_alive() and not self.limited)
        if len(self.queue) >= self.limits.max_pipelined and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def _finish(self, body: bytes | bytearray, keep_alive: bool) -> None:
        """The request's head (and body) are in: queue it for the handler."""
        self.parsing = False
        self._cancel_timer()
        request = Request(method=self._method, path=self._path, query=self._query, headers=self._headers,
                          body=body if len(body) >= BODY_BUFFER_MIN else bytes(body), keep_alive=keep_alive,
                          arrived=self._arrived, client=self.client)
        request.hold, self._body_hold = self._body_hold, None
        self._reset_request()
        self._enqueue(request)

    # -- answering, in order -----------------------------------------------------------------
    def _idle_task(self) -> bool:
        return self.task is None or self.task.done()

    def _enqueue(self, item: Request | Response) -> None:
        self.queue.append(item)
        if self._idle_task():
            self.task = asyncio.get_running_loop().create_task(self._answer_queue())

    async def _answer_queue(self) -> None:
        while self.queue and not self.closing:
            item = self.queue.popleft()
            if self.reading_paused and len(self.queue) < self.limits.max_pipelined:
                self.reading_paused = False
                if not self.write_paused and not self.eof:
                    self.transport.resume_reading()
            if isinstance(item, Response):  # a protocol error: the last thing this connection says
                self._write(item, head=False, close=True)
                self._linger()
                return
            try:
                response = await self.server.handler(item)
            except Exception:  # the handler should never raise; if it does, answer anyway
                log.exception("unhandled error answering request %s", item.id)
                response = error_response(500, "internal_error", f"Internal server error (request id {item.id}).")
            finally:
                self.server.body_bytes -= len(item.body)
                if item.hold is not None:  # issue 27: the body's memory, back to the budget
                    item.hold.release()
            close = not item.keep_alive or self.server.draining or (self.eof and not self.queue)
            if isinstance(response.body, StreamedBody):  # issue 27: a large reply, block by block
                await response.body.send(self, self._head(response, close, item))
            else:
                self._write(response, head=item.method == "HEAD", close=close, request=item)
            if item is self._linger_after:
                self._linger()
                return
            if close:
                self._close()
                return
            if self.write_paused:  # the client reads slowly: wait (the write timer bounds it)
                self._drained = asyncio.get_running_loop().create_future()
                await self._drained
        if not self.parsing and not self.closing:
            if self.server.draining or self.eof:
                self._close()
            else:
                self.server.slots.rest(self)
                self._set_timer(self.limits.idle_timeout, self._idle_timeout)

    def _write(self, response: Response, head: bool, close: bool, request: Request | None = None) -> None:
        if self.closing:
            return
        head_bytes = self._head(response, close, request)
        if head or len(response.body) < SEPARATE_BODY_BYTES:
            self.transport.write(head_bytes if head else head_bytes + response.body)
        else:  # issue 27: a large body is not copied once more just to join the head to it
            self.transport.write(head_bytes)
            self.transport.write(response.body)

    def _head(self, response: Response, close: bool, request: Request | None) -> bytes:
        streamed = isinstance(response.body, StreamedBody)
        lines = [f"HTTP/1.1 {response.status} {reason(response.status)}",
                 f"content-type: {response.content_type}",
                 "transfer-encoding: chunked" if streamed else f"content-length: {len(response.body)}"]
        if request is not None:
            lines.append(f"x-request-id: {request.id}")
        lines.extend(f"{name}: {value}" for name, value in response.headers)
        lines.append("connection: close" if close else "connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def wait_drained(self) -> None:
        """Until what was written has left the send buffer (a streamed reply's next block waits)."""
        if self.write_paused and not self.closing:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained

    # -- errors, timeouts, closing -------------------------------------------------------------
    def _fail(self, response: Response) -> None:
        """Stop parsing; answer `response` after whatever is queued before it; then close."""
        self.discarding = True
        self.parsing = False
        self._cancel_timer()
        self._drop_body()
        self.server.on_reject(response)
        self._enqueue(response)

    def _linger(self) -> None:
        # Closing with unread input makes the kernel send RST, which can destroy the reply
        # before the client reads it. Half-close instead, discard input until the client
        # closes, and close for good after linger_timeout.
        self.discarding = True
        if self.transport.can_write_eof() and not self.transport.is_closing():
            self.transport.write_eof()
        self._set_timer(self.limits.linger_timeout, self._close)

    def _read_timeout(self) -> None:
        self._fail(error_response(408, "timeout", "Timed out waiting for the request; send it faster."))

    def _idle_timeout(self) -> None:
        if self._idle_task() and not self.parsing:
            self._close()

    def drain(self) -> None:
        """Shutdown: idle connections and half-read requests close now; busy ones after their reply."""
        if self._idle_task() and not self.queue:
            self._close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        self._cancel_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # sends what is buffered first: bounded by the write timer
            if self.transport.get_write_buffer_size() and self._write_timer is None:
                self._write_timer = asyncio.get_running_loop().call_later(self.limits.write_timeout, self.reset)

    def _set_timer(self, delay: float, callback) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


PEER_CHECKS = (0.02, 0.1, 0.5, 1.0)  # seconds between checks of a half-closed client (the last repeats)
BODY_BUFFER_MIN = 64 * 1024  # smaller bodies are handed on as bytes; larger ones as the bytearray itself
SEPARATE_BODY_BYTES = 64 * 1024  # replies from this size on are written apart from their head


def _malformed(exc: Exception) -> str:
    """A parser error -> a message for the client: llhttp's reason when it describes the
    request, never the name of one of our callbacks."""
    text = str(exc)
    if not text or "callback" in text or "`on_" in text or len(text) > 200:
        return "Malformed HTTP request."
    return f"Malformed HTTP request ({text})."


def _too_large(limit: int) -> Response:
    return error_response(413, "payload_too_large", f"Request body exceeds {limit} bytes; send fewer inputs per request.")
