"""Random-initialized BERT / XLM-R checkpoints of real model shapes, and their FLOP counts.

Used by bench/gpu.py (bge-base and bge-m3 shapes against transformers on the same weights) and
by the GPU tests (tests/test_model_cuda.py). Nothing is downloaded: the weights are drawn here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

SHAPES = {
    "bge-base": dict(model_type="bert", architectures=["BertModel"], hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072, vocab_size=30522,
                     max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0,
                     hidden_act="gelu"),
    "bge-m3": dict(model_type="xlm-roberta", architectures=["XLMRobertaModel"], hidden_size=1024,
                   num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, vocab_size=250002,
                   max_position_embeddings=8194, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
                   bos_token_id=0, eos_token_id=2, hidden_act="gelu"),
    # --smoke: the same code paths on shapes a CPU runs in seconds
    "smoke-bert": dict(model_type="bert", architectures=["BertModel"], hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=128, vocab_size=30522, max_position_embeddings=512,
                       type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0, hidden_act="gelu"),
    "smoke-xlmr": dict(model_type="xlm-roberta", architectures=["XLMRobertaModel"], hidden_size=64,
                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=30522,
                       max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1,
                       hidden_act="gelu"),
}
def write_random_model(path: Path, config: dict, std: float = 0.02, seed: int = 0, dtype=np.float16,
                       pooling: str = "cls", tokenizer_dir: Path | None = None, max_seq_length: int | None = None):
    """A random-initialized BERT / XLM-R checkpoint in Hugging Face layout (config.json,
    model.safetensors with unprefixed names, sentence-transformers files), loadable by tinyembed,
    transformers and sentence-transformers alike. Weights ~ N(0, std), LayerNorm weights ~ 1."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, inner = config["hidden_size"], config["intermediate_size"]

    def normal(*shape, scale=std, center=0.0):
        return (rng.standard_normal(shape, dtype=np.float32) * scale + center).astype(dtype)

    t = {
        "embeddings.word_embeddings.weight": normal(config["vocab_size"], h),
        "embeddings.position_embeddings.weight": normal(config["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": normal(config["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": normal(h, scale=0.1, center=1.0),
        "embeddings.LayerNorm.bias": normal(h),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            t[p + name + ".weight"], t[p + name + ".bias"] = normal(h, h), normal(h)
        t[p + "intermediate.dense.weight"], t[p + "intermediate.dense.bias"] = normal(inner, h), normal(inner)
        t[p + "output.dense.weight"], t[p + "output.dense.bias"] = normal(h, inner), normal(h)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[p + ln + ".weight"], t[p + ln + ".bias"] = normal(h, scale=0.1, center=1.0), normal(h)
    save_file(t, str(path / "model.safetensors"))
    del t
    (path / "config.json").write_text(json.dumps(config, indent=1))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": h, "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_lasttoken": pooling == "last"}))
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    positions = config["max_position_embeddings"] - (config["pad_token_id"] + 1 if config["model_type"] != "bert" else 0)
    (path / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length or positions, "do_lower_case": False}))
    if tokenizer_dir is not None:
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            if (tokenizer_dir / name).is_file():
                shutil.copy(tokenizer_dir / name, path / name)
    return path


def flops_per_token(config: dict, length: float) -> float:
    """Forward FLOPs for one token of a `length`-token input: the GEMMs (2 per multiply-add)
    plus attention's QK^T and PV (4 * length * H per layer)."""
    h, inner, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    return layers * (2 * (4 * h * h + 2 * h * inner) + 4 * length * h)


def workload_flops(config: dict, lengths: list[int]) -> float:
    return sum(n * flops_per_token(config, n) for n in lengths)
