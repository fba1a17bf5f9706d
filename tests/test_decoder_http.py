"""Decoder embedders served by a real tinyembed process next to MiniLM, through the openai SDK."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest

from tinyembed.engine import load_engine

from conftest import ROOT, start_server

QWEN3 = ROOT / "tests" / "fixtures" / "tiny-qwen3"
GTE = ROOT / "tests" / "fixtures" / "tiny-qwen2-gte"
TEXTS = ["hello", "What is the capital of France?", "Rivers carry sand and silt from the mountains down to the sea."]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    proc = start_server(tmp_path_factory, "decoders", [
        "--model", "all-MiniLM-L6-v2", "--model", f"qwen3={QWEN3}", "--model", f"gte={GTE}"])
    with openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0) as client:
        yield proc, client
    assert proc.stop() == 0, proc.log()


@pytest.fixture(scope="module")
def engines():
    return {"qwen3": load_engine(str(QWEN3)), "gte": load_engine(str(GTE))}


def floats(response) -> np.ndarray:
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)], dtype=np.float32)


def decoded(response) -> np.ndarray:
    return np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in response.data])


@pytest.mark.parametrize("model", ["qwen3", "gte"])
def test_float_and_base64_agree_and_equal_the_engine(served, engines, model):
    _, client = served
    as_floats = floats(client.embeddings.create(model=model, input=TEXTS, encoding_format="float"))
    as_base64 = decoded(client.embeddings.create(model=model, input=TEXTS, encoding_format="base64"))
    np.testing.assert_allclose(as_floats, as_base64, atol=1e-6)  # two requests: batches may differ
    np.testing.assert_allclose(as_floats, engines[model].embed_texts(TEXTS), atol=1e-5)
    default = client.embeddings.create(model=model, input=TEXTS)  # the SDK's base64, decoded by it
    np.testing.assert_allclose(floats(default), as_floats, atol=1e-6)


@pytest.mark.parametrize("model", ["qwen3", "gte"])
def test_usage_counts_the_real_tokens_including_eos(served, engines, model):
    _, client = served
    tokenizer = engines[model].tokenizer
    response = client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    sequences = tokenizer.encode(TEXTS)
    assert all(tokenizer.tokens(s)[-1] == "<|endoftext|>" for s in sequences)
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(len(s) for s in sequences)


def test_prompt_name_and_input_type(served, engines):
    _, client = served
    named = client.embeddings.create(model="qwen3", input=TEXTS, encoding_format="float",
                                     extra_body={"prompt_name": "query"})
    typed = client.embeddings.create(model="qwen3", input=TEXTS, encoding_format="float",
                                     extra_body={"input_type": "query"})
    plain = client.embeddings.create(model="qwen3", input=TEXTS, encoding_format="float")
    np.testing.assert_allclose(floats(named), engines["qwen3"].embed_texts(TEXTS, prompt_name="query"), atol=1e-5)
    np.testing.assert_allclose(floats(named), floats(typed), atol=1e-5)
    assert np.abs(floats(named) - floats(plain)).max() > 1e-2
    assert named.usage.prompt_tokens > plain.usage.prompt_tokens  # the prompt's tokens are counted


def test_unknown_prompt_name_is_a_400_naming_it(served):
    _, client = served
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="qwen3", input="x", extra_body={"prompt_name": "web_search_query"})
    body = err.value.body
    assert body["param"] == "prompt_name" and body["code"] == "invalid_request"
    assert "query" in body["message"] and "document" in body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="qwen3", input=[[1, 2, 3]], extra_body={"prompt_name": "query"})
    assert err.value.body["param"] == "prompt_name"


def test_dimensions_and_minilm_in_the_same_process(served, engines):
    _, client = served
    short = floats(client.embeddings.create(model="qwen3", input=TEXTS, dimensions=32, encoding_format="float"))
    assert short.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-6)
    minilm = floats(client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS, encoding_format="float"))
    assert minilm.shape == (3, 384)


def test_models_report_family_dimensions_length_and_prompts(served):
    proc, client = served
    cards = {m.id: m for m in client.models.list().data}
    qwen3 = proc.request("GET", "/v1/models/qwen3").json()
    assert (qwen3["family"], qwen3["dimensions"], qwen3["max_input_tokens"]) == ("qwen3", 64, 128)
    assert qwen3["prompts"] == ["query", "document"]
    assert cards["gte"].family == "qwen2" and cards["all-MiniLM-L6-v2"].family == "bert"
    spec = proc.request("GET", "/openapi.json").json()["components"]["schemas"]["EmbeddingRequest"]
    assert "prompt_name" in spec["properties"]
