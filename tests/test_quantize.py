"""output_dtype: int8 / uint8 / binary / ubinary with sentence-transformers' quantize_embeddings
semantics, checked against its committed outputs (weights/make_quantize_expected.py), then on a
real server: the calibration /v1/models reports is the shipped corpus' float vectors' ranges, and
every output_dtype x encoding_format x dimensions is the float response quantized with them;
the OpenAI SDK through extra_body; the Batch API passes output_dtype through; bad values are 400s.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import numpy as np
import openai
import pytest

from conftest import TINY_MODEL, start_server
from tinyembed.engine.quantize import corpus, quantize, ranges_for

FIXTURES = Path(__file__).resolve().parent / "fixtures"
XLMR = str(FIXTURES / "tiny-xlmr-fp32")
DTYPES = ("int8", "uint8", "binary", "ubinary")
NUMPY_DTYPE = {"int8": np.int8, "uint8": np.uint8, "binary": np.int8, "ubinary": np.uint8}
TEXTS = ["The quick brown fox jumps over the lazy dog.", "What is the capital of France?",
         "Embeddings place similar sentences close together in space.", "Die Straße ist schön."]


@pytest.fixture(scope="module")
def st():
    return np.load(FIXTURES / "quantize_expected.npz")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cut", [False, True])
def test_matches_sentence_transformers(st, dtype, cut):
    vectors, calibration, key = st["vectors"], st["calibration"], dtype
    if cut:  # Matryoshka: truncate and renormalize the vectors; ranges from the calibration cut the same way
        d = int(st["cut"])
        vectors = vectors[:, :d] / np.linalg.norm(vectors[:, :d], axis=1, keepdims=True)
        key = f"{dtype}_cut"
    want = st[key]
    got = quantize(vectors.astype(np.float32), dtype, ranges_for(calibration, int(st["cut"]) if cut else None))
    assert got.dtype == want.dtype and got.shape == want.shape
    if dtype.endswith("binary"):
        assert np.array_equal(got, want)  # bit for bit
    else:
        step = np.abs(got.astype(int) - want.astype(int))
        assert step.max() <= 1, step.max()  # within one step (float rounding at a boundary)
        assert (step == 0).mean() > 0.99


# -- on a real server -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qserver(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("q-batches")
    cache = tmp_path_factory.mktemp("q-cache")  # a fresh calibration: computed at load, then cached
    proc = start_server(tmp_path_factory, "quantize", ["--model", f"tiny={TINY_MODEL}", "--model", f"xlmr={XLMR}",
                                                      "--data-dir", str(data_dir)],
                        env={"TINYEMBED_CACHE_DIR": str(cache)})
    proc.cache = cache
    yield proc
    assert proc.stop() == 0, proc.log()


def embed(server, **body):
    reply = server.request("POST", "/v1/embeddings", body)
    assert reply.status == 200, reply
    return reply.json()


def rows(body: dict, dtype: str) -> np.ndarray:
    data = [d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])]
    if isinstance(data[0], str):
        return np.stack([np.frombuffer(base64.b64decode(r), dtype="<f4" if dtype == "float" else NUMPY_DTYPE[dtype])
                         for r in data])
    return np.array(data, dtype=np.float32 if dtype == "float" else NUMPY_DTYPE[dtype])


@pytest.fixture(scope="module")
def calibration(qserver):
    """The shipped corpus' float vectors from the server, per model."""
    return {m: rows(embed(qserver, model=m, input=corpus(), truncate=True), "float") for m in ("tiny", "xlmr")}


def test_models_report_the_corpus_ranges(qserver, calibration):
    cards = {c["id"]: c for c in qserver.request("GET", "/v1/models").json()["data"]}
    for model, vectors in calibration.items():
        q = cards[model]["quantization"]
        assert q["output_dtypes"] == ["float", "int8", "uint8", "binary", "ubinary"]
        assert q["calibration_texts"] == len(corpus()) and q["calibration_corpus"].startswith("tinyembed-calibration")
        np.testing.assert_allclose(q["int8_ranges"], [vectors.min(axis=0), vectors.max(axis=0)], atol=1e-5)
    assert list(qserver.cache.glob("calibration/*.npz")), "calibration was not stored"


@pytest.mark.parametrize("model", ["tiny", "xlmr"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fmt", ["float", "base64"])
@pytest.mark.parametrize("dimensions", [None, 20])
def test_output_dtype_is_the_float_response_quantized(qserver, calibration, model, dtype, fmt, dimensions):
    extra = {"dimensions": dimensions} if dimensions else {}
    floats = rows(embed(qserver, model=model, input=TEXTS, **extra), "float")
    body = embed(qserver, model=model, input=TEXTS, output_dtype=dtype, encoding_format=fmt, **extra)
    got = rows(body, dtype)
    want = quantize(floats, dtype, ranges_for(calibration[model], dimensions))
    assert got.dtype == want.dtype and got.shape == want.shape
    if dtype.endswith("binary"):
        assert np.array_equal(got, want)
    else:  # the server's calibration vectors may differ from these by batch-order rounding (<= 1e-5)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1 and (got == want).mean() > 0.98
    width = dimensions or 32
    assert got.shape == (len(TEXTS), width if dtype.endswith("int8") else (width + 7) // 8)
    assert body["usage"]["prompt_tokens"] > 0


def test_openai_sdk_extra_body(qserver):
    client = openai.OpenAI(base_url=qserver.url + "/v1", api_key="unused", max_retries=0)
    out = client.embeddings.create(model="tiny", input=TEXTS, encoding_format="float",
                                   extra_body={"output_dtype": "ubinary"})
    packed = np.array([d.embedding for d in out.data], dtype=np.uint8)
    floats = rows(embed(qserver, model="tiny", input=TEXTS), "float")
    assert np.array_equal(packed, np.packbits(floats > 0, axis=-1))


@pytest.mark.parametrize("body,param", [
    ({"output_dtype": "int4"}, "output_dtype"),
    ({"output_dtype": "float16"}, "output_dtype"),
    ({"output_dtype": "binary", "encoding_format": "binary"}, "encoding_format"),
    ({"output_dtype": 8}, "output_dtype"),
])
def test_bad_output_dtype_is_400(qserver, body, param):
    reply = qserver.request("POST", "/v1/embeddings", {"model": "tiny", "input": "hi", **body})
    assert reply.status == 400 and reply.error["param"] == param, reply


def test_batch_api_passes_output_dtype_through(qserver):
    client = openai.OpenAI(base_url=qserver.url + "/v1", api_key="unused", max_retries=0)
    lines = [{"custom_id": dtype, "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "tiny", "input": TEXTS, "output_dtype": dtype, "encoding_format": "base64"}}
             for dtype in DTYPES]
    upload = client.files.create(file=("q.jsonl", "\n".join(map(json.dumps, lines)).encode()), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed", "expired", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.05)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    results = {r["custom_id"]: r["response"]["body"]
               for r in map(json.loads, client.files.content(batch.output_file_id).text.splitlines())}
    for dtype in DTYPES:
        live = rows(embed(qserver, model="tiny", input=TEXTS, output_dtype=dtype), dtype)
        assert np.array_equal(rows(results[dtype], dtype), live)
