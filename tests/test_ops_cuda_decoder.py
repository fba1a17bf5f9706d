"""The CUDA decoder ops against their numpy twins, and the tiny decoder models end to end on a
GPU. Skipped without CuPy and a device (as tests/test_ops_cuda.py). Inputs are uploaded in the
storage dtype and the numpy reference runs on exactly those rounded values."""

from __future__ import annotations

import numpy as np
import pytest

from tinyembed.engine import Engine, load_engine
from tinyembed.engine.ops import cuda_ops as ops_cuda
from tinyembed.engine.ops.numpy_ops import NumpyOps
from tinyembed.engine.ops.numpy_decoder import rope_table

from engine_fixtures import FIXTURES, TINY_DECODERS

_REASON = ops_cuda.unavailable_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=f"needs a CUDA GPU: {_REASON}")]
TOLERANCE = {"float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}  # relative to max |reference|
_OPS: dict[str, object] = {}


@pytest.fixture(params=list(TOLERANCE))
def gpu(request):
    if request.param not in _OPS:
        _OPS[request.param] = ops_cuda.CudaOps(0, request.param, poison_outputs=True)
        _OPS[request.param].prepare_decoder_kernels()
    return _OPS[request.param], TOLERANCE[request.param]


@pytest.fixture(scope="module")
def cpu():
    return NumpyOps(threads=4)


def upload(ops, x):
    import cupy

    return ops.from_float32(cupy.asarray(np.ascontiguousarray(x, dtype=np.float32)))


def close(got, want, tol):
    scale = max(float(np.abs(want).max()), 1e-6)
    assert np.abs(got - want).max() <= tol * scale * 4, np.abs(got - want).max() / scale


def test_norms(gpu, cpu):
    ops, tol = gpu
    rng = np.random.default_rng(0)
    x_dev, y_dev = upload(ops, rng.standard_normal((37, 96))), upload(ops, rng.standard_normal((37, 96)))
    x, y = ops.to_host(x_dev), ops.to_host(y_dev)
    w = rng.standard_normal(96).astype(np.float32)
    close(ops.to_host(ops.rmsnorm(x_dev, ops.param(w), 1e-6)), cpu.rmsnorm(x, w, 1e-6), tol)
    h, r = ops.add_rmsnorm(y_dev, x_dev, ops.param(w), 1e-6)
    h_ref, r_ref = cpu.add_rmsnorm(y.copy(), x.copy(), w, 1e-6)
    close(ops.to_host(r), r_ref, tol)
    close(ops.to_host(h), h_ref, tol)
    qkv_dev = upload(ops, rng.standard_normal((9, (4 + 2 * 2) * 24)))
    qkv = ops.to_host(qkv_dev)
    qw, kw = rng.standard_normal(24).astype(np.float32), rng.standard_normal(24).astype(np.float32)
    got = ops.to_host(ops.head_rmsnorm(qkv_dev, ops.param(qw), ops.param(kw), 4, 2, 1e-6))
    close(got, cpu.head_rmsnorm(qkv.copy(), qw, kw, 4, 2, 1e-6), tol)


def test_rope_activation_embedding_last_token(gpu, cpu):
    import cupy

    ops, tol = gpu
    rng = np.random.default_rng(1)
    qkv_dev = upload(ops, rng.standard_normal((20, (4 + 2 * 2) * 32)))
    qkv = ops.to_host(qkv_dev)
    positions = np.concatenate([np.arange(12), np.arange(8)]).astype(np.int32)
    cos, sin = (t.ravel() for t in rope_table(1e4, 32, 64))
    got = ops.rope(qkv_dev, cupy.asarray(positions), ops.param(cos), ops.param(sin), 4, 2)
    close(ops.to_host(got), cpu.rope(qkv.copy(), positions, cos, sin, 4, 2), tol)
    for activation in ("silu", "gelu_tanh"):
        gu_dev = upload(ops, rng.standard_normal((33, 2 * 40)) * 3)
        gu = ops.to_host(gu_dev)
        close(ops.to_host(ops.gated_activation(gu_dev, activation)), cpu.gated_activation(gu.copy(), activation), tol)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    table_dev = ops.param(table)
    ids = np.array([3, 0, 49, 7], dtype=np.int32)
    close(ops.to_host(ops.embedding(cupy.asarray(ids), table_dev, 8.0)),
          cpu.embedding(ids, ops.to_host(table_dev), 8.0), tol)
    hidden_dev = upload(ops, rng.standard_normal((10, 64)))
    cu = np.array([0, 3, 4, 10], dtype=np.int32)
    np.testing.assert_array_equal(ops.to_host(ops.last_token(hidden_dev, cupy.asarray(cu))),
                                  cpu.last_token(ops.to_host(hidden_dev), cu))


@pytest.mark.parametrize("causal,window,softcap,d", [
    (True, None, None, 128), (True, 5, 2.0, 256), (False, None, None, 64), (True, None, None, 24)])
def test_decoder_attention(gpu, cpu, causal, window, softcap, d):
    import cupy

    ops, tol = gpu
    rng = np.random.default_rng(2)
    cu = np.array([0, 1, 17, 90], dtype=np.int32)
    qkv_dev = upload(ops, rng.standard_normal((90, (4 + 2 * 2) * d)))
    qkv = ops.to_host(qkv_dev)
    got = ops.decoder_attention(qkv_dev, cupy.asarray(cu), 4, 2, d ** -0.5, causal, window, softcap)
    close(ops.to_host(got), cpu.decoder_attention(qkv, cu, 4, 2, d ** -0.5, causal, window, softcap), tol)


@pytest.mark.parametrize("name", TINY_DECODERS)
def test_tiny_decoders_on_the_gpu_match_the_cpu(gpu, name):
    ops, tol = gpu
    cpu_engine = load_engine(str(FIXTURES / name))
    engine = Engine(name, cpu_engine.spec, ops)
    with np.load(FIXTURES / name / "expected.npz") as data:
        ids, cu = data["input_ids"], data["cu_seqlens"]
    sequences = [ids[a:b] for a, b in zip(cu[:-1], cu[1:])]
    got = engine.embed(engine.pack(sequences))
    want = cpu_engine.embed(cpu_engine.pack(sequences))
    cosines = np.einsum("ij,ij->i", got, want)
    assert cosines.min() >= (0.99999 if tol < 1e-4 else 0.999), cosines.min()
