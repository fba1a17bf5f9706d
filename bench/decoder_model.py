"""Random Qwen3-Embedding checkpoints of real shapes, written at bench time without torch.

The weights are bf16 (as the published checkpoints are), streamed to safetensors one tensor at a
time (tinyembed.engine.checkpoints.bf16.write_safetensors), drawn from random bits: random sign
and mantissa, exponent so that |w| lies in [2^-8, 2^-4) (mean about 0.02, as an N(0, 0.02)
init); norm weights 1. Random weights cost the same FLOPs as trained ones. The directory is a
sentence-transformers one (modules.json, last-token pooling, normalize) with a byte-level BPE
trained on the bench corpus (template `$A <|endoftext|>`, as Qwen3-Embedding's tokenizer.json),
so transformers / sentence-transformers load the very same weights (as float32 when asked).

    0.6B: 1.2 GB, seconds to write;  4B: 8.0 GB (bf16), about a minute on 2 cores
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.corpus import mixed_corpus

QWEN3 = {
    "0.6B": dict(vocab_size=151669, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128),
    "4B": dict(vocab_size=151665, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128),
}
COMMON = dict(model_type="qwen3", architectures=["Qwen3Model"], max_position_embeddings=32768, rms_norm_eps=1e-6,
              rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True, torch_dtype="bfloat16",
              attention_bias=False, use_sliding_window=False, bos_token_id=151643, eos_token_id=151643)


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    h, d, i = c["hidden_size"], c["head_dim"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * d, c["num_key_value_heads"] * d
    shapes = {"embed_tokens.weight": (c["vocab_size"], h)}
    for n in range(c["num_hidden_layers"]):
        at, mlp = f"layers.{n}.self_attn.", f"layers.{n}.mlp."
        shapes.update({at + "q_proj.weight": (q, h), at + "k_proj.weight": (kv, h), at + "v_proj.weight": (kv, h),
                       at + "o_proj.weight": (h, q), at + "q_norm.weight": (d,), at + "k_norm.weight": (d,),
                       mlp + "gate_proj.weight": (i, h), mlp + "up_proj.weight": (i, h), mlp + "down_proj.weight": (h, i),
                       f"layers.{n}.input_layernorm.weight": (h,), f"layers.{n}.post_attention_layernorm.weight": (h,)})
    shapes["norm.weight"] = (h,)
    return shapes


def random_bf16(shape, rng) -> np.ndarray:
    """Random bf16 bits: sign and 7 mantissa bits random, exponent 2^-8 .. 2^-5 (|w| < 2^-4)."""
    if len(shape) == 1:
        return np.full(shape, 0x3F80, np.uint16)  # 1.0: norm weights
    bits = np.frombuffer(rng.bytes(2 * int(np.prod(shape))), dtype=np.uint16).reshape(shape)
    exponent = (119 + ((bits >> 7) & 3)).astype(np.uint16) << 7  # 2^-8 .. 2^-5
    return (bits & 0x807F) | exponent


def write_model(directory: Path, size: str, max_length: int = 512, seed: int = 0) -> Path:
    from tinyembed.engine.checkpoints.bf16 import write_safetensors

    directory.mkdir(parents=True, exist_ok=True)
    config = {**COMMON, **QWEN3[size]}
    write(directory / "config.json", config)
    shapes = tensor_shapes(config)
    rng = np.random.default_rng(seed)
    write_safetensors(directory / "model.safetensors", shapes, {n: "BF16" for n in shapes},
                      lambda name: random_bf16(shapes[name], rng))
    write_tokenizer(directory, config["hidden_size"], max_length)
    return directory


def write_tokenizer(directory: Path, hidden: int, max_length: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=16000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(mixed_corpus(3000, seed=1), trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", 0)])
    tok.save(str(directory / "tokenizer.json"))
    write(directory / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
                                                "pad_token": "<|endoftext|>", "padding_side": "left"})
    write(directory / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}])
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "2_Normalize").mkdir(exist_ok=True)
    write(directory / "1_Pooling" / "config.json", {"word_embedding_dimension": hidden, "pooling_mode_lasttoken": True})
    write(directory / "sentence_bert_config.json", {"max_seq_length": max_length})


def write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))
