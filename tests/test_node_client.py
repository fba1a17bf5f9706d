"""The openai npm package (and plain fetch) against the real server: runs `node --test` on
tests/js/ with the server's URL and the engine's own vectors for the texts it sends.

node_modules is installed from tests/js/package-lock.json on first use (`npm ci`) and kept in
tests/js/node_modules (gitignored). Skips only when node or npm is not installed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT

JS = ROOT / "tests" / "js"
TEXTS = ["tinyembed serves text embeddings.", "Milvus stores vectors.", "The cat sat on the mat."]


def npm_install() -> None:
    if (JS / "node_modules" / "openai" / "package.json").exists():
        return
    done = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_openai_node_sdk_and_fetch_against_the_server(server, guarded_server, minilm, tmp_path):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm are not installed (apt-get install nodejs npm); .ci/run installs them")
    npm_install()
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps({"texts": TEXTS, "vectors": minilm.embed_texts(TEXTS).tolist()}))
    env = {**os.environ, "TINYEMBED_URL": server.url, "TINYEMBED_GUARDED_URL": guarded_server.url,
           "TINYEMBED_EXPECTED": str(expected)}
    env = {k: v for k, v in env.items() if not k.startswith("OPENAI_")}  # the SDK would read them
    done = subprocess.run(["node", "--test", "--test-reporter=spec", "embeddings.test.mjs"], cwd=JS, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # node exits 0 when it found no tests at all: every test in the file ran and passed, none skipped
    declared = len(re.findall(r"^test\(", (JS / "embeddings.test.mjs").read_text(), re.M))
    summary = dict(re.findall(r"^\S+ (tests|pass|fail|skipped) (\d+)$", done.stdout, re.M))
    assert summary == {"tests": str(declared), "pass": str(declared), "fail": "0", "skipped": "0"}, done.stdout
