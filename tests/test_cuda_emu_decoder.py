"""The decoder families' CUDA ops (kernels/cuda/decoder.cu, decoder_attention.cu) through CudaOps
on the CPU emulator, against their numpy twins: all three storage dtypes; outputs poisoned."""

from __future__ import annotations

import numpy as np
import pytest

from tinyembed.engine.build.cuda_emu_launch import schedule
from tinyembed.engine.ops import cuda_emu_device as dev
from tinyembed.engine.ops.numpy_ops import NumpyOps
from tinyembed.engine.ops.numpy_decoder import rope_table
from cuda_emu_helpers import emulated_ops, needs_cxx

pytestmark = needs_cxx
TOLERANCE = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}  # relative to max |reference|, as the GPU test


@pytest.fixture(params=list(TOLERANCE))
def emu(request):
    return emulated_ops(request.param), TOLERANCE[request.param]


@pytest.fixture(scope="module")
def cpu():
    return NumpyOps(threads=1)


def upload(ops, x):
    return ops.from_float32(dev.asarray(np.ascontiguousarray(x, dtype=np.float32)))


def close(got, want, tol):
    assert np.isfinite(got).all(), "unwritten (NaN) or non-finite elements"
    scale = max(float(np.abs(want).max()), 1e-6)
    assert np.abs(got - want).max() <= tol * scale * 4, np.abs(got - want).max() / scale


@pytest.mark.parametrize("width", [96, 896, 1000])
def test_norms(emu, cpu, width):
    ops, tol = emu
    rng = np.random.default_rng(width)
    x_dev, y_dev = upload(ops, rng.standard_normal((7, width))), upload(ops, rng.standard_normal((7, width)))
    x, y = ops.to_host(x_dev), ops.to_host(y_dev)
    w = rng.standard_normal(width).astype(np.float32)
    close(ops.to_host(ops.rmsnorm(x_dev, ops.param(w), 1e-6)), cpu.rmsnorm(x, w, 1e-6), tol)
    h, r = ops.add_rmsnorm(y_dev, x_dev, ops.param(w), 1e-6)
    h_ref, r_ref = cpu.add_rmsnorm(y.copy(), x.copy(), w, 1e-6)
    close(ops.to_host(r), r_ref, tol)
    close(ops.to_host(h), h_ref, tol)


@pytest.mark.parametrize("head_dim", [24, 64, 128])
def test_head_rmsnorm(emu, cpu, head_dim):
    ops, tol = emu
    rng = np.random.default_rng(head_dim)
    qkv_dev = upload(ops, rng.standard_normal((9, (4 + 2 * 2) * head_dim)))
    qkv = ops.to_host(qkv_dev)
    qw, kw = rng.standard_normal(head_dim).astype(np.float32), rng.standard_normal(head_dim).astype(np.float32)
    got = ops.to_host(ops.head_rmsnorm(qkv_dev, ops.param(qw), ops.param(kw), 4, 2, 1e-6))
    close(got, cpu.head_rmsnorm(qkv.copy(), qw, kw, 4, 2, 1e-6), tol)


def test_rope_activation_embedding_last_token(emu, cpu):
    ops, tol = emu
    rng = np.random.default_rng(1)
    qkv_dev = upload(ops, rng.standard_normal((20, (4 + 2 * 2) * 32)))
    qkv = ops.to_host(qkv_dev)
    positions = np.concatenate([np.arange(12), np.arange(8)]).astype(np.int32)
    cos, sin = (t.ravel() for t in rope_table(1e4, 32, 64))
    got = ops.rope(qkv_dev, dev.asarray(positions), ops.param(cos), ops.param(sin), 4, 2)
    close(ops.to_host(got), cpu.rope(qkv.copy(), positions, cos, sin, 4, 2), tol)
    for activation in ("silu", "gelu_tanh"):
        gu_dev = upload(ops, rng.standard_normal((33, 2 * 40)) * 3)
        gu = ops.to_host(gu_dev)
        close(ops.to_host(ops.gated_activation(gu_dev, activation)), cpu.gated_activation(gu.copy(), activation), tol)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    table_dev = ops.param(table)
    ids = np.array([3, 0, 49, 7], dtype=np.int32)
    close(ops.to_host(ops.embedding(dev.asarray(ids), table_dev, 8.0)), cpu.embedding(ids, ops.to_host(table_dev), 8.0), tol)
    hidden_dev = upload(ops, rng.standard_normal((10, 64)))
    cu = np.array([0, 3, 4, 10], dtype=np.int32)
    np.testing.assert_array_equal(ops.to_host(ops.last_token(hidden_dev, dev.asarray(cu))),
                                  cpu.last_token(ops.to_host(hidden_dev), cu))
    unit = ops.to_host(ops.l2_normalize(hidden_dev))
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("causal,window,softcap,d", [
    (True, None, None, 128), (True, 5, 2.0, 256), (False, None, None, 64), (True, None, None, 24)])
@pytest.mark.parametrize("order,seed", [("forward", 0), ("shuffled", 4)])
def test_decoder_attention(emu, cpu, causal, window, softcap, d, order, seed):
    ops, tol = emu
    rng = np.random.default_rng(2)
    cu = np.array([0, 1, 17, 50], dtype=np.int32)
    qkv_dev = upload(ops, rng.standard_normal((50, (4 + 2 * 2) * d)))
    qkv = ops.to_host(qkv_dev)
    with schedule(order, seed):
        got = ops.decoder_attention(qkv_dev, dev.asarray(cu), 4, 2, d ** -0.5, causal, window, softcap)
    close(ops.to_host(got), cpu.decoder_attention(qkv, cu, 4, 2, d ** -0.5, causal, window, softcap), tol)
