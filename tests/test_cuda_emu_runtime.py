"""The emulator's runtime: warp shuffles over 32 lanes, __syncthreads as a counting barrier, the
thread orders of the race checks, and the faults it must report instead of computing on."""

from __future__ import annotations

import numpy as np
import pytest

from tinyembed.engine.build.cuda_emu_launch import EmulatorError, schedule
from cuda_emu_helpers import needs_cxx, probes

pytestmark = needs_cxx
ORDERS = [("forward", 0), ("reversed", 0), ("shuffled", 1), ("shuffled", 2), ("shuffled", 3)]


@pytest.mark.parametrize("order,seed", ORDERS)
def test_shuffles_exchange_among_the_32_lanes(order, seed):
    out = np.zeros((64, 8), np.int32)
    with schedule(order, seed):
        probes().launch("probe_shuffles", (1,), (64,), (out,))
    lane = np.arange(64) % 32
    np.testing.assert_array_equal(out[:, 0], ((lane + 3) % 32) * 10)
    np.testing.assert_array_equal(out[:, 1], lane ^ 5)
    np.testing.assert_array_equal(out[:, 2], np.where(lane + 4 < 32, lane + 4, lane))
    np.testing.assert_array_equal(out[:, 3], np.where(lane >= 4, lane - 4, lane))
    np.testing.assert_array_equal(out[:, 4], lane)  # lane ^ 9 leaves its 8-lane segment
    ballot = sum(1 << l for l in range(32) if l % 3 == 0)
    np.testing.assert_array_equal(out[:, 5].view(np.uint32), np.uint32(ballot))
    np.testing.assert_array_equal(out[:, 6], (lane // 16) * 16 + 2)
    np.testing.assert_array_equal(out[:, 7], lane ^ 16)


@pytest.mark.parametrize("order,seed", ORDERS)
def test_block_sum_with_its_barrier_is_right_in_every_order(order, seed):
    x = np.random.default_rng(0).standard_normal(2 * 256).astype(np.float32)
    out = np.zeros_like(x)
    with schedule(order, seed):
        probes().launch("probe_block_sum", (2,), (256,), (x, out, np.int32(0)))
    np.testing.assert_allclose(out, np.repeat(x.reshape(2, 256).sum(1), 256), rtol=1e-5, atol=1e-5)


def test_a_missing_barrier_is_caught_by_some_order():
    """Without the barrier, threads read partial sums other warps have not written yet: the
    poisoned shared memory (NaN) or a stale value shows in at least one of the orders."""
    x = np.random.default_rng(0).standard_normal(2 * 256).astype(np.float32)
    want = np.repeat(x.reshape(2, 256).sum(1), 256)
    wrong = 0
    for order, seed in ORDERS:
        out = np.zeros_like(x)
        with schedule(order, seed):
            probes().launch("probe_block_sum", (2,), (256,), (x, out, np.int32(1)))
        wrong += not np.allclose(out, want, rtol=1e-5, atol=1e-5)
    assert wrong >= 2


def test_barriers_in_divergent_code_are_an_error():
    with pytest.raises(EmulatorError, match="__syncthreads in divergent code"):
        probes().launch("probe_divergent_barrier", (1,), (64,), (np.zeros(64, np.int32),))


def test_a_shuffle_naming_an_exited_lane_is_an_error():
    with pytest.raises(EmulatorError, match="exited"):
        probes().launch("probe_shuffle_exited_lane", (1,), (32,), (np.zeros(32, np.float32),))


def test_a_full_mask_shuffle_in_a_partial_warp_is_an_error():
    with pytest.raises(EmulatorError, match="do not exist"):
        probes().launch("probe_shuffle_partial_warp", (1,), (40,), (np.zeros(40, np.float32),))


@pytest.mark.parametrize("order,seed", ORDERS[:3])
def test_exited_threads_count_as_arrived(order, seed):
    out = np.zeros(64, np.int32)
    with schedule(order, seed):
        probes().launch("probe_exit_before_barrier", (1,), (64,), (out,))
    np.testing.assert_array_equal(out[:40], (np.arange(40) + 1) % 40)


def test_shared_memory_starts_poisoned_in_every_block():
    out = np.zeros(64, np.uint32)
    probes().launch("probe_uninitialized_shared", (2,), (32,), (out,))
    assert out[0] == 7 and out[32] == 7
    assert (out[1:32] == 0xFFFFFFFF).all() and (out[33:] == 0xFFFFFFFF).all()


def test_dynamic_shared_memory_is_sized_by_the_launch():
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    probes().launch("probe_dynamic_shared", (1,), (64,), (x, out), shared_mem=64 * 4)
    np.testing.assert_array_equal(out, x[::-1])
    with pytest.raises(EmulatorError, match="48 KiB"):
        probes().launch("probe_dynamic_shared", (1,), (64,), (x, out), shared_mem=64 * 1024)


def test_atomics_and_exact_argument_types():
    counter, total = np.zeros(1, np.int32), np.zeros(1, np.float32)
    probes().launch("probe_atomics", (3,), (128,), (counter, total, np.ones(128, np.float32)))
    assert counter[0] == 384 and total[0] == 384.0
    out = np.zeros(4, np.int64)
    probes().launch("probe_wide_args", (1,), (1,), (np.int64(2**40 + 3), np.int32(-5), np.float32(0.5), np.float64(0.25), out))
    assert out.tolist() == [2**40 + 3, -5, 2, 2]


@pytest.mark.parametrize("args,message", [
    ((np.int32(1), np.int32(-5), np.float32(0.5), np.float64(0.25), np.zeros(4, np.int64)), "parameter is i64"),
    ((np.int64(1), -5, np.float32(0.5), np.float64(0.25), np.zeros(4, np.int64)), "pass int32"),
    ((np.int64(1), np.int32(-5), np.float32(0.5), np.float64(0.25), np.zeros(4, np.int32)), "kernel reads i64"),
    ((np.int64(1), np.int32(-5), np.float32(0.5), np.zeros(4, np.int64)), "4 arguments for 5 parameters"),
    ((np.int64(1), np.int32(-5), np.float32(0.5), np.float64(0.25), np.zeros((4, 2), np.int64)[:, 0]), "not contiguous"),
])
def test_launch_arguments_are_checked_against_the_signature(args, message):
    with pytest.raises(EmulatorError, match=message):
        probes().launch("probe_wide_args", (1,), (1,), args)


@pytest.mark.parametrize("grid,block,message", [
    ((0,), (32,), "grid dimension is 0"), ((1, 70000), (32,), "grid too large"),
    ((1,), (2048,), "1024 threads"), ((1,), (0,), "block dimension is 0")])
def test_launches_a_gpu_rejects_are_rejected(grid, block, message):
    with pytest.raises(EmulatorError, match=message):
        probes().launch("probe_atomics", grid, block, (np.zeros(1, np.int32), np.zeros(1, np.float32), np.zeros(4096, np.float32)))
