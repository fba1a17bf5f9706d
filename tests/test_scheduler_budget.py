"""The time-set batch budget (scheduler/budget.py) on synthetic devices: batch time as a known
function of batch size, so the budget the rule should reach is computed, not guessed."""

from __future__ import annotations

import random

import pytest

from tinyembed.scheduler.budget import INITIAL_TOKENS, BatchBudget


def run(budget: BatchBudget, seconds, batches: int = 300, small: int = 24, seed: int = 0) -> None:
    """Batches as a loaded server forms them: mostly full budgets, now and then a small one."""
    rng = random.Random(seed)
    for k in range(batches):
        n = budget.tokens if k % 4 else rng.randint(small, max(small, budget.tokens // 2))
        budget.observe(n, seconds(n))


def test_fixed_without_a_latency_target():
    b = BatchBudget(4096, None)
    assert b.tokens == 4096
    b.observe(4096, 10.0)
    assert b.tokens == 4096


def test_conservative_before_any_measurement():
    assert BatchBudget(16384, 0.075).tokens == INITIAL_TOKENS
    assert BatchBudget(100, 0.075).tokens == 100  # never above the cap


def test_cpu_like_curve_is_cut_by_the_latency_target():
    b = BatchBudget(16384, 0.075)
    run(b, lambda n: 0.005 + n / 7000)
    assert b.tokens == pytest.approx((0.075 - 0.005) * 7000, rel=0.03)
    assert b.predicted_seconds(b.tokens) == pytest.approx(0.075, rel=0.03)


def test_gpu_like_curve_is_cut_where_throughput_flattens():
    b = BatchBudget(16384, 0.075)
    run(b, lambda n: 0.003 + n / 200_000)
    half = 0.003 * 200_000  # tokens at which half the time is overhead
    assert b.tokens == pytest.approx(19 * half, rel=0.03)  # 95% of peak, well inside 75 ms
    assert b.predicted_seconds(b.tokens) < 0.075


def test_the_cap_stays_a_hard_cap():
    b = BatchBudget(2048, 0.075)
    run(b, lambda n: 0.003 + n / 200_000)
    assert b.tokens == 2048


def test_a_slow_device_keeps_an_efficient_floor():
    b = BatchBudget(16384, 0.075)
    run(b, lambda n: 0.02 + n / 1000)  # even 16 tokens take 36 ms
    assert b.tokens == pytest.approx(0.85 / 0.15 * 0.02 * 1000, rel=0.03)  # 85% efficiency, not 16 tokens


def test_it_adapts_when_the_device_gets_faster():
    b = BatchBudget(16384, 0.075)
    run(b, lambda n: 0.005 + n / 7000)
    slow = b.tokens
    run(b, lambda n: 0.005 + n / 21_000, batches=600)  # e.g. C kernels replaced numpy ops
    assert b.tokens == pytest.approx((0.075 - 0.005) * 21_000, rel=0.05)
    assert b.tokens > 2 * slow


def test_a_low_overhead_device_stops_at_near_peak_throughput():
    b = BatchBudget(16384, 0.075)
    run(b, lambda n: 0.001 + n / 21_000)
    # 95% of peak comes at 19 * 21 = 399 tokens, long before 75 ms; the cut stops at half the latency fit
    assert b.tokens == pytest.approx((0.075 - 0.001) * 21_000 / 2, rel=0.05)


def test_noise_moves_it_little():
    clean, noisy = BatchBudget(16384, 0.075), BatchBudget(16384, 0.075)
    run(clean, lambda n: 0.005 + n / 7000)
    rng = random.Random(1)
    # one batch in ten is 3x slower (another process took the CPU)
    run(noisy, lambda n: (0.005 + n / 7000) * (3 if rng.random() < 0.1 else 1))
    # the slow batches lower the measured rate (~1/1.2) and blur the overhead (the near-peak cut
    # may then halve the latency fit): bounded, never a collapse to the minimum
    assert 0.35 * clean.tokens <= noisy.tokens <= clean.tokens


def test_one_size_measured_alternates_with_probes():
    b = BatchBudget(16384, 0.1)
    b.observe(256, 0.05)  # the line through the origin: 512 tokens would take 0.1 s
    assert b.tokens == int(0.6 * 512)  # but first a probe, to tell overhead from slope
    b.observe(256, 0.05)
    assert b.tokens == 512


def test_steady_full_batches_on_a_slow_machine_do_not_spiral_down():
    # every batch is filled to the budget (heavy bulk load), and the fixed cost alone is 0.1 s
    b = BatchBudget(16384, 0.075)
    for _ in range(300):
        b.observe(b.tokens, 0.1 + b.tokens / 1500)
    assert b.tokens >= 0.9 * 0.85 / 0.15 * 0.1 * 1500  # the 85% efficiency floor, not 16 tokens


def test_bad_latency_is_refused():
    with pytest.raises(ValueError):
        BatchBudget(1024, 0)
