"""bench/sched_policy.py runs, deterministically, and with this checkout's scheduler no single text
waits more than a few batches under the sidecar mix (the old former let one wait 106)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def run(*args: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "bench.sched_policy", "--duration", "20", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
    return {row[0]: float(row[1]) for row in rows}


def test_the_policy_bench_bounds_single_texts_and_keeps_throughput():
    mixed = run()
    assert mixed == run()  # deterministic: fake time, no machine in it
    assert mixed["singles"] > 500
    assert mixed["single_max_batches_waited"] <= 8  # 16 clients: at most ~2 batches of them ahead
    assert mixed["single_max_ms"] < 1000
    alone = run("--singles", "0")
    assert alone["singles"] == 0 and alone["bulk_tokens_per_s"] > 0
    assert mixed["total_tokens_per_s"] >= 0.95 * alone["total_tokens_per_s"]
