"""Qwen3 (Qwen3-Embedding-0.6B / 4B / 8B): Llama-style decoder plus an RMSNorm over head_dim on
every query and key head (q_norm / k_norm) between the projection and RoPE.

    h = RMSNorm(x);  q, k, v = h W_qkv;  q, k = RMSNorm_d(q), RMSNorm_d(k);  RoPE(q, k)
    x = x + o_proj(causal GQA attention);  x = x + down(silu(gate(RMSNorm(x))) * up(...))

head_dim is explicit in config.json (128) and need not be H / nH. EOS: the tokenizer.json of
Qwen3-Embedding appends <|endoftext|> itself; tokenizer_config's eos_token (<|im_end|>) is not
what the model was trained to pool.
"""

from __future__ import annotations

from tinyembed.engine.families.decoder import DecoderArch, DecoderModel, concat, llama_plan, read_decoder_arch
from tinyembed.engine.families.qwen2 import qwen_layer_types



def read_arch(config: dict, path) -> DecoderArch:
    return read_decoder_arch(config, path, default_layer_types=qwen_layer_types)


def special_template(config: dict, path) -> str | None:
    return None


class Model(DecoderModel):
    def plan(self):
        plan, d = llama_plan(self.arch), self.arch.head_dim
        for n in range(self.arch.num_layers):
            plan[f"{n}.q_norm"] = ([(f"layers.{n}.self_attn.q_norm.weight", (d,))], concat)
            plan[f"{n}.k_norm"] = ([(f"layers.{n}.self_attn.k_norm.weight", (d,))], concat)
        return plan

    def layer(self, n, x, delta, positions, cu):
        ops, p, a = self.ops, self.p, self.arch
        h, x = self.input_norm(n, x, delta)  # (T, H)
        qkv = self.mm(h, f"{n}.qkv_w")  # (T, (nH + 2 nKV) d)
        ops.head_rmsnorm(qkv, p[f"{n}.q_norm"], p[f"{n}.k_norm"], a.num_heads, a.num_kv_heads, a.rms_norm_eps)
        attn = self.attend(n, qkv, positions, cu)  # (T, H)
        h, x = ops.add_rmsnorm(attn, x, p[f"{n}.post_norm"], a.rms_norm_eps)  # x += attn; h = norm(x)
        return x, self.mlp(n, h)  # the MLP output is added by the next input norm
