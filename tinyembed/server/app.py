"""Routes -> handlers: auth, rate limits, validation, the runner, error mapping, metrics and the
access log. `run_server` is the process lifecycle: listen, load models, serve, drain on SIGTERM.

Every handler returns a Response or raises; `App.handle` maps what it raised into the OpenAI
error envelope, so a client never sees a traceback (a bug is a 500 with a request id in the log).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from urllib.parse import unquote

from tinyembed.server import openapi, rerank
from tinyembed.server import limits as limits_
from tinyembed.server.auth import ApiKeys, KeyLabels
from tinyembed.server.limits import echo
from tinyembed.server.memory import MemoryReturner
from tinyembed.server.memory_guard import MemoryGuard
from tinyembed.server.config import ModelSource, ServerConfig
from tinyembed.engine import Engine
from tinyembed.common.errors import InputError, TinyEmbedError
from tinyembed.server.http import Request, Response, Server, error_response
from tinyembed.common.metrics import TOKEN_BUCKETS, Registry
from tinyembed.server.protocol import (ApiError, EmbeddingRequest, ModelCard, ModelList, Quantization, Status,
                       TokenizeRequest, TokenizeResponse, Tokens, Usage, decode_request, encode,
                       check_no_prompt_for_ids, parse_input, parse_texts)
from tinyembed.server.ratelimit import RateLimited, RateLimiter
from tinyembed.scheduler.runner import DeadlineExceeded, DirectRunner, Overloaded, Runner
from tinyembed.scheduler.continuous import Scheduler
from tinyembed.scheduler.devices import load_on_devices

log = logging.getLogger("tinyembed")
access_log = logging.getLogger("tinyembed.access")

JSON_TYPES = ("application/json",)
BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})  # their bodies are read and dropped
# /docs: a static page (routes, a box to try embeddings, a similarity matrix) that calls the API from the browser
DOCS_PAGE = resources.files("tinyembed.server").joinpath("docs_page.html").read_bytes()


def _docs_headers(page: bytes) -> tuple[tuple[str, str], ...]:
    """Security headers of /docs: its own inline script and style run (by hash), nothing else
    loads, it talks only to this server, and no other site may frame it (clickjacking: the page
    holds the key a user typed)."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks)
    policy = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
              "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return (("Content-Security-Policy", policy), ("X-Frame-Options", "DENY"),
            ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-cache"))


DOCS_HEADERS = _docs_headers(DOCS_PAGE)


@dataclass
class Served:
    """A model as clients see it: the id they send (maybe an alias) and the engine behind it."""

    id: str
    root: str
    engine: Engine
    created: int


@dataclass
class Context:
    """What one request did, for the access log and metrics."""

    route: str = "other"
    key: str | None = None
    model: str | None = None
    tokens: int = 0
    tokenize_s: float = 0.0
    embed_s: float = 0.0


def load_models(config: ServerConfig) -> list[tuple[ModelSource, Engine]]:
    """Blocking: load every configured model (called on a worker thread)."""
    return [(source, load_on_devices(source.path, source.name, config.device, config.dtype, config.threads,
                                     config.precision))
            for source in config.models]


def make_runner(config: ServerConfig) -> Runner:
    if config.batching == "per-request":
        return DirectRunner(config.max_batch_tokens, config.requests.max_queue_tokens)
    return Scheduler(max_batch_tokens=config.max_batch_tokens, max_batch_sequences=config.max_batch_sequences,
                     max_queue_tokens=config.requests.max_queue_tokens,
                     max_batch_latency=config.max_batch_latency or None)


