"""Every CUDA op, through CudaOps and the exact kernels/cuda/*.cu sources on the CPU emulator,
against its numpy twin: all three storage dtypes, fast and naive kernels, the engine's widths
(MiniLM 384, bge-base 768, bge-m3/XLM-R 1024, an odd 36), head dims 8/32/64/128, ragged batches.
Outputs are poisoned (NaN until written). Small shapes by default; TINYEMBED_EMU_FULL=1 runs
lengths up to 1024 and one 4097-token sequence on the tensor-core kernels (1024 on the naive
one), tens of minutes per dtype. The decoder ops: test_cuda_emu_decoder.py."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

from tinyembed.engine.build.cuda_emu_launch import schedule
from tinyembed.engine.families.bert import Batch
from tinyembed.engine.ops import cuda_emu_device
from tinyembed.engine.ops.numpy_ops import NumpyOps
from cuda_emu_helpers import emulated_ops, needs_cxx
from test_ops_cuda import check, lengths_batch, stored

pytestmark = needs_cxx
FULL = os.environ.get("TINYEMBED_EMU_FULL", "") == "1"
CASES = [(d, k) for d in ("float16", "bfloat16", "float32") for k in ("fast", "naive")]
LENGTHS = [1, 7, 64, 65, 511, 512, 1024] if FULL else [1, 7, 65]
LONG = 4097 if FULL else 200
RACE_ORDERS = [("reversed", 0), ("shuffled", 1), ("shuffled", 2)]


@pytest.fixture(params=CASES, ids=[f"{d}-{k}" for d, k in CASES])
def case(request):
    dtype, kernels = request.param
    return emulated_ops(dtype, kernels), dtype


@pytest.fixture(scope="module")
def cpu():
    return NumpyOps(threads=1)


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def embed_case(ops, cpu, rng, width, tokens=9):
    vocab, max_pos = 50, 40
    word = rng.standard_normal((vocab, width)).astype(np.float32)
    position = rng.standard_normal((max_pos, width)).astype(np.float32)
    type0 = rng.standard_normal(width).astype(np.float32) * 0.1
    ln_w = rng.uniform(0.5, 1.5, width).astype(np.float32)
    ln_b = rng.standard_normal(width).astype(np.float32) * 0.1
    ids = rng.integers(0, vocab, tokens).astype(np.int32)
    positions = rng.integers(0, max_pos, tokens).astype(np.int32)
    d_ids, d_pos, _ = ops.upload_batch(Batch(ids, positions, np.array([0, tokens], np.int32), tokens))
    d_word, h_word = stored(ops, word)
    d_position, h_position = stored(ops, position)
    out = ops.to_host(ops.embed(d_ids, d_pos, d_word, d_position, ops.param(type0), ops.param(ln_w), ops.param(ln_b), 1e-12))
    return out, cpu.embed(ids, positions, h_word, h_position, type0, ln_w, ln_b, 1e-12)


@pytest.mark.parametrize("width", [384, 768, 1024, 36])
def test_embed(case, cpu, rng, width):
    ops, dtype = case
    check(*embed_case(ops, cpu, rng, width), dtype)


@pytest.mark.parametrize("shape", [(1, 1536), (5, 3072), (3, 4096), (17, 100)])
def test_bias_gelu(case, cpu, rng, shape):
    ops, dtype = case
    y = (rng.standard_normal(shape) * 2).astype(np.float32)
    b = rng.standard_normal(shape[1]).astype(np.float32)
    d_y, h_y = stored(ops, y)
    check(ops.to_host(ops.bias_gelu(d_y, ops.param(b))), cpu.bias_gelu(h_y.copy(), b), dtype)


@pytest.mark.parametrize("shape", [(1, 384, 384), (33, 768, 96), (7, 64, 1152)])
def test_matmul_and_linear(case, rng, shape):
    ops, dtype = case
    t, k, n = shape
    x = rng.standard_normal((t, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    d_x, h_x = stored(ops, x)
    d_w, h_w = stored(ops, w)
    check(ops.to_host(ops.matmul(d_x, d_w)), h_x @ h_w, dtype)
    check(ops.to_host(ops.linear(d_x, d_w, ops.param(b))), h_x @ h_w + b, dtype)


def layernorm_case(ops, cpu, rng, width, tokens=5):
    y = rng.standard_normal((tokens, width)).astype(np.float32)
    residual = (rng.standard_normal((tokens, width)) * 3 + 1).astype(np.float32)
    b = rng.standard_normal(width).astype(np.float32)
    ln_w = rng.uniform(0.5, 1.5, width).astype(np.float32)
    ln_b = rng.standard_normal(width).astype(np.float32) * 0.1
    d_y, h_y = stored(ops, y)
    d_r, h_r = stored(ops, residual)
    out = ops.to_host(ops.bias_residual_layernorm(d_y, ops.param(b), d_r, ops.param(ln_w), ops.param(ln_b), 1e-5))
    return out, cpu.bias_residual_layernorm(h_y.copy(), b, h_r, ln_w, ln_b, 1e-5)


@pytest.mark.parametrize("width", [384, 768, 1024, 36])
def test_bias_residual_layernorm(case, cpu, rng, width):
    ops, dtype = case
    check(*layernorm_case(ops, cpu, rng, width), dtype)


def attention_case(ops, cpu, rng, lengths, head_dim, max_len=None):
    heads = 256 // head_dim if head_dim >= 32 else 4
    batch, qkv, cu = lengths_batch(lengths, rng, 3 * heads * head_dim, ops)
    d_qkv, h_qkv = stored(ops, qkv)
    out = ops.to_host(ops.attention(d_qkv, cu, batch.max_len if max_len is None else max_len, heads))
    return out, cpu.attention(h_qkv, batch.cu_seqlens, batch.max_len, heads)


@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("length", LENGTHS)
def test_attention_one_sequence(case, cpu, rng, length, head_dim):
    ops, dtype = case
    check(*attention_case(ops, cpu, rng, [length], head_dim), dtype)


def naive_attention(ops, dtype, head_dim) -> bool:
    return ops.naive or dtype == "float32" or head_dim not in (32, 64, 128)


@pytest.mark.parametrize("head_dim", [8, 32, 64, 128])
def test_attention_ragged_batch(case, cpu, rng, head_dim):
    ops, dtype = case
    # the naive kernel costs 160 fiber switches per (query, key, head): no 4097-token sequence there
    long = 1024 if naive_attention(ops, dtype, head_dim) else LONG
    lengths = [65, 1, 130, 7, long, 64, 33] if FULL else [65, 1, 7, 64, 33, 2]
    check(*attention_case(ops, cpu, rng, lengths, head_dim), dtype)


def test_attention_long_sequence(case, cpu, rng):
    ops, dtype = case
    check(*attention_case(ops, cpu, rng, [1024 if naive_attention(ops, dtype, 64) and FULL else LONG, 3], 64), dtype)


def test_attention_rows_written_when_max_len_is_too_small(case, cpu, rng):
    ops, dtype = case  # max_len sizes the grid only; the blocks loop over the rest
    check(*attention_case(ops, cpu, rng, [150, 5], 64, max_len=1), dtype)


@pytest.mark.parametrize("mode", ["cls", "mean", "last"])
@pytest.mark.parametrize("dimensions", [None, 256, 37])
def test_pool_normalize(case, cpu, rng, mode, dimensions):
    ops, dtype = case
    lengths = [1, 5, 64, 70, 2]
    batch = Batch.pack([np.zeros(n, np.int32) for n in lengths])
    hidden = rng.standard_normal((batch.num_tokens, 768)).astype(np.float32)
    hidden[:, 0] += 3.0
    _, _, cu = ops.upload_batch(batch)
    d_h, h_h = stored(ops, hidden)
    out = ops.to_host(ops.pool_normalize(d_h, cu, mode, dimensions))
    ref = cpu.pool_normalize(h_h, batch.cu_seqlens, mode)
    if dimensions is not None:
        ref = ref[:, :dimensions] / np.linalg.norm(ref[:, :dimensions], axis=1, keepdims=True)
    check(out, ref, dtype)


@pytest.mark.parametrize("order,seed", RACE_ORDERS)
def test_race_orders(case, cpu, rng, order, seed):
    """The kernels with barriers, shuffles or shared memory again with each block's threads run
    in reversed and shuffled orders between meetings: a missing barrier gives wrong numbers."""
    ops, dtype = case
    with schedule(order, seed):
        check(*embed_case(ops, cpu, rng, 768), dtype)
        check(*layernorm_case(ops, cpu, rng, 384), dtype)
        tensor_cores = dtype != "float32" and not ops.naive  # attention_naive has no shared memory
        for head_dim in (32, 64, 128):
            lengths = [200, 3, 40] if tensor_cores else [20, 3]  # >= 3 key tiles: both buffers reused
            check(*attention_case(ops, cpu, rng, lengths, head_dim), dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_the_fast_cases_launch_the_fast_kernels(dtype, cpu):
    ops = emulated_ops(dtype, "fast")
    rng = np.random.default_rng(0)
    cuda_emu_device.launched.clear()
    embed_case(ops, cpu, rng, 384)
    layernorm_case(ops, cpu, rng, 384)
    attention_case(ops, cpu, rng, [9], 64)
    names = set(cuda_emu_device.launched)
    assert {"embed", "bias_residual_layernorm"} <= names and not any(n.endswith("_naive") for n in names - {"attention_naive"})
    assert ("attention_naive" if dtype == "float32" else "attention_d64") in names


def test_attention_splits_more_sequences_than_grid_z_holds(cpu, rng, monkeypatch):
    """More than 65,535 sequences go out in several launches, each with cu_seqlens offset by the
    sequences before it: the same code with the limit lowered to 2."""
    from tinyembed.engine.ops import cuda_ops

    monkeypatch.setattr(cuda_ops, "MAX_GRID_Z", 2)
    ops = emulated_ops("float16")
    cuda_emu_device.launched.clear()
    check(*attention_case(ops, cpu, rng, [3, 70, 1, 9, 2], 64), "float16")
    assert cuda_emu_device.launched["attention_d64"] == 3
