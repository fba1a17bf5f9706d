"""examples/: a real `chroma run` server on 127.0.0.1 whose collection is embedded by tinyembed
(Chroma's OpenAI embedding function), and LangChain's OpenAIEmbeddings against tinyembed.
Each test skips, with the reason, when its library is not installed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

STARTUP_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def chroma(tmp_path):
    pytest.importorskip("chromadb", reason="chromadb is not installed (pip install chromadb)")
    exe = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
    if exe is None:
        pytest.skip("chromadb is installed but its `chroma` command is not on PATH")
    port = free_port()
    log = open(tmp_path / "chroma.log", "wb")
    proc = subprocess.Popen([exe, "run", "--path", str(tmp_path / "chroma"), "--host", "127.0.0.1", "--port",
                             str(port)], stdout=log, stderr=subprocess.STDOUT)
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
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def run_example(name: str, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "TINYEMBED_"))}
    env["CHROMA_OPENAI_API_KEY"] = "unused"  # tinyembed runs without keys; Chroma insists on one
    done = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_chroma_sidecar_indexes_and_answers_with_tinyembed_vectors(chroma, server, minilm):
    result = run_example("chroma_sidecar.py", "--tinyembed", server.url, "--chroma-port", str(chroma))
    assert result["count"] == 8
    top = {query: hits[0]["id"] for query, hits in result["results"].items()}
    assert top == {"how do I parse command-line flags?": "argparse", "store rows in a database file": "sqlite3",
                   "compute a SHA-256 digest": "hashlib"}

    import chromadb  # the vectors Chroma stored are tinyembed's

    from examples.chroma_sidecar import CORPUS

    stored = chromadb.HttpClient(host="127.0.0.1", port=chroma).get_collection("stdlib-docs").get(
        ids=["argparse"], include=["embeddings"])
    np.testing.assert_allclose(np.asarray(stored["embeddings"][0], dtype=np.float32),
                               minilm.embed_texts([CORPUS["argparse"]])[0], atol=1e-5, rtol=0)


def test_langchain_openai_embeddings_with_check_embedding_ctx_length_off(server):
    pytest.importorskip("langchain_openai", reason="langchain-openai is not installed (pip install langchain-openai)")
    result = run_example("langchain_embeddings.py", "--tinyembed", server.url)
    assert result["dimensions"] == 384 and result["documents"] == 2
    assert result["scores"][0] > result["scores"][1]  # "computes embeddings" is nearer tinyembed's sentence
