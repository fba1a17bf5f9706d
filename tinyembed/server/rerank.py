"""POST /v1/rerank (the shape Cohere, Jina and vLLM share) and POST /rerank (TEI's shape) for
cross-encoder models (engine/families/cross_encoder.py).

Each (query, document) pair is one sequence: it is tokenized on the tokenizer pool, counted
against the same per-request token cap and rate budget as embeddings, and scheduled through the
same runner (continuous batching, tiers, deadlines, queue bound), which returns one logit per
pair. Scores are sigmoid(logit), as TEI (`raw_scores` false), vLLM and infinity return for
one-label cross-encoders and as sentence-transformers' CrossEncoder.predict does; TEI's
`raw_scores: true` (also accepted on /v1/rerank) returns the logits.

Mounted by App itself as a route group (see App.groups): the routes, their OpenAPI operations.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import numpy as np
from msgspec import Meta, Struct

from tinyembed.server.http import Request, Response
from tinyembed.server.openapi import Operation
from tinyembed.server.protocol import ApiError, Usage, decode_request, encode

NonEmpty = Annotated[str, Meta(min_length=1)]


class DocumentObject(Struct, forbid_unknown_fields=True):
    text: NonEmpty


class RerankRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    """Cohere / Jina / vLLM."""

    query: NonEmpty
    documents: list[Union[NonEmpty, DocumentObject]]
    model: str | None = None  # the first served reranker when absent
    top_n: Annotated[int, Meta(ge=1)] | None = None
    return_documents: bool = True  # Jina's and vLLM's default
    # extensions (as on /v1/embeddings): truncation, the tier, TEI's raw scores
    truncate: bool | None = None
    service_tier: Literal["auto", "default", "flex", "priority"] | None = None
    raw_scores: bool = False
    user: Annotated[str, Meta(max_length=256)] | None = None


class TeiRerankRequest(Struct, forbid_unknown_fields=True, kw_only=True):
    """text-embeddings-inference's /rerank."""

    query: NonEmpty
    texts: list[NonEmpty]
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = None
    truncation_direction: Literal["right", "Right", "left", "Left"] = "right"
    model: str | None = None  # extension: TEI serves one model


class RerankDocument(Struct):
    text: str


class RerankResult(Struct, kw_only=True, omit_defaults=True):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(Struct, kw_only=True):
    id: str
    object: str = "rerank"
    model: str
    results: list[RerankResult]
    usage: Usage


class TeiRank(Struct, kw_only=True, omit_defaults=True):
    index: int
    score: float
    text: str | None = None


OPERATIONS = {
    "/v1/rerank": {"post": Operation("Rerank documents for a query with a cross-encoder (Cohere/Jina/vLLM shape)",
                                     RerankRequest, RerankResponse, (404, 415), rate_limited=True)},
    "/rerank": {"post": Operation("Rerank texts for a query (text-embeddings-inference shape)", TeiRerankRequest,
                                  list[TeiRank], (404, 415),
                                  rate_limited=True)},
}


class RerankRoutes:
    """A route group of App (match / raw_body_routes / start / stop / operations)."""

    raw_body_routes = frozenset()
    operations = OPERATIONS

    def __init__(self, app):
        self.app = app
        app.routes["/v1/rerank"] = {"POST": self.rerank}
        app.routes["/rerank"] = {"POST": self.tei_rerank}

    def match(self, path: str) -> tuple[str, dict]:
        return path, {}

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def rerank(self, request: Request, ctx) -> Response:
        req: RerankRequest = decode_request(request.body, RerankRequest)
        texts = [d if isinstance(d, str) else d.text for d in req.documents]
        served, scores, tokens = await self._score(request, ctx, "documents", req.model, req.query, texts,
                                                   req.truncate, req.raw_scores, req.service_tier)
        order = _order(scores, req.top_n)
        results = [RerankResult(index=i, relevance_score=float(scores[i]),
                                document=RerankDocument(texts[i]) if req.return_documents else None) for i in order]
        return Response(200, encode(RerankResponse(id=f"rerank-{request.id}", model=served.id, results=results,
                                                   usage=Usage(tokens, tokens))))

    async def tei_rerank(self, request: Request, ctx) -> Response:
        req: TeiRerankRequest = decode_request(request.body, TeiRerankRequest)
        if req.truncation_direction.lower() == "left":
            raise ApiError(400, "invalid_request", "truncation_direction 'left' is not supported: tinyembed "
                           "truncates documents on the right.", "truncation_direction")
        _, scores, _ = await self._score(request, ctx, "texts", req.model, req.query, req.texts, req.truncate,
                                         req.raw_scores, None)
        ranks = [TeiRank(index=i, score=float(scores[i]), text=req.texts[i] if req.return_text else None)
                 for i in _order(scores, None)]
        return Response(200, encode(ranks))

    async def _score(self, request: Request, ctx, param: str, model: str | None, query: str, texts: list[str],
                     truncate: bool | None, raw: bool, service_tier: str | None):
        """-> (served model, one score per text in input order, tokens). The same checks, limits
        and runner as /v1/embeddings; `param` names the documents' field in messages."""
        app = self.app
        tier = service_tier or "default"
        if app.limiter is not None:
            tier = app.limiter.admit_request(ctx.key, tier)
        served = self._reranker(model)
        engine, limits = served.engine, app.config.requests
        ctx.model = served.id
        if not texts:
            raise ApiError(400, "invalid_input", f"'{param}' is an empty list; send at least one document.", param)
        if len(texts) > limits.max_inputs:
            raise ApiError(400, "invalid_input", f"'{param}' has {len(texts)} items; the maximum is "
                           f"{limits.max_inputs}.", param)
        # The query is tokenized once per document: bound that work by what one body may hold, as
        # an embeddings request's texts are (a 30k-character query x 2048 documents would not be).
        chars = min(len(query), engine.tokenizer.char_limit) * len(texts) + sum(map(len, texts))
        if chars > app.config.http.max_body_bytes:
            raise ApiError(400, "invalid_input", f"The query is read once per document: {len(query)} characters x "
                           f"{len(texts)} documents is more text than one request may carry "
                           f"({app.config.http.max_body_bytes} bytes). Send a shorter query or fewer documents.",
                           "query")
        truncate = app.config.auto_truncate if truncate is None else truncate
        sequences = await app.tokenize_in_slices(  # on the pool, in turns, as embeddings' inputs
            ctx, texts, lambda piece, start: engine.tokenizer.encode_pairs(query, piece, truncate, start))
        logits, tokens, _ = await app.run_sequences(request, ctx, engine, sequences, tier)
        logits = np.asarray(logits, dtype=np.float64)[:, 0]
        return served, (logits if raw else 1.0 / (1.0 + np.exp(-logits))), tokens

    def _reranker(self, name: str | None):
        models = self.app.models
        if name is None:
            served = next((s for s in models.values() if s.engine.info.task == "rerank"), None)
            if served is None:
                raise ApiError(400, "invalid_request", "No reranker is served: start the server with a cross-encoder "
                               "(e.g. --model rerank=BAAI/bge-reranker-base).", "model")
            return served
        served = self.app._model(name)
        if served.engine.info.task != "rerank":
            raise ApiError(400, "invalid_request", f"Model '{served.id}' is an embedding model, not a reranker: "
                           "rerank with a cross-encoder (see /v1/models: supported_features).", "model")
        return served


def _order(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Indices by score, best first (ties keep input order); the first top_n."""
    order = np.argsort(-scores, kind="stable")
    return order[:top_n].tolist() if top_n is not None else order.tolist()


def mount(app) -> RerankRoutes:
    return RerankRoutes(app)
