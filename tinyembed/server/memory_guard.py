"""`--max-memory` in the server (issue 27): sets the budget up once the models are loaded, holds
each embeddings request's reservation from before tokenizing until its reply is written, and
exports the numbers on /metrics.

At start (`setup`, after loading and before the server is ready):
- each model runs one warm-up batch of its longest input (BLAS, kernel and tokenizer buffers get
  their first pages), memory goes back to the OS, and RSS is measured: the baseline;
- no limit given: the limit is the baseline + DEFAULT_HEADROOM (MiniLM on a CPU: ~300 MB);
- the batch cap: half of what the limit leaves above the baseline goes to the forward's work
  buffers (Engine.work_bytes per token), never under one longest input, never over
  --max-batch-tokens; the engines' arenas are reserved at it and the runner forms no larger
  batch;
- the rest, minus a slack, is the capacity for requests in flight (scheduler/memory_budget.py).
A limit below the baseline + one longest input's work buffers cannot be obeyed: the server
says so and stops (MemoryLimitTooLow).

Per request (`reserve` / `resize` / `reply`): the cost before tokenizing takes an upper bound of
the tokens (characters + 2 per input, at most the model's length per input when truncating, at
most --max-tokens-per-request); once tokenized it shrinks to the real count. Over the capacity:
400 (it would never fit; the message says how much smaller to make it); beside requests in
flight: 503 + Retry-After, as for a full token queue.

GPU and decoders: see docs/memory.md (the same rule; on a GPU the work buffers are device
memory, so the host budget covers requests and the baseline only).
"""

from __future__ import annotations

import asyncio
import logging
import math

import numpy as np

from tinyembed.common.errors import TinyEmbedError
from tinyembed.common.metrics import Registry
from tinyembed.engine import Engine
from tinyembed.scheduler import memory_budget as mb
from tinyembed.scheduler.memory_budget import MIB, MemoryBudget, Reservation, TooLarge, process_rss
from tinyembed.scheduler.runner import Overloaded
from tinyembed.server.memory import trim
from tinyembed.server.protocol import ApiError, encode_embeddings
from tinyembed.server.http import error_response
from tinyembed.server.reply_writer import StreamedBody

log = logging.getLogger("tinyembed.memory")

DEFAULT_HEADROOM = 144 * MIB  # --max-memory unset: the measured baseline + this
WORK_SHARE = 0.5  # of what the limit leaves above the baseline, for the forward's work buffers
TOKEN_ROUND = 64  # the batch cap is a multiple of this
ENCODE_OFF_LOOP = 65536  # floats; bigger small replies are encoded on a worker thread
BODY_GATE_MIN = 64 * 1024  # bodies from this size on are reserved before they are read


class MemoryLimitTooLow(TinyEmbedError):
    pass


