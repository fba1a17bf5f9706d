"""The emulator's twins of the attention kernel's inline PTX, each instruction alone, element by
element against the PTX ISA's fragment tables (written out again here, independently of
kernels/cuda/emulate/emu_warp.h) and against a plain matrix product; the f16/bf16 conversions
against numpy's round-to-nearest-even."""

from __future__ import annotations

import numpy as np
import pytest

from cuda_emu_helpers import needs_cxx, probes

pytestmark = needs_cxx


def f16_bits(x):
    with np.errstate(over="ignore"):  # numpy: overflow to inf, as round to nearest even says
        return np.asarray(x, np.float32).astype(np.float16).view(np.uint16)


def bf16_bits(x):
    b = np.asarray(x, np.float32).view(np.uint32)
    return ((b + 0x7FFF + ((b >> 16) & 1)) >> 16).astype(np.uint16)


def from_bits(bits, bf16):
    bits = np.asarray(bits, np.uint16)
    return (bits.astype(np.uint32) << 16).view(np.float32) if bf16 else bits.view(np.float16).astype(np.float32)


def pack(lo, hi):
    return (np.uint32(lo) | (np.uint32(hi) << 16)).astype(np.uint32)


# -- the tables (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type") ----------
def a_position(lane, i):
    g, t = lane >> 2, lane % 4
    row = g if i in (0, 1, 4, 5) else g + 8
    col = t * 2 + (i & 1) + (8 if i >= 4 else 0)
    return row, col


def b_position(lane, i):
    g, t = lane >> 2, lane % 4
    return t * 2 + (i & 1) + (8 if i >= 2 else 0), g


def c_position(lane, i):
    g, t = lane >> 2, lane % 4
    return g + (8 if i >= 2 else 0), t * 2 + (i & 1)


def fragments(A_bits, B_bits):
    a = np.zeros((32, 4), np.uint32)
    b = np.zeros((32, 2), np.uint32)
    for lane in range(32):
        for r in range(4):
            a[lane, r] = pack(A_bits[a_position(lane, 2 * r)], A_bits[a_position(lane, 2 * r + 1)])
        for r in range(2):
            b[lane, r] = pack(B_bits[b_position(lane, 2 * r)], B_bits[b_position(lane, 2 * r + 1)])
    return a, b


@pytest.mark.parametrize("bf16", [False, True], ids=["f16", "bf16"])
def test_mma_m16n8k16_matches_the_product_element_by_element(bf16):
    rng = np.random.default_rng(1 + bf16)
    to_bits = bf16_bits if bf16 else f16_bits
    A_bits = to_bits(rng.standard_normal((16, 16)))
    B_bits = to_bits(rng.standard_normal((16, 8)))
    C = rng.standard_normal((16, 8)).astype(np.float32)
    a, b = fragments(A_bits, B_bits)
    c = np.zeros((32, 4), np.float32)
    for lane in range(32):
        for i in range(4):
            c[lane, i] = C[c_position(lane, i)]
    d = np.full((32, 4), np.nan, np.float32)
    probes().launch("probe_mma", (1,), (32,), (a.ravel(), b.ravel(), c.ravel(), d.ravel(), np.int32(bf16)))
    D = from_bits(A_bits, bf16).astype(np.float64) @ from_bits(B_bits, bf16).astype(np.float64) + C
    for lane in range(32):
        for i in range(4):
            assert d.ravel()[4 * lane + i] == pytest.approx(D[c_position(lane, i)], rel=1e-5, abs=1e-5), (lane, i)


def test_mma_notices_a_swapped_fragment():
    """The check above can fail: a0/a1 of lane 0 exchanged with a2/a3 changes the product."""
    rng = np.random.default_rng(5)
    A_bits, B_bits = f16_bits(rng.standard_normal((16, 16))), f16_bits(rng.standard_normal((16, 8)))
    a, b = fragments(A_bits, B_bits)
    a[0, [0, 1]] = a[0, [1, 0]]
    d = np.zeros(128, np.float32)
    probes().launch("probe_mma", (1,), (32,), (a.ravel(), b.ravel(), np.zeros(128, np.float32), d, np.int32(0)))
    D = from_bits(A_bits, False) @ from_bits(B_bits, False)
    got = np.array([[d[4 * lane + i] for i in range(4)] for lane in range(32)])
    want = np.array([[D[c_position(lane, i)] for i in range(4)] for lane in range(32)])
    assert np.abs(got - want).max() > 1e-3


def run_ldmatrix(tile, offsets, count, trans):
    out = np.zeros(128, np.uint32)
    probes().launch("probe_ldmatrix", (1,), (32,), (tile.ravel(), np.int32(tile.size), np.asarray(offsets, np.int32),
                                                    np.int32(count), np.int32(trans), out))
    return out.reshape(32, 4)


