"""Every fix super-gradients 3.7.1 needs on a modern stack, in one place.

super-gradients 3.7.1 (April 2024) is unmaintained; on torch 2.14 / numpy 2 / setuptools 81 it breaks in
known ways (see the project's reference notes, section 9). :func:`apply` must run before the first
``import super_gradients``; :func:`yolonas_pipeline.trainer.cli.main` calls it before anything imports it.

- **pkg_resources**: imported at module level by super-gradients; setuptools >= 82 removed it, so the
  lock file pins ``setuptools<82`` and :func:`check_environment` says so if it is missing.
- **torch >= 2.6 ``weights_only``**: super-gradients calls plain ``torch.load`` on its own checkpoints, which
  hold ``np.str_`` class names and (``averaging_snapshots.pkl``) numpy arrays; with the new default every
  checkpoint load and the first checkpoint save crash. ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` restores the
  old default *inside the trainer process only*. That is safe here because the trainer only loads files it
  wrote itself or a base checkpoint that the inspection stage already checked with a restricted unpickler
  (and against its SHA-256 when the user gave one); user-supplied files are never loaded any other way.
- **numpy 2 aliases**: ``np.Inf`` (early stopping), ``np.NaN``, ``np.row_stack`` (detection datasets).
- **ONNX export**: torch >= 2.9 defaults to the dynamo exporter, which fails on super-gradients' graphs;
  ``torch.onnx.export`` is wrapped to default to ``dynamo=False``.
- **Import side effects**: super-gradients wipes root logging handlers, tees stdout/stderr, wraps
  ``sys.excepthook`` and writes to ``~/sg_logs``. ``CRASH_HANDLER=FALSE`` and a ``SUPER_GRADIENTS_LOG_DIR``
  under the run's work directory keep that contained; its tqdm progress bars are turned off (the
  rest of its console noise: :mod:`yolonas_pipeline.trainer.logs`).
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Any

_APPLIED = False


def apply(log_dir: str | None = None) -> None:
    """Patch the environment and libraries for super-gradients 3.7.1. Idempotent."""
    global _APPLIED
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    os.environ.setdefault("CRASH_HANDLER", "FALSE")
    os.environ.setdefault("SUPER_GRADIENTS_LOG_DIR", log_dir or os.path.join(tempfile.gettempdir(), "sg_logs"))
    # super-gradients' console logger tees into files under the log dir; make sure it exists.
    os.makedirs(os.environ["SUPER_GRADIENTS_LOG_DIR"], exist_ok=True)
    if _APPLIED:
        return
    _patch_numpy()
    _patch_onnx_export()
    _disable_progress_bars()
    _APPLIED = True


def _patch_numpy() -> None:
    import numpy as np

    aliases: dict[str, Any] = {"Inf": np.inf, "NaN": np.nan, "row_stack": np.vstack}
    for name, value in aliases.items():
        if not hasattr(np, name):
            setattr(np, name, value)


def _patch_onnx_export() -> None:
    import torch.onnx

    export = torch.onnx.export
    if getattr(export, "_yolonas_patched", False):
        return

    @functools.wraps(export)
    def export_without_dynamo(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("dynamo", False)
        return export(*args, **kwargs)

    export_without_dynamo._yolonas_patched = True  # type: ignore[attr-defined]
    torch.onnx.export = export_without_dynamo


def _disable_progress_bars() -> None:
    """super-gradients' tqdm bars (dataset indexing, the averaged model's validation, which ignores
    ``silent_mode``) are carriage-return redraws: unreadable in a task log, where the trainer's own progress
    lines are (:class:`yolonas_pipeline.trainer.training.RunSync`). super-gradients passes ``disable=``
    itself, which wins over tqdm's ``TQDM_DISABLE``, so the constructor is wrapped."""
    from tqdm import std

    init = std.tqdm.__init__
    if getattr(init, "_yolonas_patched", False):
        return

    @functools.wraps(init)
    def init_disabled(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        init(self, *args, **kwargs)

    init_disabled._yolonas_patched = True  # type: ignore[attr-defined]
    std.tqdm.__init__ = init_disabled  # type: ignore[method-assign]


def check_environment() -> None:
    """Fail early, with the fix in the message, when the trainer environment is not the locked one."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError as exc:  # setuptools >= 82
        raise RuntimeError(
            "super-gradients 3.7.1 imports pkg_resources, which setuptools >= 82 removed; install the trainer "
            "environment from requirements/trainer.lock (it pins setuptools<82)"
        ) from exc
