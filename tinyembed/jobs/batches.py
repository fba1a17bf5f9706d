"""The Batches API's rules and the background job runner that executes batches.

A batch moves through OpenAI's states, each step committed before the next begins:

    validating --plan--> in_progress --chunks--> finalizing --files--> completed
         |                    |  (cancel)            (completion window passed: expired)
         +--> failed          +--> cancelling --partial files--> cancelled

Validation reads the input file once: it counts the requests, notes envelope errors and
repeated custom_ids, and cuts the file into chunks (byte ranges of up to `chunk_lines` lines).
Each chunk is then parsed, validated, tokenized, embedded and encoded on its own, and its result
lines are committed with its done mark (jobs/store.py): after a crash, done chunks are kept and
the rest are redone, so each custom_id lands in the result files exactly once.

The embedding work goes through the server's Runner at the "flex" tier, in pieces of at most
`piece_tokens` tokens (default: two of the scheduler's time-set batch budgets, see
scheduler/budget.py, so it follows what one forward pass may take on this device) with at most
`pieces_in_flight` of them in the Runner at once: the
scheduler serves better tiers first, batch work never fills its queue, and no forward pass
holds more than a few pieces of batch work for an interactive request to wait behind. A full
queue (Overloaded) only delays a batch. One batch runs at a time (oldest first),
`parallel_chunks` chunks at once so the next chunk is tokenized while the current one computes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import msgspec
import numpy as np
from msgspec import Struct

from tinyembed.jobs import format as fmt
from tinyembed.jobs.store import Store, dump_json, load_json, new_id
from tinyembed.server.limits import echo
from tinyembed.server.protocol import ApiError, too_deep, validation_error
from tinyembed.scheduler.runner import Overloaded, split_by_tokens

log = logging.getLogger("tinyembed.batch")

TIER = "flex"
FALLBACK_PIECE_TOKENS = 2048  # for a Runner without batch budgets (DirectRunner)
COMPLETION_WINDOWS = {"24h": 24 * 3600}
MAX_REPORTED_ERRORS = 100  # line errors listed in the batch object; all of them are in the error file


# -- POST /v1/batches -------------------------------------------------------------------------------

class ExpiresAfter(Struct, forbid_unknown_fields=True):
    anchor: str
    seconds: int


class CreateBatch(Struct, forbid_unknown_fields=True, kw_only=True):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = None


_create_decoder = msgspec.json.Decoder(CreateBatch)


def decode_create(body: bytes) -> CreateBatch:
    try:
        req = _create_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise validation_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ApiError(400, "invalid_request", f"We could not parse the JSON body of your request ({exc}).") from None
    except RecursionError:
        raise too_deep() from None
    if req.endpoint != fmt.ENDPOINT:
        raise ApiError(400, "invalid_request", f"This server runs batches for {fmt.ENDPOINT!r} only, not "
                       f"{echo(req.endpoint)!r}.", "endpoint")
    if req.completion_window not in COMPLETION_WINDOWS:
        raise ApiError(400, "invalid_request", f"completion_window must be one of {list(COMPLETION_WINDOWS)}.",
                       "completion_window")
    if req.metadata is not None and (len(req.metadata) > 16 or any(len(k) > 64 or len(v) > 512
                                                                   for k, v in req.metadata.items())):
        raise ApiError(400, "invalid_request", "metadata has at most 16 pairs; keys up to 64 characters, values up "
                       "to 512.", "metadata")
    after = req.output_expires_after
    if after is not None and (after.anchor != "created_at" or not 3600 <= after.seconds <= 30 * 24 * 3600):
        raise ApiError(400, "invalid_request", "output_expires_after needs anchor 'created_at' and seconds between "
                       "3600 and 2592000.", "output_expires_after")
    return req


def new_batch_row(req: CreateBatch, owner: str | None, now: int) -> dict:
    after = req.output_expires_after
    return dict(id=new_id("batch_"), input_file_id=req.input_file_id, endpoint=req.endpoint,
                completion_window=req.completion_window, status="validating", owner=owner, created_at=now,
                expires_at=now + COMPLETION_WINDOWS[req.completion_window],
                output_expires_after=after.seconds if after else None, metadata=dump_json(req.metadata))


def batch_object(row: dict) -> dict:
    errors = load_json(row["errors"])
    return {
        "id": row["id"], "object": "batch", "endpoint": row["endpoint"],
        "errors": {"object": "list", "data": errors} if errors else None,
        "input_file_id": row["input_file_id"], "completion_window": row["completion_window"],
        "status": row["status"], "output_file_id": row["output_file_id"], "error_file_id": row["error_file_id"],
        **{name: row[name] for name in ("created_at", "in_progress_at", "expires_at", "finalizing_at",
                                        "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")},
        "request_counts": {"total": row["total"], "completed": row["completed"], "failed": row["failed"]},
        "metadata": load_json(row["metadata"]),
    }


# -- validation: one pass over the input file --------------------------------------------------------

def plan(data: bytes, chunk_lines: int, chunk_bytes: int):
    """-> (chunks [(start, end, first_line)], total requests, envelope errors, repeated-id lines)."""
    chunks, errors, duplicates, seen = [], [], [], set()
    total = lines_in_chunk = 0
    chunk_start, chunk_line = 0, 1
    offset, line = 0, 1
    for raw in data.split(b"\n"):
        end = offset + len(raw) + 1
        stripped = raw.strip()
        if stripped:
            total += 1
            lines_in_chunk += 1
            try:
                custom_id = fmt.parse_line(stripped, line).custom_id
            except fmt.LineError as exc:
                custom_id = exc.custom_id
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append({"code": exc.code, "message": exc.message, "param": exc.param, "line": line})
            if custom_id is not None:
                if custom_id in seen:
                    duplicates.append(line)
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append({"code": "duplicate_custom_id", "param": "custom_id", "line": line,
                                       "message": f"Line {line}: custom_id {custom_id!r} was used by an earlier line."})
                seen.add(custom_id)
        offset, line = end, line + 1
        if lines_in_chunk >= chunk_lines or (lines_in_chunk and offset - chunk_start >= chunk_bytes):
            chunks.append((chunk_start, min(offset, len(data)), chunk_line))
            chunk_start, chunk_line, lines_in_chunk = offset, line, 0
    if lines_in_chunk:
        chunks.append((chunk_start, len(data), chunk_line))
    return chunks, total, errors, duplicates


# -- the job runner -------------------------------------------------------------------------------------

class JobRunner:
    def __init__(self, store: Store, runner, find_engine, *, max_inputs: int, max_tokens: int,
                 auto_truncate: bool = False, max_requests: int = 50_000, retention_seconds: float = 0,
                 chunk_lines: int = 256, chunk_bytes: int = 1 << 20, piece_tokens: int | None = None,
                 pieces_in_flight: int = 2, parallel_chunks: int = 2, pool=None, label=None):
        self.store, self.runner, self.find_engine = store, runner, find_engine
        self.label = label or (lambda owner: owner)  # the owner as /metrics shows it (server/auth.py KeyLabels)
        self.max_inputs, self.max_tokens, self.auto_truncate = max_inputs, max_tokens, auto_truncate
        self.max_requests, self.retention_seconds = max_requests, retention_seconds
        self.chunk_lines, self.chunk_bytes, self.piece_tokens = chunk_lines, chunk_bytes, piece_tokens
        self.parallel_chunks, self.pool = parallel_chunks, pool
        # At most this many flex pieces wait in the Runner: one computing, one staged behind it.
        # Batch work so never fills the queue (interactive requests get no 503 because of it)
        # and never makes a batch bigger than a few pieces for a request to wait behind.
        self._pieces = asyncio.Semaphore(pieces_in_flight)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._chunk_tasks: dict[str, set[asyncio.Task]] = {}

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tinyembed-batches")

    def wake(self) -> None:
        self._wakeup.set()

    def cancel(self, batch_id: str) -> None:
        """A cancel was committed: drop the batch's running chunks now (they are redone never)."""
        for task in self._chunk_tasks.get(batch_id, ()):
            task.cancel()
        self.wake()

    async def stop(self) -> None:
        """Stop at once; whatever was not committed is redone after the next start."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            batch = await self.store.call(self.store.next_active)
            if batch is None:
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            try:
                await self._advance(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: fail this batch rather than retry it forever
                log.exception("batch %s failed", batch["id"])
                errors = [{"code": "internal_error", "message": "The batch failed on a server error; see the server "
                           "log.", "param": None, "line": None}]
                await self.store.call(self.store.finalize, batch["id"], dict(
                    status="failed", failed_at=self.store.now(), errors=dump_json(errors)))

    async def _advance(self, batch: dict) -> None:
        status = batch["status"]
        if status == "validating":
            await self._validate(batch)
        elif status == "in_progress":
            await self._run_chunks(batch)
        else:  # finalizing or cancelling
            final = "completed" if status == "finalizing" else "cancelled"
            await self._finalize(batch, {"status": final, f"{final}_at": self.store.now()})

    # -- validating -> in_progress | failed ---------------------------------------------------------
    async def _validate(self, batch: dict) -> None:
        store, batch_id = self.store, batch["id"]
        path = store.file_path(batch["input_file_id"])
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return await self._fail(batch_id, "invalid_file", f"The input file {batch['input_file_id']} was deleted.")
        chunks, total, errors, duplicates = await asyncio.to_thread(plan, data, self.chunk_lines, self.chunk_bytes)
        if total == 0:
            return await self._fail(batch_id, "empty_file", "The input file has no requests.")
        if total > self.max_requests:
            return await self._fail(batch_id, "too_many_requests", f"The input file has {total} requests; a batch "
                                    f"holds at most {self.max_requests}. Split it.")
        fields = dict(status="in_progress", in_progress_at=store.now(), total=total, errors=dump_json(errors or None),
                      duplicates=dump_json(duplicates))
        await store.call(store.start_batch, batch_id, chunks, fields)

    async def _fail(self, batch_id: str, code: str, message: str) -> None:
        errors = dump_json([{"code": code, "message": message, "param": "input_file_id", "line": None}])
        await self.store.call(self.store.finalize, batch_id, dict(status="failed", failed_at=self.store.now(),
                                                                  errors=errors))

    # -- in_progress: the chunks --------------------------------------------------------------------
    async def _run_chunks(self, batch: dict) -> None:
        store, batch_id = self.store, batch["id"]
        pending = await store.call(store.pending_chunks, batch_id)
        input_path = store.file_path(batch["input_file_id"])
        duplicates = frozenset(load_json(batch["duplicates"]) or ())
        running = self._chunk_tasks.setdefault(batch_id, set())
        try:
            for chunk in pending:
                while len(running) >= self.parallel_chunks:
                    await self._reap(running, asyncio.FIRST_COMPLETED)
                if store.now() >= batch["expires_at"] or (await store.call(store.get_batch, batch_id))["status"] \
                        != "in_progress":
                    break  # expired, or a cancel came in
                task = asyncio.get_running_loop().create_task(self._chunk(batch, input_path, chunk, duplicates))
                running.add(task)
            while running:
                await self._reap(running, asyncio.ALL_COMPLETED)
        finally:
            for task in running:
                task.cancel()
            self._chunk_tasks.pop(batch_id, None)
        batch = await store.call(store.get_batch, batch_id)
        if batch["status"] != "in_progress":
            return  # cancelling: the next step finalizes
        left = await store.call(store.pending_chunks, batch_id)
        if left and store.now() >= batch["expires_at"]:
            extra, count = await asyncio.to_thread(self._expired_lines, batch, input_path, left)
            await self._finalize(batch, dict(status="expired", expired_at=store.now(), failed=batch["failed"] + count),
                                 extra)
        elif not left:
            await store.call(store.update_batch, batch_id, status="finalizing", finalizing_at=store.now())

    @staticmethod
    async def _reap(running: set, when) -> None:
        done, _ = await asyncio.wait(running, return_when=when)
        for task in done:
            running.discard(task)
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()

    async def _chunk(self, batch: dict, input_path: Path, chunk: dict, duplicates: frozenset) -> None:
        tag = batch["id"][len("batch_"):]
        data = await asyncio.to_thread(_read_range, input_path, chunk["start"], chunk["end"])
        items, early = await self._in_pool(self._prepare, tag, data, chunk["first_line"], duplicates)
        vectors = await self._embed([item for item in items if item.error is None], batch["owner"])
        output, errors, ok, failed = await self._in_pool(_encode_results, tag, items, vectors, early)
        await self.store.call(self.store.finish_chunk, batch["id"], chunk["idx"], output, errors, ok, failed)

    async def _in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _prepare(self, tag: str, data: bytes, first_line: int, duplicates: frozenset):
        """Worker thread: parse, validate and tokenize a chunk's lines. -> (items, {line: error line})."""
        items, early = [], {}
        for line, raw in fmt.split_lines(data, first_line):
            if line in duplicates:
                early[line] = fmt.failed_line(tag, line, fmt.custom_id_of(raw), "duplicate_custom_id",
                                              f"Line {line}: this custom_id was used by an earlier line.")
                continue
            try:
                parsed = fmt.parse_line(raw, line)
            except fmt.LineError as exc:
                early[line] = fmt.failed_line(tag, line, exc.custom_id, exc.code, exc.message)
                continue
            item = fmt.LineRequest(line, parsed.custom_id)
            fmt.validate_body(item, bytes(parsed.body), self.find_engine, self.max_inputs, self.auto_truncate)
            items.append(item)
        fmt.tokenize(items, self.max_tokens)
        return items, early

    async def _embed(self, items: list, owner: str | None) -> dict[int, np.ndarray]:
        """Vectors for every item, through the Runner at flex tier: {line: (n, H)}."""
        by_engine: dict[int, list] = {}
        for item in items:
            by_engine.setdefault(id(item.engine), []).append(item)
        out = {}
        for group in by_engine.values():
            engine = group[0].engine
            sequences = [s for item in group for s in item.sequences]
            pieces = split_by_tokens(sequences, self._piece_tokens(engine))
            results = await asyncio.gather(*(self._embed_piece(engine, piece, owner) for piece in pieces))
            vectors = np.concatenate(results) if len(results) > 1 else results[0]
            at = 0
            for item in group:
                out[item.line] = vectors[at:at + len(item.sequences)]
                at += len(item.sequences)
        return out

    def _piece_tokens(self, engine) -> int:
        """The configured piece, else two batch budgets of the Runner (one computing, one staged)."""
        if self.piece_tokens is not None:
            return self.piece_tokens
        budget = getattr(self.runner, "batch_budget", None)
        return max(64, 2 * budget(engine)) if budget is not None else FALLBACK_PIECE_TOKENS

    async def _embed_piece(self, engine, piece: list, owner: str | None) -> np.ndarray:
        async with self._pieces:
            while True:
                try:
                    return await self.runner.embed(engine, piece, tier=TIER, deadline=None, key=self.label(owner))
                except Overloaded as exc:  # interactive traffic fills the queue: wait our turn
                    await asyncio.sleep(min(max(exc.retry_after, 0.05), 5.0))

    # -- finalizing / cancelling / expired -> files ----------------------------------------------------
    async def _finalize(self, batch: dict, fields: dict, extra_errors: bytes = b"") -> None:
        expires_in = batch["output_expires_after"] or (int(self.retention_seconds) or None)
        await self.store.call(self.store.finalize, batch["id"], fields, extra_errors, expires_in)

    def _expired_lines(self, batch: dict, input_path: Path, chunks: list) -> tuple[bytes, int]:
        tag, lines = batch["id"][len("batch_"):], []
        for chunk in chunks:
            data = _read_range(input_path, chunk["start"], chunk["end"])
            for line, raw in fmt.split_lines(data, chunk["first_line"]):
                lines.append(fmt.failed_line(tag, line, fmt.custom_id_of(raw), "batch_expired", "This request could "
                                             "not be executed before the completion window expired."))
        return b"".join(lines), len(lines)


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def _encode_results(tag: str, items: list, vectors: dict, early: dict) -> tuple[bytes, bytes, int, int]:
    """Worker thread: the chunk's output and error lines, each in input order."""
    outputs, errors = [], dict(early)
    for item in items:
        if item.error is not None:
            errors[item.line] = fmt.refused_line(tag, item.line, item.custom_id, item.error)
        else:
            body = fmt.response_body(item, vectors[item.line], TIER)
            outputs.append(fmt.ok_line(tag, item.line, item.custom_id, body))
    error_lines = [errors[line] for line in sorted(errors)]
    return b"".join(outputs), b"".join(error_lines), len(outputs), len(error_lines)
