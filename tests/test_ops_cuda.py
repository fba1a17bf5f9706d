"""Each CUDA op against its numpy twin (NumpyOps), on fresh random inputs.

Every test class runs once per (storage dtype, kernel version): the fast kernels and their naive
teaching versions must both match. Inputs are uploaded in the storage dtype and the reference is
computed on exactly those rounded values, so the error measured is the kernel's own. Outputs
start as NaN (CudaOps(poison_outputs=True)), so an element a kernel never writes fails the test,
and in-place kernels run on random data, where a skipped element keeps a visibly wrong value.

The GPU classes need CuPy and a CUDA device and are skipped otherwise. Run them on a GPU with
    python -m pytest -m gpu tests/test_ops_cuda.py -q
TestWithoutGpu runs everywhere: the kernel files, the build script and the CPU fallback.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import zlib

import numpy as np
import pytest

from tinyembed.engine.ops import cuda_ops as ops_cuda
from tinyembed.engine import make_ops
from tinyembed.common.errors import TinyEmbedError
from tinyembed.engine.families.bert import Batch
from tinyembed.engine.ops.numpy_ops import NumpyOps

_REASON = ops_cuda.unavailable_reason()
needs_gpu = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=f"needs a CUDA GPU: {_REASON}")]


def gpu(cls):
    for mark in needs_gpu:
        cls = mark(cls)
    return cls


# dtype -> (norm-wise relative error bound, elementwise rtol, elementwise atol as a fraction of max|ref|).
# Storage rounding alone is 2^-11 (fp16) and 2^-8 (bf16) per element; the bounds leave room for
# one more rounding of intermediates (P in attention) but not for a wrong element.
TOLERANCE = {"float16": (3e-3, 2e-2, 4e-3), "bfloat16": (2e-2, 8e-2, 3e-2), "float32": (2e-5, 1e-4, 1e-5)}
CASES = [(d, k) for d in ("float16", "bfloat16", "float32") for k in ("fast", "naive")]
_OPS: dict[tuple[str, str], ops_cuda.CudaOps] = {}


@pytest.fixture(params=CASES, ids=[f"{d}-{k}" for d, k in CASES])
def case(request):
    dtype, kernels = request.param
    if request.param not in _OPS:
        _OPS[request.param] = ops_cuda.CudaOps(0, dtype, kernels=kernels, poison_outputs=True)
    return _OPS[request.param], dtype


@pytest.fixture(scope="module")
def cpu():
    return NumpyOps(threads=8)


@pytest.fixture
def rng(request):
    # different inputs for every test, reproducible from the test's id
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def stored(ops, array):
    """Upload in the storage dtype; return (device array, the float32 values it really holds)."""
    device = ops.param(array)
    return device, ops.to_host(device)


def check(out, ref, dtype):
    out = np.asarray(out, dtype=np.float32)
    assert out.shape == ref.shape
    assert np.isfinite(out).all(), f"{(~np.isfinite(out)).sum()} elements not written (NaN) or not finite"
    norm_bound, rtol, atol = TOLERANCE[dtype]
    rel = np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)
    assert rel <= norm_bound, f"relative error {rel:.2e} > {norm_bound:.0e}"
    np.testing.assert_allclose(out, ref, rtol=rtol, atol=atol * float(np.abs(ref).max()))


def lengths_batch(lengths, rng, width3, ops):
    batch = Batch.pack([np.zeros(n, np.int32) for n in lengths])
    qkv = (rng.standard_normal((batch.num_tokens, width3)) * 1.5).astype(np.float32)
    _, _, cu = ops.upload_batch(batch)
    return batch, qkv, cu


@gpu
class TestEmbed:
    @pytest.mark.parametrize("width", [384, 768, 1024, 36])
    def test_matches_numpy(self, case, cpu, rng, width):
        ops, dtype = case
        vocab, max_pos, tokens = 1000, 600, 777
        word = rng.standard_normal((vocab, width)).astype(np.float32)
        position = rng.standard_normal((max_pos, width)).astype(np.float32)
        type0 = rng.standard_normal(width).astype(np.float32) * 0.1
        ln_w = rng.uniform(0.5, 1.5, width).astype(np.float32)
        ln_b = rng.standard_normal(width).astype(np.float32) * 0.1
        ids = rng.integers(0, vocab, tokens).astype(np.int32)
        positions = rng.integers(0, max_pos, tokens).astype(np.int32)
        batch = Batch(ids, positions, np.array([0, tokens], np.int32), tokens)
        d_ids, d_pos, _ = ops.upload_batch(batch)
        d_word, h_word = stored(ops, word)
        d_position, h_position = stored(ops, position)
        out = ops.to_host(ops.embed(d_ids, d_pos, d_word, d_position, ops.param(type0), ops.param(ln_w),
                                    ops.param(ln_b), 1e-12))
        ref = cpu.embed(ids, positions, h_word, h_position, type0, ln_w, ln_b, 1e-12)
        check(out, ref, dtype)


@gpu
class TestBiasGelu:
    @pytest.mark.parametrize("shape", [(1, 1536), (333, 3072), (64, 4096), (17, 100)])
    def test_matches_numpy(self, case, cpu, rng, shape):
        ops, dtype = case
        y = (rng.standard_normal(shape) * 2).astype(np.float32)
        b = rng.standard_normal(shape[1]).astype(np.float32)
        d_y, h_y = stored(ops, y)
        out = ops.to_host(ops.bias_gelu(d_y, ops.param(b)))
        check(out, cpu.bias_gelu(h_y.copy(), b), dtype)

    def test_linear_adds_the_bias(self, case, rng):
        ops, dtype = case
        x = rng.standard_normal((300, 384)).astype(np.float32)
        w = (rng.standard_normal((384, 1152)) / 20).astype(np.float32)
        b = rng.standard_normal(1152).astype(np.float32)
        d_x, h_x = stored(ops, x)
        d_w, h_w = stored(ops, w)
        out = ops.to_host(ops.linear(d_x, d_w, ops.param(b)))
        check(out, h_x @ h_w + b, dtype)


@gpu
class TestMatmul:
    @pytest.mark.parametrize("shape", [(1, 384, 384), (513, 768, 3072), (77, 4096, 1024)])
    def test_matches_numpy(self, case, rng, shape):
        ops, dtype = case
        t, k, n = shape
        x = rng.standard_normal((t, k)).astype(np.float32)
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        d_x, h_x = stored(ops, x)
        d_w, h_w = stored(ops, w)
        check(ops.to_host(ops.matmul(d_x, d_w)), h_x @ h_w, dtype)


@gpu
class TestBiasResidualLayernorm:
    @pytest.mark.parametrize("width", [384, 768, 1024, 36])
    def test_matches_numpy(self, case, cpu, rng, width):
        ops, dtype = case
        tokens = 513
        y = rng.standard_normal((tokens, width)).astype(np.float32)
        residual = (rng.standard_normal((tokens, width)) * 3 + 1).astype(np.float32)
        b = rng.standard_normal(width).astype(np.float32)
        ln_w = rng.uniform(0.5, 1.5, width).astype(np.float32)
        ln_b = rng.standard_normal(width).astype(np.float32) * 0.1
        d_y, h_y = stored(ops, y)
        d_r, h_r = stored(ops, residual)
        out = ops.to_host(ops.bias_residual_layernorm(d_y, ops.param(b), d_r, ops.param(ln_w),
                                                      ops.param(ln_b), 1e-5))
        check(out, cpu.bias_residual_layernorm(h_y.copy(), b, h_r, ln_w, ln_b, 1e-5), dtype)


@gpu
class TestAttention:
    LENGTHS = [1, 7, 64, 65, 511, 512, 4097]

    def run(self, ops, cpu, rng, lengths, head_dim, dtype):
        heads = 256 // head_dim
        batch, qkv, cu = lengths_batch(lengths, rng, 3 * heads * head_dim, ops)
        d_qkv, h_qkv = stored(ops, qkv)
        out = ops.to_host(ops.attention(d_qkv, cu, batch.max_len, heads))
        check(out, cpu.attention(h_qkv, batch.cu_seqlens, batch.max_len, heads), dtype)

    @pytest.mark.parametrize("head_dim", [32, 64, 128])
    @pytest.mark.parametrize("length", LENGTHS)
    def test_one_sequence(self, case, cpu, rng, length, head_dim):
        ops, dtype = case
        self.run(ops, cpu, rng, [length], head_dim, dtype)

    @pytest.mark.parametrize("head_dim", [32, 64, 128])
    def test_mixed_batch(self, case, cpu, rng, head_dim):
        ops, dtype = case
        lengths = [65, 1, 512, 7, 4097, 64, 511, 1, 130, 33]
        self.run(ops, cpu, rng, lengths, head_dim, dtype)

    def test_many_short_sequences(self, case, cpu, rng):
        ops, dtype = case
        self.run(ops, cpu, rng, rng.integers(1, 40, 3000).tolist(), 64, dtype)

    def test_longest_input(self, case, cpu, rng):
        ops, dtype = case
        self.run(ops, cpu, rng, [8192, 3], 128, dtype)

    def test_every_row_written_even_if_max_len_is_too_small(self, case, cpu, rng):
        ops, dtype = case  # max_len sizes the grid only; the blocks loop over the rest
        batch, qkv, cu = lengths_batch([300, 5], rng, 3 * 256, ops)
        d_qkv, h_qkv = stored(ops, qkv)
        out = ops.to_host(ops.attention(d_qkv, cu, 1, 4))
        check(out, cpu.attention(h_qkv, batch.cu_seqlens, batch.max_len, 4), dtype)

    def test_head_dim_without_tensor_core_kernel(self, case, cpu, rng):
        ops, dtype = case  # head_dim 8 (the tiny test models) always takes the naive kernel
        batch, qkv, cu = lengths_batch([5, 70, 1], rng, 3 * 32, ops)
        d_qkv, h_qkv = stored(ops, qkv)
        out = ops.to_host(ops.attention(d_qkv, cu, batch.max_len, 4))
        check(out, cpu.attention(h_qkv, batch.cu_seqlens, batch.max_len, 4), dtype)


@gpu
class TestPoolNormalize:
    @pytest.mark.parametrize("mode", ["cls", "mean", "last"])
    @pytest.mark.parametrize("dimensions", [None, 256, 37])
    def test_matches_numpy(self, case, cpu, rng, mode, dimensions):
        ops, dtype = case
        lengths = [1, 5, 64, 4097, 2, 300]
        batch = Batch.pack([np.zeros(n, np.int32) for n in lengths])
        hidden = rng.standard_normal((batch.num_tokens, 768)).astype(np.float32)
        hidden[:, 0] += 3.0  # a shared offset: the mean of a long sequence stays far from 0
        _, _, cu = ops.upload_batch(batch)
        d_h, h_h = stored(ops, hidden)
        out = ops.to_host(ops.pool_normalize(d_h, cu, mode, dimensions))
        ref = cpu.pool_normalize(h_h, batch.cu_seqlens, mode)
        if dimensions is not None:  # model.truncate_dimensions: keep the first k, renormalize
            ref = ref[:, :dimensions] / np.linalg.norm(ref[:, :dimensions], axis=1, keepdims=True)
        check(out, ref, dtype)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


@gpu
class TestHostSide:
    def test_upload_batch_round_trips(self, case, rng):
        ops, _ = case
        for _ in range(3):  # both staging buffers, then the first again
            batch = Batch.pack([rng.integers(0, 1000, n).astype(np.int32) for n in rng.integers(1, 50, 20)], 2)
            ids, positions, cu = ops.upload_batch(batch)
            np.testing.assert_array_equal(ids.get(), batch.input_ids)
            np.testing.assert_array_equal(positions.get(), batch.position_ids)
            np.testing.assert_array_equal(cu.get(), batch.cu_seqlens)

    def test_param_rounds_to_the_storage_dtype(self, case, rng):
        ops, dtype = case
        w = rng.standard_normal((50, 40)).astype(np.float32)
        back = ops.to_host(ops.param(w))
        if dtype == "float32":
            np.testing.assert_array_equal(back, w)
        elif dtype == "float16":
            np.testing.assert_array_equal(back, w.astype(np.float16).astype(np.float32))
        else:  # bf16 round-to-nearest-even: error at most half an ulp of 8 bits
            assert np.all(np.abs(back - w) <= np.abs(w) * 2.0**-8)
        bias = rng.standard_normal(40).astype(np.float32)
        np.testing.assert_array_equal(ops.to_host(ops.param(bias)), bias)  # 1-D stays float32


class TestWithoutGpu:
    """What can be checked with no GPU: these run in CI."""

    def test_every_entry_point_is_defined_in_its_kernel_file(self):
        folder = ops_cuda.kernel_dir()
        assert sorted(p.name for p in folder.glob("*.cu")) == sorted(ops_cuda.KERNELS)
        for file, names in ops_cuda.KERNELS.items():
            source = ops_cuda.kernel_source(file)
            assert '#include "' not in source  # local headers inlined: CuPy's cache sees them
            defined = set(re.findall(r'extern "C" __global__ void (\w+)\(', source))
            defined |= {f"attention_d{d}" for d in re.findall(r"^TC_KERNEL\((\d+),", source, re.M)}
            assert set(names) <= defined, f"{file} lacks {set(names) - defined}"

    def test_compile_all_builds_every_kernel_for_every_arch_and_dtype(self, tmp_path):
        log = tmp_path / "calls"
        fake = tmp_path / "nvcc"
        fake.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo fake && exit 0\necho "$@" >> {log}\n')
        fake.chmod(0o755)
        script = ops_cuda.kernel_dir() / "compile_all.sh"
        run = subprocess.run(["bash", str(script)], env={**os.environ, "NVCC": str(fake)}, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        calls = log.read_text().splitlines()
        for file in ops_cuda.KERNELS:
            for dtype in ("0", "1", "2"):
                call = [c for c in calls if f" {file} " in f" {c} " and f"-DTE_DTYPE={dtype}" in c]
                assert len(call) == 1, (file, dtype, calls)
                assert all(f"code=sm_{a}" in call[0] for a in ("80", "89", "90"))
                assert "-Werror" in call[0] and "-Wall,-Werror" in call[0]

    def test_compile_all_fails_when_a_kernel_fails(self, tmp_path):
        fake = tmp_path / "nvcc"
        fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo fake && exit 0\necho "error: bad kernel" >&2\nexit 1\n')
        fake.chmod(0o755)
        script = ops_cuda.kernel_dir() / "compile_all.sh"
        run = subprocess.run(["bash", str(script)], env={**os.environ, "NVCC": str(fake)}, capture_output=True, text=True)
        assert run.returncode != 0 and "error: bad kernel" in run.stderr

    def test_importing_ops_cuda_does_not_import_cupy(self):
        code = "import sys, tinyembed.engine.ops.cuda_ops, tinyembed.engine; print('cupy' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "False"

    def test_without_cupy_auto_is_cpu_and_cuda_says_why(self, monkeypatch):
        real_find_spec = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cupy" else real_find_spec(name, *a))
        assert ops_cuda.available() is False
        assert "CuPy is not installed" in ops_cuda.unavailable_reason()
        assert make_ops("auto").name == "cpu"
        with pytest.raises(TinyEmbedError, match="CuPy is not installed"):
            make_ops("cuda:0")

    def test_auto_falls_back_to_the_cpu_when_the_kernels_cannot_run(self, monkeypatch, caplog):
        def no_kernels(*args, **kwargs):
            raise TinyEmbedError("--device cuda:0: the CUDA kernels did not compile or load (no cuda_fp16.h)")

        monkeypatch.setattr(ops_cuda, "available", lambda: True)
        monkeypatch.setattr(ops_cuda, "CudaOps", no_kernels)
        with caplog.at_level("WARNING", logger="tinyembed"):
            assert make_ops("auto").name == "cpu"
        assert "cuda_fp16.h" in caplog.text and "running on the CPU" in caplog.text
