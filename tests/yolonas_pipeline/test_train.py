"""The training key: every input that changes what is learned changes it, nothing else does."""

from __future__ import annotations

from typing import Any

import pytest

from yolonas_pipeline import train
from yolonas_pipeline.contracts import TrainRequest

REQUEST = TrainRequest(dataset_uri="s3://b/datasets/f", output_uri="s3://b/runs/r1/train", num_classes=5)


def key(request: TrainRequest = REQUEST, **inputs: Any) -> str:
    values = {"dataset_fingerprint": "f00d", "base_sha256": None, "environment": "trainer.lock sha256:1", **inputs}
    return train.training_key(request, **values).key


def test_the_same_inputs_give_the_same_key_whatever_the_run() -> None:
    other_run = REQUEST.model_copy(update={"output_uri": "s3://b/runs/r2/train", "workers": 8})
    assert key() == key(other_run)  # where it writes and how many loader processes do not change the model


@pytest.mark.parametrize(
    "change",
    [
        {"model_name": "yolo_nas_m"},
        {"epochs": 11},
        {"batch_size": 8},
        {"input_size": 320},
        {"learning_rate": 1e-3},
        {"mixed_precision": False},
        {"seed": 1},
        {"ema": True},
        {"gpus": 2},
        {"checkpoint_uri": "s3://b/base.pth", "checkpoint_num_classes": 80},
    ],
)
def test_each_training_setting_changes_the_key(change: dict[str, Any]) -> None:
    changed = REQUEST.model_copy(update=change)
    if "checkpoint_uri" in change:
        assert key(changed, base_sha256="a" * 64) != key()
    else:
        assert key(changed) != key()


@pytest.mark.parametrize(
    "inputs",
    [{"dataset_fingerprint": "beef"}, {"base_sha256": "b" * 64}, {"environment": "trainer.lock sha256:2"}],
)
def test_data_weights_and_environment_change_the_key(inputs: dict[str, Any]) -> None:
    assert key(**inputs) != key()


def test_the_code_version_and_augmentation_change_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = key()
    monkeypatch.setenv(train.CODE_VERSION_ENV, "git-abc123")
    assert key() != before
    monkeypatch.delenv(train.CODE_VERSION_ENV)
    monkeypatch.setattr(train, "AUGMENTATION", "other-transforms@2")
    assert key() != before


def test_the_trainer_environment_is_the_lock_this_repository_installs() -> None:
    assert train.trainer_environment().startswith("trainer.lock sha256:")
