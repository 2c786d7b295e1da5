"""What makes training fast without changing what it learns: CPU budget, loader workers, GPU-side input prep.

- **Workers from the pod's CPUs**: the budget is :func:`yolonas_pipeline.cpus.available_cpus` (the affinity mask
  capped by the cgroup CPU quota, not ``os.cpu_count()``), split among the processes torchrun started on this node.
- **uint8 batches, standardized on the device**: the training transforms stop before the seed's
  ``DetectionStandardize`` (divide by 255) and hand over uint8 HWC images; :class:`DevicePrep` divides on the
  GPU instead. A quarter of the bytes to collate, pin and copy; the values the model sees are the same.
- **channels_last + cudnn.benchmark**: YOLO-NAS's convolutions run markedly faster in NHWC with tuned
  algorithms (fixed input size, so benchmarking pays off after the first batches).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from yolonas_pipeline.cpus import available_cpus

#: Upper bound for auto-sized loaders: past this, more workers only cost memory (each holds the dataset index).
MAX_AUTO_WORKERS = 16


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