class App:
    def __init__(self, config: ServerConfig, runner: Runner | None = None, loader=load_models, mounts=()):
        self.config = config
        self.keys = ApiKeys(config.api_keys)
        self.label = KeyLabels(config.metrics_label_secret)  # how /metrics names a key: an HMAC, never the key
        self.metrics_key = ApiKeys((config.metrics_key,)) if config.metrics_key else None
        self.limiter = RateLimiter(config.rate) if config.rate.enabled else None
        self.runner: Runner = runner or make_runner(config)
        self.loader = loader
        self.models: dict[str, Served] = {}
        self.ready = False
        self.server: Server | None = None
        self.pool = ThreadPoolExecutor(config.tokenizer_threads, thread_name_prefix="tinyembed-tokenize")
        self.memory = MemoryReturner()  # malloc_trim after large requests
        # issue 27: --max-memory (set up in load(), once the models are there)
        self.memory_guard = MemoryGuard(config.max_memory, config.http.send_buffer_bytes, config.max_batch_tokens)
        self.routes = {
            "/v1/embeddings": {"POST": self.embeddings},
            "/embeddings": {"POST": self.embeddings},
            "/v1/models": {"GET": self.list_models},
            "/v1/models/{id}": {"GET": self.get_model},
            "/tokenize": {"POST": self.tokenize},
            "/health": {"GET": self.health},
            "/ready": {"GET": self.readiness},
            "/metrics": {"GET": self.metrics},
            "/openapi.json": {"GET": self.openapi},
            "/docs": {"GET": self.docs_page},
        }
        self.open_routes = {"/health", "/ready", "/metrics", "/openapi.json", "/docs"}  # no key needed
        # Route groups from the layers above the server (the Files/Batches API): the entry point
        # hands in `mount(app) -> group | None`; a group adds its routes to app.routes and has
        # match(path), raw_body_routes, start() and async stop().
        mounts = (rerank.mount, *mounts)  # issue 29: /v1/rerank and /rerank (server/rerank.py)
        self.groups = [group for group in (mount(self) for mount in mounts) if group is not None]
        self.raw_body_routes = frozenset().union(*(group.raw_body_routes for group in self.groups))
        openapi.document(list(self.routes), extra=openapi.operations_of(self.groups))  # every route described
        self._openapi: tuple[bool, bytes] | None = None  # (built when ready?, document)
        self._init_metrics()

    def _init_metrics(self) -> None:
        m = self.registry = Registry()
        self.m_requests = m.counter("tinyembed_requests_total", "HTTP requests answered", ("route", "status"))
        self.m_latency = m.histogram("tinyembed_request_seconds", "Arrival to response, per route", ("route",))
        self.m_tokenize = m.histogram("tinyembed_tokenize_seconds", "Tokenization time per request")
        self.m_tokens = m.histogram("tinyembed_request_tokens", "Tokens per embeddings request", buckets=TOKEN_BUCKETS)
        self.m_in_flight = m.gauge("tinyembed_requests_in_flight", "Requests being answered")
        self.m_connections = m.gauge("tinyembed_open_connections", "Open client connections")
        self.m_body_bytes = m.gauge("tinyembed_request_body_bytes",
                                    "Bytes held by request bodies received and not yet answered")
        self.m_evictions = m.gauge("tinyembed_connections_evicted",
                                   "Idle connections closed to make room at the connection cap (since start)")
        self.m_ready = m.gauge("tinyembed_ready", "1 once every model is loaded")
        self.m_in_flight.set(0)
        self.m_ready.set(0)

    # -- lifecycle -------------------------------------------------------------------------------
    async def load(self) -> None:
        loaded = await asyncio.get_running_loop().run_in_executor(None, self.loader, self.config)
        created = int(time.time())
        for source, engine in loaded:
            for name in (source.name, *source.aliases):
                self.models[name] = Served(name, source.name, engine, created)
            log.info("model %s ready: %s", source.name, engine.info)
        await self.memory_guard.setup([engine for _, engine in loaded], self.runner)  # issue 27: --max-memory
        self.ready = True
        self.m_ready.set(1)
        for group in self.groups:
            group.start()  # e.g. resumes unfinished batches: needs the models

    def count_reject(self, response: Response) -> None:
        """Protocol-level errors answered by the HTTP layer itself (413, 408, 400, 431, 503)."""
        self.m_requests.inc("protocol", str(response.status))

    # -- dispatch --------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        ctx = Context()
        self.m_in_flight.inc()
        try:
            response = await self._dispatch(request, ctx)
        except ApiError as e:
            response = error_response(e.status, e.code, e.message, e.param, e.headers)
        except InputError as e:
            response = error_response(400, e.code, str(e), e.param)
        except RateLimited as e:
            response = _rate_limited(e)
        except Overloaded as e:
            seconds = str(max(1, math.ceil(e.retry_after)))
            response = error_response(503, "server_overloaded", "The server is overloaded; retry shortly.",
                                      headers=(("Retry-After", seconds),))
        except DeadlineExceeded:
            response = error_response(408, "timeout", f"The request waited longer than "
                                      f"{self.config.requests.request_timeout}s for its batch; retry, or send less.")
        except TinyEmbedError as e:
            response = error_response(400, "invalid_request", str(e))
        except asyncio.CancelledError:  # the client disconnected; nobody gets a response
            self.m_requests.inc(ctx.route, "499")
            raise
        except Exception:
            log.exception("internal error, request id %s", request.id)
            response = error_response(500, "internal_error", f"Internal server error (request id {request.id}).")
        finally:
            self.m_in_flight.inc(by=-1)
        self.memory.after(len(request.body) + len(response.body), ctx.tokens)
        elapsed = time.monotonic() - request.arrived
        self.m_requests.inc(ctx.route, str(response.status))
        self.m_latency.observe(elapsed, ctx.route)
        if self.config.access_log:
            self._log_access(request, response, ctx, elapsed)
        return response

    async def _dispatch(self, request: Request, ctx: Context) -> Response:
        route, handler, params, key = self._route(request.method, request.path, request.headers)
        ctx.route, ctx.key = route, (key if self.keys.enabled or key is None else f"client:{request.client}")
        if route not in self.open_routes and not self.ready:
            raise _provisioning()
        return await handler(request, ctx, **params)

    def _route(self, method: str, path: str, headers: dict):
        """-> (route, handler, params, key) or raises ApiError: 404 for no route; then, on routes
        that need a key, 401 before anything else (a client without a key learns nothing about
        a route's methods); then 405; then 415 for a POST body that is not JSON."""
        route, params = path, {}
        if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            route, params = "/v1/models/{id}", {"id": unquote(path[len("/v1/models/"):])}
        else:
            for group in self.groups:
                route, params = group.match(path)
                if route in self.routes:
                    break
        methods = self.routes.get(route)
        if methods is None:
            raise ApiError(404, "not_found", f"No route {echo(method)} {echo(path)}. See /openapi.json.")
        key = None
        if route not in self.open_routes:
            key = self._authenticate(headers)
        elif route == "/metrics" and self.metrics_key is not None and \
                self.metrics_key.check(headers.get("authorization")) is None:
            raise ApiError(401, "invalid_api_key", "GET /metrics needs the metrics key (--metrics-key) as "
                           "'Authorization: Bearer <key>'.", headers=(("WWW-Authenticate", "Bearer"),))
        verb = "GET" if method == "HEAD" else method
        handler = methods.get(verb)
        if handler is None:
            allow = ", ".join(sorted({*methods, "HEAD"} if "GET" in methods else methods))
            raise ApiError(405, "method_not_allowed", f"{echo(method)} is not allowed on {route}; use {allow}.",
                           headers=(("Allow", allow),))
        if verb == "POST" and route not in self.open_routes and route not in self.raw_body_routes:
            _require_json(headers)
        return route, handler, params, key

    def gate(self, method: str, path: str, headers: dict) -> tuple[bool, Response | None]:
        """The HTTP layer asks this when a request's head is in, before any of its body is kept:
        (read the body?, the refusal to answer instead). See http.py "Body memory"."""
        try:
            self._route(method, path, headers)
        except ApiError as e:
            return False, error_response(e.status, e.code, e.message, e.param, e.headers)
        return method not in BODYLESS_METHODS, None

    def _authenticate(self, headers: dict) -> str:
        """The key's name; "" when no keys are configured (the caller names the client)."""
        if not self.keys.enabled:
            return ""
        name = self.keys.check(headers.get("authorization"))
        if name is None:
            raise ApiError(401, "invalid_api_key", "Incorrect or missing API key. Send it as "
                           "'Authorization: Bearer <key>'.", headers=(("WWW-Authenticate", "Bearer"),))
        return name

    def _model(self, name: str | None) -> Served:
        if name is None:
            return next(iter(self.models.values()))
        served = self.models.get(name)
        if served is None:
            raise ApiError(404, "model_not_found", f"The model '{echo(name)}' does not exist. Served models: "
                           f"{', '.join(self.models)}.", "model")
        return served

    # -- embeddings ------------------------------------------------------------------------------
    async def embeddings(self, request: Request, ctx: Context) -> Response:
        req: EmbeddingRequest = decode_request(request.body, EmbeddingRequest)
        tier = req.service_tier or "default"  # unset: refused over the rate limit, like default
        if self.limiter is not None:  # see ratelimit.py: auto over the limit -> over-limit, flex is free
            tier = self.limiter.admit_request(ctx.key, tier)
        served = self._model(req.model)
        engine, limits = served.engine, self.config.requests
        ctx.model = served.id
        _embedding_model(served)  # issue 29: a reranker answers /v1/rerank only
        if req.dimensions is not None and req.dimensions > engine.info.dimensions:
            raise ApiError(400, "invalid_request", f"'dimensions' must be between 1 and {engine.info.dimensions} "
                           f"for model '{served.id}'.", "dimensions")
        texts, id_arrays = parse_input(req.input)
        count = len(texts if texts is not None else id_arrays)
        if count > limits.max_inputs:
            raise ApiError(400, "invalid_input", f"'input' has {count} items; the maximum is {limits.max_inputs}.",
                           "input")
        if id_arrays is not None:
            check_no_prompt_for_ids(req)
        truncate = self.config.auto_truncate if req.truncate is None else req.truncate
        # issue 27: the request's memory, reserved before the heavy work, released once its reply is written
        cost = (0 if request.hold is not None else len(request.body),  # (a held body is counted by its gate)
                engine, req.dimensions, req.encoding_format == "base64")
        held = self.memory_guard.reserve(cost[0], texts, id_arrays, *cost[1:], truncate, limits.max_tokens_per_request)
        try:
            return await self._embed(request, ctx, req, served, texts, id_arrays, truncate, tier, held, cost)
        except BaseException:
            if held is not None:
                held.release()
            raise

    async def _embed(self, request, ctx, req, served, texts, id_arrays, truncate, tier, held, cost) -> Response:
        engine = served.engine
        sequences = await self._tokenize(ctx, engine, texts, id_arrays, truncate, req.input_type, req.prompt_name)
        tokens = sum(len(s) for s in sequences)
        self.memory_guard.resize(held, cost[0], len(sequences), tokens, *cost[1:])
        vectors, tokens, tier = await self.run_sequences(request, ctx, engine, sequences, tier)
        vectors = engine.with_dimensions(vectors, req.dimensions)
        if (req.output_dtype or "").endswith("int8") and engine.cached_calibration is None:
            # a decoder's first int8/uint8 output: calibrate off the loop (once; minutes on a big one)
            await asyncio.get_running_loop().run_in_executor(self.pool, lambda: engine.calibration)
        vectors = engine.quantize(vectors, req.output_dtype or "float", req.dimensions)  # issue 29
        body = await self.memory_guard.reply(held, vectors, req.encoding_format == "base64", req.model, tokens, tier,
                                             self.pool)  # a large reply is streamed (reply_writer.py)
        return Response(200, body)

    async def run_sequences(self, request: Request, ctx, engine: Engine, sequences, tier: str):
        """Token caps and budgets, then the runner: -> (its (n, width) output, tokens, tier)."""
        tokens = ctx.tokens = sum(len(s) for s in sequences)
        tier = self._check_tokens(ctx, tokens, tier)
        self.m_tokens.observe(tokens)
        tier = "default" if tier == "auto" else tier
        started = time.monotonic()
        # The deadline grows with the request's own compute time: an admitted request can finish.
        deadline = limits_.deadline(request.arrived, self.config.requests.request_timeout, tokens,
                                    limits_.drain_rate(self.runner, engine))
        out = await self.runner.embed(engine, sequences, tier=tier, key=self.label(ctx.key), deadline=deadline)
        ctx.embed_s = time.monotonic() - started
        return out, tokens, tier

    def _check_tokens(self, ctx, tokens: int, tier: str = "default") -> str:
        """The per-request token cap and the key's token budget; returns the tier the request runs
        at (`auto` over the budget becomes `over-limit`, see ratelimit.py)."""
        limit = self.config.requests.max_tokens_per_request
        if tokens > limit:
            raise ApiError(400, "invalid_input", f"This request has {tokens} tokens; the maximum is "
                           f"{limit} per request. Split it into smaller requests.", "input")
        if self.limiter is not None:
            tier = self.limiter.admit_tokens(ctx.key, tokens, tier)
        return tier

    async def _tokenize(self, ctx, engine: Engine, texts, id_arrays, truncate: bool, input_type,
                        prompt_name=None):
        tokenizer = engine.tokenizer
        if texts is not None:
            return await self.tokenize_in_slices(
                ctx, texts, lambda piece, start: tokenizer.encode(piece, truncate, input_type, prompt_name, start))
        return await self.tokenize_in_slices(ctx, id_arrays,
                                             lambda piece, start: tokenizer.check_ids(piece, truncate, start))

    async def tokenize_in_slices(self, ctx, items: list, encode) -> list:
        """`encode(piece, start)` over the items on the tokenizer pool. In slices: a 2048-input
        request takes turns on the pool with everyone else's requests instead of holding a
        tokenizer thread for all of its inputs at once."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        sequences = []
        for start, piece in limits_.slices(items):
            sequences += await loop.run_in_executor(self.pool, encode, piece, start)
        ctx.tokenize_s = time.monotonic() - started
        self.m_tokenize.observe(ctx.tokenize_s)
        return sequences

    # -- the other routes --------------------------------------------------------------------------
    async def tokenize(self, request: Request, ctx: Context) -> Response:
        if self.limiter is not None:
            self.limiter.check_request(ctx.key)
        req: TokenizeRequest = decode_request(request.body, TokenizeRequest)
        served = self._model(req.model)
        texts = parse_texts(req.input)
        if len(texts) > self.config.requests.max_inputs:
            raise ApiError(400, "invalid_input", f"'input' has {len(texts)} items; the maximum is "
                           f"{self.config.requests.max_inputs}.", "input")
        truncate = self.config.auto_truncate if req.truncate is None else req.truncate
        sequences = await self._tokenize(ctx, served.engine, texts, None, truncate, req.input_type, req.prompt_name)
        tokens = ctx.tokens = sum(len(s) for s in sequences)
        self._check_tokens(ctx, tokens)  # the same caps as /v1/embeddings
        tokenizer = served.engine.tokenizer
        data = [Tokens(index=i, ids=seq.tolist(), tokens=tokenizer.tokens(seq)) for i, seq in enumerate(sequences)]
        return Response(200, encode(TokenizeResponse(data=data, model=served.id, usage=Usage(tokens, tokens))))

    async def list_models(self, request: Request, ctx: Context) -> Response:
        return Response(200, encode(ModelList(data=[_card(s) for s in self.models.values()])))

    async def get_model(self, request: Request, ctx: Context, id: str) -> Response:
        return Response(200, encode(_card(self._model(id))))

    async def health(self, request: Request, ctx: Context) -> Response:
        return Response(200, encode(Status(status="ok")))

    async def readiness(self, request: Request, ctx: Context) -> Response:
        if not self.ready:
            raise _provisioning()
        return Response(200, encode(Status(status="ready", models=list(self.models))))

    async def metrics(self, request: Request, ctx: Context) -> Response:
        if self.server is not None:
            self.m_connections.set(len(self.server.connections))
            self.m_body_bytes.set(self.server.buffered_body_bytes())
            self.m_evictions.set(self.server.slots.evictions)
        text = self.registry.render() + self.runner.metrics() + self.memory_guard.metrics()
        return Response(200, text.encode(), content_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi(self, request: Request, ctx: Context) -> Response:
        if self._openapi is None or self._openapi[0] != self.ready:  # the served models shape it
            self._openapi = (self.ready, openapi.document(list(self.routes), openapi.served_from(self),
                                                          openapi.operations_of(self.groups)))
        return Response(200, self._openapi[1])

    async def docs_page(self, request: Request, ctx: Context) -> Response:
        return Response(200, DOCS_PAGE, content_type="text/html; charset=utf-8", headers=DOCS_HEADERS)

    # -- logging -------------------------------------------------------------------------------------
    def _log_access(self, request: Request, response: Response, ctx: Context, elapsed: float) -> None:
        fields = {
            "request_id": request.id, "client": request.client, "method": request.method,
            "path": request.path, "status": response.status, "ms": round(elapsed * 1000, 2),
            "bytes": len(response.body), "key": self.label(ctx.key) if self.keys.enabled else None, "model": ctx.model,
            "tokens": ctx.tokens, "tokenize_ms": round(ctx.tokenize_s * 1000, 2),
            "embed_ms": round(ctx.embed_s * 1000, 2),
        }
        access_log.info("%s %s %s %s %d %.1fms tokens=%d", request.id, request.client, request.method,
                        request.path, response.status, elapsed * 1000, ctx.tokens, extra={"fields": fields})


def _card(served: Served) -> ModelCard:
    info = served.engine.info
    return ModelCard(id=served.id, created=served.created, root=served.root, dimensions=info.dimensions,
                     max_input_tokens=info.max_input_tokens, device=info.device, kernels=info.kernels,
                     precision=info.precision, family=info.family, prompts=list(info.prompts),
                     **_task_fields(served.engine))


def _task_fields(engine: Engine) -> dict:
    """issue 29: a reranker says so; an embedding model reports its int8 calibration."""
    if engine.info.task == "rerank":
        return {"supported_features": ["rerank"]}
    calibration = engine.cached_calibration  # a decoder not yet calibrated: no ranges to list yet
    dtypes = ["float", "int8", "uint8", "binary", "ubinary"]
    if calibration is None:
        return {"quantization": Quantization(output_dtypes=dtypes, calibration_texts=0)}
    return {"quantization": Quantization(
        output_dtypes=dtypes, calibration_corpus=calibration.corpus_id,
        calibration_texts=len(calibration.vectors), int8_ranges=calibration.ranges().tolist())}


def _embedding_model(served: Served) -> None:
    """/v1/embeddings (and batch lines) on a reranker: a clear 400 pointing at /v1/rerank."""
    if served.engine.info.task != "embeddings":
        raise ApiError(400, "invalid_request", f"Model '{served.id}' is a reranker (a cross-encoder): it scores "
                       "(query, document) pairs at POST /v1/rerank and has no embeddings.", "model")


def _provisioning() -> ApiError:
    return ApiError(503, "model_provisioning", "The model is still loading; retry shortly.",
                    headers=(("Retry-After", "5"),))


def _require_json(headers: dict) -> None:
    content_type = headers.get("content-type")
    if content_type is None:
        return  # lenient: a body without a type is read as JSON
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES and not media.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", f"Content-Type {media!r} is not supported; "
                       "send application/json.")


def _rate_limited(e: RateLimited) -> Response:
    finite = math.isfinite(e.retry_after)
    seconds = e.retry_after if finite else 60.0
    headers = [("Retry-After", str(max(1, math.ceil(seconds)))),
               ("retry-after-ms", str(max(1, math.ceil(seconds * 1000))))]
    if not finite:  # it can never fit: tell the SDKs not to retry it
        headers.append(("x-should-retry", "false"))
    return error_response(429, "rate_limit_exceeded", e.message, headers=tuple(headers))


# -- the process --------------------------------------------------------------------------------------

async def run_server(config: ServerConfig, *, runner: Runner | None = None, loader=load_models,
                     stop: asyncio.Event | None = None, install_signals: bool = True,
                     on_listening=None, mounts=()) -> int:
    """Serve until SIGTERM/SIGINT (or `stop` is set); returns the exit code."""
    stop = stop or asyncio.Event()
    app = App(config, runner, loader, mounts)
    server = app.server = Server(app.handle, config.http, on_reject=app.count_reject, gate=app.gate,
                                 body_gate=app.memory_guard.admit_body)  # issue 27
    addresses = await server.listen(config.host, config.port)
    for address in addresses:
        log.info("tinyembed listening on http://%s:%d", *address[:2])
    if on_listening is not None:
        on_listening(addresses)
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _on_signal, sig, stop)
    app.runner.start()
    exit_code = 0
    loading = loop.create_task(app.load())
    stopping = loop.create_task(stop.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        error = loading.exception()
        log.error("could not load the models: %s", error if isinstance(error, TinyEmbedError) else repr(error))
        exit_code = 1
    else:
        await stopping
    loading.cancel()
    log.info("shutting down: finishing in-flight requests")
    await server.shutdown(config.shutdown_timeout)
    for group in app.groups:
        await group.stop()  # before the runner: batch work in its queue is dropped, redone after a restart
    await app.runner.stop()
    app.pool.shutdown(wait=False)
    log.info("stopped")
    return exit_code


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.warning("second %s: exiting now", sig.name)
        raise SystemExit(1)
    log.info("%s received", sig.name)
    stop.set()
