"""The CPU engine against its references: sentence-transformers on the real all-MiniLM-L6-v2
(golden vectors), transformers on tiny random BERT and XLM-R checkpoints in fp32/fp16/bf16.
Every test runs twice, on the numpy ops and on the C kernels (the `ops` fixture)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tinyembed.engine import Engine
from tinyembed.engine.checkpoints import registry
from tinyembed.engine.families.bert import EncoderModel
from tinyembed.engine.ops.numpy_ops import NumpyOps
from tinyembed.engine.families import read_spec
from tinyembed.engine.checkpoints.weights import load_params

from engine_fixtures import FIXTURES, TINY_MODELS, minilm_golden, tiny_expected, tiny_texts


@pytest.fixture(scope="module", params=["numpy", "c"])
def ops(request):
    if request.param == "numpy":
        return NumpyOps(threads=2)
    from test_ops_c import _library
    from tinyembed.engine.ops.c_ops import COps

    return COps(_library(), threads=2)


def load_engine(model: str, ops) -> Engine:
    return Engine(model, read_spec(registry.resolve(model)), ops)


@pytest.fixture(scope="module")
def minilm(ops) -> Engine:
    return load_engine("all-MiniLM-L6-v2", ops)


def test_minilm_matches_sentence_transformers_golden_vectors(minilm):
    meta, golden = minilm_golden()
    assert len(meta["texts"]) >= 64
    sequences = minilm.tokenizer.encode(meta["texts"], truncate=True)
    assert [len(s) for s in sequences] == meta["token_counts"]
    assert max(meta["token_counts"]) == 256  # some texts really were truncated
    vectors = minilm.embed_sequences(sequences)
    cosines = np.einsum("ij,ij->i", vectors, golden)
    assert cosines.min() >= 0.99999, f"worst text: {meta['texts'][int(cosines.argmin())]!r}"
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_model_tokenization_matches_reference(name, ops):
    engine = load_engine(str(FIXTURES / name), ops)
    expected = tiny_expected(name)
    sequences = engine.tokenizer.encode(tiny_texts(), truncate=True)
    np.testing.assert_array_equal(np.concatenate(sequences), expected["input_ids"])
    np.testing.assert_array_equal(np.cumsum([0] + [len(s) for s in sequences]), expected["cu_seqlens"])


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("pooling,key", [("cls", "cls"), ("mean", "mean"), ("last", "last_token")])
def test_tiny_model_matches_transformers(name, pooling, key, ops):
    engine = load_engine(str(FIXTURES / name), ops)
    spec = dataclasses.replace(engine.spec, pooling=pooling)
    model = EncoderModel(spec, load_params(spec), engine.model.ops)
    expected = tiny_expected(name)
    cu = expected["cu_seqlens"]
    sequences = [expected["input_ids"][a:b] for a, b in zip(cu[:-1], cu[1:])]
    vectors = model.forward(engine.pack(sequences))
    assert np.abs(vectors - expected[key]).max() <= 1e-4


def test_pooling_comes_from_the_sentence_transformers_files(ops):
    assert load_engine(str(FIXTURES / "tiny-bert-fp32"), ops).info.pooling == "mean"
    assert load_engine(str(FIXTURES / "tiny-bert-fp16"), ops).info.pooling == "cls"
    assert load_engine(str(FIXTURES / "tiny-xlmr-fp32"), ops).info.pooling == "cls"


def test_text_gets_the_same_vector_alone_and_in_a_mixed_batch(minilm):
    meta, _ = minilm_golden()
    texts = (meta["texts"] * 2)[:64]
    sequences = minilm.tokenizer.encode(texts, truncate=True)
    assert len({len(s) for s in sequences}) > 20  # really mixed lengths
    together = minilm.embed(minilm.pack(sequences))
    alone = np.concatenate([minilm.embed(minilm.pack([s])) for s in sequences])
    assert np.abs(together - alone).max() <= 1e-5


def test_xlmr_positions_start_after_the_padding_index(ops):
    engine = load_engine(str(FIXTURES / "tiny-xlmr-fp32"), ops)
    batch = engine.pack([np.array([0, 5, 2]), np.array([0, 2])])
    assert batch.position_ids.tolist() == [2, 3, 4, 2, 3]
    assert batch.cu_seqlens.tolist() == [0, 3, 5]
    assert batch.max_len == 3


def test_dimensions_truncate_then_renormalize(minilm):
    full = minilm.embed_texts(["matryoshka dolls nest inside each other"])
    short = minilm.embed_texts(["matryoshka dolls nest inside each other"], dimensions=64)
    assert short.shape == (1, 64)
    np.testing.assert_allclose(np.linalg.norm(short), 1.0, atol=1e-6)
    np.testing.assert_allclose(short[0], full[0, :64] / np.linalg.norm(full[0, :64]), atol=1e-6)


def test_empty_batch_gives_no_vectors(minilm):
    assert minilm.embed(minilm.pack([])).shape == (0, 384)
