"""Pieces of the train command that need no training run: history after a retry, the epoch line, JSON values,
and the training arguments' metrics (the NMS of :mod:`yolonas_pipeline.trainer.sg`)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from yolonas_pipeline.contracts import TrainRequest
from yolonas_pipeline.trainer import sg
from yolonas_pipeline.trainer.training import RunSync, epoch_line, reconcile_history, to_jsonable, training_params

HISTORY = [{"epoch": 1, "valid": {"mAP@0.50": 0.1}}, {"epoch": 2, "valid": {"mAP@0.50": 0.2}}]
CHECKPOINT_METRICS = {"valid": {"mAP@0.50": np.float32(0.25)}, "train": {}}


def test_a_checkpoint_one_epoch_ahead_of_the_state_adds_that_epoch() -> None:
    # state.json is written after ckpt_latest.pth: a pod lost between the two leaves the checkpoint ahead.
    reconciled = reconcile_history(HISTORY, 3, CHECKPOINT_METRICS)
    assert [entry["epoch"] for entry in reconciled] == [1, 2, 3]
    assert reconciled[-1] == {
        "epoch": 3,
        "train": {},
        "valid": {"mAP@0.50": pytest.approx(0.25)},
        "recovered_from_checkpoint": True,
    }


@pytest.mark.parametrize(("checkpoint_epochs", "kept"), [(2, [1, 2]), (1, [1])])
def test_history_is_cut_to_the_checkpoint(checkpoint_epochs: int, kept: list[int]) -> None:
    assert [entry["epoch"] for entry in reconcile_history(HISTORY, checkpoint_epochs, CHECKPOINT_METRICS)] == kept


def test_epoch_line() -> None:
    entry = {
        "epoch": 3,
        "seconds": 12.0,
        "train_seconds": 10.0,
        "images_per_second": 51.2,
        "train": {"PPYoloELoss/loss": 2.5},
        "valid": {"mAP@0.50": None},
    }
    assert epoch_line(entry) == "epoch 3: 12.0s (train 10.0s, 51.2 images/s)  train loss 2.5000"


def test_to_jsonable_turns_numpy_scalars_into_floats_and_nan_into_none() -> None:
    converted = to_jsonable({"a": np.float32(0.5), "b": [np.int64(2), float("nan")], 3: (math.inf,)})
    assert converted == {"a": 0.5, "b": [2, None], "3": [None]}
    assert type(converted["a"]) is float


def test_validation_metrics_use_the_one_nms() -> None:
    request = TrainRequest(dataset_uri="d", output_uri="o", num_classes=2, epochs=2, input_size=96)
    params = training_params(request, ["cat", "dog"], [])
    (metric,) = params["valid_metrics_list"]
    callback = metric.post_prediction_callback
    limits = (callback.score_threshold, callback.nms_threshold, callback.nms_top_k, callback.max_predictions)
    assert limits == (sg.SCORE_THRESHOLD, sg.IOU_THRESHOLD, sg.TOP_K, sg.MAX_PREDICTIONS)
    assert params["lr_warmup_epochs"] == 1 and params["max_epochs"] == 2


class NoStorage:
    """A storage that fails any use: what a process other than a DDP run's first must be given nothing to do with."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"storage.{name} used by a process that must not write")


def test_only_the_first_process_of_a_ddp_run_uploads(tmp_path: Path) -> None:
    (tmp_path / "ckpt_latest.pth").write_bytes(b"checkpoint")
    sync = RunSync(
        storage=NoStorage(),  # type: ignore[arg-type]
        output_uri="s3://bucket/run/train",
        history=[],
        images_per_epoch=8,
        batches_per_epoch=1,
        writes=False,
    )
    context = SimpleNamespace(ckpt_dir=str(tmp_path), epoch=0, batch_idx=0, metrics_dict={"PPYoloELoss/loss": 1.0})
    sync.on_training_start(context)
    for hook in ("on_train_loader_start", "on_train_loader_end", "on_validation_loader_end"):
        getattr(sync, hook)(context)
    sync.on_train_loader_start(context)  # where the first process commits the epoch before
    sync.on_average_best_models_validation_start(context)
    assert sync.finish() == []
    assert sync.history == []
