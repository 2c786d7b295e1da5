"""The run plan: both trainer commands decided before any GPU is asked for, with the trainer's own figures."""

from __future__ import annotations

from typing import Any

import pytest

from yolonas_pipeline.contracts import ClassPlan, DatasetExport, EvaluateRequest, TrainRequest
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.preflight import plan_run, steps_per_epoch
from yolonas_pipeline.run_settings import TrainingSettings

CLASSES = ["Coverall", "Gloves", "Mask"]
DATASET = DatasetExport(
    dataset_uri="s3://b/datasets/f00d",
    fingerprint="f00d",
    class_names=CLASSES,
    splits={"train": {"images": 37, "annotations": 90}, "validation": {"images": 5, "annotations": 9}},
    class_histogram=dict.fromkeys(CLASSES, 33),
    reused=True,
    report_uri="s3://b/datasets/f00d/report.json",
    manifest_uri="s3://b/datasets/f00d/manifest.json",
)
PLAN = ClassPlan(model_name="yolo_nas_s", num_classes=3, class_names=CLASSES)


def plan(backend: str = "local", local_gpus: int = 0, **settings: Any) -> Any:
    return plan_run(
        TrainingSettings.validated({"batch_size": 8, **settings}, origin="test"),
        DATASET,
        PLAN,
        run_id="manual__2026-12-01T10:00:00+00:00",
        runs_uri="s3://b/runs",
        backend=backend,  # type: ignore[arg-type]
        local_gpus=local_gpus,
    )


@pytest.mark.parametrize(
    ("images", "batch", "world", "steps"),
    [(37, 8, 1, 4), (40, 8, 1, 5), (5, 8, 1, 1), (8, 8, 1, 1), (9, 8, 1, 1), (37, 8, 2, 2), (100, 16, 4, 1)],
)
def test_steps_drop_the_partial_last_batch_as_the_trainers_loader_does(
    images: int, batch: int, world: int, steps: int
) -> None:
    # trainer.data.build_loader: drop_last when the process has more images than one batch
    assert steps_per_epoch(images, batch, world) == steps


def test_the_local_backend_on_a_cpu_machine_plans_a_cpu_run() -> None:
    result = plan(gpus=1)
    assert result.resources == {"backend": "local", "gpus": 0, "processes": 1}
    assert result.train.gpus == 0 and result.train.cmds == ["python", "-m", "yolonas_pipeline.trainer"]
    assert result.training["steps_per_epoch"] == 4 and result.training["total_steps"] == 40
    assert any("on the local backend, on the CPU" in line for line in result.summary)
    assert not any("GPU(s)" in line for line in result.summary)


def test_the_kubernetes_backend_plans_the_runs_gpus() -> None:
    result = plan(backend="kubernetes", gpus=2)
    assert result.resources == {"backend": "kubernetes", "gpus": 2, "processes": 2}
    assert result.train.cmds[:3] == ["torchrun", "--standalone", "--nproc_per_node=2"]
    assert result.train.limits["nvidia.com/gpu"] == "2" and result.train.node_selector
    assert result.evaluate.gpus == 1 and result.evaluate.cmds[0] == "python"
    assert result.training["steps_per_epoch"] == steps_per_epoch(37, 8, 2) == 2


def test_both_commands_are_complete_before_training() -> None:
    result = plan(epochs=3, input_size=320)
    train = TrainRequest.from_argv(result.train.arguments[1:], prog="train")
    evaluate = EvaluateRequest.from_argv(result.evaluate.arguments[1:], prog="evaluate")
    assert (train.epochs, train.input_size, train.num_classes) == (3, 320, 3)
    assert train.output_uri == "s3://b/runs/manual__2026-12-01T10_00_00_00_00/train"
    assert evaluate.train_result_uri == f"{train.output_uri}/result.json" == result.train.result_uri
    assert evaluate.champion_uri == "s3://yolonas/models/yolo_nas_s/champion.json"
    assert result.evaluate.result_uri == "s3://b/runs/manual__2026-12-01T10_00_00_00_00/evaluate/metrics.json"


def test_the_plan_states_the_promotion_rule() -> None:
    result = plan(promotion_margin=0.01, class_ap_tolerance=0.02, min_map_50_95=0.1)
    [rule] = [line for line in result.summary if "promotion gate" in line]
    assert "must reach 0.1 (the first champion too)" in rule
    assert "by more than 0.01 (a tie keeps the champion)" in rule and "by more than 0.02" in rule
    assert result.publishing == {"promotion_margin": 0.01, "class_ap_tolerance": 0.02, "min_map_50_95": 0.1}


def test_a_class_plan_that_disagrees_with_the_dataset_is_refused() -> None:
    other = ClassPlan(model_name="yolo_nas_s", num_classes=2, class_names=["a", "b"])
    with pytest.raises(StageInputError, match=r"class plan says 2 classes but the dataset .* has 3"):
        plan_run(
            TrainingSettings.validated({}, origin="test"), DATASET, other, run_id="r", runs_uri="s3://b/runs",
            backend="local", local_gpus=0,
        )  # fmt: skip
