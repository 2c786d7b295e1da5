"""The trainer command's contract: requests <-> argv, the launcher for one or several GPUs, input errors."""

from __future__ import annotations

import dataclasses

import pytest

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.trainer_command import (
    TRAINER_MODULE,
    EvaluateRequest,
    TrainRequest,
    coerce_options,
    from_argv,
    to_argv,
    trainer_argv,
)

TRAIN = TrainRequest(dataset_uri="s3://b/datasets/f", output_uri="s3://b/runs/r/train", num_classes=5)


def test_train_request_round_trips_through_argv() -> None:
    request = dataclasses.replace(
        TRAIN,
        checkpoint_uri="s3://b/base.pth",
        checkpoint_num_classes=80,
        epochs=3,
        learning_rate=1e-3,
        mixed_precision=False,
        channels_last=False,
        workers=6,
    )
    argv = to_argv(request)
    assert "--no-mixed-precision" in argv and "--no-channels-last" in argv
    assert from_argv(TrainRequest, argv, prog="train") == request
    assert from_argv(TrainRequest, to_argv(TRAIN), prog="train") == TRAIN


def test_defaults_are_fast_and_automatic() -> None:
    assert TRAIN.workers == 0  # auto: sized from the pod's CPUs by the trainer
    assert TRAIN.channels_last and TRAIN.mixed_precision
    assert "--channels-last" in to_argv(TRAIN)


def test_evaluate_request_round_trips_through_argv() -> None:
    request = EvaluateRequest(dataset_uri="d", checkpoint_uri="c", output_uri="o", num_classes=2)
    assert from_argv(EvaluateRequest, to_argv(request), prog="evaluate") == request


def test_one_gpu_runs_python_and_several_run_torchrun() -> None:
    assert trainer_argv("train", TRAIN)[:4] == ["python", "-m", TRAINER_MODULE, "train"]
    assert trainer_argv("train", TRAIN, gpus=0)[0] == "python"
    argv = trainer_argv("train", dataclasses.replace(TRAIN, gpus=4), gpus=4)
    assert argv[:6] == ["torchrun", "--standalone", "--nproc_per_node=4", "-m", TRAINER_MODULE, "train"]
    assert argv[6:] == to_argv(dataclasses.replace(TRAIN, gpus=4))


def test_rendered_template_values_are_coerced() -> None:
    options = coerce_options(TrainRequest, {"epochs": "12", "channels_last": "False", "workers": "0", "seed": None})
    assert options == {"epochs": 12, "channels_last": False, "workers": 0, "seed": None}
    with pytest.raises(StageInputError, match="epochs='many' is not a valid int"):
        coerce_options(TrainRequest, {"epochs": "many"})
    with pytest.raises(StageInputError, match="unknown option 'epoch' for TrainRequest"):
        coerce_options(TrainRequest, {"epoch": 3})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workers": -1}, "workers=-1 must be 0 \\(auto"),
        ({"epochs": 0}, "epochs=0 must be at least 1"),
        ({"batch_size": 0}, "batch_size=0 must be at least 1"),
        ({"input_size": 100}, "input_size=100 must be a multiple of 32"),
        ({"learning_rate": 0.0}, "learning_rate=0.0 must be positive"),
        ({"model_name": "yolo_nas_xl"}, "model_name='yolo_nas_xl' is not supported"),
        ({"checkpoint_num_classes": 80}, "checkpoint_num_classes is set but checkpoint_uri is not"),
    ],
)
def test_bad_train_requests_name_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(StageInputError, match=message):
        dataclasses.replace(TRAIN, **change)


def test_malformed_argv_exits_with_usage() -> None:
    with pytest.raises(SystemExit):
        from_argv(TrainRequest, ["--dataset-uri", "d"], prog="train")  # required flags missing
    with pytest.raises(SystemExit):
        from_argv(TrainRequest, [*to_argv(TRAIN), "--epochs", "three"], prog="train")
