"""The text cap (engine/text/textcap.py) never changes what the tokenizer would say about the full
text: truncating gives exactly the tokenizer's own truncation of the whole input, a count in an
error is a true lower bound, and an input it cannot settle is refused rather than guessed.

A property test over random unicode, control characters (U+001C..U+001F: Python's isspace()
says whitespace, BERT's normalizer deletes them), punctuation runs, long words, whitespace runs,
combining marks and CJK, against the tokenizer of each family we load. The tokenizers are given
a small max_length so that texts of a few hundred characters reach the cut.
"""

from __future__ import annotations

import copy
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyembed.common.errors import InputError
from tinyembed.engine import load_engine
from tinyembed.engine.text import textcap

from engine_fixtures import FIXTURES

EXAMPLES = int(os.environ.get("TEXTCAP_EXAMPLES", "300"))  # more for a deeper local run
PROPERTY = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
SMALL_MAX = 12  # tokens: cuts at 96 and 768 characters

pieces = st.sampled_from([
    " ", "  ", "\t", "\n", "\r\n", "\x1c", "\x1d", "\x1e", "\x1f", "\x00", "\u00a0", "\u2028", "\u3000",
    ".", "...", "!?", "-", "'s", "\u0301", "e\u0301", "\u00e9", "\ufb01", "\u2460", "\u4e2d\u6587", "\U0001f600",
    "word", "Hello", "tokenizer", "a" * 40, "x" * 120, "ab" * 70, ".," * 30, " " * 50, "\x1c" * 30,
    "'ll", "'S", "1234567", "3.14", "\r\n\r\n", "\u0915\u094d\u0937", "\u05e9\u05dc\u05d5\u05dd", "\u200b", "\ufeff",
    "\u00ad", "\uff21\uff22", "\u2167", "A\u030a", "\u1100\u1161", "\U0001d400", "\u0130", "\u03a3\u03a3",
])
texts = st.lists(pieces | st.text(max_size=12), min_size=1, max_size=160).map("".join)


def small(path: str):
    tokenizer = copy.copy(load_engine(path).tokenizer)
    tokenizer._tok = copy.deepcopy(tokenizer._tok)  # the engine's own keeps its max_length
    tokenizer.max_length = SMALL_MAX
    tokenizer._tok.enable_truncation(SMALL_MAX)
    tokenizer.char_limit = SMALL_MAX * textcap.MAX_CHARS_PER_TOKEN
    return tokenizer


TOKENIZERS = {"minilm": "all-MiniLM-L6-v2", "xlmr": str(FIXTURES / "tiny-xlmr-fp32"),
              "qwen3": str(FIXTURES / "tiny-qwen3")}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def tokenizer(request):
    return small(TOKENIZERS[request.param])


def full(tokenizer, text: str, prompt: str = ""):
    """The tokenizer's own answer for the whole text: (truncated ids, total tokens)."""
    enc = tokenizer._tok.encode(prompt + text, add_special_tokens=True)
    total = len(enc.ids) + sum(len(o.ids) - tokenizer.num_special for o in enc.overflowing)
    return enc.ids, total


def check(tokenizer, text: str, input_type=None) -> str:
    prompt = tokenizer.prompt(input_type)
    ids, total = full(tokenizer, text, prompt)
    try:
        (ours,) = tokenizer.encode([text], truncate=True, input_type=input_type)
        assert ours.tolist() == ids, "truncation differs from the tokenizer's own"
        outcome = "truncated"
    except InputError as exc:  # refused even with truncate on: only an input longer than the cap
        assert exc.code == "context_length_exceeded"
        assert len(text) > tokenizer.char_limit - len(prompt) and "do not settle" in str(exc)
        return "refused"
    try:
        (ours,) = tokenizer.encode([text], input_type=input_type)
        assert total <= tokenizer.max_length and ours.tolist() == ids
    except InputError as exc:
        assert total > tokenizer.max_length, f"refused a {total}-token text: {exc}"
        stated = int(re.search(r" has (?:at least )?(\d+) tokens", str(exc)).group(1))
        assert stated <= total, "an error claimed more tokens than the text has"
    return outcome


@PROPERTY
@given(text=texts)
def test_cut_truncation_is_the_tokenizers_own(tokenizer, text):
    check(tokenizer, text)


@PROPERTY
@given(text=texts, filler=st.sampled_from(["", "word ", "a.b ", "\x1c", "lorem ipsum, "]),
       input_type=st.sampled_from([None, "query"]))
def test_long_texts_truncate_exactly(tokenizer, text, filler, input_type):
    """Past the first cut (8 characters per token) with the interesting bits near the cut; with
    the model's prompt in front where it has one (xlmr: "query: ")."""
    head = filler * (textcap.FIRST_CHARS_PER_TOKEN * SMALL_MAX // max(1, len(filler)) - 3) if filler else ""
    check(tokenizer, head + text, input_type if tokenizer.input_type_prompts else None)


def test_the_issues_cases_are_exact(tokenizer):
    """A text whose cut would fall on U+001C or inside a word after punctuation."""
    for text in ["ab\x1c" + "cd " * 200, "x" * 95 + ".yyyyyyyy" * 40, ("a\x1cb" * 300), ("word. " * 15) + "z" * 900]:
        check(tokenizer, text)


def test_ordinary_long_text_is_settled_by_the_first_cut(tokenizer):
    """Prose is never refused: its first cut already settles it, truncate on or off."""
    text = "The quick brown fox jumps over the lazy dog, again and again. " * 2000
    (ids,) = tokenizer.encode([text], truncate=True)
    assert ids.tolist() == full(tokenizer, text)[0]
    with pytest.raises(InputError, match="at least"):
        tokenizer.encode([text])


def test_real_max_length_on_a_15_mb_text_is_exact():
    minilm = load_engine("all-MiniLM-L6-v2").tokenizer
    text = ("alpha\x1cbeta gamma. " * 40) + "tokens and words " * 900_000
    (ids,) = minilm.encode([text], truncate=True)
    head = text[:minilm.max_length * 10]  # long enough to hold max_length tokens: the tokenizer on it
    assert ids.tolist() == minilm._tok.encode(head).ids
    assert np.all(ids[1:-1] != minilm._tok.token_to_id("[UNK]"))


@pytest.mark.parametrize("text", [" " * 2000 + "word", "\x1c" * 2000 + "word", "x" * 2000, "a." + "\u0301" * 2000])
def test_an_unsettled_text_is_refused_not_guessed(tokenizer, text):
    """Past max_length x 64 characters without enough settled tokens: refused, truncate on or off
    (the tokenizer's own truncation of such a text may depend on characters never read)."""
    for truncate in (True, False):
        with pytest.raises(InputError, match="do not settle") as info:
            tokenizer.encode([text], truncate=truncate)
        assert info.value.code == "context_length_exceeded"
    (ids,) = tokenizer.encode([text[:tokenizer.char_limit]], truncate=True)  # within the cap: exact
    assert ids.tolist() == full(tokenizer, text[:tokenizer.char_limit])[0]
