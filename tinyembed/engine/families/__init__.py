"""config.json `model_type` -> the module that runs that decoder family (one file each, as TEI
has one file per architecture). BERT / XLM-R encoders run in tinyembed.engine.families.bert.

Each family module provides (the family name /v1/models reports is the model_type)
    read_arch(config, path) -> DecoderArch its config, checked (errors name the field)
    special_template(config, path)         the special-token template to enforce, or None to
                                           trust tokenizer.json (the EOS rules of docs/decoders.md)
    Model(spec, ops)                       the forward pass
"""

from __future__ import annotations

import importlib
from pathlib import Path

from tinyembed.engine.checkpoints.spec import ModelSpec, decoder_spec, encoder_spec, read_config

DECODERS = {
    "qwen3": "qwen3",
    "qwen2": "qwen2",
    "mistral": "mistral",
    "llama": "mistral",
    "gemma2": "gemma2",
}


def decoder_family(model_type: str):
    """The family module for a decoder model_type, or None when it is not a decoder we run."""
    module = DECODERS.get(model_type)
    return None if module is None else importlib.import_module(f"tinyembed.engine.families.{module}")


def read_spec(path: Path) -> ModelSpec:
    """A model directory's ModelSpec: a decoder's family reads its own config; the rest are encoders."""
    config = read_config(path)
    family = decoder_family(config.get("model_type", ""))
    if family is not None:
        return decoder_spec(path, config, family)
    return encoder_spec(path, config, decoders=DECODERS)
