"""What makes training fast without changing what it learns: CPU budget, loader workers, GPU-side input prep.

- **Workers from the pod's CPUs**: ``os.cpu_count()`` reports the node's CPUs, not the pod's; the budget is the
  CPU affinity mask, capped by the cgroup CPU quota (what a Kubernetes CPU limit sets), split among the
  processes torchrun started on this node.
- **uint8 batches, standardized on the device**: the training transforms stop before the seed's
  ``DetectionStandardize`` (divide by 255) and hand over uint8 HWC images; :class:`DevicePrep` divides on the
  GPU instead. A quarter of the bytes to collate, pin and copy; the values the model sees are the same.
- **channels_last + cudnn.benchmark**: YOLO-NAS's convolutions run markedly faster in NHWC with tuned
  algorithms (fixed input size, so benchmarking pays off after the first batches).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch

#: Upper bound for auto-sized loaders: past this, more workers only cost memory (each holds the dataset index).
MAX_AUTO_WORKERS = 16
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``); None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            quota_us = int((root / folder / "cpu.cfs_quota_us").read_text())
            period_us = int((root / folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: the affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def local_world_size() -> int:
    """Processes torchrun started on this node (1 without torchrun)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def loader_workers(requested: int, *, cpus: int | None = None, processes: int | None = None) -> int:
    """``requested`` when positive; for 0 (auto) this process's share of the CPUs, less one for the
    training loop itself, at most :data:`MAX_AUTO_WORKERS`."""
    if requested > 0:
        return requested
    if requested < 0:
        raise ValueError(f"workers={requested} must be 0 (auto) or positive")
    share = (cpus or available_cpus()) // (processes or local_world_size())
    return max(0, min(MAX_AUTO_WORKERS, share - 1))


def configure_backends() -> None:
    """Let cuDNN pick the fastest algorithms for the (fixed) input size; allow TF32 for fp32 matmuls
    (under AMP almost everything is fp16 already)."""
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def use_channels_last(requested: bool) -> bool:
    """channels_last only on CUDA: on the CPU, torch 2.14.1's backward pass of YOLO-NAS with NHWC tensors
    corrupts the heap (``corrupted size vs. prev_size``, then SIGSEGV/SIGABRT), whether the weights or
    only the inputs are NHWC."""
    return requested and torch.cuda.is_available()


def to_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Convert the 4-D parameters and buffers in place; optimizer state created later inherits the layout."""
    return model.to(memory_format=torch.channels_last)


class DevicePrep:
    """super-gradients' ``pre_prediction_callback``: runs on each training batch once it is on the device.

    uint8 images (from :func:`yolonas_pipeline.trainer.data.train_transforms`) become float in [0, 1], exactly
    the seed's ``DetectionStandardize(max_value=255)``; float inputs pass unchanged. With ``channels_last`` the
    batch is made NHWC (a no-op for the loader's batches, which already are), otherwise plain NCHW.
    """

    def __init__(self, *, channels_last: bool, max_value: float = 255.0) -> None:
        self.channels_last = channels_last
        self.max_value = max_value

    def __call__(self, inputs: torch.Tensor, targets: Any, batch_idx: int) -> tuple[torch.Tensor, Any]:
        if inputs.dtype == torch.uint8:
            inputs = inputs.float().div_(self.max_value)
        if inputs.dim() == 4:
            # Without channels_last the NHWC batches must become plain NCHW (see use_channels_last).
            layout = torch.channels_last if self.channels_last else torch.contiguous_format
            inputs = inputs.contiguous(memory_format=layout)
        return inputs, targets
