"""Tokenization: truncation at the model's length, specials, prompts, token-id inputs."""

from __future__ import annotations

import numpy as np
import pytest

from tinyembed.engine import load_engine
from tinyembed.common.errors import InputError

from engine_fixtures import FIXTURES


@pytest.fixture(scope="module")
def minilm():
    return load_engine("all-MiniLM-L6-v2")


def test_max_length_comes_from_sentence_transformers_config(minilm):
    assert minilm.tokenizer.max_length == 256 == minilm.info.max_input_tokens


def test_xlmr_max_length_without_sentence_config_is_positions_minus_offset(tmp_path):
    import shutil

    target = tmp_path / "m"
    shutil.copytree(FIXTURES / "tiny-xlmr-fp32", target)
    (target / "sentence_bert_config.json").unlink()
    assert load_engine(str(target)).tokenizer.max_length == 66 - 2


def test_specials_are_added_and_counted(minilm):
    (ids,) = minilm.tokenizer.encode(["hello"])
    assert minilm.tokenizer.tokens(ids) == ["[CLS]", "hello", "[SEP]"]


def test_over_long_input_is_an_error_unless_truncating(minilm):
    text = "word " * 400
    with pytest.raises(InputError) as info:
        minilm.tokenizer.encode(["short", text])
    assert info.value.code == "context_length_exceeded"
    assert "Input 1 has 402 tokens" in str(info.value) and "256" in str(info.value)
    (ids,) = minilm.tokenizer.encode([text], truncate=True)
    assert len(ids) == 256 and minilm.tokenizer.tokens(ids[-1:]) == ["[SEP]"]


def test_input_exactly_at_the_limit_is_accepted(minilm):
    (ids,) = minilm.tokenizer.encode(["word " * 254])
    assert len(ids) == 256


def test_prompts_for_query_and_document():
    engine = load_engine(str(FIXTURES / "tiny-xlmr-fp32"))
    tok = engine.tokenizer
    assert tok.prompts == {"query": "query: ", "document": "passage: "}
    (plain,), (query,) = tok.encode(["hello"]), tok.encode(["hello"], input_type="query")
    (direct,) = tok.encode(["query: hello"])
    np.testing.assert_array_equal(query, direct)
    assert len(query) > len(plain)
    with pytest.raises(InputError) as info:
        tok.encode(["hello"], input_type="code")
    assert info.value.param == "input_type"


def test_model_without_prompts_ignores_input_type():
    tok = load_engine(str(FIXTURES / "tiny-bert-fp16")).tokenizer
    np.testing.assert_array_equal(tok.encode(["hi"], input_type="document")[0], tok.encode(["hi"])[0])


def test_token_ids_are_used_exactly_as_given(minilm):
    (ids,) = minilm.tokenizer.check_ids([[7592, 2088]])
    assert ids.tolist() == [7592, 2088]  # no specials added
    with pytest.raises(InputError, match="empty list"):
        minilm.tokenizer.check_ids([[]])
    with pytest.raises(InputError) as info:
        minilm.tokenizer.check_ids([list(range(300))])
    assert info.value.code == "context_length_exceeded"
    (cut,) = minilm.tokenizer.check_ids([list(range(300))], truncate=True)
    assert len(cut) == 256
