"""Run inside the AddressSanitizer + UBSan build (tests/test_cuda_emu_sanitize.py starts it with
LD_PRELOAD=libasan and TINYEMBED_EMU_SANITIZE=1): `probe` reads past an array (must abort),
`ops` runs every kernel file once through CudaOps in float16 (fast kernels) and float32 (naive)."""

from __future__ import annotations

import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))


def probe():
    from cuda_emu_helpers import probes

    x = np.zeros(40, np.float32)
    probes().launch("probe_read_past", (1,), (32,), (x, np.zeros(32, np.float32), np.int32(40)))
    print("no error")


def ops():
    from tinyembed.engine.ops.numpy_ops import NumpyOps
    from cuda_emu_helpers import emulated_ops
    from test_cuda_emu_ops import attention_case, embed_case, layernorm_case
    from test_ops_cuda import check, stored

    cpu, rng = NumpyOps(threads=1), np.random.default_rng(0)
    for dtype, kernels in (("float16", "fast"), ("float32", "naive")):
        ops = emulated_ops(dtype, kernels)
        check(*embed_case(ops, cpu, rng, 384), dtype)
        check(*layernorm_case(ops, cpu, rng, 768), dtype)
        for head_dim in (8, 32, 64, 128):
            check(*attention_case(ops, cpu, rng, [65, 7, 1], head_dim), dtype)
        y = rng.standard_normal((3, 1536)).astype(np.float32)
        d_y, h_y = stored(ops, y)
        b = rng.standard_normal(1536).astype(np.float32)
        check(ops.to_host(ops.bias_gelu(d_y, ops.param(b))), cpu.bias_gelu(h_y.copy(), b), dtype)
        from tinyembed.engine.families.bert import Batch

        batch = Batch.pack([np.zeros(n, np.int32) for n in (1, 5, 9)])
        hidden = rng.standard_normal((batch.num_tokens, 384)).astype(np.float32)
        _, _, cu = ops.upload_batch(batch)
        d_h, h_h = stored(ops, hidden)
        check(ops.to_host(ops.pool_normalize(d_h, cu, "mean", 37)),
              (lambda r: r / np.linalg.norm(r, axis=1, keepdims=True))(cpu.pool_normalize(h_h, batch.cu_seqlens, "mean")[:, :37]), dtype)
        qkv_dev = ops.param(rng.standard_normal((20, 8 * 32)).astype(np.float32))
        cu_d = ops.cp.asarray(np.array([0, 4, 20], np.int32))
        out = ops.to_host(ops.decoder_attention(qkv_dev, cu_d, 4, 2, 32 ** -0.5, True, 5, 2.0))
        ref = cpu.decoder_attention(ops.to_host(qkv_dev), np.array([0, 4, 20], np.int32), 4, 2, 32 ** -0.5, True, 5, 2.0)
        assert np.abs(out - ref).max() < 2e-2
        x_dev = ops.param(rng.standard_normal((5, 96)).astype(np.float32))
        w = rng.standard_normal(96).astype(np.float32)
        out = ops.to_host(ops.rmsnorm(x_dev, ops.param(w), 1e-6))
        assert np.abs(out - cpu.rmsnorm(ops.to_host(x_dev), w, 1e-6)).max() < 5e-2
    print("all kernels ran clean")


if __name__ == "__main__":
    {"probe": probe, "ops": ops}[sys.argv[1]]()
