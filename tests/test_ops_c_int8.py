"""The int8 path (kernels/cpu/gemm_int8.c) against its numpy twin (ops/c_int8.py) and float64.

Integer sums are exact, so quantize_rows (asymmetric, per row), gemm_int8 (VNNI where the CPU has it) and
gemm_int8_portable must equal the twin bit for bit, at odd widths, on poisoned outputs, for
the asked rows only. Against float64, per output: |error| <= (K/2) * (s_x * max|w_j| + s_w *
max|x_t|) + K s_x s_w / 4 (each operand off by at most half a step). The fallback a CPU without
VNNI gets is tested for real: a library built with -mno-avx512vnni -mno-avxvnni
(TINYEMBED_CPU_CFLAGS) in a fresh process, and TINYEMBED_CPU_INT8=portable: one log line,
the same vectors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyembed.engine.ops.c_int8 import gemm_int8_numpy, pack_int8, quantize_rows_numpy, unpack_int8
from tinyembed.engine.ops.c_ops import COps

from test_ops_c import _library

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [(1, 1, 1), (5, 37, 45), (6, 384, 1152), (13, 5, 17), (7, 64, 16), (97, 130, 33), (200, 1537, 40)]


@pytest.fixture(scope="module")
def lib():
    library = _library()
    COps(library, threads=1)  # sets every entry point's argument types
    return library


def _run(lib, name, xq, xs, xz, packed, rows, begin=0, end=None):
    y = np.full((rows, packed.n), np.nan, np.float32)
    getattr(lib, name)(xq.ctypes.data, xs.ctypes.data, xz.ctypes.data, packed.q.ctypes.data, packed.scale.ctypes.data,
                       packed.sum.ctypes.data, None, y.ctypes.data, packed.kp, packed.n, 0, begin,
                       rows if end is None else end)
    return y


def _quantize(lib, x, kp):
    xq = np.full((x.shape[0], kp), 0x5A, np.uint8)
    xs = np.full(x.shape[0], np.nan, np.float32)
    xz = np.full(x.shape[0], -7, np.int32)
    lib.quantize_rows(x.ctypes.data, x.shape[1], kp, xq.ctypes.data, xs.ctypes.data, xz.ctypes.data, 0, x.shape[0])
    return xq, xs, xz


def test_pack_int8_round_trips_and_sums(lib):
    w = np.random.default_rng().standard_normal((37, 45)).astype(np.float32)
    packed = pack_int8(w)
    wq = unpack_int8(packed)
    assert wq.shape == (37, 45) and np.abs(wq).max() == 127
    np.testing.assert_array_equal(packed.sum[:45], wq.astype(np.int32).sum(axis=0))
    assert np.abs(wq * packed.scale[:45] - w).max() <= packed.scale.max() / 2 + 1e-7


@pytest.mark.parametrize("rows,k,n", SHAPES)
def test_gemm_int8_equals_the_numpy_twin_bit_for_bit(lib, rows, k, n):
    r = np.random.default_rng()
    x = r.standard_normal((rows, k)).astype(np.float32) * r.uniform(0.1, 10, (rows, 1)).astype(np.float32)
    x[0, :] = 0.0  # an all-zero row quantizes to scale 1, zero point 0
    if rows > 2:
        x[1, :] = np.abs(x[1, :])  # one-sided rows (after GELU): zero point 0, all 256 levels used
        x[2, :] = -np.abs(x[2, :])  # zero point 255
    w = r.standard_normal((k, n)).astype(np.float32)
    packed = pack_int8(w)
    xq, xs, xz = _quantize(lib, x, packed.kp)
    twin = quantize_rows_numpy(x, packed.kp)
    for got, want in zip((xq, xs, xz), twin):
        np.testing.assert_array_equal(got, want)
    assert xs[0] == 1.0 and xz[0] == 0
    expected = gemm_int8_numpy(*twin, packed)
    for name in ("gemm_int8", "gemm_int8_portable"):
        np.testing.assert_array_equal(_run(lib, name, xq, xs, xz, packed, rows), expected, err_msg=name)
    # and against float64: the quantization bound (each operand off by at most half a step)
    reference = x.astype(np.float64) @ w
    wmax, xmax = np.abs(w).max(axis=0), np.abs(x).max(axis=1, keepdims=True)
    sw = packed.scale[:n]
    bound = (k / 2) * (xs[:, None] * wmax + sw * xmax) + k * xs[:, None] * sw / 4 + 1e-5
    assert (np.abs(expected - reference) <= bound).all()


def test_only_the_asked_rows_are_written(lib):
    r = np.random.default_rng()
    x, w = r.standard_normal((40, 50)).astype(np.float32), r.standard_normal((50, 70)).astype(np.float32)
    packed = pack_int8(w)
    xq, xs, xz = quantize_rows_numpy(x, packed.kp)
    for name in ("gemm_int8", "gemm_int8_portable"):
        y = _run(lib, name, xq, xs, xz, packed, 40, 7, 29)
        assert np.isnan(y[:7]).all() and np.isnan(y[29:]).all() and not np.isnan(y[7:29]).any()


def test_int8_ops_split_over_threads_give_the_same_bits(lib):
    r = np.random.default_rng()
    x, w = r.standard_normal((3000, 96)).astype(np.float32), r.standard_normal((96, 200)).astype(np.float32)
    packed = pack_int8(w)
    one = COps(lib, threads=1, precision="int8")
    two = COps(lib, threads=2, precision="int8")
    portable = COps(lib, threads=2, precision="int8", int8_portable=True)
    assert np.array_equal(one.matmul(x, packed), two.matmul(x, packed))
    assert np.array_equal(one.matmul(x, packed), portable.matmul(x, packed))


PROBE = """
import json, logging, numpy as np
logging.basicConfig(level=logging.INFO, format="%(message)s")
from tinyembed.engine import load_engine
engine = load_engine("all-MiniLM-L6-v2", precision="int8", threads=1)
texts = ["a short query", "the same text alone or in a batch gets the same vector " * 8]
print("OUT", json.dumps({"isa": engine.model.ops.int8_isa, "precision": engine.info.precision,
                         "vectors": engine.embed_texts(texts).tolist()}))
"""


def _probe(cache: Path, **env) -> tuple[dict, list[str]]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TINYEMBED_CPU")}
    environ.update(PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(cache), **env)
    done = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("cpu kernels:")]
    return json.loads(done.stdout.split("OUT ")[-1]), lines


def test_fallbacks_give_the_same_vectors_and_say_so_once(tmp_path):
    native, native_log = _probe(tmp_path)
    forced, forced_log = _probe(tmp_path, TINYEMBED_CPU_INT8="portable")
    built, built_log = _probe(tmp_path, TINYEMBED_CPU_CFLAGS="-mno-avx512vnni -mno-avxvnni")
    assert len(native_log) == len(forced_log) == len(built_log) == 1
    assert forced["isa"] == 0 and "portable C (TINYEMBED_CPU_INT8=portable" in forced_log[0]
    assert built["isa"] == 0 and "portable C (this CPU has no AVX-512 VNNI" in built_log[0]
    assert native["precision"] == forced["precision"] == built["precision"] == "int8"
    assert native["vectors"] == forced["vectors"] == built["vectors"]  # bit for bit
