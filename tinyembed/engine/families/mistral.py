"""Mistral / Llama (e5-mistral-7b-instruct, bge-en-icl): the plain Llama decoder.

    h = RMSNorm(x);  q, k, v = h W_qkv;  RoPE(q, k)
    x = x + o_proj(causal GQA attention, sliding window W on every layer when set)
    x = x + down(silu(gate(RMSNorm(x))) * up(...))

The window (4096 in Mistral 7B) only matters past W tokens: key k is visible to query q when
q - k < W. EOS: e5-mistral's tokenizer.json adds only <s>, and tokenizer_config.json says
add_eos_token: true; the template is rebuilt from those flags.
"""

from __future__ import annotations

from pathlib import Path

from tinyembed.common.errors import ModelLoadError
from tinyembed.engine.families.decoder import (DecoderArch, DecoderModel, read_decoder_arch,
                                               template_from_tokenizer_config)



def all_layers_slide(config: dict, layers: int) -> list[str]:
    kind = "sliding_attention" if config.get("sliding_window") is not None else "full_attention"
    return [kind] * layers


def read_arch(config: dict, path: Path) -> DecoderArch:
    for field in ("attention_bias", "mlp_bias"):  # Llama options no embedder uses
        if config.get(field):
            raise ModelLoadError(f"{path}/config.json: {field}=true is not implemented")
    return read_decoder_arch(config, path, default_layer_types=all_layers_slide)


def special_template(config: dict, path: Path) -> str | None:
    return template_from_tokenizer_config(path)


class Model(DecoderModel):
    def layer(self, n, x, delta, positions, cu):
        ops, p, eps = self.ops, self.p, self.arch.rms_norm_eps
        h, x = self.input_norm(n, x, delta)  # (T, H)
        qkv = self.mm(h, f"{n}.qkv_w")  # (T, (nH + 2 nKV) d)
        attn = self.attend(n, qkv, positions, cu)  # (T, H)
        h, x = ops.add_rmsnorm(attn, x, p[f"{n}.post_norm"], eps)  # x += attn; h = norm(x)
        return x, self.mlp(n, h)  # the MLP output is added by the next input norm
