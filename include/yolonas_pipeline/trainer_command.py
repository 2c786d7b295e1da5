"""The contract between the Airflow side and the trainer command.

A request is a frozen dataclass; :func:`to_argv` turns it into the flags of
``python -m yolonas_pipeline.trainer <command>`` and :func:`from_argv` parses them back inside the trainer.
The same argv runs in a Kubernetes pod and in the embedded default's local subprocess, so this module is
the single place that defines it. Credentials never appear here: the trainer reads them from the
standard ``AWS_*`` environment variables (a Kubernetes Secret in a pod).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from yolonas_pipeline.errors import StageInputError

TRAINER_MODULE = "yolonas_pipeline.trainer"
#: File the trainer writes under its output URI when it finishes; the task reads it (no XCom sidecar).
RESULT_FILE = "result.json"

Request = TypeVar("Request")


def to_argv(request: Any) -> list[str]:
    """Flags for a request dataclass: ``--field-name value``; booleans as ``--flag`` / ``--no-flag``."""
    argv: list[str] = []
    for field in dataclasses.fields(request):
        value = getattr(request, field.name)
        flag = "--" + field.name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv.extend([flag, str(value)])
    return argv


def from_argv(cls: type[Request], argv: Sequence[str], *, prog: str) -> Request:
    """Parse flags produced by :func:`to_argv` back into ``cls``; unknown or malformed flags exit with usage."""
    parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = _base_type(hints[field.name])
        flag = "--" + field.name.replace("_", "-")
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        default = None if required else field.default
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, required=required)
        else:
            parser.add_argument(flag, type=kind, default=default, required=required, dest=field.name)
    return cls(**vars(parser.parse_args(list(argv))))


def coerce_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """Convert rendered template values ("16", "True") to the request field's type, naming a bad field."""
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    coerced: dict[str, Any] = {}
    for name, value in options.items():
        if name not in names:
            accepted = ", ".join(sorted(names))
            raise StageInputError(f"unknown option {name!r} for {cls.__name__}; expected one of {accepted}")
        kind = _base_type(hints[name])
        if value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
            coerced[name] = value
            continue
        try:
            if kind is bool:
                if str(value).strip().lower() not in {"true", "false", "1", "0"}:
                    raise ValueError(value)
                coerced[name] = str(value).strip().lower() in {"true", "1"}
            else:
                coerced[name] = kind(value)
        except (TypeError, ValueError):
            raise StageInputError(f"{name}={value!r} is not a valid {kind.__name__}") from None
    return coerced


def _base_type(hint: Any) -> type:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint not in (str, int, float, bool):
        raise TypeError(f"unsupported request field type {hint!r}")
    return hint


def trainer_argv(command: str, request: Any, *, gpus: int = 1) -> list[str]:
    """The full command line, e.g. ``python -m yolonas_pipeline.trainer train --dataset-uri ...``.

    With several GPUs it runs under ``torchrun`` (super-gradients' own DDP launcher re-executes
    ``sys.argv`` and breaks on modern torch).
    """
    launcher = ["python"] if gpus <= 1 else ["torchrun", "--standalone", f"--nproc_per_node={gpus}"]
    return [*launcher, "-m", TRAINER_MODULE, command, *to_argv(request)]


MODEL_NAMES = ("yolo_nas_s", "yolo_nas_m", "yolo_nas_l")


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    """Fine-tune a YOLO-NAS model on a materialized COCO dataset; resumable from its output URI."""

    dataset_uri: str
    output_uri: str
    num_classes: int
    model_name: str = "yolo_nas_s"
    checkpoint_uri: str | None = None
    checkpoint_num_classes: int | None = None
    epochs: int = 10
    batch_size: int = 16
    input_size: int = 640
    learning_rate: float = 5e-4
    warmup_epochs: int = 1
    mixed_precision: bool = True
    ema: bool = False
    workers: int = 0  # data loader processes per GPU; 0 = auto, from the CPUs the pod may use
    channels_last: bool = True  # NHWC weights and batches on CUDA (faster convolutions); off only to rule it out
    gpus: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        validate_common(self.model_name, self.input_size, self.num_classes)
        if self.workers < 0:
            raise StageInputError(f"workers={self.workers} must be 0 (auto: from the pod's CPUs) or positive")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise StageInputError(f"{name}={getattr(self, name)} must be at least 1")
        if self.learning_rate <= 0:
            raise StageInputError(f"learning_rate={self.learning_rate} must be positive")
        if self.checkpoint_num_classes is not None and self.checkpoint_uri is None:
            raise StageInputError("checkpoint_num_classes is set but checkpoint_uri is not")


@dataclasses.dataclass(frozen=True)
class EvaluateRequest:
    """Evaluate a trained YOLO-NAS checkpoint on one split of a materialized COCO dataset."""

    dataset_uri: str
    checkpoint_uri: str
    output_uri: str
    num_classes: int
    model_name: str = "yolo_nas_s"
    split: str = "auto"
    input_size: int = 640
    batch_size: int = 16
    workers: int = 0
    score_threshold: float = 0.1
    iou_threshold: float = 0.7
    #: Detections kept per image after NMS (COCO's maxDets).
    max_predictions: int = 100
    #: Also export the model to ONNX, with and without NMS, checked against PyTorch in onnxruntime.
    export_onnx: bool = False
    #: The champion pointer (champion.json); when it names a champion, its checkpoint is scored on the same
    #: split too, so the promotion gate compares like with like.
    champion_uri: str | None = None

    def __post_init__(self) -> None:
        validate_common(self.model_name, self.input_size, self.num_classes)
        if not 0 <= self.score_threshold < 1:
            raise StageInputError(f"score_threshold={self.score_threshold} must be in [0, 1)")
        if not 0 < self.iou_threshold <= 1:
            raise StageInputError(f"iou_threshold={self.iou_threshold} must be in (0, 1]")
        if self.max_predictions < 1 or self.batch_size < 1:
            raise StageInputError(
                f"max_predictions={self.max_predictions} and batch_size={self.batch_size} must be at least 1"
            )


def validate_common(model_name: str, input_size: int, num_classes: int) -> None:
    if model_name not in MODEL_NAMES:
        raise StageInputError(f"model_name={model_name!r} is not supported; expected one of {', '.join(MODEL_NAMES)}")
    if input_size < 64 or input_size % 32:
        raise StageInputError(f"input_size={input_size} must be a multiple of 32 and at least 64 (YOLO-NAS strides)")
    if num_classes < 1:
        raise StageInputError(f"num_classes={num_classes} must be at least 1")
