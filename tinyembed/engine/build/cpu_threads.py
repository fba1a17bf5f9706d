"""How many cores this process may really use: CPU affinity, then the cgroup's CPU quota.

os.cpu_count() is the machine's count; a container limited by `--cpus 1.5` or a process pinned
with taskset sees fewer. Kernel threads plus BLAS threads above the real count oversubscribe
the cores, and spinning BLAS threads then collapse throughput (measured by the scheduler work).
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cgroup_quota_cores(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """cgroup v2 cpu.max ("quota period" or "max period") or v1 cfs_quota_us / cfs_period_us."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """min(affinity, ceil(cgroup quota)), at least 1."""
    cores = affinity_cores()
    quota = cgroup_quota_cores()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)
