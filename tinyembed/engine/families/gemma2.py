"""Gemma2 (bge-multilingual-gemma2): four norms a layer, soft-capped scores, alternating windows.

    x = embed(ids) * sqrt(H)
    h = RMSNorm(x);  q, k, v = h W_qkv;  RoPE(q, k)
    x = x + RMSNorm(o_proj(attention))            scores: tanh(s / c) * c before the mask,
                                                  s = q.k / sqrt(query_pre_attn_scalar)
    x = x + RMSNorm(down(gelu_tanh(gate(RMSNorm(x))) * up(...)))

Gemma's RMSNorm multiplies by (1 + w): the 1 is added to w at load, in float32, which is the
same arithmetic. head_dim (256) is not H / nH. Sliding window W on even layers (0, 2, ...),
full attention on odd ones, unless config.json's layer_types says otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tinyembed.common.errors import ModelLoadError
from tinyembed.engine.families.decoder import (DecoderArch, DecoderModel, llama_plan, read_decoder_arch,
                                               template_from_tokenizer_config)



def even_layers_slide(config: dict, layers: int) -> list[str]:
    return ["sliding_attention" if n % 2 == 0 else "full_attention" for n in range(layers)]


def read_arch(config: dict, path: Path) -> DecoderArch:
    try:
        scalar = float(config["query_pre_attn_scalar"])
        softcap = config.get("attn_logit_softcapping")
        softcap = float(softcap) if softcap else None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path}/config.json: missing or invalid field {exc}") from None
    return read_decoder_arch(config, path, activation_key="hidden_activation", default_layer_types=even_layers_slide,
                             scale=scalar ** -0.5, softcap=softcap)


def special_template(config: dict, path: Path) -> str | None:
    return template_from_tokenizer_config(path)


def plus_one(tensors: list[np.ndarray]) -> np.ndarray:
    return tensors[0] + np.float32(1.0)


class Model(DecoderModel):
    def plan(self):
        plan, h = llama_plan(self.arch), self.arch.hidden_size
        plan["norm"] = (plan["norm"][0], plus_one)
        for n in range(self.arch.num_layers):
            plan[f"{n}.in_norm"] = (plan[f"{n}.in_norm"][0], plus_one)
            plan[f"{n}.post_norm"] = (plan[f"{n}.post_norm"][0], plus_one)  # after attention, before the add
            for key, name in (("pre_ff_norm", "pre_feedforward_layernorm"), ("post_ff_norm", "post_feedforward_layernorm")):
                plan[f"{n}.{key}"] = ([(f"layers.{n}.{name}.weight", (h,))], plus_one)
        return plan

    def embed(self, ids):
        # HF rounds the normalizer to the activation dtype before multiplying
        return self.ops.embedding(ids, self.p["embed"], np.float32(self.arch.hidden_size ** 0.5))  # (T, H)

    def layer(self, n, x, delta, positions, cu):
        ops, p, eps = self.ops, self.p, self.arch.rms_norm_eps
        h, x = self.input_norm(n, x, delta)  # (T, H)
        qkv = self.mm(h, f"{n}.qkv_w")  # (T, (nH + 2 nKV) d)
        attn = ops.rmsnorm(self.attend(n, qkv, positions, cu), p[f"{n}.post_norm"], eps)  # (T, H)
        h, x = ops.add_rmsnorm(attn, x, p[f"{n}.pre_ff_norm"], eps)  # x += attn; h = norm(x)
        return x, ops.rmsnorm(self.mlp(n, h), p[f"{n}.post_ff_norm"], eps)  # added by the next input norm
