"""config.json `model_type` -> the module that runs that decoder family (one file each, as TEI
has one file per architecture). BERT / XLM-R encoders run in tinyembed.engine.model.

Each family module provides (the family name /v1/models reports is the model_type)
    read_arch(config, path) -> DecoderArch its config, checked (errors name the field)
    special_template(config, path)         the special-token template to enforce, or None to
                                           trust tokenizer.json (the EOS rules of docs/decoders.md)
    Model(spec, ops)                       the forward pass
"""

from __future__ import annotations

import importlib

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
