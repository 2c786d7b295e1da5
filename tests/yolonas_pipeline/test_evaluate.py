"""Stage 4 on the Airflow side: the evaluate request built from the training result, and reading back
metrics.json and the files it lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.evaluate import build_evaluate_request, evaluation_files, read_metrics, summary_line
from yolonas_pipeline.storage import Storage
from yolonas_pipeline.trainer_command import EvaluateRequest, from_argv, trainer_argv

DATASET = {"dataset_uri": "s3://bucket/datasets/abc"}
TRAIN_RESULT = {
    "best_checkpoint_uri": "s3://bucket/runs/r/train/run/ckpt_best.pth",
    "num_classes": 5,
    "model_name": "yolo_nas_m",
    "input_size": 320,
}


def test_the_request_comes_from_the_training_result_and_rendered_options() -> None:
    request = build_evaluate_request(
        dataset=DATASET,
        train_result=TRAIN_RESULT,
        output_uri="s3://bucket/runs/r/evaluate",
        batch_size="8",  # rendered templates are strings
        export_onnx="True",
        score_threshold="0.25",
    )
    assert request.checkpoint_uri == TRAIN_RESULT["best_checkpoint_uri"]
    assert (request.model_name, request.input_size, request.num_classes) == ("yolo_nas_m", 320, 5)
    assert (request.batch_size, request.export_onnx, request.score_threshold) == (8, True, 0.25)
    # By default the deployment's champion is re-scored on the same split, for the promotion gate.
    assert request.champion_uri == "s3://yolonas-test/models/yolo_nas_m/champion.json"
    # The argv round-trips into the trainer command's parser.
    argv = trainer_argv("evaluate", request)
    assert from_argv(EvaluateRequest, argv[argv.index("evaluate") + 1 :], prog="evaluate") == request


def test_champion_rescoring_can_be_turned_off_or_pointed_elsewhere() -> None:
    off = build_evaluate_request(dataset=DATASET, train_result=TRAIN_RESULT, output_uri="o", champion_uri="")
    assert off.champion_uri is None
    assert "--champion-uri" not in trainer_argv("evaluate", off)
    other = build_evaluate_request(dataset=DATASET, train_result=TRAIN_RESULT, output_uri="o", champion_uri="/c.json")
    assert other.champion_uri == "/c.json"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"score_threshold": "1.5"}, "score_threshold=1.5 must be in"),
        ({"iou_threshold": "0"}, "iou_threshold=0.0 must be in"),
        ({"max_predictions": "0"}, "max_predictions=0"),
        ({"export_onnx": "maybe"}, "export_onnx='maybe' is not a valid bool"),
        ({"epochs": "3"}, "unknown option 'epochs' for EvaluateRequest"),
    ],
)
def test_bad_options_name_the_field(options: dict, message: str) -> None:
    with pytest.raises(StageInputError, match=message):
        build_evaluate_request(dataset=DATASET, train_result=TRAIN_RESULT, output_uri="o", **options)


def test_read_metrics_and_the_files_it_lists(tmp_path: Path) -> None:
    storage = Storage()
    with pytest.raises(StageInputError, match="without writing"):
        read_metrics(str(tmp_path), storage=storage)
    metrics = {
        "split": "test",
        "map_50": 0.5,
        "map_50_95": 0.3,
        "precision": 0.6,
        "recall": 0.4,
        "f1": 0.48,
        "predictions": "predictions.json",
        "plots": {"pr_curves": "plots/pr_curves.png", "confusion_matrix": "plots/confusion_matrix.png"},
        "onnx": {"files": {"raw": "model.onnx", "nms": "model_nms.onnx"}},
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert read_metrics(str(tmp_path), storage=storage) == metrics
    assert evaluation_files(metrics) == [
        "onnx/model.onnx",
        "onnx/model_nms.onnx",
        "plots/confusion_matrix.png",
        "plots/pr_curves.png",
        "predictions.json",
    ]
    assert evaluation_files({"onnx": None, "plots": {}}) == []
    assert summary_line(metrics) == (
        "test: mAP@0.50=0.5000 mAP@0.50:0.95=0.3000 precision=0.6000 recall=0.4000 f1=0.4800"
    )
