"""safetensors -> the encoder's parameter table, in float32 numpy, shape-checked.

Checkpoints name the same tensors in several ways (`bert.` or `roberta.` prefixes, or none) and
store them as fp32, fp16 or bf16. This module reads any of them into one canonical table that
families/bert.py and the ops backends consume:

    word (V, H)  position (P, H)  token_type (T, H)  emb_ln_w (H,)  emb_ln_b (H,)
    layer.{i}.qkv_w (H, 3H)  qkv_b (3H,)  out_w (H, H)  out_b (H,)  ln1_w  ln1_b
              ffn_in_w (H, I)  ffn_in_b (I,)  ffn_out_w (I, H)  ffn_out_b (H,)  ln2_w  ln2_b

Linear weights are stored transposed to (in, out) so every layer is `x @ w`, and Q, K, V are
fused into one (H, 3H) matrix so attention's input projection is a single GEMM.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from tinyembed.common.errors import ModelLoadError
from tinyembed.engine.checkpoints.spec import ModelSpec
from tinyembed.engine.checkpoints.tensor_reader import checkpoint_files

# Prefixes seen in the wild; a checkpoint uses one of them or none.
PREFIXES = ("bert.", "roberta.", "model.", "encoder_model.")

# canonical embedding name -> checkpoint name
EMBEDDING_NAMES = {
    "word": "embeddings.word_embeddings.weight",
    "position": "embeddings.position_embeddings.weight",
    "token_type": "embeddings.token_type_embeddings.weight",
    "emb_ln_w": "embeddings.LayerNorm.weight",
    "emb_ln_b": "embeddings.LayerNorm.bias",
}
# canonical per-layer name -> checkpoint name under encoder.layer.{i}.
LAYER_NAMES = {
    "q_w": "attention.self.query.weight",
    "q_b": "attention.self.query.bias",
    "k_w": "attention.self.key.weight",
    "k_b": "attention.self.key.bias",
    "v_w": "attention.self.value.weight",
    "v_b": "attention.self.value.bias",
    "out_w": "attention.output.dense.weight",
    "out_b": "attention.output.dense.bias",
    "ln1_w": "attention.output.LayerNorm.weight",
    "ln1_b": "attention.output.LayerNorm.bias",
    "ffn_in_w": "intermediate.dense.weight",
    "ffn_in_b": "intermediate.dense.bias",
    "ffn_out_w": "output.dense.weight",
    "ffn_out_b": "output.dense.bias",
    "ln2_w": "output.LayerNorm.weight",
    "ln2_b": "output.LayerNorm.bias",
}


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Checkpoint-name -> shape, as config.json says they must be (torch Linear is (out, in))."""
    h, i = spec.hidden_size, spec.intermediate_size
    shapes = {
        EMBEDDING_NAMES["word"]: (spec.vocab_size, h),
        EMBEDDING_NAMES["position"]: (spec.max_position_embeddings, h),
        EMBEDDING_NAMES["token_type"]: (spec.type_vocab_size, h),
        EMBEDDING_NAMES["emb_ln_w"]: (h,),
        EMBEDDING_NAMES["emb_ln_b"]: (h,),
    }
    per_layer = {
        "q_w": (h, h), "q_b": (h,), "k_w": (h, h), "k_b": (h,), "v_w": (h, h), "v_b": (h,),
        "out_w": (h, h), "out_b": (h,), "ln1_w": (h,), "ln1_b": (h,),
        "ffn_in_w": (i, h), "ffn_in_b": (i,), "ffn_out_w": (h, i), "ffn_out_b": (h,),
        "ln2_w": (h,), "ln2_b": (h,),
    }
    for layer in range(spec.num_layers):
        for key, shape in per_layer.items():
            shapes[f"encoder.layer.{layer}.{LAYER_NAMES[key]}"] = shape
    return shapes


def load_params(spec: ModelSpec) -> dict[str, np.ndarray]:
    """Read, check and reshape the checkpoint into the canonical float32 table."""
    raw = _strip_prefix(read_safetensors(spec.path))
    shapes = expected_shapes(spec)
    missing = [name for name in shapes if name not in raw]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ModelLoadError(f"{spec.path}: checkpoint lacks tensor(s) {', '.join(missing[:3])}{more}")
    for name, shape in shapes.items():
        if tuple(raw[name].shape) != shape:
            raise ModelLoadError(
                f"{spec.path}: tensor {name} has shape {tuple(raw[name].shape)}, "
                f"config.json implies {shape}"
            )
    params = {key: _f32(raw[name]) for key, name in EMBEDDING_NAMES.items()}
    for layer in range(spec.num_layers):
        t = {key: _f32(raw[f"encoder.layer.{layer}.{name}"]) for key, name in LAYER_NAMES.items()}
        p = f"layer.{layer}."
        params[p + "qkv_w"] = np.ascontiguousarray(np.concatenate([t["q_w"], t["k_w"], t["v_w"]]).T)
        params[p + "qkv_b"] = np.concatenate([t["q_b"], t["k_b"], t["v_b"]])
        params[p + "out_w"] = np.ascontiguousarray(t["out_w"].T)
        params[p + "ffn_in_w"] = np.ascontiguousarray(t["ffn_in_w"].T)
        params[p + "ffn_out_w"] = np.ascontiguousarray(t["ffn_out_w"].T)
        for key in ("out_b", "ln1_w", "ln1_b", "ffn_in_b", "ffn_out_b", "ln2_w", "ln2_b"):
            params[p + key] = t[key]
    return params


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a single-file or sharded (model.safetensors.index.json) checkpoint."""
    files = checkpoint_files(path)
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        tensors.update(_read_one(file))
    return tensors


def _read_one(file: Path) -> dict[str, np.ndarray]:
    """Parse one safetensors file with numpy alone (memory-mapped: only what we convert is read)."""
    try:
        with open(file, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        data = np.memmap(file, dtype=np.uint8, mode="r", offset=8 + header_len)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelLoadError(f"{file}: not a readable safetensors file ({exc})") from None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype")) if isinstance(info, dict) else None
        if dtype is None:
            continue  # a dtype no encoder weight uses (bool, int8 ...): never needed
        try:
            start, end = info["data_offsets"]
            tensors[name] = data[start:end].view(dtype).reshape(info["shape"])
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelLoadError(f"{file}: tensor {name} is truncated or malformed ({exc})") from None
    return tensors


# numpy has no bfloat16: its bits are read under a one-field dtype that says what they are.
BF16 = np.dtype([("bf16", "<u2")])
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": BF16, "I64": np.int64, "F64": np.float64}


def _strip_prefix(tensors: dict) -> dict:
    for prefix in PREFIXES:
        if any(name.startswith(prefix + "embeddings.") for name in tensors):
            return {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
    return tensors


def _f32(tensor: np.ndarray) -> np.ndarray:
    if tensor.dtype == BF16:  # bf16 is the high half of a float32
        return (tensor.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    return np.array(tensor, dtype=np.float32)
