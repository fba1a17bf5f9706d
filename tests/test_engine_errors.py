"""A broken or unsupported model directory fails with one clear message naming the problem."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

from tinyembed.engine import load_engine
from tinyembed.common.errors import InputError, ModelLoadError, TinyEmbedError

from engine_fixtures import FIXTURES


@pytest.fixture
def model_dir(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(FIXTURES / "tiny-bert-fp32", target)
    return target


def _load_error(path) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_engine(str(path))
    return str(info.value)


def test_missing_config(model_dir):
    (model_dir / "config.json").unlink()
    assert "config.json: missing" in _load_error(model_dir)


def test_missing_tokenizer(model_dir):
    (model_dir / "tokenizer.json").unlink()
    assert "tokenizer.json: missing" in _load_error(model_dir)


def test_missing_weights(model_dir):
    (model_dir / "model.safetensors").unlink()
    message = _load_error(model_dir)
    assert "no weights" in message and "model.safetensors" in message


def test_missing_shard(tmp_path):
    target = tmp_path / "sharded"
    shutil.copytree(FIXTURES / "tiny-bert-sharded", target)
    next(target.glob("model-*.safetensors")).unlink()
    assert "shard named in the index is missing" in _load_error(target)


def test_tensor_of_the_wrong_shape_is_named(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["intermediate_size"] = 48
    (model_dir / "config.json").write_text(json.dumps(config))
    message = _load_error(model_dir)
    assert "encoder.layer.0.intermediate.dense.weight" in message and "(48, 32)" in message


def test_missing_tensor_is_named(model_dir):
    _rewrite_without(model_dir / "model.safetensors", "encoder.layer.1.output.dense.bias")
    assert "encoder.layer.1.output.dense.bias" in _load_error(model_dir)


def test_unsupported_architecture(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["model_type"], config["architectures"] = "gpt2", ["GPT2Model"]
    (model_dir / "config.json").write_text(json.dumps(config))
    message = _load_error(model_dir)
    assert "unsupported architecture" in message and "gpt2" in message


def test_corrupt_config_json(model_dir):
    (model_dir / "config.json").write_text("{not json")
    assert "not valid JSON" in _load_error(model_dir)


@pytest.mark.parametrize("keep", [1000, -100])
def test_truncated_weights_file(model_dir, keep):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])
    assert "model.safetensors" in _load_error(model_dir)


def test_out_of_range_token_ids_are_rejected():
    engine = load_engine(str(FIXTURES / "tiny-bert-fp32"))
    vocab = engine.info.vocab_size
    with pytest.raises(InputError, match=f"token id {vocab} outside"):
        engine.tokenizer.check_ids([[2, 5, 3], [2, vocab, 3]])
    with pytest.raises(InputError, match="token id -1 outside"):
        engine.tokenizer.check_ids([[-1]])


def test_unknown_device_is_a_clear_error():
    with pytest.raises(TinyEmbedError, match="unknown device"):
        load_engine(str(FIXTURES / "tiny-bert-fp32"), device="tpu")


def _rewrite_without(file, dropped: str) -> None:
    """Rewrite a safetensors file with one tensor removed (numpy only)."""
    raw = file.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    body = raw[8 + n :]
    new_header, chunks, offset = {}, [], 0
    for name, info in header.items():
        if name == "__metadata__" or name == dropped:
            continue
        start, end = info["data_offsets"]
        chunks.append(body[start:end])
        new_header[name] = {**info, "data_offsets": [offset, offset + end - start]}
        offset += end - start
    encoded = json.dumps(new_header).encode()
    file.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))
    assert np.frombuffer(file.read_bytes()[:8], dtype="<u8")[0] == len(encoded)
