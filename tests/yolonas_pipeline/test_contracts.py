"""The stage contracts: requests <-> argv, documents <-> JSON, and one clear error for a bad document."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from yolonas_pipeline.contracts import (
    TRAINER_MODULE,
    ChampionPointer,
    ClassPlan,
    DatasetExport,
    DatasetManifest,
    EvaluateRequest,
    TrainRequest,
    TrainResult,
    safe_segment,
    trainer_argv,
)
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage

TRAIN = TrainRequest(dataset_uri="s3://b/datasets/f", output_uri="s3://b/runs/r/train", num_classes=5)
MANIFEST = {
    "format": "yolonas-pipeline/coco-detection@1",
    "fingerprint": "f00d",
    "class_names": ["a", "b"],
    "splits": {"train": {"images": 3, "annotations": 5, "images_dir": "images/train", "annotation_file": "a.json"}},
    "class_histogram": {"a": 2, "b": 3},
    "source": {"source": "cppe-5", "revision": "main", "schema": {"bbox_format": "xywh"}},
    "report_file": "report.json",
    "files": 5,
}


def test_train_request_round_trips_through_argv() -> None:
    request = TRAIN.model_copy(
        update={
            "checkpoint_uri": "s3://b/base.pth",
            "checkpoint_num_classes": 80,
            "epochs": 3,
            "learning_rate": 1e-3,
            "mixed_precision": False,
            "channels_last": False,
            "workers": 6,
        }
    )
    argv = request.to_argv()
    assert "--no-mixed-precision" in argv and "--no-channels-last" in argv
    assert TrainRequest.from_argv(argv, prog="train") == request
    assert TrainRequest.from_argv(TRAIN.to_argv(), prog="train") == TRAIN


def test_evaluate_request_names_the_training_result_and_round_trips() -> None:
    request = EvaluateRequest(dataset_uri="d", train_result_uri="s3://b/runs/r/train/result.json", output_uri="o")
    assert EvaluateRequest.from_argv(request.to_argv(), prog="evaluate") == request


def test_one_gpu_runs_python_and_several_run_torchrun() -> None:
    assert trainer_argv(TRAIN)[:4] == ["python", "-m", TRAINER_MODULE, "train"]
    assert trainer_argv(TRAIN, gpus=0)[0] == "python"
    four = TRAIN.model_copy(update={"gpus": 4})
    argv = trainer_argv(four, gpus=4)
    assert argv[:6] == ["torchrun", "--standalone", "--nproc_per_node=4", "-m", TRAINER_MODULE, "train"]
    assert argv[6:] == four.to_argv()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workers": -1}, "workers: Input should be greater than or equal to 0 \\(got -1\\)"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
        ({"input_size": 100}, "input_size=100 must be a multiple of 32"),
        ({"learning_rate": 0.0}, "learning_rate: Input should be greater than 0"),
        ({"model_name": "yolo_nas_xl"}, "model_name: Input should be 'yolo_nas_s', 'yolo_nas_m' or 'yolo_nas_l'"),
        ({"checkpoint_num_classes": 80}, "checkpoint_num_classes is set but checkpoint_uri is not"),
    ],
)
def test_bad_train_requests_name_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(StageInputError, match=message):
        TrainRequest.parse({**TRAIN.model_dump(), **change}, source="the train request")


def test_malformed_argv_exits_with_usage() -> None:
    with pytest.raises(SystemExit):
        TrainRequest.from_argv(["--dataset-uri", "d"], prog="train")  # required flags missing
    with pytest.raises(SystemExit):
        TrainRequest.from_argv([*TRAIN.to_argv(), "--epochs", "three"], prog="train")
    with pytest.raises(StageInputError, match="epochs: Input should be greater than or equal to 1"):
        TrainRequest.from_argv([*TRAIN.to_argv(), "--epochs", "0"], prog="train")


def test_documents_round_trip_through_json_and_storage(tmp_path: Path) -> None:
    storage = Storage()
    manifest = DatasetManifest.parse(MANIFEST, source="test")
    manifest.write(str(tmp_path / "manifest.json"), storage=storage)
    assert DatasetManifest.read_export(str(tmp_path), storage=storage) == manifest
    assert json.loads(manifest.to_json())["source"]["schema"] == {"bbox_format": "xywh"}
    export = DatasetExport.from_manifest(str(tmp_path), manifest, reused=True)
    assert DatasetExport.parse(export.to_xcom(), source="XCom") == export
    assert export.images("train") == 3 and export.images("test") == 0
    assert (export.source, export.revision) == ("cppe-5", "main")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "yolonas-pipeline/coco-detection@9"}, "format is 'yolonas-pipeline/coco-detection@9'"),
        ({"class_names": []}, "class_names: List should have at least 1 item"),
        ({"files": "many"}, "files: Input should be a valid integer"),
        ({"extra_field": 1}, "extra_field: Extra inputs are not permitted"),
    ],
)
def test_a_bad_document_names_its_source_and_field(tmp_path: Path, change: dict[str, object], message: str) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({**MANIFEST, **change}))
    with pytest.raises(StageInputError, match=message) as error:
        DatasetManifest.read_export(str(tmp_path), storage=Storage())
    assert str(tmp_path / "manifest.json") in str(error.value)


def test_a_missing_export_manifest_says_the_export_is_incomplete(tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match=r"the export at .* is incomplete"):
        DatasetManifest.read_export(str(tmp_path), storage=Storage())


def test_contracts_are_frozen() -> None:
    plan = ClassPlan(model_name="yolo_nas_s", num_classes=2, class_names=["a", "b"])
    with pytest.raises(ValueError, match="frozen"):
        plan.num_classes = 3  # type: ignore[misc]


def test_a_train_result_without_a_format_field_still_reads() -> None:
    """result.json files written before the format field existed stay readable."""
    result = TrainResult.parse(
        {
            "run_id": "r",
            "model_name": "yolo_nas_s",
            "num_classes": 2,
            "class_names": ["a", "b"],
            "input_size": 160,
            "epochs_completed": 2,
            "best_checkpoint_uri": "s3://b/r/ckpt_best.pth",
            "latest_checkpoint_uri": "s3://b/r/ckpt_latest.pth",
            "run_uri": "s3://b/r",
            "history": [{"epoch": 1, "train_seconds": 1.5}, {"epoch": 2, "train_seconds": 2.5}],
            "device": "cpu",
            "gpus": 0,
            "loader_workers": 0,
            "seconds_this_attempt": 9.0,
        },
        source="result.json",
    )
    assert result.format == TrainResult.FORMAT and result.train_seconds == 4.0


def test_the_champion_pointer_refuses_another_format() -> None:
    with pytest.raises(StageInputError, match=r"champion\.json is not a valid ChampionPointer: .*format"):
        ChampionPointer.parse({"format": "something/else@1"}, source="champion.json")


def test_run_ids_become_portable_path_segments() -> None:
    assert safe_segment("manual__2026-11-26T10:00:00+00:00") == "manual__2026-11-26T10_00_00_00_00"
