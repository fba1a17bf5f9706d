"""The encoder forward pass (BERT / XLM-RoBERTa), written once against an `ops` object.

    token ids -> embeddings -> L x [attention, add+LayerNorm, FFN, add+LayerNorm] -> pool -> normalize

The batch is packed with no padding: T = total tokens of all sequences, H = hidden size,
I = FFN size, n = number of sequences. `ops` is NumpyOps (CPU) or CudaOps (GPU); both take and
return their own arrays and agree op for op, so this file is the whole model for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinyembed.engine.ops.numpy_ops import normalize
from tinyembed.engine.checkpoints.spec import ModelSpec


GEMM_WEIGHTS = ("qkv_w", "out_w", "ffn_in_w", "ffn_out_w")
LAYER_PARAMS = GEMM_WEIGHTS + ("qkv_b", "out_b", "ffn_in_b", "ffn_out_b", "ln1_w", "ln1_b", "ln2_w", "ln2_b")


@dataclass(frozen=True)
class Batch:
    """A packed, padding-free batch: what every backend consumes."""

    input_ids: np.ndarray  # (T,) int32
    position_ids: np.ndarray  # (T,) int32
    cu_seqlens: np.ndarray  # (n+1,) int32: sequence i is tokens cu_seqlens[i]:cu_seqlens[i+1]
    max_len: int

    @classmethod
    def pack(cls, sequences: list[np.ndarray], position_offset: int = 0) -> "Batch":
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int32, count=len(sequences))
        cu_seqlens = np.zeros(len(sequences) + 1, dtype=np.int32)
        np.cumsum(lengths, out=cu_seqlens[1:])
        total = int(cu_seqlens[-1])
        # position of each token within its sequence: global index minus its sequence's start
        starts = np.repeat(cu_seqlens[:-1], lengths)
        position_ids = np.arange(total, dtype=np.int32) - starts + position_offset
        input_ids = np.concatenate(sequences).astype(np.int32) if total else np.zeros(0, np.int32)
        return cls(input_ids, position_ids, cu_seqlens, int(lengths.max(initial=0)))

    @property
    def num_tokens(self) -> int:
        return int(self.cu_seqlens[-1])

    def __len__(self) -> int:
        return len(self.cu_seqlens) - 1


class EncoderModel:
    def __init__(self, spec: ModelSpec, params: dict[str, np.ndarray], ops):
        self.spec = spec
        self.ops = ops
        params = dict(params)
        params["token_type0"] = params.pop("token_type")[0]  # no token-type inputs: all type 0
        # GEMM weights in the ops' own form (C: packed once, float32 or int8), the rest as arrays
        weight = getattr(ops, "linear_weight", ops.param)
        self.p = {name: (weight if name.endswith(GEMM_WEIGHTS) else ops.param)(array)
                  for name, array in params.items()}
        fuse = getattr(ops, "fuse_layers", None)  # C ops: all layers in one call for small batches
        layers = [{name: self.p[f"layer.{i}.{name}"] for name in LAYER_PARAMS} for i in range(spec.num_layers)]
        self.fused = fuse(layers, spec.num_heads, spec.layer_norm_eps) if fuse else None
        self.graphs = None
        if getattr(ops, "graphs", False):  # CudaOps(graphs=True): replay short batches (cuda_graphs.py)
            from tinyembed.engine.ops.cuda_graphs import GraphCache

            self.graphs = GraphCache(ops, self.forward_arrays)

    def forward(self, batch: Batch) -> np.ndarray:
        """Packed batch -> (n, H) L2-normalized float32 vectors on the host."""
        return self.ops.to_host(self.forward_on_device(batch))

    def forward_on_device(self, batch: Batch):
        """The same, left on the ops' device: a GPU caller may enqueue the next batch before
        waiting for this one's result."""
        if self.graphs is not None:
            vectors = self.graphs.run(batch)
            if vectors is not None:
                return vectors
        ids, positions, cu = self.ops.upload_batch(batch)
        vectors = self.forward_arrays(ids, positions, cu, batch.max_len)
        release = getattr(self.ops, "release_batch", None)
        if release is not None:  # the batch's input buffer may be reused once this forward is done
            release(ids)
        return vectors

    def forward_arrays(self, ids, positions, cu, max_len: int):
        """The forward on inputs already on the ops' device (what a CUDA graph captures)."""
        ops, p, spec = self.ops, self.p, self.spec
        eps, heads = spec.layer_norm_eps, spec.num_heads

        x = ops.embed(ids, positions, p["word"], p["position"], p["token_type0"],
                      p["emb_ln_w"], p["emb_ln_b"], eps)  # (T, H)
        if self.fused is not None and self.fused.takes(cu):  # the same layers, one C call per thread
            return ops.pool_normalize(self.fused(x, cu), cu, spec.pooling)  # (n, H), unit length
        for i in range(spec.num_layers):
            w = lambda name: p[f"layer.{i}.{name}"]  # noqa: E731
            qkv = ops.linear(x, w("qkv_w"), w("qkv_b"))  # (T, 3H)
            ctx = ops.attention(qkv, cu, max_len, heads)  # (T, H)
            attn = ops.matmul(ctx, w("out_w"))  # (T, H)
            x = ops.bias_residual_layernorm(attn, w("out_b"), x, w("ln1_w"), w("ln1_b"), eps)  # (T, H)
            h = ops.bias_gelu(ops.matmul(x, w("ffn_in_w")), w("ffn_in_b"))  # (T, I)
            ffn = ops.matmul(h, w("ffn_out_w"))  # (T, H)
            x = ops.bias_residual_layernorm(ffn, w("ffn_out_b"), x, w("ln2_w"), w("ln2_b"), eps)  # (T, H)
            del qkv, ctx, attn, h, ffn  # free for the next layer: the ops' arena reuses them (ops/arena.py)

        return ops.pool_normalize(x, cu, spec.pooling)  # (n, H), unit length


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """Matryoshka truncation: keep the first `dimensions` components, then renormalize."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    return normalize(np.ascontiguousarray(vectors[:, :dimensions]))
