"""The real `openai` Python SDK (sync and async) against a real tinyembed process.

Vectors must equal the engine's own for the same inputs (within 1e-6: conftest.assert_same_vectors), on the SDK's default base64 path and
on explicit floats; errors must surface as the SDK's exception types carrying our codes.
"""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
import openai
import pytest

from conftest import assert_same_vectors
from tinyembed.engine.families.bert import truncate_dimensions

TEXTS = ["The quick brown fox jumps over the lazy dog.", "hello world",
         "Embeddings map text to vectors; similar texts land close together."]


def vectors_of(response) -> np.ndarray:
    """Floats, or base64 strings when the caller asked for base64 explicitly (the SDK then
    leaves them as sent: little-endian float32)."""
    rows = [item.embedding for item in sorted(response.data, key=lambda d: d.index)]
    if isinstance(rows[0], str):
        return np.stack([np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows])
    return np.array(rows, dtype=np.float32)


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as c:
        yield c


def guarded(server, key: str, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=retries)


# -- inputs, formats, fields ------------------------------------------------------------------------

def test_single_string_default_base64_path_equals_engine(client, minilm):
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[0])
    assert len(response.data) == 1 and response.data[0].index == 0
    assert_same_vectors(vectors_of(response), minilm.embed_texts([TEXTS[0]]))
    assert response.model == "all-MiniLM-L6-v2"
    assert response.usage.prompt_tokens == response.usage.total_tokens == len(minilm.tokenizer.encode([TEXTS[0]])[0])


def test_list_of_strings_explicit_float_equals_engine(client, minilm):
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS, encoding_format="float")
    assert [d.index for d in response.data] == [0, 1, 2]
    assert all(isinstance(d.embedding[0], float) for d in response.data)
    assert_same_vectors(vectors_of(response), minilm.embed_texts(TEXTS))
    assert response.usage.prompt_tokens == sum(len(s) for s in minilm.tokenizer.encode(TEXTS))


def test_token_ids_are_used_exactly_as_given(client, minilm):
    ids = [101, 7592, 2088, 102]  # [CLS] hello world [SEP]
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=ids)
    assert_same_vectors(vectors_of(response), minilm.embed_sequences([np.array(ids, np.int32)]))
    np.testing.assert_allclose(vectors_of(response), minilm.embed_texts(["hello world"]), atol=1e-6)
    assert response.usage.prompt_tokens == 4  # no specials added to id inputs
    bare = client.embeddings.create(model="all-MiniLM-L6-v2", input=[7592, 2088])
    assert bare.usage.prompt_tokens == 2


def test_list_of_token_id_lists(client, minilm):
    lists = [[101, 7592, 102], [101, 2088, 2003, 2307, 102]]
    response = client.embeddings.create(model="all-MiniLM-L6-v2", input=lists, encoding_format="float")
    expected = minilm.embed_sequences([np.array(x, np.int32) for x in lists])
    assert_same_vectors(vectors_of(response), expected)
    assert response.usage.total_tokens == 8


def test_dimensions_64_is_truncated_and_unit_norm(client, minilm):
    for fmt in ("base64", "float"):
        response = client.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS, dimensions=64,
                                            encoding_format=fmt)
        vectors = vectors_of(response)
        assert vectors.shape == (3, 64)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
        assert_same_vectors(vectors, truncate_dimensions(minilm.embed_texts(TEXTS), 64))


@pytest.mark.parametrize("tier,echo", [("priority", "priority"), ("flex", "flex"), ("auto", "default"),
                                       (None, "default")])
def test_service_tier_is_accepted_and_echoed(client, tier, echo):
    extra = {"service_tier": tier} if tier else None
    response = client.embeddings.create(model="tiny", input="hi", extra_body=extra)
    assert response.service_tier == echo


def test_alias_answers_like_its_model(client, minilm):
    response = client.embeddings.create(model="text-embedding-3-small", input=TEXTS[1])
    assert response.model == "text-embedding-3-small"
    assert_same_vectors(vectors_of(response), minilm.embed_texts([TEXTS[1]]))


def test_input_type_applies_the_model_prompt(client, tiny):
    query = client.embeddings.create(model="tiny", input=TEXTS, extra_body={"input_type": "query"})
    plain = client.embeddings.create(model="tiny", input=TEXTS)
    assert_same_vectors(vectors_of(query), tiny.embed_texts(TEXTS, input_type="query"))
    assert_same_vectors(vectors_of(plain), tiny.embed_texts(TEXTS))
    assert query.usage.prompt_tokens > plain.usage.prompt_tokens  # the prompt's tokens are counted


def test_models_list_and_retrieve(client):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"all-MiniLM-L6-v2", "text-embedding-3-small", "tiny"}
    assert cards["all-MiniLM-L6-v2"].dimensions == 384
    assert cards["all-MiniLM-L6-v2"].max_input_tokens == 256
    assert cards["tiny"].supported_features == ["embeddings"]
    assert (cards["tiny"].device, cards["tiny"].kernels) in (("cpu", "c"), ("cpu", "numpy"))  # which path runs
    alias = client.models.retrieve("text-embedding-3-small")
    assert alias.id == "text-embedding-3-small" and alias.root == "all-MiniLM-L6-v2"


