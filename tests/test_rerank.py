"""Rerankers: cross-encoder scores against transformers (engine, every CPU backend; CUDA where a
GPU is), and POST /v1/rerank + POST /rerank on a real server: shapes, order, top_n, documents,
limits and errors, auth, metrics, /v1/models, and /v1/embeddings refusing a reranker.

Expected values: tests/fixtures/tiny-reranker-*/expected_scores.json (weights/make_tiny_rerankers.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_MODEL, start_server
from tinyembed.engine import Engine
from tinyembed.engine.checkpoints.spec import encoder_spec, read_config
from tinyembed.engine.ops import cuda_ops
from tinyembed.engine.ops.numpy_ops import NumpyOps

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RERANKERS = ["tiny-reranker-bert", "tiny-reranker-xlmr"]
KEY = "k-rerank"
AUTH = {"Authorization": f"Bearer {KEY}"}


def expected(name: str) -> dict:
    return json.loads((FIXTURES / name / "expected_scores.json").read_text())


def sigmoid(x) -> np.ndarray:
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def engine_on(name: str, ops) -> Engine:
    path = FIXTURES / name
    return Engine(name, encoder_spec(path, read_config(path)), ops)


def cpu_ops():
    yield "numpy", NumpyOps(threads=2)
    from test_ops_c import _library
    from tinyembed.engine.ops.c_ops import COps

    yield "c", COps(_library(), threads=2)


def pair_sequences(engine: Engine, exp: dict) -> list[np.ndarray]:
    queries = list(dict.fromkeys(q for q, _ in exp["pairs"]))
    out = []
    for q in queries:
        out += engine.tokenizer.encode_pairs(q, [d for qq, d in exp["pairs"] if qq == q], truncate=True)
    return out


@pytest.mark.parametrize("name", RERANKERS)
def test_pairs_tokenize_like_transformers(name):
    exp = expected(name)
    engine = engine_on(name, NumpyOps(threads=1))
    offset = engine.tokenizer.type_offset
    assert offset == (engine.spec.vocab_size if name.endswith("bert") else 0)
    got = pair_sequences(engine, exp)
    want = [np.asarray(i) + offset * np.asarray(t) for i, t in zip(exp["input_ids"], exp["type_ids"])]
    assert [g.tolist() for g in got] == [w.tolist() for w in want]


@pytest.mark.parametrize("name", RERANKERS)
def test_scores_match_transformers_on_cpu_backends(name):
    exp = expected(name)
    for backend, ops in cpu_ops():
        engine = engine_on(name, ops)
        assert engine.info.task == "rerank" and engine.info.dimensions == 1
        sequences = pair_sequences(engine, exp)
        logits = engine.embed(engine.pack(sequences))[:, 0]
        np.testing.assert_allclose(logits, exp["logits"], atol=1e-4, err_msg=backend)
        np.testing.assert_allclose(sigmoid(logits), exp["sentence_transformers_scores"], atol=1e-4)
        # one pair at a time gives the same logits as the whole batch
        alone = np.concatenate([engine.embed(engine.pack([s]))[:, 0] for s in sequences])
        np.testing.assert_allclose(alone, logits, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(cuda_ops.unavailable_reason() is not None,
                    reason=f"needs a CUDA GPU: {cuda_ops.unavailable_reason()}")
@pytest.mark.parametrize("name", RERANKERS)
def test_scores_on_cuda(name):
    exp = expected(name)
    engine = engine_on(name, cuda_ops.CudaOps(0, "float32"))
    logits = engine.embed(engine.pack(pair_sequences(engine, exp)))[:, 0]
    np.testing.assert_allclose(logits, exp["logits"], atol=1e-4)
    half = engine_on(name, cuda_ops.CudaOps(0, "float16"))
    np.testing.assert_allclose(half.embed(half.pack(pair_sequences(half, exp)))[:, 0], exp["logits"], atol=2e-2)


# -- the HTTP routes --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rr_server(tmp_path_factory):
    proc = start_server(tmp_path_factory, "rerank", [
        "--model", f"rr-bert={FIXTURES / RERANKERS[0]}", "--model", f"rr-xlmr={FIXTURES / RERANKERS[1]}",
        "--model", f"tiny={TINY_MODEL}", "--api-key", KEY, "--max-inputs", "64"])
    yield proc
    assert proc.stop() == 0, proc.log()


def rerank(server, body, path="/v1/rerank", headers=AUTH):
    return server.request("POST", path, body, headers)


@pytest.mark.parametrize("model", ["rr-bert", "rr-xlmr"])
def test_v1_rerank_scores_and_order(rr_server, model):
    exp = expected(RERANKERS[0] if model == "rr-bert" else RERANKERS[1])
    query = exp["pairs"][0][0]
    docs = [d for q, d in exp["pairs"] if q == query]
    want = np.asarray(exp["sentence_transformers_scores"][:len(docs)])
    reply = rerank(rr_server, {"model": model, "query": query, "documents": docs, "truncate": True})
    assert reply.status == 200, reply
    body = reply.json()
    assert body["model"] == model and body["object"] == "rerank" and body["id"]
    results = body["results"]
    assert sorted(r["index"] for r in results) == list(range(len(docs)))
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for r in results:
        assert abs(r["relevance_score"] - want[r["index"]]) < 1e-4
        assert r["document"] == {"text": docs[r["index"]]}
    ids = [np.asarray(i) for (q, _), i in zip(exp["pairs"], exp["input_ids"]) if q == query]
    assert body["usage"] == {"prompt_tokens": sum(map(len, ids)), "total_tokens": sum(map(len, ids))}


def test_v1_rerank_top_n_objects_and_raw_scores(rr_server):
    exp = expected(RERANKERS[0])
    query = exp["pairs"][0][0]
    docs = [d for q, d in exp["pairs"] if q == query][:5]
    full = rerank(rr_server, {"model": "rr-bert", "query": query, "documents": docs}).json()["results"]
    top = rerank(rr_server, {"model": "rr-bert", "query": query, "documents": [{"text": d} for d in docs],
                             "top_n": 2, "return_documents": False}).json()["results"]
    assert [r["index"] for r in top] == [r["index"] for r in full[:2]]
    assert all("document" not in r for r in top)
    raw = rerank(rr_server, {"model": "rr-bert", "query": query, "documents": docs, "raw_scores": True}).json()
    for r in raw["results"]:
        assert abs(r["relevance_score"] - exp["logits"][r["index"]]) < 1e-4
    # the model may be left out: the first served reranker answers
    anon = rerank(rr_server, {"query": query, "documents": docs}).json()
    assert anon["model"] == "rr-bert" and anon["results"] == full
    # more top_n than documents: all of them
    assert len(rerank(rr_server, {"model": "rr-bert", "query": query, "documents": docs, "top_n": 99})
               .json()["results"]) == len(docs)


def test_tei_rerank_shape(rr_server):
    exp = expected(RERANKERS[1])
    query = exp["pairs"][0][0]
    texts = [d for q, d in exp["pairs"] if q == query][:5]
    reply = rerank(rr_server, {"model": "rr-xlmr", "query": query, "texts": texts, "return_text": True}, "/rerank")
    assert reply.status == 200, reply
    ranks = reply.json()
    assert isinstance(ranks, list) and sorted(r["index"] for r in ranks) == list(range(len(texts)))
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    for r in ranks:
        assert abs(r["score"] - exp["sentence_transformers_scores"][r["index"]]) < 1e-4
        assert r["text"] == texts[r["index"]]
    raw = rerank(rr_server, {"model": "rr-xlmr", "query": query, "texts": texts, "raw_scores": True}, "/rerank")
    for r in raw.json():
        assert abs(r["score"] - exp["logits"][r["index"]]) < 1e-4 and "text" not in r


def test_models_say_reranker_and_embeddings_refuse_it(rr_server):
    cards = {c["id"]: c for c in rr_server.request("GET", "/v1/models", headers=AUTH).json()["data"]}
    assert cards["rr-bert"]["supported_features"] == ["rerank"]
    assert cards["rr-xlmr"]["supported_features"] == ["rerank"]
    assert cards["tiny"]["supported_features"] == ["embeddings"]
    reply = rr_server.request("POST", "/v1/embeddings", {"model": "rr-bert", "input": "hi"}, AUTH)
    assert reply.status == 400 and "/v1/rerank" in reply.error["message"] and reply.error["param"] == "model"
    reply = rerank(rr_server, {"model": "tiny", "query": "q", "documents": ["d"]})
    assert reply.status == 400 and "not a reranker" in reply.error["message"]


BAD = [
    ({"model": "rr-bert", "query": "q", "documents": []}, "invalid_input", "documents"),
    ({"model": "rr-bert", "query": "q", "documents": ["d"], "top_n": 0}, "invalid_request", "top_n"),
    ({"model": "rr-bert", "query": "q", "documents": ["d"] * 10_000}, "invalid_input", "documents"),
    ({"model": "rr-bert", "query": "q", "documents": ["word " * 200]}, "context_length_exceeded", "documents"),
    ({"model": "rr-bert", "query": "q", "documents": [""]}, "invalid_request", "documents"),
    ({"model": "rr-bert", "query": "", "documents": ["d"]}, "invalid_request", "query"),
    ({"model": "rr-bert", "query": "q", "documents": [{"txt": "d"}]}, None, None),
    ({"model": "rr-bert", "query": "q", "documents": ["d"], "stream": True}, "unknown_parameter", "stream"),
    ({"model": "nope", "query": "q", "documents": ["d"]}, "model_not_found", "model"),
    ({"query": "q", "documents": "d"}, "invalid_request", "documents"),
]


@pytest.mark.parametrize("body,code,param", BAD)
def test_bad_rerank_requests_are_4xx(rr_server, body, code, param):
    reply = rerank(rr_server, body)
    assert 400 <= reply.status < 500, reply
    if code is not None:
        assert reply.error["code"] == code and reply.error["param"] == param, reply


def test_tei_bad_requests_and_truncation(rr_server):
    long_doc = "word " * 200
    reply = rerank(rr_server, {"query": "q", "texts": [long_doc]}, "/rerank")
    assert reply.status == 400 and reply.error["code"] == "context_length_exceeded"
    assert rerank(rr_server, {"query": "q", "texts": [long_doc], "truncate": True}, "/rerank").status == 200
    assert rerank(rr_server, {"query": "q", "texts": []}, "/rerank").status == 400
    reply = rerank(rr_server, {"query": "q", "texts": ["d"], "truncation_direction": "left"}, "/rerank")
    assert reply.status == 400 and reply.error["param"] == "truncation_direction"


def test_auth_token_cap_and_metrics(rr_server):
    assert rerank(rr_server, {"query": "q", "documents": ["d"]}, headers={}).status == 401
    before = rr_server.metric("tinyembed_requests_total", route="/v1/rerank", status="200")
    assert rerank(rr_server, {"query": "q", "documents": ["d"]}).status == 200
    assert rr_server.metric("tinyembed_requests_total", route="/v1/rerank", status="200") == before + 1
    # 64 documents (the --max-inputs cap): [CLS] q [SEP] 50 x word [SEP] = 54 tokens each
    many = rerank(rr_server, {"query": "q", "documents": ["word " * 50] * 64})
    assert many.status == 200 and many.json()["usage"]["total_tokens"] == 64 * 54
    assert rerank(rr_server, {"query": "q", "documents": ["d"] * 65}).status == 400


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory):
    proc = start_server(tmp_path_factory, "rerank-capped", [
        "--model", f"rr={FIXTURES / RERANKERS[0]}", "--max-tokens-per-request", "100", "--max-body-bytes", "20000"])
    yield proc
    assert proc.stop() == 0, proc.log()


def test_token_cap_applies_to_pairs(capped_server):
    ok = capped_server.request("POST", "/v1/rerank", {"query": "q", "documents": ["d"] * 10})
    assert ok.status == 200, ok
    reply = capped_server.request("POST", "/v1/rerank", {"query": "q", "documents": ["word " * 40] * 4})
    assert reply.status == 400 and "maximum is 100" in reply.error["message"]


def test_query_times_documents_is_bounded_by_the_body_limit(capped_server):
    # 2,000 characters x 20 documents = 40,000 characters to tokenize from a 2 kB body: refused
    reply = capped_server.request("POST", "/v1/rerank", {"query": "q " * 1000, "documents": ["d"] * 20,
                                                         "truncate": True})
    assert reply.status == 400 and reply.error["param"] == "query" and "once per document" in reply.error["message"]
    ok = capped_server.request("POST", "/v1/rerank", {"query": "q " * 10, "documents": ["d"] * 5})
    assert ok.status == 200, ok
