"""The CPU budget: affinity mask capped by the cgroup quota, read from fake cgroup trees."""

from __future__ import annotations

import os
from pathlib import Path

from yolonas_pipeline.cpus import available_cpus, cgroup_cpu_quota


def _cgroups(root: Path) -> Path:
    (root / "v2").mkdir(parents=True)
    (root / "v2" / "cpu.max").write_text("250000 100000\n")
    (root / "v2max").mkdir()
    (root / "v2max" / "cpu.max").write_text("max 100000\n")
    (root / "v1" / "cpu").mkdir(parents=True)
    (root / "v1" / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (root / "v1" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (root / "v1-unlimited" / "cpu").mkdir(parents=True)
    (root / "v1-unlimited" / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "v1-unlimited" / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    return root


def test_cgroup_quota_v1_and_v2(tmp_path: Path) -> None:
    root = _cgroups(tmp_path)
    quotas = {name: cgroup_cpu_quota(root / name) for name in ("v2", "v2max", "v1", "v1-unlimited", "none")}
    assert quotas == {"v2": 2.5, "v2max": None, "v1": 0.5, "v1-unlimited": None, "none": None}


def test_available_cpus_is_the_affinity_mask_capped_by_the_quota(tmp_path: Path) -> None:
    root = _cgroups(tmp_path)
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(root / "none") == affinity
    assert available_cpus(root / "v1") == 1  # half a CPU still gets one process
    assert available_cpus(root / "v2") == min(affinity, 3)  # 2.5 CPUs: rounded up
