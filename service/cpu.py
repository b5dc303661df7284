"""What the CPU offers the model: threads (the configured number, or the container's CPU limit).

A container limited to 2 CPUs still sees every core of the host in ``os.cpu_count()``; running
that many torch threads makes the kernel throttle them (oversubscription). The limit is read from
the cgroup: ``cpu.max`` (cgroup v2) or ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (v1).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (e.g. 1.5), or None when there is no quota."""
    v2 = root / "cpu.max"
    if v2.is_file():
        quota, _, period = v2.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return _ratio(quota, period)
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        quota_file, period_file = v1 / "cpu.cfs_quota_us", v1 / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            return _ratio(quota_file.read_text().strip(), period_file.read_text().strip())
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None  # v1 writes -1 for "no quota"


def available_cpus() -> int:
    """Cores this process may be scheduled on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(configured: int = 0, root: Path = CGROUP_ROOT) -> int:
    """``configured`` if > 0; else the cgroup CPU limit rounded down, capped by the affinity mask.

    Rounding down: 1.5 CPUs gives 1 thread, because 2 busy threads would be throttled.
    """
    if configured > 0:
        return configured
    threads = available_cpus()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        threads = min(threads, max(1, math.floor(limit)))
    return threads