# -- errors as the SDK's exception types --------------------------------------------------------------

def test_unknown_model_is_not_found_error(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="no-such-model", input="x")
    assert info.value.code == "model_not_found" and info.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_unknown_field_is_bad_request_naming_it(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny", input="x", extra_body={"dimension": 8})
    assert info.value.code == "unknown_parameter" and info.value.param == "dimension"


def test_over_long_input_is_context_length_exceeded(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="tiny", input="word " * 200)
    assert info.value.code == "context_length_exceeded"


def test_wrong_api_key_is_authentication_error(guarded_server):
    with guarded(guarded_server, "wrong-key") as c, pytest.raises(openai.AuthenticationError) as info:
        c.embeddings.create(model="tiny", input="x")
    assert info.value.code == "invalid_api_key"
    for key in ("k-main-secret", "k-file-secret"):  # from --api-key and from --api-key-file
        with guarded(guarded_server, key) as c:
            assert [m.id for m in c.models.list().data] == ["tiny"]


def test_requests_per_minute_limit_is_rate_limit_error(guarded_server):
    started = time.monotonic()
    with guarded(guarded_server, "k-rpm-secret") as c:
        ok = 0
        for _ in range(60):
            try:
                c.embeddings.create(model="tiny", input="x")
                ok += 1
            except openai.RateLimitError as exc:
                error = exc
                break
        else:
            pytest.fail("never rate limited")
    # a bucket of 30 requests, refilled at 0.5/s while the loop ran
    assert 30 <= ok <= 30 + (time.monotonic() - started) * 0.5 + 1
    assert error.code == "rate_limit_exceeded"
    assert int(error.response.headers["retry-after"]) >= 1
    assert int(error.response.headers["retry-after-ms"]) > 0


def test_tokens_per_minute_limit_and_retry_after_is_honoured(guarded_server):
    """Bucket: 1200 tokens/min = 20 tokens/s. Emptied, a 20-token request needs ~1s; the SDK
    waits what retry-after-ms says (longer than its own 0.5s backoff) and succeeds first retry."""
    ids = [[5] * 60 for _ in range(20)]  # exactly 1200 tokens: id inputs get no specials
    with guarded(guarded_server, "k-tpm-secret") as c:
        c.embeddings.create(model="tiny", input=ids)
        with pytest.raises(openai.RateLimitError) as info:
            c.embeddings.create(model="tiny", input=[5] * 20)
        assert 0 < int(info.value.response.headers["retry-after-ms"]) <= 1000
    before = guarded_server.metric("tinyembed_requests_total", route="/v1/embeddings", status="429")
    with guarded(guarded_server, "k-tpm-secret", retries=3) as c:
        response = c.embeddings.create(model="tiny", input=[5] * 20)
    assert response.usage.prompt_tokens == 20
    after = guarded_server.metric("tinyembed_requests_total", route="/v1/embeddings", status="429")
    assert after - before == 1  # one refusal, then the advised wait was enough


def test_request_larger_than_the_token_bucket_is_not_retried(guarded_server):
    before = guarded_server.metric("tinyembed_requests_total", route="/v1/embeddings", status="429")
    with guarded(guarded_server, "k-file-secret", retries=3) as c, pytest.raises(openai.RateLimitError) as info:
        c.embeddings.create(model="tiny", input=[[5] * 61 for _ in range(20)])
    assert info.value.response.headers["x-should-retry"] == "false"
    assert guarded_server.metric("tinyembed_requests_total", route="/v1/embeddings", status="429") - before == 1


# -- the async client ----------------------------------------------------------------------------------

def test_async_client_end_to_end(server, guarded_server, minilm):
    async def scenario():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0) as c:
            single, many, ids, floats, short = await asyncio.gather(
                c.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[0]),
                c.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS),
                c.embeddings.create(model="all-MiniLM-L6-v2", input=[[101, 7592, 102], [101, 2088, 102]]),
                c.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS, encoding_format="float"),
                c.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS, dimensions=64,
                                    extra_body={"service_tier": "priority"}),
            )
            models = await c.models.list()
            with pytest.raises(openai.NotFoundError):
                await c.embeddings.create(model="nope", input="x")
            with pytest.raises(openai.BadRequestError) as bad:
                await c.embeddings.create(model="tiny", input="x", extra_body={"stream": True})
            assert bad.value.param == "stream"
        async with openai.AsyncOpenAI(base_url=guarded_server.url + "/v1", api_key="bad", max_retries=0) as g:
            with pytest.raises(openai.AuthenticationError):
                await g.models.list()
        return single, many, ids, floats, short, models

    single, many, ids, floats, short, models = asyncio.run(scenario())
    expected = minilm.embed_texts(TEXTS)
    assert_same_vectors(vectors_of(single), expected[:1])
    assert_same_vectors(vectors_of(many), expected)
    assert_same_vectors(vectors_of(floats), expected)
    assert_same_vectors(vectors_of(ids), minilm.embed_sequences(
        [np.array([101, 7592, 102], np.int32), np.array([101, 2088, 102], np.int32)]))
    assert vectors_of(short).shape == (3, 64) and short.service_tier == "priority"
    assert_same_vectors(vectors_of(short), truncate_dimensions(expected, 64))
    assert "tiny" in [m.id for m in models.data]
