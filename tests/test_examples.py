"""examples/ run for real, each in its own throwaway venv (tests/venvs.py) so their dependency
trees never touch this environment: Chroma (a real `chroma run` server), Milvus Lite, LangChain
and LlamaIndex, all embedding through a real tinyembed. Each checks that the vectors the
framework (or the database) holds are the engine's own.

The venvs are built on first use (CI builds them once, timed, before pytest). Without network a
build fails: the test then skips locally and fails in CI (CI=true)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import venvs
from conftest import ROOT, start_server

STARTUP_S = 60.0
EXAMPLE_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_python(name: str) -> Path:
    try:
        return venvs.build(name)
    except (subprocess.SubprocessError, RuntimeError, OSError) as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"could not build the {name} venv (offline?): {str(e)[-500:]}")


def run_example(python: Path, name: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TINYEMBED_", "PYTHON"))}
    env["CHROMA_OPENAI_API_KEY"] = "unused"  # tinyembed runs without keys; Chroma insists on one
    done = subprocess.run([str(python), str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                          timeout=EXAMPLE_TIMEOUT_S, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def assert_engine_vectors(vectors: dict[str, list[float]], engine, count: int) -> None:
    """text -> vector as the framework holds it, equal to the engine's vector for that text."""
    assert len(vectors) == count
    texts = list(vectors)
    np.testing.assert_allclose(np.asarray([vectors[t] for t in texts], dtype=np.float32), engine.embed_texts(texts),
                               atol=1e-5, rtol=0)


# -- Chroma ---------------------------------------------------------------------------------------

@pytest.fixture
def chroma(tmp_path):
    python = venv_python("chroma")
    port = free_port()
    log = open(tmp_path / "chroma.log", "wb")
    proc = subprocess.Popen([str(python.parent / "chroma"), "run", "--path", str(tmp_path / "chroma"), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chroma did not start: {(tmp_path / 'chroma.log').read_text()}") from None
                time.sleep(0.1)
        yield python, port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_chroma_sidecar_indexes_and_answers_with_tinyembed_vectors(chroma, server, minilm):
    python, port = chroma
    result = run_example(python, "chroma_sidecar.py", "--tinyembed", server.url, "--chroma-port", str(port),
                         "--vectors")
    assert result["count"] == 8
    top = {query: hits[0]["id"] for query, hits in result["results"].items()}
    assert top == {"how do I parse command-line flags?": "argparse", "store rows in a database file": "sqlite3",
                   "compute a SHA-256 digest": "hashlib"}
    assert_engine_vectors(result["vectors"], minilm, 8)  # what Chroma stored is tinyembed's


# -- Milvus Lite ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def batch_server(tmp_path_factory):
    """The Batch API needs --data-dir."""
    data_dir = tmp_path_factory.mktemp("milvus-batch-data")
    proc = start_server(tmp_path_factory, "milvus-batch", ["--model", "all-MiniLM-L6-v2", "--data-dir", str(data_dir)])
    yield proc
    assert proc.stop() == 0, proc.log()


def test_milvus_lite_neighbours_equal_a_brute_force_search(batch_server, minilm, tmp_path):
    python = venv_python("milvus")
    k = 5
    result = run_example(python, "milvus_sidecar.py", "--tinyembed", batch_server.url, "--db",
                         str(tmp_path / "milvus.db"), "-k", str(k), "--dump", str(tmp_path))
    corpus, queries = np.load(tmp_path / "corpus.npz"), np.load(tmp_path / "queries.npz")
    stored, texts = corpus["vectors"], [str(t) for t in corpus["texts"]]
    assert result["count"] == len(stored) == len(texts) > 100
    assert list(corpus["ids"]) == list(range(len(texts)))
    # what Milvus holds is what the engine computes (through the Batch API), and so are the queries
    np.testing.assert_allclose(stored, minilm.embed_texts(texts), atol=1e-5, rtol=0)
    query_texts = [str(t) for t in queries["texts"]]
    np.testing.assert_allclose(queries["vectors"], minilm.embed_texts(query_texts), atol=1e-5, rtol=0)

    scores = queries["vectors"] @ stored.T  # unit vectors: dot = cosine
    for i, query in enumerate(query_texts):
        hits = result["results"][query]
        expected = np.argsort(-scores[i], kind="stable")[:k]
        assert [h["id"] for h in hits] == expected.tolist(), query
        np.testing.assert_allclose([h["score"] for h in hits], scores[i, expected], atol=1e-4)
    assert result["results"]["work with dates and times"][0]["module"] == "datetime"


# -- LangChain and LlamaIndex ---------------------------------------------------------------------------

def test_langchain_openai_embeddings_with_check_embedding_ctx_length_off(server, minilm):
    python = venv_python("langchain")
    result = run_example(python, "langchain_embeddings.py", "--tinyembed", server.url, "--vectors")
    assert result["dimensions"] == 384 and result["documents"] == 2
    assert result["scores"][0] > result["scores"][1]  # "computes embeddings" is nearer tinyembed's sentence
    assert_engine_vectors(result["vectors"], minilm, 3)


def test_llamaindex_openai_embedding_index_and_retriever(server, minilm):
    python = venv_python("llamaindex")
    result = run_example(python, "llamaindex_embeddings.py", "--tinyembed", server.url, "--vectors")
    assert [hit["id"] for hit in result["results"]["How is coffee made?"]][0] == "espresso"
    assert_engine_vectors(result["vectors"], minilm, 6)  # 4 indexed passages + 2 queries
    hits = result["results"]["Which program computes embeddings?"]
    vectors = result["vectors"]
    query = np.asarray(vectors["Which program computes embeddings?"])
    for hit in hits:  # the retriever's scores are cosines of tinyembed's vectors
        assert abs(float(query @ np.asarray(vectors[hit["text"]])) - hit["score"]) < 1e-5
