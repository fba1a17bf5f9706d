"""/docs in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium):
the page loads the routes from /openapi.json and the models from /v1/models, posts the typed
texts to /v1/embeddings and draws their cosine matrix, whose numbers must be the engine's.

Skips, with the reason, when chromium, chromedriver or selenium is missing (.ci/run installs
them). Set TINYEMBED_SCREENSHOT=path.png to keep a screenshot of the rendered page."""

from __future__ import annotations

import os
import re
import shutil

import numpy as np
import pytest

from conftest import TINY_MODEL, start_server

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # the browser tests skip; the page's own checks still run
    webdriver = None

WAIT_S = 30
TEXTS = ["The cat sat on the mat.", "A kitten was sitting on the rug.", "Stock markets fell sharply today.",
         "Shares dropped steeply this morning."]
KEY = "k-docs-page-secret"


def find(*names: str) -> str | None:
    return next((path for path in map(shutil.which, names) if path), None)


@pytest.fixture(scope="module")
def browser():
    if webdriver is None:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium, driver = find("chromium", "chromium-browser"), find("chromedriver", "chromium-driver")
    if chromium is None or driver is None:
        pytest.skip("chromium/chromedriver are not installed (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1200", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    # the system driver, given by path: selenium never downloads a browser or a driver
    chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    chrome.set_page_load_timeout(WAIT_S)
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    proc = start_server(tmp_path_factory, "docs-keyed", ["--model", f"tiny={TINY_MODEL}", "--api-key", KEY])
    yield proc
    assert proc.stop() == 0, proc.log()


def wait_for(chrome, condition, what: str):
    try:
        return WebDriverWait(chrome, WAIT_S).until(lambda _: condition())
    except TimeoutException:
        status = chrome.find_element(By.ID, "status").text
        raise AssertionError(f"timed out waiting for {what}; status line: {status!r}") from None


def model_ids(chrome) -> list[str]:
    return [o.get_attribute("value") for o in Select(chrome.find_element(By.ID, "model")).options]


def embed_on_page(chrome, texts: list[str], model: str) -> np.ndarray:
    """Types the texts, picks the model, clicks Embed; -> the matrix the page drew."""
    Select(chrome.find_element(By.ID, "model")).select_by_value(model)
    box = chrome.find_element(By.ID, "texts")
    box.clear()
    box.send_keys("\n".join(texts))
    chrome.find_element(By.ID, "embed").click()
    cells = wait_for(chrome, lambda: chrome.find_elements(By.CSS_SELECTOR, "#matrix tbody td[data-value]"),
                     "the similarity matrix")
    assert len(cells) == len(texts) ** 2
    shown = np.array([float(c.text) for c in cells]).reshape(len(texts), len(texts))
    values = np.array([float(c.get_attribute("data-value")) for c in cells]).reshape(len(texts), len(texts))
    np.testing.assert_allclose(shown, values, atol=5e-4)  # the printed numbers are the computed ones
    return values


def test_docs_page_is_one_small_self_contained_file(guarded_server):
    reply = guarded_server.request("GET", "/docs")  # no key needed, like the probes
    assert reply.status == 200 and reply.headers["content-type"] == "text/html; charset=utf-8"
    page = reply.body.decode()
    assert len(reply.body) < 16_000
    # nothing fetched from elsewhere: no absolute or protocol-relative URL, no @import
    assert re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}", page) == [] and "@import" not in page
    assert guarded_server.request("HEAD", "/docs").status == 200


