"""What the decoder families share: the config fields they all read, the tensor-by-tensor weight
loader, the special-token rule read from tokenizer_config.json, and the model skeleton

    ids -> embed -> L x layer -> last token of each sequence -> final RMSNorm -> L2

Each family module (qwen3, qwen2, mistral, gemma2) parses its own config, names its tensors and
writes its own `layer`; nothing family-specific lives here. Shapes: T tokens in the packed
batch, H hidden, nH / nKV query / key-value heads, d head_dim, I FFN width, n sequences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tinyembed.common.errors import ModelLoadError
from tinyembed.engine.ops.numpy_decoder import rope_table
from tinyembed.engine.checkpoints.tensor_reader import CheckpointReader

# config.json activation name -> the gated activation the ops implement
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


@dataclass(frozen=True)
class DecoderArch:
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    activation: str  # "silu" | "gelu_tanh"
    causal: bool
    windows: tuple  # per layer: sliding-window width W (keys with q - k < W), or None for full
    scale: float  # attention score scale
    softcap: float | None = None  # scores -> tanh(s / c) * c (Gemma2)


def read_decoder_arch(config: dict, where: Path, *, activation_key: str = "hidden_act", causal: bool = True,
              default_layer_types: Callable[[dict, int], list[str]] | None = None, **overrides) -> DecoderArch:
    """The fields every decoder config has, checked; a family passes what differs."""
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        layers = int(config["num_hidden_layers"])
        head_dim = int(config.get("head_dim") or hidden // heads)
        kv_heads = int(config.get("num_key_value_heads") or heads)
        fields = dict(
            hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
            intermediate_size=int(config["intermediate_size"]), vocab_size=int(config["vocab_size"]),
            max_position_embeddings=int(config["max_position_embeddings"]),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)), rope_theta=_rope_theta(config, where),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{where}/config.json: missing or invalid field {exc}") from None
    if heads % kv_heads:
        raise ModelLoadError(f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")
    if head_dim % 2:
        raise ModelLoadError(f"{where}: head_dim {head_dim} is odd; rotary embeddings need an even head_dim")
    act = config.get(activation_key)
    if act not in ACTIVATIONS:
        raise ModelLoadError(f"{where}/config.json: unsupported {activation_key}={act!r}; "
                             f"implemented: {', '.join(ACTIVATIONS)}")
    windows = _windows(config, where, layers, causal, default_layer_types)
    fields.update(activation=ACTIVATIONS[act], causal=causal, windows=windows, scale=head_dim ** -0.5)
    fields.update(overrides)
    return DecoderArch(**fields)


def _rope_theta(config: dict, where: Path) -> float:
    scaling = config.get("rope_scaling")
    if scaling:
        raise ModelLoadError(f"{where}/config.json: rope_scaling={scaling!r} is not implemented "
                             "(only plain RoPE: remove rope_scaling or use a model without it)")
    params = config.get("rope_parameters") or {}
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in (None, "default"):
        raise ModelLoadError(f"{where}/config.json: rope_parameters.rope_type={kind!r} is not implemented "
                             "(only default RoPE)")
    if float(config.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ModelLoadError(f"{where}/config.json: partial_rotary_factor is not implemented")
    theta = config.get("rope_theta", params.get("rope_theta"))
    if theta is None:
        raise KeyError("rope_theta")
    return float(theta)


def _windows(config, where, layers, causal, default_layer_types) -> tuple:
    types = config.get("layer_types") or (default_layer_types(config, layers) if default_layer_types else None)
    types = types or ["full_attention"] * layers
    if len(types) != layers or set(types) - {"full_attention", "sliding_attention"}:
        raise ModelLoadError(f"{where}/config.json: layer_types={types!r} not implemented (one of "
                             f"full_attention / sliding_attention for each of the {layers} layers)")
    if "sliding_attention" not in types:
        return (None,) * layers
    window = config.get("sliding_window")
    if not isinstance(window, int) or window < 1:
        raise ModelLoadError(f"{where}/config.json: sliding_window={window!r} must be a positive integer")
    if not causal:
        raise ModelLoadError(f"{where}/config.json: sliding_window with bidirectional attention is not implemented")
    return tuple(window if t == "sliding_attention" else None for t in types)


def template_from_tokenizer_config(path: Path) -> str | None:
    """Llama/Mistral/Gemma tokenizers: transformers 4 rebuilt the special-token template from
    add_bos_token / add_eos_token in tokenizer_config.json (e5-mistral sets add_eos_token);
    transformers 5 and raw `tokenizers` ignore them. None when the file does not say."""
    file = path / "tokenizer_config.json"
    try:
        conf = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{file}: not valid JSON ({exc})") from None
    if "add_bos_token" not in conf and "add_eos_token" not in conf:
        return None
    parts = ["$A"]
    for flag, key, default in (("add_bos_token", "bos_token", True), ("add_eos_token", "eos_token", False)):
        if conf.get(flag, default):
            token = conf.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            if not isinstance(token, str):
                raise ModelLoadError(f"{file}: {flag} is set but {key} is missing")
            parts = [token] + parts if key == "bos_token" else parts + [token]
    return " ".join(parts)


# -- weights --------------------------------------------------------------------------------


def fuse_linear(tensors: list[np.ndarray]) -> np.ndarray:
    """torch (out, in) weights -> one (in, sum of outs) matrix: q|k|v or gate|up in one GEMM."""
    return np.ascontiguousarray(np.concatenate(tensors).T) if len(tensors) > 1 else np.ascontiguousarray(tensors[0].T)


def concat(tensors: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(tensors) if len(tensors) > 1 else tensors[0]


# canonical key -> ([(checkpoint name, torch shape), ...], combine)
Plan = dict[str, tuple[list[tuple[str, tuple[int, ...]]], Callable]]


def llama_plan(arch: DecoderArch, qkv_bias: bool = False) -> Plan:
    """The tensors every decoder family has (families add theirs)."""
    h, d, i = arch.hidden_size, arch.head_dim, arch.intermediate_size
    q, kv = arch.num_heads * d, arch.num_kv_heads * d
    plan: Plan = {"embed": ([("embed_tokens.weight", (arch.vocab_size, h))], concat),
                  "norm": ([("norm.weight", (h,))], concat)}
    for n in range(arch.num_layers):
        at, mlp = f"layers.{n}.self_attn.", f"layers.{n}.mlp."
        plan[f"{n}.qkv_w"] = ([(at + "q_proj.weight", (q, h)), (at + "k_proj.weight", (kv, h)),
                               (at + "v_proj.weight", (kv, h))], fuse_linear)
        if qkv_bias:
            plan[f"{n}.qkv_b"] = ([(at + "q_proj.bias", (q,)), (at + "k_proj.bias", (kv,)),
                                   (at + "v_proj.bias", (kv,))], concat)
        plan[f"{n}.o_w"] = ([(at + "o_proj.weight", (h, q))], fuse_linear)
        plan[f"{n}.gate_up_w"] = ([(mlp + "gate_proj.weight", (i, h)), (mlp + "up_proj.weight", (i, h))], fuse_linear)
        plan[f"{n}.down_w"] = ([(mlp + "down_proj.weight", (h, i))], fuse_linear)
        plan[f"{n}.in_norm"] = ([(f"layers.{n}.input_layernorm.weight", (h,))], concat)
        plan[f"{n}.post_norm"] = ([(f"layers.{n}.post_attention_layernorm.weight", (h,))], concat)
    return plan


def load_plan(path: Path, plan: Plan, ops) -> dict:
    """Check every tensor's shape from the headers, then read, fuse and hand each to the ops one
    at a time: the host holds the finished weights plus one tensor in flight, never two copies."""
    reader = CheckpointReader(path, prefixes=("model.",))
    missing, wrong = [], []
    for sources, _ in plan.values():
        for name, shape in sources:
            found = reader.shape(name)
            if found is None:
                missing.append(name)
            elif found != shape:
                wrong.append(f"{name} has shape {found}, config.json implies {shape}")
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ModelLoadError(f"{path}: checkpoint lacks tensor(s) {', '.join(missing[:3])}{more}")
    if wrong:
        raise ModelLoadError(f"{path}: tensor {wrong[0]}")
    params = {}
    for key, (sources, combine) in plan.items():
        params[key] = ops.param(combine([reader.read(name) for name, _ in sources]))
    return params


# -- the model skeleton -------------------------------------------------------------------------


class DecoderModel:
    """Subclasses define `plan()` (extra tensors) and `layer()`; may override `embed()`."""

    def __init__(self, spec, ops):
        self.spec, self.arch, self.ops = spec, spec.arch, ops
        if hasattr(ops, "prepare_decoder_kernels"):
            ops.prepare_decoder_kernels()  # GPU: compile before reading gigabytes of weights
        self.p = load_plan(spec.path, self.plan(), ops)
        cos, sin = rope_table(self.arch.rope_theta, self.arch.head_dim, spec.max_seq_length)
        self.cos, self.sin = ops.param(cos.ravel()), ops.param(sin.ravel())  # (P * d/2,) float32 each

    def plan(self) -> Plan:
        return llama_plan(self.arch)

    def embed(self, ids):
        return self.ops.embedding(ids, self.p["embed"])  # (T, H)

    def forward(self, batch) -> np.ndarray:
        """Packed batch -> (n, H) L2-normalized float32 vectors on the host."""
        return self.ops.to_host(self.forward_on_device(batch))

    def forward_on_device(self, batch):
        ops, eps = self.ops, self.arch.rms_norm_eps
        ids, positions, cu = ops.upload_batch(batch)
        x = self.embed(ids)  # (T, H): the residual stream
        delta = None  # each layer's last residual add is fused into the next layer's input norm
        for n in range(self.arch.num_layers):
            x, delta = self.layer(n, x, delta, positions, cu)
        # only the pooled rows need the last residual add and the final norm
        last, last_delta = ops.last_token(x, cu), ops.last_token(delta, cu)  # (n, H) each
        h, _ = ops.add_rmsnorm(last_delta, last, self.p["norm"], eps)  # (n, H)
        return ops.l2_normalize(h)  # (n, H) float32, unit length

    def input_norm(self, n, x, delta):
        """x + delta (the previous layer's output, in place) and its RMSNorm: (h, x)."""
        w = self.p[f"{n}.in_norm"]
        if delta is None:
            return self.ops.rmsnorm(x, w, self.arch.rms_norm_eps), x
        return self.ops.add_rmsnorm(delta, x, w, self.arch.rms_norm_eps)

    def attend(self, n, qkv, positions, cu):
        """RoPE'd fused Q|K|V -> (T, H) after o_proj."""
        a, ops = self.arch, self.ops
        ops.rope(qkv, positions, self.cos, self.sin, a.num_heads, a.num_kv_heads)
        ctx = ops.decoder_attention(qkv, cu, a.num_heads, a.num_kv_heads, a.scale, a.causal,
                                    a.windows[n], a.softcap)  # (T, nH*d)
        return ops.matmul(ctx, self.p[f"{n}.o_w"])  # (T, H)

    def mlp(self, n, h):
        """(T, H) -> (T, H): down(act(gate(h)) * up(h)), gate|up in one GEMM."""
        ops = self.ops
        gate_up = ops.matmul(h, self.p[f"{n}.gate_up_w"])  # (T, 2I)
        return ops.matmul(ops.gated_activation(gate_up, self.arch.activation), self.p[f"{n}.down_w"])  # (T, H)
