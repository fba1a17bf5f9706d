"""The decoder families against transformers: tiny random Qwen3, gte-Qwen2, Mistral and Gemma2
checkpoints (weights/make_tiny_decoders.py), and a Qwen3-Embedding-style sentence-transformers
directory against SentenceTransformer.encode(prompt_name=...)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinyembed.common.errors import InputError
from tinyembed.engine import load_engine

from engine_fixtures import FIXTURES, TINY_DECODERS as DECODERS

TEXTS = json.loads((FIXTURES / "decoder_texts.json").read_text())


def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name / "expected.npz") as data:
        return {key: data[key] for key in data.files}


def split(ids: np.ndarray, cu: np.ndarray) -> list[np.ndarray]:
    return [ids[a:b] for a, b in zip(cu[:-1], cu[1:])]


@pytest.fixture(scope="module", params=DECODERS)
def family(request):
    return request.param, load_engine(str(FIXTURES / request.param)), expected(request.param)


def test_tokenization_appends_the_specials_each_family_needs(family):
    name, engine, exp = family
    sequences = engine.tokenizer.encode(TEXTS["texts"], truncate=True)
    np.testing.assert_array_equal(np.concatenate(sequences), exp["input_ids"])
    np.testing.assert_array_equal(np.cumsum([0] + [len(s) for s in sequences]), exp["cu_seqlens"])


@pytest.mark.parametrize("name,first,last", [
    ("tiny-qwen3", None, "<|endoftext|>"),  # tokenizer.json appends it; never <|im_end|> (eos_token)
    ("tiny-qwen2-gte", None, "<|endoftext|>"),  # tokenizer.json adds nothing: appended for gte's auto_map
    ("tiny-mistral", "<s>", "</s>"),  # tokenizer.json adds <s> only: add_eos_token from tokenizer_config
    ("tiny-gemma2", "<bos>", None),  # add_bos_token true, add_eos_token false
])
def test_eos_rules(name, first, last):
    engine = load_engine(str(FIXTURES / name))
    ids = engine.tokenizer.encode(["hello world"])[0]
    tokens = engine.tokenizer.tokens(ids)
    assert (tokens[0] == first) if first else not tokens[0].startswith("<")
    assert (tokens[-1] == last) if last else not tokens[-1].startswith("<")
    assert tokens.count(last or "") <= 1 and tokens.count(first or "") <= 1


def test_packed_batch_of_mixed_lengths_matches_transformers(family):
    name, engine, exp = family
    sequences = split(exp["input_ids"], exp["cu_seqlens"])
    assert len({len(s) for s in sequences}) == len(sequences) and max(map(len, sequences)) == 128
    vectors = engine.embed(engine.pack(sequences))
    assert np.abs(vectors - exp["last_token"]).max() <= 1e-4


def test_each_text_alone_matches_transformers(family):
    name, engine, exp = family
    for seq, want in zip(split(exp["input_ids"], exp["cu_seqlens"]), exp["last_token"]):
        got = engine.embed(engine.pack([seq]))[0]
        assert np.abs(got - want).max() <= 1e-4, engine.tokenizer.tokens(seq)


def test_inputs_longer_than_the_sliding_window(family):
    name, engine, exp = family
    windows = [w for w in engine.spec.arch.windows if w]
    sequences = split(exp["input_ids"], exp["cu_seqlens"])
    if windows:  # mistral: every layer; gemma2: even layers
        assert sum(len(s) > 2 * max(windows) for s in sequences) >= 5
    long = [i for i, s in enumerate(sequences) if len(s) > 40]
    vectors = engine.embed(engine.pack([sequences[i] for i in long]))
    assert np.abs(vectors - exp["last_token"][long]).max() <= 1e-4


def test_queries_with_the_model_prompt(family):
    name, engine, exp = family
    sequences = engine.tokenizer.encode(TEXTS["queries"], input_type="query")
    np.testing.assert_array_equal(np.concatenate(sequences), exp["query_input_ids"])
    vectors = engine.embed_texts(TEXTS["queries"], input_type="query")
    assert np.abs(vectors - exp["query_last_token"]).max() <= 1e-4


def test_qwen3_matches_sentence_transformers_with_prompt_names():
    engine = load_engine(str(FIXTURES / "tiny-qwen3"))
    exp = expected("tiny-qwen3")
    queries = engine.embed_texts(TEXTS["queries"], prompt_name="query")
    documents = engine.embed_texts(TEXTS["texts"], prompt_name="document")
    assert np.abs(queries - exp["st_query"]).max() <= 1e-5
    assert np.abs(documents - exp["st_document"]).max() <= 1e-5
    # input_type maps onto the same prompts
    np.testing.assert_array_equal(engine.embed_texts(TEXTS["queries"], input_type="query"), queries)


def test_prompt_names_as_the_model_names_them():
    engine = load_engine(str(FIXTURES / "tiny-mistral"))  # e5-mistral style: no `query` prompt
    assert set(engine.info.prompts) == {"web_search_query", "sts_query"}
    web = engine.tokenizer.encode(["cats"], prompt_name="web_search_query")[0]
    assert engine.tokenizer.encode(["cats"], input_type="query")[0].tolist() == web.tolist()
    sts = engine.tokenizer.encode(["cats"], prompt_name="sts_query")[0]
    assert sts.tolist() != web.tolist()
    with pytest.raises(InputError) as err:
        engine.tokenizer.encode(["cats"], prompt_name="nope")
    assert err.value.param == "prompt_name" and "web_search_query" in str(err.value)
    with pytest.raises(InputError):
        engine.tokenizer.encode(["cats"], input_type="query", prompt_name="sts_query")


def test_model_info():
    info = load_engine(str(FIXTURES / "tiny-qwen3")).info
    assert (info.family, info.dimensions, info.max_input_tokens, info.pooling) == ("qwen3", 64, 128, "last")
    assert set(info.prompts) == {"query", "document"}
    families = {load_engine(str(FIXTURES / n)).info.family for n in DECODERS}
    assert families == {"qwen3", "qwen2", "mistral", "gemma2"}


def test_dimensions_truncate_then_renormalize():
    engine = load_engine(str(FIXTURES / "tiny-qwen3"))
    full = engine.embed_texts(["matryoshka"])
    short = engine.embed_texts(["matryoshka"], dimensions=32)
    assert short.shape == (1, 32)
    np.testing.assert_allclose(short[0], full[0, :32] / np.linalg.norm(full[0, :32]), atol=1e-6)


def test_gte_attention_really_is_bidirectional():
    """Run causally, gte-Qwen2 would give other vectors: the flag is not decorative."""
    import dataclasses

    from tinyembed.engine.backend import build_model

    engine = load_engine(str(FIXTURES / "tiny-qwen2-gte"))
    exp = expected("tiny-qwen2-gte")
    spec = engine.spec
    causal = dataclasses.replace(spec, arch=dataclasses.replace(spec.arch, causal=True))
    model = build_model(causal, engine.model.ops)
    vectors = model.forward(engine.pack(split(exp["input_ids"], exp["cu_seqlens"])))
    assert np.abs(vectors - exp["last_token"]).max() > 1e-2


def test_cli_embed_with_a_prompt_name():
    import subprocess
    import sys

    path = str(FIXTURES / "tiny-qwen3")
    done = subprocess.run([sys.executable, "-m", "tinyembed.cli", "embed", "--model", path, "--prompt-name", "query",
                           "capital of France"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.splitlines()[0])
    want = load_engine(path).embed_texts(["capital of France"], prompt_name="query")[0]
    np.testing.assert_allclose(line["embedding"], want, atol=1e-6)
    bad = subprocess.run([sys.executable, "-m", "tinyembed.cli", "embed", "--model", path, "--prompt-name", "nope", "x"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "prompt_name" in bad.stderr and "Traceback" not in bad.stderr


def test_a_sequence_longer_than_the_model_maximum_is_a_clear_error():
    engine = load_engine(str(FIXTURES / "tiny-qwen3"))
    limit = engine.info.max_input_tokens
    ok = engine.embed_sequences([np.full(limit, 5, np.int32)])  # exactly the maximum: the RoPE table's last row
    assert ok.shape == (1, engine.info.dimensions) and np.isfinite(ok).all()
    with pytest.raises(InputError, match=f"{limit + 1} tokens is longer than this model's maximum of {limit}") as err:
        engine.embed_sequences([np.full(3, 5, np.int32), np.full(limit + 1, 5, np.int32)])
    assert err.value.code == "context_length_exceeded"