def test_docs_page_lists_routes_and_draws_the_engines_cosine_matrix(browser, server, minilm):
    before = server.metric("tinyembed_requests_total", route="/v1/embeddings", status="200")
    browser.get(f"{server.url}/docs")
    assert browser.title == "tinyembed"
    routes = wait_for(browser, lambda: [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#routes tr")],
                      "the routes table")
    for route in ("POST /v1/embeddings", "GET /v1/models", "GET /metrics", "GET /docs"):
        assert any(row.startswith(route) for row in routes), (route, routes)
    wait_for(browser, lambda: "all-MiniLM-L6-v2" in model_ids(browser), "the models list")
    assert {"all-MiniLM-L6-v2", "tiny", "text-embedding-3-small"} <= set(model_ids(browser))

    matrix = embed_on_page(browser, TEXTS, "all-MiniLM-L6-v2")
    vectors = minilm.embed_texts(TEXTS)
    np.testing.assert_allclose(matrix, vectors @ vectors.T, atol=1e-5)
    assert matrix[0, 1] > matrix[0, 2] and matrix[2, 3] > matrix[1, 3]  # the pairs a person would pair
    assert server.metric("tinyembed_requests_total", route="/v1/embeddings", status="200") == before + 1
    assert "4 texts, 384 dimensions" in browser.find_element(By.ID, "status").text
    if os.environ.get("TINYEMBED_SCREENSHOT"):
        browser.save_screenshot(os.environ["TINYEMBED_SCREENSHOT"])


def test_docs_page_sends_the_api_key_it_is_given(browser, keyed_server, tiny):
    browser.get(f"{keyed_server.url}/docs")
    status = browser.find_element(By.ID, "status")
    wait_for(browser, lambda: "401" in status.text, "the 401 on /v1/models without a key")
    assert "API key" in status.text and model_ids(browser) == []

    key = browser.find_element(By.ID, "key")
    key.send_keys(KEY)
    browser.find_element(By.ID, "texts").click()  # leaving the field fires its change event
    wait_for(browser, lambda: model_ids(browser) == ["tiny"], "the models list after the key")
    matrix = embed_on_page(browser, TEXTS[:3], "tiny")
    vectors = tiny.embed_texts(TEXTS[:3])
    np.testing.assert_allclose(matrix, vectors @ vectors.T, atol=1e-5)


# -- rerank and output_dtype (issue 29) -------------------------------------------------------------

RERANKER = "tests/fixtures/tiny-reranker-bert"


@pytest.fixture(scope="module")
def rerank_server(tmp_path_factory):
    proc = start_server(tmp_path_factory, "docs-rerank", ["--model", f"tiny={TINY_MODEL}", "--model", f"rr={RERANKER}"])
    yield proc
    assert proc.stop() == 0, proc.log()


def test_docs_page_reranks_and_shows_quantized_bytes(browser, rerank_server):
    browser.get(f"{rerank_server.url}/docs")
    wait_for(browser, lambda: model_ids(browser) == ["tiny"], "the embedding models (the reranker apart)")
    rerankers = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "reranker")).options]
    assert rerankers == ["rr"]
    routes = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#routes tr")]
    assert any(row.startswith("POST /v1/rerank") for row in routes), routes
    box = browser.find_element(By.ID, "texts")
    box.clear()
    box.send_keys("\n".join(TEXTS))
    query = browser.find_element(By.ID, "query")
    query.clear()
    query.send_keys("a cat on a rug")
    browser.find_element(By.ID, "rerank").click()
    items = wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#ranking li"), "the ranking")
    api = rerank_server.request("POST", "/v1/rerank", {"model": "rr", "query": "a cat on a rug",
                                                       "documents": TEXTS}).json()["results"]
    assert [int(i.get_attribute("data-index")) for i in items] == [r["index"] for r in api]
    np.testing.assert_allclose([float(i.get_attribute("data-score")) for i in items],
                               [r["relevance_score"] for r in api], atol=1e-6)

    Select(browser.find_element(By.ID, "dtype")).select_by_visible_text("ubinary")
    browser.find_element(By.ID, "embed").click()
    shown = wait_for(browser, lambda: browser.find_element(By.ID, "quantized").text, "the quantized bytes")
    packed = rerank_server.request("POST", "/v1/embeddings", {"model": "tiny", "input": TEXTS,
                                                              "output_dtype": "ubinary"}).json()["data"]
    assert shown.splitlines()[0] == f"#1 ubinary, 4 bytes: [{', '.join(map(str, packed[0]['embedding']))}]"
    assert browser.find_elements(By.CSS_SELECTOR, "#matrix td") == []