class MemoryGuard:
    def __init__(self, limit: int | None, send_buffer: int, max_batch_tokens: int):
        self.requested = limit
        self.send_buffer = send_buffer
        self.max_batch_tokens = max_batch_tokens
        self.budget: MemoryBudget | None = None  # set up once the models are loaded
        self.batch_tokens = max_batch_tokens
        r = self.registry = Registry()
        self.g_rss = r.gauge("tinyembed_process_resident_bytes", "Resident memory of the server process (RSS)")
        self.g_limit = r.gauge("tinyembed_memory_limit_bytes", "--max-memory: the budget of the whole process")
        self.g_parts = r.gauge("tinyembed_memory_budget_bytes", "The budget's parts: loaded (RSS once the models "
                               "were loaded), work (forward buffers at the batch cap), slack, requests (capacity "
                               "for requests in flight)", ("part",))
        self.g_reserved = r.gauge("tinyembed_memory_reserved_bytes", "Memory reserved by requests in flight")
        self.g_peak = r.gauge("tinyembed_memory_reserved_peak_bytes", "Most memory requests have held at once")
        self.c_refused = r.counter("tinyembed_memory_refused_total", "Requests refused by the memory budget: full "
                                 "(503), rss (503: the process is over its limit), too_large (400)", ("reason",))

    # -- start ---------------------------------------------------------------------------------
    async def setup(self, engines: list, runner) -> None:
        """Warm up (on a worker thread), measure, size the batch cap and the budget."""
        real = [engine for engine in engines if isinstance(engine, Engine)]
        if real:  # (no thread hop otherwise: a stand-in engine is ready at once, as before)
            await asyncio.get_running_loop().run_in_executor(None, _warm_up, real)
        baseline = process_rss()
        limit = self.requested if self.requested else baseline + DEFAULT_HEADROOM
        per_token = sum(_work_bytes(e, 1) for e in engines)
        longest = max((getattr(e.info, "max_input_tokens", 0) for e in engines), default=0)
        cap = self.max_batch_tokens
        if per_token:
            room = int((limit - baseline - mb.SLACK_BYTES) * WORK_SHARE) // per_token
            cap = min(cap, max(longest, room // TOKEN_ROUND * TOKEN_ROUND))
        work = cap * per_token
        if limit < baseline + work + mb.SLACK_BYTES + 4 * MIB:
            raise MemoryLimitTooLow(
                f"--max-memory {limit / MIB:.0f} MB is below what the models need: {baseline / MIB:.0f} MB loaded + "
                f"{work / MIB:.0f} MB of work buffers for one {longest}-token input + {mb.SLACK_BYTES / MIB:.0f} MB "
                f"slack; give at least {(baseline + work + mb.SLACK_BYTES) / MIB + 16:.0f}M")
        for engine in engines:
            reserve = getattr(engine, "reserve_work", None)
            if reserve is not None:
                reserve(cap)
        if cap < self.max_batch_tokens:
            _cap_runner(runner, cap)
        self.batch_tokens = cap
        self.budget = MemoryBudget(limit, baseline, work)
        log.info("memory budget: %s (%s); batches of at most %d tokens",
                 self.budget.describe(), "--max-memory" if self.requested else "auto: loaded + "
                 f"{DEFAULT_HEADROOM // MIB} MB; set --max-memory", cap)

    # -- per request -------------------------------------------------------------------------------
    def reserve(self, body: int, texts, id_arrays, engine, dims: int | None, base64: bool, truncate: bool,
                max_tokens: int) -> Reservation | None:
        """Before tokenizing: an upper bound of the request's cost. Raises Overloaded (503) or
        ApiError 400 (it can never fit)."""
        if self.budget is None:
            return None
        if texts is not None:
            inputs = len(texts)
            tokens = sum(len(t) for t in texts) + 2 * inputs
            if truncate:
                tokens = min(tokens, inputs * engine.info.max_input_tokens)
        else:
            inputs, tokens = len(id_arrays), sum(len(ids) for ids in id_arrays)
        return self._reserve(self._cost(body, inputs, min(tokens, max_tokens), engine, dims, base64))

    def admit_body(self, nbytes: int):
        """The HTTP layer, once a request's headers are in: hold `nbytes` for its body before
        reading it, or a Response refusing it (503 beside requests in flight; 413 when it can
        never fit). Released once the request is answered. Small bodies pass free."""
        if self.budget is None or nbytes < BODY_GATE_MIN:
            return None
        try:  # the bytes and the strings decoded from them: both exist before the app can reserve
            return self.budget.reserve(mb.BODY_COPIES * nbytes)
        except Overloaded as e:
            return error_response(503, "server_overloaded", "The server's memory budget is in use; retry shortly.",
                                  headers=(("Retry-After", str(max(1, math.ceil(e.retry_after)))),))
        except TooLarge as e:
            return error_response(413, "payload_too_large", f"A body of {_mb(nbytes)} cannot fit the server's "
                                  f"memory budget for requests ({_mb(e.capacity)}, --max-memory); send less.",
                                  headers=(("x-should-retry", "false"),))

    def resize(self, held: Reservation | None, body: int, inputs: int, tokens: int, engine, dims, base64) -> None:
        """After tokenizing: the real token count (smaller: never refused)."""
        if held is not None:
            held.resize(min(held.nbytes, self._cost(body, inputs, tokens, engine, dims, base64)))

    async def reply(self, held: Reservation | None, vectors: np.ndarray, base64: bool, model: str, tokens: int,
                    tier: str, pool) -> bytes | StreamedBody:
        """The body: bytes for a small reply (its reservation ends here), else a StreamedBody that
        http.py writes in blocks and that releases the reservation once written."""
        inputs, dims = vectors.shape
        if mb.streamed(inputs, dims, base64):
            return StreamedBody(vectors, base64, model, tokens, tier, pool, held)
        try:
            args = (vectors, base64, model, tokens, tier)
            if vectors.size > ENCODE_OFF_LOOP:
                return await asyncio.get_running_loop().run_in_executor(pool, encode_embeddings, *args)
            return encode_embeddings(*args)
        finally:
            if held is not None:
                held.release()

    def _cost(self, body: int, inputs: int, tokens: int, engine, dims: int | None, base64: bool) -> int:
        native = engine.info.dimensions
        return mb.request_bytes(body=body, inputs=inputs, tokens=tokens, native_dims=native, dims=dims or native,
                                base64=base64, send_buffer=self.send_buffer)

    def _reserve(self, nbytes: int) -> Reservation:
        try:
            return self.budget.reserve(nbytes)
        except TooLarge as e:
            raise ApiError(400, "invalid_input", f"This request would hold about {_mb(e.nbytes)} of server memory "
                           f"(its inputs, their vectors and its reply); requests may hold {_mb(e.capacity)} "
                           "(--max-memory). Send fewer inputs per request, or ask for encoding_format "
                           "'base64' or fewer 'dimensions'.", "input",
                           headers=(("x-should-retry", "false"),)) from None

    # -- /metrics --------------------------------------------------------------------------------
    def metrics(self) -> str:
        self.g_rss.set(process_rss())
        budget = self.budget
        if budget is not None:
            self.g_limit.set(budget.limit)
            for part, value in (("loaded", budget.baseline), ("work", budget.work), ("slack", budget.slack),
                                ("requests", budget.capacity)):
                self.g_parts.set(value, part)
            self.g_reserved.set(budget.reserved)
            self.g_peak.set(budget.peak_reserved)
            for reason, n in budget.refused.items():  # (the budget counts; the counter shows its values)
                self.c_refused.values[(reason,)] = n
        return self.registry.render()


def _mb(nbytes: int) -> str:
    return f"{nbytes / MIB:.1f} MB"


def _work_bytes(engine, tokens: int) -> int:
    work = getattr(engine, "work_bytes", None)
    return work(tokens) if work is not None else 0


WARM_UP_TOKENS = 512  # the warm-up batch: enough to touch every first-use buffer


def _warm_up(engines: list[Engine]) -> None:
    """One batch of each model's longest input (up to WARM_UP_TOKENS), then a trim: first-use
    buffers (BLAS, kernels) are part of the baseline, what the batch freed is not. (Only real Engines: a device pool or
    a test's stand-in is measured as it is.)"""
    for engine in engines:
        # first use is what counts here, not length: a decoder's 32k-token maximum would cost
        # minutes of start-up on a CPU (its work buffers are counted apart, as `work`)
        length = min(engine.info.max_input_tokens, WARM_UP_TOKENS)
        try:
            engine.embed(engine.pack([np.full(length, 100, dtype=np.int32)]))
        except Exception as exc:  # noqa: BLE001 - a warm-up is not worth failing the start over
            log.warning("memory budget: warm-up batch failed (%s); the baseline may be low", exc)
    trim()


def _cap_runner(runner, tokens: int) -> None:
    cap = getattr(runner, "cap_batch_tokens", None)
    if cap is not None:
        cap(tokens)
    elif hasattr(runner, "max_batch_tokens"):  # DirectRunner: its chunks
        runner.max_batch_tokens = min(runner.max_batch_tokens, tokens)
