"""HTTP handlers for /v1/files* and /v1/batches*, and the hooks that wire them into the app.

    api = batch_routes.register(app, settings)   # None unless settings.data_dir is set (cli.py mounts it)
    route, params = api.match(path)              # "/v1/files/{id}/content", {"id": "file-.."}
    api.start()  (once the models are loaded)    await api.stop()  (before the runner stops)

The handlers follow app.py's contract: `handler(request, ctx, **params) -> Response`, raising
ApiError for errors (the app maps it into the OpenAI envelope); the app has already checked the
API key and readiness. Blocking work (sqlite, file bytes, multipart parsing, the JSONL check)
never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import parse_qs

import msgspec

from tinyembed.jobs import files as batch_files
from tinyembed.jobs import openapi_ops
from tinyembed.jobs import batches as batch_jobs
from tinyembed.jobs.store import Store
from tinyembed.server.http import Request, Response
from tinyembed.server.limits import echo, query_int
from tinyembed.server.protocol import ApiError

log = logging.getLogger("tinyembed.batch")

_encode = msgspec.json.Encoder().encode
TEMPLATES = (  # (pattern, route): the route names the handler and labels metrics
    (re.compile(r"^/v1/files/([^/]+)$"), "/v1/files/{id}"),
    (re.compile(r"^/v1/files/([^/]+)/content$"), "/v1/files/{id}/content"),
    (re.compile(r"^/v1/batches/([^/]+)$"), "/v1/batches/{id}"),
    (re.compile(r"^/v1/batches/([^/]+)/cancel$"), "/v1/batches/{id}/cancel"),
)
MULTIPART_ROUTES = frozenset({"/v1/files"})  # POST bodies that are not JSON


def register(app, settings) -> "BatchApi | None":
    """Add the Files and Batches routes to `app.routes` when settings.data_dir is set.
    `settings` has data_dir, max_upload_bytes, file_retention_days and max_batch_requests."""
    if not getattr(settings, "data_dir", None):
        return None
    api = BatchApi(app, settings.data_dir, max_upload_bytes=settings.max_upload_bytes,
                   retention_seconds=settings.file_retention_days * 86400,
                   max_requests=settings.max_batch_requests)
    app.routes.update(api.routes)
    return api


class BatchApi:
    def __init__(self, app, data_dir, *, max_upload_bytes: int, retention_seconds: float, max_requests: int,
                 clock=None, **job_options):
        self.app = app
        self.raw_body_routes = MULTIPART_ROUTES  # multipart uploads: the app skips its JSON check
        self.operations = openapi_ops.OPERATIONS  # how /openapi.json describes these routes
        self.max_upload_bytes = max_upload_bytes
        self.retention_seconds = retention_seconds
        self.store = Store(data_dir, **({"clock": clock} if clock else {}))
        limits = app.config.requests
        self.jobs = batch_jobs.JobRunner(
            self.store, app.runner, self.find_engine, max_inputs=limits.max_inputs,
            max_tokens=limits.max_tokens_per_request, auto_truncate=app.config.auto_truncate,
            max_requests=max_requests, retention_seconds=retention_seconds, pool=app.pool,
            label=getattr(app, "label", None), **job_options)
        self._sweeper: asyncio.Task | None = None
        self.routes = {
            "/v1/files": {"GET": self.list_files, "POST": self.upload},
            "/v1/files/{id}": {"GET": self.get_file, "DELETE": self.delete_file},
            "/v1/files/{id}/content": {"GET": self.file_content},
            "/v1/batches": {"GET": self.list_batches, "POST": self.create_batch},
            "/v1/batches/{id}": {"GET": self.get_batch},
            "/v1/batches/{id}/cancel": {"POST": self.cancel_batch},
        }

    def match(self, path: str) -> tuple[str, dict]:
        """-> (route template, path params); (path, {}) when no template matches."""
        for pattern, route in TEMPLATES:
            found = pattern.match(path)
            if found:
                return route, {"id": found.group(1)}
        return path, {}

    def find_engine(self, model: str):
        served = self.app.models.get(model)
        if served is None:
            raise ApiError(404, "model_not_found", f"The model '{model}' does not exist. Served models: "
                           f"{', '.join(self.app.models)}.", "model")
        return served.engine

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Inside the loop, once the models are loaded: resume unfinished batches."""
        self._sweeper = asyncio.get_running_loop().create_task(self._maintain())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.jobs.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    async def _maintain(self) -> None:
        """Drop orphans left by a crash, resume the batches, then apply retention now and then."""
        await self.store.call(self.store.sweep, True)
        self.jobs.start()
        if self.retention_seconds <= 0:
            return
        interval = min(3600.0, max(1.0, self.retention_seconds / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                expired = await self.store.call(self.store.sweep)
            except Exception:
                log.exception("file retention sweep failed")
                continue
            if expired:
                log.info("retention: deleted %d expired files", len(expired))

    # -- files ---------------------------------------------------------------------------------------
    async def upload(self, request: Request, ctx) -> Response:
        content_type = request.headers.get("content-type")
        parts = await asyncio.to_thread(batch_files.parse_multipart, request.body, content_type)
        upload = batch_files.read_upload(parts, self.max_upload_bytes)
        await asyncio.to_thread(batch_files.check_jsonl, upload.data)
        expires_in = batch_files.expires_in(upload.expires_after, self.retention_seconds)
        row = await self.store.call(self.store.add_file, [upload.data], upload.filename, upload.purpose, expires_in,
                                    self.app.keys.owner(ctx.key))
        return _json(batch_files.file_object(row))

    async def list_files(self, request: Request, ctx) -> Response:
        query = _query(request, ("limit", "after", "order", "purpose"))
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, "invalid_request", "order must be 'asc' or 'desc'.", "order")
        limit = _limit(query, default=10000, maximum=10000)
        rows, more = await self.store.call(self.store.list_files, query.get("purpose"), query.get("after"), limit,
                                           order, self._owners(ctx))
        return _json(_page([batch_files.file_object(r) for r in rows], more))

    def _owners(self, ctx) -> tuple[str, ...] | None:
        """Whose files and batches this request may see (jobs/ownership.py); None: everyone's."""
        return self.app.keys.owners(ctx.key)

    async def _file(self, file_id: str, ctx) -> dict:
        row = await self.store.call(self.store.get_file, file_id, self._owners(ctx))
        if row is None:  # another tenant's file is answered exactly like a missing one
            raise ApiError(404, "not_found", f"No such File object: {echo(file_id)}", "id")
        return row

    async def get_file(self, request: Request, ctx, id: str) -> Response:
        return _json(batch_files.file_object(await self._file(id, ctx)))

    async def file_content(self, request: Request, ctx, id: str) -> Response:
        await self._file(id, ctx)
        try:
            data = await asyncio.to_thread(self.store.file_path(id).read_bytes)
        except FileNotFoundError:  # deleted meanwhile
            raise ApiError(404, "not_found", f"No such File object: {echo(id)}", "id") from None
        return Response(200, data, content_type="application/octet-stream")

    async def delete_file(self, request: Request, ctx, id: str) -> Response:
        await self._file(id, ctx)
        outcome = await self.store.call(self.store.delete_unused_file, id)  # one transaction: see create_batch
        if isinstance(outcome, str):
            raise ApiError(400, "invalid_request", f"File {id} is the input of batch {outcome}, which is not "
                           "finished; cancel the batch or wait for it first.", "id")
        if not outcome:
            raise ApiError(404, "not_found", f"No such File object: {echo(id)}", "id")
        return _json({"id": id, "object": "file", "deleted": True})

    # -- batches ---------------------------------------------------------------------------------------
    async def create_batch(self, request: Request, ctx) -> Response:
        req = batch_jobs.decode_create(request.body)
        source = await self.store.call(self.store.get_file, req.input_file_id, self._owners(ctx))
        if source is None:
            raise ApiError(404, "not_found", f"No such File object: {echo(req.input_file_id)}", "input_file_id")
        if source["purpose"] != "batch":
            raise ApiError(400, "invalid_request", f"File {req.input_file_id} has purpose {source['purpose']!r}; a "
                           "batch reads a file uploaded with purpose 'batch'.", "input_file_id")
        row = batch_jobs.new_batch_row(req, self.app.keys.owner(ctx.key), self.store.now())
        # The file is checked again in the insert's transaction: a delete of it at the same moment
        # either comes first (this is 404) or finds the batch and is refused (400), never both 200.
        row = await self.store.call(self.store.add_batch_on_file, row, self._owners(ctx))
        if row is None:
            raise ApiError(404, "not_found", f"No such File object: {echo(req.input_file_id)}", "input_file_id")
        self.jobs.wake()
        return _json(batch_jobs.batch_object(row))

    async def _batch(self, batch_id: str, ctx) -> dict:
        row = await self.store.call(self.store.get_batch, batch_id, self._owners(ctx))
        if row is None:
            raise ApiError(404, "not_found", f"No such Batch object: {echo(batch_id)}", "id")
        return row

    async def get_batch(self, request: Request, ctx, id: str) -> Response:
        return _json(batch_jobs.batch_object(await self._batch(id, ctx)))

    async def list_batches(self, request: Request, ctx) -> Response:
        query = _query(request, ("limit", "after"))
        rows, more = await self.store.call(self.store.list_batches, query.get("after"), _limit(query, 20, 100),
                                           self._owners(ctx))
        return _json(_page([batch_jobs.batch_object(r) for r in rows], more))

    async def cancel_batch(self, request: Request, ctx, id: str) -> Response:
        row = await self._batch(id, ctx)
        if row["status"] in ("validating", "in_progress"):
            row = await self.store.call(self.store.request_cancel, id)
            self.jobs.cancel(id)
        elif row["status"] not in ("cancelling", "cancelled"):
            raise ApiError(400, "invalid_request", f"Batch {id} is {row['status']}; only a validating or in_progress "
                           "batch can be cancelled.", "id")
        return _json(batch_jobs.batch_object(row))


def _json(value) -> Response:
    return Response(200, _encode(value))


def _page(data: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def _query(request: Request, known: tuple[str, ...]) -> dict[str, str]:
    """The query parameters, each once; an unknown one is a 400 like an unknown body field."""
    query = {k: v[-1] for k, v in parse_qs(request.query, keep_blank_values=True).items()}
    for name in query:
        if name not in known:
            raise ApiError(400, "unknown_parameter", f"Unrecognized query parameter: {echo(name)}", echo(name))
    return query


def _limit(query: dict, default: int, maximum: int) -> int:
    value = query_int(query.get("limit"), default, 1, maximum)
    if value is None:
        raise ApiError(400, "invalid_request", f"limit must be an integer between 1 and {maximum}.", "limit")
    return value
