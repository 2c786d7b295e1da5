"""Pieces of the train command that need no training run: history after a retry, the epoch and progress lines,
the results table and curves, JSON values, and the training arguments' metrics (the NMS of
:mod:`yolonas_pipeline.trainer.sg`)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from yolonas_pipeline.contracts import TrainRequest
from yolonas_pipeline.trainer import plots, sg
from yolonas_pipeline.trainer.training import (
    RunSync,
    duration,
    epoch_line,
    progress_line,
    reconcile_history,
    results_table,
    to_jsonable,
    training_params,
)

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


EPOCH = {
    "epoch": 3,
    "seconds": 12.0,
    "train_seconds": 10.0,
    "images_per_second": 51.2,
    "lr": 0.00048,
    "train": {
        "PPYoloELoss/loss_cls": 1.25,
        "PPYoloELoss/loss_iou": 0.75,
        "PPYoloELoss/loss_dfl": 0.5,
        "PPYoloELoss/loss": 2.5,
    },
    "valid": {"PPYoloELoss/loss": 2.0, "mAP@0.50": 0.4125, "mAP@0.50:0.95": 0.21, "Precision@0.50": 0.5},
}


def test_epoch_line() -> None:
    assert epoch_line(EPOCH, epochs=10, eta_seconds=84.4) == (
        "epoch 3/10  loss 2.5000 (cls 1.250 iou 0.750 dfl 0.500)  valid mAP@0.50 0.4125 mAP@0.50:0.95 0.2100  "
        "lr 4.80e-04  12.0s (train 10.0s)  51.2 images/s  ETA 1m24s"
    )


def test_epoch_line_without_validation_or_total() -> None:
    entry = {"epoch": 1, "train": {"PPYoloELoss/loss": 2.5}, "valid": {"mAP@0.50": None}}
    assert epoch_line(entry) == "epoch 1  loss 2.5000  valid mAP@0.50 - mAP@0.50:0.95 -"


def test_progress_line() -> None:
    line = progress_line(epoch=2, epochs=5, step=30, steps=100, loss=2.25, images_per_second=80.0, elapsed=15.0)
    assert line == "epoch 2/5  step 30/100 (30%)  loss 2.2500  80.0 images/s  epoch ETA 35s"


@pytest.mark.parametrize(("seconds", "text"), [(4.4, "4s"), (185, "3m05s"), (7620, "2h07m"), (None, "?")])
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


def test_results_table_has_a_row_per_epoch() -> None:
    rows = results_table([{**EPOCH, "epoch": 1}, {"epoch": 2, "recovered_from_checkpoint": True}])
    assert rows[0].split() == [
        "epoch", "loss", "cls", "iou", "dfl", "val", "loss", "mAP@0.50", "mAP@0.50:0.95", "lr", "time",
    ]  # fmt: skip
    assert rows[1].split() == [
        "1",
        "2.5000",
        "1.250",
        "0.750",
        "0.500",
        "2.0000",
        "0.4125",
        "0.2100",
        "4.80e-04",
        "12.0",
    ]
    assert rows[2].split() == ["2", *["-"] * 9]
    assert len({len(row) for row in rows}) == 1  # aligned columns


def test_training_curves_draw_every_panel(tmp_path: Path) -> None:
    history = [{**EPOCH, "epoch": n, "valid": {**EPOCH["valid"], "mAP@0.50": 0.1 * n}} for n in range(1, 4)]
    figure = plots.training_curves(history)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[:2] == ["loss", "classification loss"] and "mAP@0.50:0.95" in titles and "learning rate" in titles
    (map_50,) = figure.axes[titles.index("mAP@0.50")].get_lines()
    assert list(map_50.get_xdata()) == [1, 2, 3] and list(map_50.get_ydata()) == pytest.approx([0.1, 0.2, 0.3])
    plots.save_figure(figure, tmp_path / plots.TRAINING_CURVES)
    assert (tmp_path / plots.TRAINING_CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_to_jsonable_turns_numpy_scalars_into_floats_and_nan_into_none() -> None:
    converted = to_jsonable({"a": np.float32(0.5), "b": [np.int64(2), float("nan")], 3: (math.inf,)})
    assert converted == {"a": 0.5, "b": [2, None], "3": [None]}
    assert type(converted["a"]) is float


def test_validation_metrics_use_the_one_nms() -> None:
    request = TrainRequest(dataset_uri="d", output_uri="o", num_classes=2, epochs=2, input_size=96)
    params = training_params(request, ["cat", "dog"], [])
    # mAP@0.50 (watched, with per-class AP) and mAP@0.50:0.95, both after the one NMS.
    map_50, map_50_95 = params["valid_metrics_list"]
    assert params["metric_to_watch"] in map_50.component_names and "mAP@0.50:0.95" in map_50_95.component_names
    assert not set(map_50.component_names) & set(map_50_95.component_names)  # no key shadows another
    for metric in (map_50, map_50_95):
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


@pytest.mark.parametrize(
    ("seconds_per_step", "lines_at"),
    [(0.1, []), (1.0, [10, 20, 30, 40, 50, 60, 70, 80, 90]), (40.0, list(range(1, 100)))],
    ids=["short-epoch-none", "each-tenth", "slow-steps-every-30s"],
)
def test_progress_lines_come_at_each_tenth_of_a_long_epoch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, seconds_per_step: float, lines_at: list[int]
) -> None:
    import torch

    from yolonas_pipeline.trainer import training

    clock = [1000.0]
    monkeypatch.setattr(training.time, "monotonic", lambda: clock[0])
    sync = RunSync(
        storage=NoStorage(),  # type: ignore[arg-type]
        output_uri="s3://bucket/run/train",
        history=[],
        images_per_epoch=800,
        batches_per_epoch=100,
        epochs=4,
        writes=False,
    )
    sync.on_train_loader_start(SimpleNamespace(epoch=0))
    caplog.set_level("INFO", logger="yolonas_pipeline.trainer.training")
    for step in range(100):
        clock[0] += seconds_per_step
        items = torch.tensor([0.5, 0.25, 0.25, 1.0 + step])
        sync.on_train_batch_end(SimpleNamespace(epoch=0, batch_idx=step, loss_log_items=items))
    lines = [r.getMessage() for r in caplog.records if "step" in r.getMessage()]
    assert [int(line.split()[3].split("/")[0]) for line in lines] == lines_at
    if lines_at == [10, 20, 30, 40, 50, 60, 70, 80, 90]:
        assert lines[0] == "epoch 1/4  step 10/100 (10%)  loss 5.5000  8.0 images/s  epoch ETA 1m30s"


class RecordingStorage:
    """Just what RunSync calls, recording each state commit (``state.json``) with its epoch."""

    def __init__(self) -> None:
        self.commits: list[int] = []

    def upload_tree(self, root: Path, uri: str, *, files: list[str]) -> None:
        pass

    def upload_file(self, path: Path, uri: str) -> None:
        pass

    def write_text(self, uri: str, text: str) -> None:
        import json

        self.commits.append(json.loads(text)["epochs_completed"])

    def list_files(self, uri: str) -> list[str]:
        return []


@pytest.mark.parametrize(("min_sync_seconds", "commits"), [(60.0, [1, 5]), (0.0, [1, 2, 3, 4, 5])])
def test_short_epochs_are_synced_at_most_once_a_minute_and_the_last_always(
    tmp_path: Path, min_sync_seconds: float, commits: list[int]
) -> None:
    storage = RecordingStorage()
    sync = RunSync(
        storage=storage,  # type: ignore[arg-type]
        output_uri="s3://bucket/train",
        history=[],
        images_per_epoch=8,
        batches_per_epoch=1,
        epochs=5,
        min_sync_seconds=min_sync_seconds,
    )
    sync.run_dir, sync.run_id = tmp_path, "run"
    for epoch in range(1, 6):
        (tmp_path / "ckpt_latest.pth").write_bytes(b"x" * epoch)
        sync._pending = {"epoch": epoch, "train": {}, "valid": {}, "seconds": 1.0}
        # Epochs 2-4 end at the next epoch's start (in the background); the last one at the average-model phase.
        sync._publish_pending(background=epoch < 5)
        sync.wait()
    sync.finish()
    assert storage.commits == commits
    assert [entry["epoch"] for entry in sync.history] == [1, 2, 3, 4, 5]  # every epoch is logged and kept
