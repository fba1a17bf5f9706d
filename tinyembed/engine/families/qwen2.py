"""Qwen2 (gte-Qwen2-1.5B / 7B-instruct): Llama-style decoder whose q/k/v projections have biases.

    h = RMSNorm(x);  q, k, v = h W_qkv + b_qkv;  RoPE(q, k)
    x = x + o_proj(GQA attention);  x = x + down(silu(gate(RMSNorm(x))) * up(...))

gte-Qwen2 runs its attention BIDIRECTIONALLY: its auto_map points at the remote
`modeling_qwen.Qwen2Model` (TEI and vLLM key on that), or config.json says is_causal: false.
Its tokenizer.json adds no EOS, yet the model was trained to pool <|endoftext|>: we append it.
"""

from __future__ import annotations

from pathlib import Path

from tinyembed.engine.families.decoder import DecoderArch, DecoderModel, llama_plan, read_decoder_arch

EOS = "<|endoftext|>"


def is_gte(config: dict) -> bool:
    auto_model = (config.get("auto_map") or {}).get("AutoModel", "")
    return isinstance(auto_model, str) and auto_model.endswith("modeling_qwen.Qwen2Model")


def qwen_layer_types(config: dict, layers: int) -> list[str]:
    """Qwen2/Qwen3 configs without `layer_types`: sliding from layer max_window_layers on."""
    if not config.get("use_sliding_window"):
        return ["full_attention"] * layers
    first = int(config.get("max_window_layers", layers))
    return ["sliding_attention" if n >= first else "full_attention" for n in range(layers)]


def read_arch(config: dict, path: Path) -> DecoderArch:
    causal = bool(config.get("is_causal", True)) and not is_gte(config)
    return read_decoder_arch(config, path, causal=causal, default_layer_types=qwen_layer_types)


def special_template(config: dict, path: Path) -> str | None:
    return f"$A {EOS}" if is_gte(config) else None


class Model(DecoderModel):
    def plan(self):
        return llama_plan(self.arch, qkv_bias=True)

    def layer(self, n, x, delta, positions, cu):
        ops, p, eps = self.ops, self.p, self.arch.rms_norm_eps
        h, x = self.input_norm(n, x, delta)  # (T, H)
        qkv = self.mm(h, f"{n}.qkv_w", p[f"{n}.qkv_b"])  # (T, (nH + 2 nKV) d)
        attn = self.attend(n, qkv, positions, cu)  # (T, H)
        h, x = ops.add_rmsnorm(attn, x, p[f"{n}.post_norm"], eps)  # x += attn; h = norm(x)
        return x, self.mlp(n, h)  # the MLP output is added by the next input norm
