"""Prompts that hold the text's place (`{}` / `{text}`): bge-en-icl's query format
`<instruct>{task}\\n<query>{query}\\n<response>` exactly as FlagEmbedding's ICLLLMEmbedder builds
it (the suffix kept under truncation), and usage counting the real tokens, on a tiny Mistral
checkpoint given bge-en-icl's prompt (its tokenizer adds <s> and, by add_eos_token, </s>)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import openai
import pytest
from tokenizers import Tokenizer as HFTokenizer

from tinyembed.common.errors import InputError
from tinyembed.engine import load_engine
from tinyembed.engine.text.tokenize import split_prompt

from conftest import start_server
from engine_fixtures import FIXTURES

TASK = "Given a web search query, retrieve relevant passages that answer the query."
ICL_QUERY = f"<instruct>{TASK}\n<query>{{}}\n<response>"  # FlagEmbedding: query_instruction_format + suffix
QUERY = "how much protein should a female eat"


@pytest.fixture(scope="module")
def icl_dir(tmp_path_factory):
    """tiny-mistral with bge-en-icl-style prompts: a template for queries, `{text}` for another."""
    path = tmp_path_factory.mktemp("icl") / "tiny-icl"
    shutil.copytree(FIXTURES / "tiny-mistral", path)
    (path / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {
        "query": ICL_QUERY, "named": "A: {text} :Z", "prefix_only": "prefix: "}}))
    return path


@pytest.fixture(scope="module")
def engine(icl_dir):
    return load_engine(str(icl_dir))


def reference_ids(path, text: str) -> list[int]:
    """What FlagEmbedding feeds the model: the whole string with the tokenizer's specials; raw
    `tokenizers` adds <s> only, so </s> (add_eos_token in tokenizer_config.json) is appended."""
    raw = HFTokenizer.from_file(str(path / "tokenizer.json"))
    return raw.encode(text).ids + [raw.token_to_id("</s>")]


def test_split_prompt():
    assert split_prompt("a {} b {}") == ("a ", " b {}")  # the first placeholder only
    assert split_prompt("x {text} y") == ("x ", " y")
    assert split_prompt("plain: ") == ("plain: ", "")
    assert split_prompt("") == ("", "")


def test_icl_query_is_flagembedding_format_exactly(engine, icl_dir):
    got = engine.tokenizer.encode([QUERY], input_type="query")[0]
    want = reference_ids(icl_dir, f"<instruct>{TASK}\n<query>{QUERY}\n<response>")
    assert got.tolist() == want
    tokens = engine.tokenizer.tokens(got)
    assert tokens[0] == "<s>" and tokens[-1] == "</s>"
    # the vector is the one of the full string typed by hand, not of the prefix-only form
    typed = engine.embed_texts([f"<instruct>{TASK}\n<query>{QUERY}\n<response>"])
    np.testing.assert_allclose(engine.embed_texts([QUERY], input_type="query"), typed, atol=1e-6)
    prefix_only = engine.embed_texts([f"<instruct>{TASK}\n<query>{QUERY}"])
    assert float(prefix_only[0] @ typed[0]) < 0.9999


def test_named_template_and_plain_prefix(engine, icl_dir):
    got = engine.tokenizer.encode(["middle"], prompt_name="named")[0]
    assert got.tolist() == reference_ids(icl_dir, "A: middle :Z")
    got = engine.tokenizer.encode(["middle"], prompt_name="prefix_only")[0]
    assert got.tolist() == reference_ids(icl_dir, "prefix: middle")
    assert engine.tokenizer.encode(["doc"], input_type="document")[0].tolist() == reference_ids(icl_dir, "doc")


def test_truncation_cuts_the_text_and_keeps_the_suffix(engine, icl_dir):
    limit = engine.tokenizer.max_length
    long_text = " ".join(["protein intake for adults"] * 200)
    with pytest.raises(InputError, match="more than this model's maximum"):
        engine.tokenizer.encode([long_text], input_type="query")
    ids = engine.tokenizer.encode([long_text], truncate=True, input_type="query")[0]
    assert len(ids) <= limit and len(ids) >= limit - 8
    suffix = HFTokenizer.from_file(str(icl_dir / "tokenizer.json")).encode("\n<response>", add_special_tokens=False).ids
    tail = ids[-1 - len(suffix):-1].tolist()
    assert tail == suffix and engine.tokenizer.tokens(ids)[-1] == "</s>"
    prefix_part = reference_ids(icl_dir, f"<instruct>{TASK}\n<query>")[:-1]
    assert ids[:len(prefix_part)].tolist() == prefix_part


def test_usage_counts_the_template_tokens(tmp_path_factory, icl_dir):
    proc = start_server(tmp_path_factory, "icl", ["--model", f"icl={icl_dir}"])
    try:
        with openai.OpenAI(base_url=proc.url + "/v1", api_key="unused", max_retries=0) as client:
            reply = client.embeddings.create(model="icl", input=[QUERY, "summit"], extra_body={"input_type": "query"})
            want = sum(len(reference_ids(icl_dir, f"<instruct>{TASK}\n<query>{q}\n<response>")) for q in (QUERY, "summit"))
            assert reply.usage.prompt_tokens == want == reply.usage.total_tokens
            engine = load_engine(str(icl_dir))
            vectors = np.array([d.embedding for d in reply.data], np.float32)
            np.testing.assert_allclose(vectors, engine.embed_texts([QUERY, "summit"], input_type="query"), atol=1e-5)
    finally:
        assert proc.stop() == 0, proc.log()
