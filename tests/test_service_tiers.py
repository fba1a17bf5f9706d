"""Service tiers with per-key rate limits on, through the real openai client:

    default (and unset)  over the key's budget -> 429 rate_limit_exceeded
    auto                 over the budget -> runs at the over-limit tier; the response says so
    flex                 takes nothing from the budget, runs at the lowest tier
"""

from __future__ import annotations

import openai
import pytest

from conftest import TINY_MODEL, start_server

RPM = 3


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    proc = start_server(tmp_path_factory, "tiers-limited", [
        "--model", f"tiny={TINY_MODEL}", "--rate-limit-rpm", str(RPM), "--rate-limit-tpm", "100000",
        *(arg for key in ("k-auto", "k-default", "k-flex") for arg in ("--api-key", key))])
    yield proc
    assert proc.stop() == 0, proc.log()


def client(proc, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proc.url + "/v1", api_key=key, max_retries=0)


def embed(c: openai.OpenAI, tier: str | None, text: str = "hello"):
    body = {"service_tier": tier} if tier is not None else None
    return c.embeddings.create(model="tiny", input=text, extra_body=body)


def tier_of(response) -> str:
    return response.model_extra["service_tier"]


def test_auto_over_the_limit_runs_at_over_limit(limited):
    c = client(limited, "k-auto")
    assert [tier_of(embed(c, "auto")) for _ in range(RPM)] == ["default"] * RPM
    over = embed(c, "auto", "still answered")
    assert tier_of(over) == "over-limit"
    assert len(over.data[0].embedding) > 0
    with pytest.raises(openai.RateLimitError):  # the same key asking for default is refused
        embed(c, "default")
    with pytest.raises(openai.RateLimitError):  # and so is one that names no tier
        embed(c, None)
    assert limited.metric("tinyembed_scheduler_request_queue_seconds_count", model="tiny", tier="over-limit") >= 1


def test_default_over_the_limit_is_429(limited):
    c = client(limited, "k-default")
    for _ in range(RPM):
        assert tier_of(embed(c, "default")) == "default"
    with pytest.raises(openai.RateLimitError) as caught:
        embed(c, "default")
    assert caught.value.status_code == 429
    assert caught.value.body["code"] == "rate_limit_exceeded"


def test_flex_takes_nothing_from_the_budget(limited):
    c = client(limited, "k-flex")
    for _ in range(2 * RPM):
        assert tier_of(embed(c, "flex")) == "flex"
    # the whole budget is still there for interactive requests
    assert [tier_of(embed(c, None)) for _ in range(RPM)] == ["default"] * RPM
    with pytest.raises(openai.RateLimitError):
        embed(c, None)
    assert tier_of(embed(c, "flex")) == "flex"  # and flex still runs once it is spent


def test_auto_over_the_token_budget_runs_at_over_limit(tmp_path_factory):
    proc = start_server(tmp_path_factory, "tiers-tpm", ["--model", f"tiny={TINY_MODEL}", "--rate-limit-tpm", "40",
                                                        "--api-key", "k-tokens"])
    try:
        c = client(proc, "k-tokens")
        text = " ".join(["word"] * 30)  # ~32 tokens: one fits the 40-token budget, two do not
        assert tier_of(embed(c, "auto", text)) == "default"
        assert tier_of(embed(c, "auto", text)) == "over-limit"
        with pytest.raises(openai.RateLimitError):
            embed(c, "default", text)
    finally:
        assert proc.stop() == 0, proc.log()