@pytest.mark.parametrize("trans", [False, True], ids=["x4", "x4.trans"])
def test_ldmatrix_x4_against_the_table(trans):
    rng = np.random.default_rng(3)
    stride = 24  # elements per row (48 bytes: 16-byte aligned rows, as attention.cu's padded tiles)
    tile = rng.integers(0, 65535, (40, stride)).astype(np.uint16)
    # matrix j: rows 8j..8j+7 at column 8 * (j % 2); lane 8j + r gives row r of matrix j
    starts = [(8 * j + r, 8 * (j % 2)) for j in range(4) for r in range(8)]
    out = run_ldmatrix(tile, [row * stride + col for row, col in starts], 4, trans)
    for lane in range(32):
        for j in range(4):
            M = np.array([tile[starts[8 * j + r][0], starts[8 * j + r][1]:starts[8 * j + r][1] + 8] for r in range(8)])
            if trans:
                lo, hi = M[2 * (lane % 4), lane // 4], M[2 * (lane % 4) + 1, lane // 4]
            else:
                lo, hi = M[lane // 4, 2 * (lane % 4)], M[lane // 4, 2 * (lane % 4) + 1]
            assert out[lane, j] == pack(lo, hi), (lane, j)


def test_ldmatrix_x4_yields_the_mma_a_fragments():
    """PTX's identity: lane p pointing at &A[p % 16][(p / 16) * 8] gives exactly a0..a7."""
    rng = np.random.default_rng(4)
    A_bits = f16_bits(rng.standard_normal((16, 16)))
    out = run_ldmatrix(A_bits, [(p % 16) * 16 + (p // 16) * 8 for p in range(32)], 4, False)
    a, _ = fragments(A_bits, np.zeros((16, 8), np.uint16))
    np.testing.assert_array_equal(out, a)


def test_ldmatrix_x2_trans_yields_the_mma_b_fragments():
    """Lane p (0-15) at &B[p][0], B stored [K][N]: .x2.trans gives b0..b3."""
    rng = np.random.default_rng(6)
    B_bits = f16_bits(rng.standard_normal((16, 8)))
    offsets = [(p % 16) * 8 for p in range(32)]  # lanes 16-31 give addresses .x2 ignores
    out = run_ldmatrix(B_bits, offsets, 2, True)
    _, b = fragments(np.zeros((16, 16), np.uint16), B_bits)
    np.testing.assert_array_equal(out[:, :2], b)


def test_ldmatrix_rejects_an_address_outside_shared_memory():
    from tinyembed.engine.build.cuda_emu_launch import EmulatorError

    src = np.zeros(512, np.uint16)
    with pytest.raises(EmulatorError, match="not in shared memory"):
        probes().launch("probe_ldmatrix_global", (1,), (32,), (src, np.zeros(32, np.uint32)))


def test_ldmatrix_rejects_a_misaligned_row():
    from tinyembed.engine.build.cuda_emu_launch import EmulatorError

    with pytest.raises(EmulatorError, match="16-byte aligned"):
        run_ldmatrix(np.zeros((16, 16), np.uint16), [p * 16 + 1 for p in range(32)], 4, False)


def test_cp_async_groups_complete_at_their_wait():
    src = np.arange(1, 13, dtype=np.float32)
    seen = np.zeros(48, np.float32)
    probes().launch("probe_cp_async", (1,), (1,), (src, seen))
    before, after2, after1, after0 = seen.reshape(4, 12)
    assert np.isnan(before).all()  # nothing lands before a wait covers it
    np.testing.assert_array_equal(after2[:4], src[:4])
    assert np.isnan(after2[4:]).all()
    np.testing.assert_array_equal(after1[:8], src[:8])
    assert np.isnan(after1[8:]).all()
    np.testing.assert_array_equal(after0, np.concatenate([src[:10], [0, 0]]))  # src-size 8: zero-filled


def test_half_and_bfloat16_round_to_nearest_even():
    rng = np.random.default_rng(7)
    special = np.array([0.0, -0.0, 1.0, 65504.0, 65520.0, 1e6, -1e6, 6.1e-5, 5.96e-8, 2.98e-8, 2.99e-8, 1e-9,
                        np.inf, -np.inf, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8], np.float32)
    with np.errstate(all="ignore"):
        x = np.concatenate([special, rng.standard_normal(20000).astype(np.float32) * 10.0 ** rng.integers(-9, 6, 20000),
                            rng.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    x = x[np.isfinite(x) | np.isinf(x)].astype(np.float32)
    n = x.size
    h, b, back = np.zeros(n, np.uint16), np.zeros(n, np.uint16), np.zeros(n, np.float32)
    probes().launch("probe_convert", (8,), (256,), (x, h, b, back, np.int32(n)))
    nan = np.isnan(x)
    np.testing.assert_array_equal(h[~nan], f16_bits(x[~nan]))
    np.testing.assert_array_equal(b[~nan], bf16_bits(x[~nan]))
    assert ((h[nan] & 0x7C00) == 0x7C00).all() and ((h[nan] & 0x3FF) != 0).all()
    np.testing.assert_array_equal(back[~nan], h[~nan].view(np.float16).astype(np.float32))
    every_half = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    finite = np.isfinite(every_half.view(np.float16))
    n2 = int(finite.sum())
    h2, b2, back2 = np.zeros(n2, np.uint16), np.zeros(n2, np.uint16), np.zeros(n2, np.float32)
    probes().launch("probe_convert", (8,), (256,), (every_half.view(np.float16)[finite].astype(np.float32), h2, b2, back2,
                                                    np.int32(n2)))
    np.testing.assert_array_equal(h2, every_half[finite])  # every finite half survives the round trip
