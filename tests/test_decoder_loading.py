"""Loading decoder checkpoints: what is refused, with an error that names the field or tensor."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tinyembed.common.errors import ModelLoadError
from tinyembed.engine import load_engine
from tinyembed.engine.checkpoints.tensor_reader import CheckpointReader

from engine_fixtures import FIXTURES


def copy_with_config(tmp_path, name, **changes):
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    config = json.loads((target / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize("name,changes,field", [
    ("tiny-qwen3", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ("tiny-qwen3", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}},
     "rope_parameters.rope_type"),
    ("tiny-qwen3", {"hidden_act": "relu"}, "hidden_act"),
    ("tiny-gemma2", {"hidden_activation": "gelu"}, "hidden_activation"),
    ("tiny-gemma2", {"query_pre_attn_scalar": None}, "query_pre_attn_scalar"),
    ("tiny-mistral", {"layer_types": ["chunked_attention", "full_attention"]}, "layer_types"),
    ("tiny-mistral", {"sliding_window": -3}, "sliding_window"),
    ("tiny-qwen2-gte", {"use_sliding_window": True, "max_window_layers": 1, "layer_types": None,
                        "sliding_window": 16}, "sliding_window"),
    ("tiny-mistral", {"attention_bias": True}, "attention_bias"),
    ("tiny-qwen3", {"num_key_value_heads": 3}, "num_key_value_heads"),
])
def test_unsupported_configs_are_refused_naming_the_field(tmp_path, name, changes, field):
    path = copy_with_config(tmp_path, name, **changes)
    with pytest.raises(ModelLoadError, match=field.replace(".", r"\.")):
        load_engine(str(path))


def test_qwen_sliding_window_layers_follow_max_window_layers(tmp_path):
    path = copy_with_config(tmp_path, "tiny-qwen3", use_sliding_window=True, max_window_layers=1,
                            layer_types=None, sliding_window=16)
    assert load_engine(str(path)).spec.arch.windows == (None, 16)


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    path = copy_with_config(tmp_path, "tiny-qwen3")
    tensors = load_file(path / "model.safetensors")
    del tensors["layers.1.self_attn.k_norm.weight"]
    save_file(tensors, path / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"layers\.1\.self_attn\.k_norm\.weight"):
        load_engine(str(path))
    path = copy_with_config(tmp_path / "b", "tiny-qwen3", intermediate_size=96)
    with pytest.raises(ModelLoadError, match=r"mlp\.\w+_proj\.weight has shape"):
        load_engine(str(path))


def test_checkpoint_dtypes_prefixes_and_shards_are_read():
    assert CheckpointReader(FIXTURES / "tiny-qwen3").dtypes() == {"F32"}
    gte = CheckpointReader(FIXTURES / "tiny-qwen2-gte", prefixes=("model.",))
    assert gte.dtypes() == {"BF16"} and gte.shape("embed_tokens.weight") == (400, 64)
    mistral = CheckpointReader(FIXTURES / "tiny-mistral", prefixes=("model.",))
    assert mistral.dtypes() == {"F16"} and len({t.file for t in mistral.tensors.values()}) == 3
    # bf16 widening is exact: the high half of each float32
    widened = gte.read("norm.weight")
    assert widened.dtype == np.float32 and np.all(widened.view(np.uint32) & 0xFFFF == 0)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = copy_with_config(tmp_path, "tiny-qwen3")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_engine(str(path))
