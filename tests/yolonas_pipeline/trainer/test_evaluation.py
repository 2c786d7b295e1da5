"""The evaluation: COCO-exact scoring (checked against pycocotools), the evaluate command against a real S3
API (moto) with a really trained model (its TrainResult), its metrics.json, plots, ONNX export and champion
re-scoring.

The scoring functions are numpy only and run here, in the Airflow environment; the command runs in the
trainer environment as a subprocess, exactly as the operator's local backend runs it.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoS3
from trained_model import TrainedModel, trained_model, trainer_env

from yolonas_pipeline.contracts import (
    BundleManifest,
    ChampionPointer,
    EvaluateRequest,
    FileEntry,
    Metrics,
    TrainResult,
    trainer_argv,
)
from yolonas_pipeline.storage import Storage, sha256_file
from yolonas_pipeline.trainer.scoring import (
    ImagePrediction,
    ImageTruth,
    coco_results,
    evaluate_detections,
    read_truths,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -- pycocotools as the reference ----------------------------------------------------------------------------
def cocoeval(coco: dict[str, Any], results: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """``(stats, precision)`` of pycocotools' COCOeval for bbox results on an in-memory COCO dataset."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = json.loads(json.dumps(coco))
        truth.createIndex()
        detections = truth.loadRes(results)
        evaluator = COCOeval(truth, detections, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats, evaluator.eval["precision"]


def synthetic(seed: int, crowd_fraction: float = 0.0, num_images: int = 40) -> tuple[dict, list, list, dict, list]:
    """Random boxes and noisy detections of them (jitter, wrong labels, misses, false positives): a non-trivial
    mAP, so that agreement means something."""
    rng = np.random.default_rng(seed)
    names = ["a", "b", "c", "d"]
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 320, "height": 240})
        for _ in range(int(rng.integers(0, 6))):
            w, h = rng.uniform(4, 120), rng.uniform(4, 100)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, len(names) + 1)),
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < crowd_fraction),
                }
            )
    coco = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
    }
    truths, category_of = read_truths(coco, names)
    predictions = []
    for truth in truths:
        boxes, scores, labels = [], [], []
        for box, label in zip(truth.boxes, truth.labels, strict=True):
            if rng.random() < 0.85:
                size = np.r_[box[2:] - box[:2], box[2:] - box[:2]]
                boxes.append(box + rng.normal(0, 0.08, 4) * size)
                scores.append(rng.uniform(0.2, 1.0))
                labels.append(label if rng.random() < 0.9 else int(rng.integers(0, len(names))))
        for _ in range(int(rng.integers(0, 8))):
            x, y = rng.uniform(0, 250), rng.uniform(0, 180)
            boxes.append([x, y, x + rng.uniform(4, 70), y + rng.uniform(4, 60)])
            scores.append(rng.uniform(0.0, 0.9))
            labels.append(int(rng.integers(0, len(names))))
        predictions.append(ImagePrediction(np.array(boxes).reshape(-1, 4), scores, labels))
    return coco, truths, predictions, category_of, names


@pytest.mark.parametrize(("seed", "crowd_fraction"), [(0, 0.0), (1, 0.0), (2, 0.15)])
def test_map_matches_cocoeval_on_noisy_detections(seed: int, crowd_fraction: float) -> None:
    coco, truths, predictions, category_of, names = synthetic(seed, crowd_fraction)
    ours = evaluate_detections(truths, predictions, names, score_threshold=0.3)
    stats, precision = cocoeval(coco, coco_results(truths, predictions, category_of))

    assert 0.1 < ours.map_50_95 < 0.9  # a non-trivial score
    assert ours.map_50_95 == pytest.approx(stats[0], abs=0.005)
    assert ours.map_50 == pytest.approx(stats[1], abs=0.005)
    for k, name in enumerate(names):
        reference = precision[:, :, k, 0, 2]
        assert ours.per_class[name]["ap_50_95"] == pytest.approx(reference[reference > -1].mean(), abs=0.005)
    # Same algorithm, so in practice identical, not merely within the tolerance.
    assert abs(ours.map_50_95 - stats[0]) < 1e-9


def test_max_detections_per_image_and_class_as_cocoeval() -> None:
    coco, truths, predictions, category_of, names = synthetic(3, num_images=10)
    ours = evaluate_detections(truths, predictions, names, score_threshold=0.3, max_detections=1)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = coco
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(coco_results(truths, predictions, category_of)), "bbox")
        evaluator.params.maxDets = [1, 1, 1]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # area "all", maxDets 1
    assert ours.map_50_95 == pytest.approx(precision[precision > -1].mean(), abs=1e-9)


def test_precision_recall_confusion_matrix_and_errors_on_a_hand_made_image() -> None:
    truth = ImageTruth(1, "x.jpg", 100, 100, boxes=[[0, 0, 10, 10], [50, 50, 70, 70]], labels=[0, 1])
    prediction = ImagePrediction(
        boxes=[[0, 0, 10, 10], [50, 50, 70, 70], [80, 80, 95, 95], [30, 30, 40, 40]],
        scores=[0.9, 0.8, 0.7, 0.05],  # the last is below the score threshold
        labels=[0, 0, 1, 1],  # the second is the right box with the wrong class
    )
    result = evaluate_detections([truth], [prediction], ["cat", "dog"], score_threshold=0.1)

    assert result.precision_at_threshold == pytest.approx(1 / 3)  # 1 right of 3 above the threshold
    assert result.recall_at_threshold == pytest.approx(1 / 2)
    assert result.f1_at_threshold == pytest.approx(0.4)
    assert result.per_class["cat"]["ap_50"] == pytest.approx(1.0)
    assert result.per_class["dog"]["ap_50"] == 0.0
    assert result.per_class["dog"]["boxes"] == 1 and result.per_class["dog"]["predictions"] == 1
    # rows: true cat, true dog, background; columns: predicted cat, dog, background (missed)
    assert result.confusion_matrix.tolist() == [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert result.image_errors == [{"image_id": 1, "file_name": "x.jpg", "tp": 1, "fp": 2, "fn": 1}]
    assert result.worst_images(3) == [0]


def test_classes_without_boxes_are_left_out_of_the_mean() -> None:
    truth = ImageTruth(1, "x.jpg", 100, 100, boxes=[[0, 0, 10, 10]], labels=[0])
    prediction = ImagePrediction(boxes=[[0, 0, 10, 10], [50, 50, 60, 60]], scores=[0.9, 0.8], labels=[0, 1])
    result = evaluate_detections([truth], [prediction], ["cat", "dog"], score_threshold=0.1)
    assert result.map_50_95 == pytest.approx(1.0)
    assert result.per_class["dog"]["ap_50_95"] is None
    assert result.best_f1["f1"] == pytest.approx(1.0) and result.best_f1["score_threshold"] == pytest.approx(0.9)


def test_without_boxes_the_best_f1_threshold_is_the_lowest_score_reported() -> None:
    truth = ImageTruth(1, "x.jpg", 100, 100, boxes=np.zeros((0, 4)), labels=[])
    result = evaluate_detections([truth], [ImagePrediction.empty()], ["cat"], score_threshold=0.1, min_score=0.01)
    assert result.best_f1 == {"score_threshold": 0.01, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    assert (result.map_50, result.map_50_95, result.per_class["cat"]["ap_50"]) == (0.0, 0.0, None)


# -- the command, on a trained checkpoint, against S3 --------------------------------------------------------
@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_dataset: Path, trainer_python: Path) -> TrainedModel:
    return trained_model(tmp_path_factory.getbasetemp(), sample_dataset, trainer_python)


def s3_env(moto_s3: MotoS3) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": moto_s3.endpoint_url,
    }


class Evaluated:
    def __init__(self, request: EvaluateRequest, argv: list[str], env: dict[str, str], output: str, storage: Storage):
        self.request, self.argv, self.env, self.output, self.storage = request, argv, env, output, storage

    def json(self, name: str) -> Any:
        return json.loads(self.storage.read_text(f"{self.request.output_uri}/{name}"))


def publish_champion(trained: TrainedModel, bundle_uri: str, pointer_uri: str, *, storage: Storage) -> None:
    """A published champion whose bundle's model.pth is the trained checkpoint (so it must score the same)."""
    storage.upload_file(trained.checkpoint, f"{bundle_uri}/model.pth")
    entry = FileEntry(sha256=sha256_file(trained.checkpoint), size=trained.checkpoint.stat().st_size)
    BundleManifest(
        published_at="2026-12-01T00:00:00+00:00",
        code_version={"git": None},
        run_id="champion-run",
        model_name="yolo_nas_s",
        class_names=trained.class_names,
        input_size=trained.input_size,
        dataset={},
        base_weights={},
        evaluation={},
        training={},
        compute={},
        files={"model.pth": entry},
    ).write(f"{bundle_uri}/manifest.json", storage=storage)
    ChampionPointer(
        model_name="yolo_nas_s",
        run_id="champion-run",
        bundle_uri=bundle_uri,
        manifest_uri=f"{bundle_uri}/manifest.json",
        metrics={},
        promoted_at="2026-12-01T00:00:00+00:00",
    ).write(pointer_uri, storage=storage)


@pytest.fixture(scope="module")
def evaluated(trained: TrainedModel, moto_s3: MotoS3, trainer_python: Path, tmp_path_factory) -> Evaluated:
    """One evaluate run with ONNX export, against a champion whose model is the same checkpoint."""
    storage = Storage(moto_s3.client)
    root = f"s3://{moto_s3.bucket}/evaluation-test-{uuid.uuid4().hex[:8]}"
    storage.upload_tree(trained.dataset_dir, f"{root}/dataset")
    # The train stage's result, as if training had run against this bucket.
    storage.upload_file(trained.checkpoint, f"{root}/train/run/ckpt_best.pth")
    local_result = TrainResult.read(str(trained.result), storage=Storage())
    TrainResult.parse(
        {**local_result.to_xcom(), "best_checkpoint_uri": f"{root}/train/run/ckpt_best.pth"}, source="test"
    ).write(f"{root}/train/result.json", storage=storage)
    pointer_uri = f"{root}/models/yolo_nas_s/champion.json"
    publish_champion(trained, f"{root}/models/yolo_nas_s/champion-run", pointer_uri, storage=storage)

    request = EvaluateRequest(
        dataset_uri=f"{root}/dataset",
        train_result_uri=f"{root}/train/result.json",
        output_uri=f"{root}/evaluate",
        batch_size=8,
        export_onnx=True,
        champion_uri=pointer_uri,
    )
    argv = [str(trainer_python), *trainer_argv(request)[1:]]
    env = trainer_env(tmp_path_factory.mktemp("evaluate-work"), s3_env(moto_s3))
    run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    return Evaluated(request, argv, env, run.stdout, storage)


def test_metrics_json_is_complete(evaluated: Evaluated, trained: TrainedModel) -> None:
    Metrics.read(f"{evaluated.request.output_uri}/metrics.json", storage=evaluated.storage)  # the contract's reader
    metrics = evaluated.json("metrics.json")
    for key in ("map_50", "map_50_95", "precision", "recall", "f1"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, key
    assert metrics["split"] == "validation" and metrics["images"] == 5
    coco = json.loads((trained.dataset_dir / "annotations" / "validation.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for name in trained.class_names:
        entry = metrics["per_class"][name]
        assert entry["boxes"] == sum(names[a["category_id"]] == name for a in coco["annotations"])
        assert set(entry) >= {"ap_50", "ap_50_95", "precision", "recall", "f1", "images", "predictions"}
    assert metrics["thresholds"] == {
        "score_threshold": 0.1,
        "match_iou": 0.5,
        "map_iou_thresholds": [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95],
        "nms_iou_threshold": 0.7,
        "nms_score_threshold": 0.01,
        "max_predictions": 100,
    }
    matrix = np.array(metrics["confusion_matrix"]["matrix"])
    assert matrix.shape == (6, 6) and metrics["confusion_matrix"]["labels"][-1] == "background"
    # Every true box is somewhere in its row: matched to a class or missed.
    assert matrix[:5].sum() == sum(e["boxes"] for e in metrics["per_class"].values())
    assert metrics["dataset_fingerprint"]
    assert metrics["checkpoint_uri"] == evaluated.request.train_result_uri.replace("result.json", "run/ckpt_best.pth")
    assert (metrics["model_name"], metrics["input_size"]) == ("yolo_nas_s", trained.input_size)


def test_plots_are_png_files_next_to_metrics(evaluated: Evaluated) -> None:
    metrics = evaluated.json("metrics.json")
    assert set(metrics["plots"]) == {"pr_curves", "confusion_matrix", "sample_predictions"}
    for relative in metrics["plots"].values():
        data = evaluated.storage.read_bytes(f"{evaluated.request.output_uri}/{relative}")
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, relative


def test_map_agrees_with_cocoeval_on_the_models_own_predictions(evaluated: Evaluated, trained: TrainedModel) -> None:
    metrics = evaluated.json("metrics.json")
    predictions = evaluated.json(metrics["predictions"])
    assert predictions, "the model made no detections at all: the cross-check would be vacuous"
    coco = json.loads((trained.dataset_dir / "annotations" / "validation.json").read_text())
    stats, _ = cocoeval(coco, predictions)
    assert metrics["map_50_95"] == pytest.approx(max(stats[0], 0.0), abs=0.005)
    assert metrics["map_50"] == pytest.approx(max(stats[1], 0.0), abs=0.005)
    assert {p["category_id"] for p in predictions} <= {c["id"] for c in coco["categories"]}
    assert max(len([p for p in predictions if p["image_id"] == i["id"]]) for i in coco["images"]) <= 100


def test_champion_is_rescored_on_the_same_split(evaluated: Evaluated) -> None:
    metrics = evaluated.json("metrics.json")
    champion = metrics["champion"]
    assert (champion["run_id"], champion["reason"]) == ("champion-run", None)
    assert champion["split"] == metrics["split"] and champion["dataset_fingerprint"] == metrics["dataset_fingerprint"]
    # The same checkpoint on the same images: the same numbers.
    assert champion["map_50_95"] == pytest.approx(metrics["map_50_95"], abs=1e-9)
    assert champion["per_class"].keys() == metrics["per_class"].keys()


def test_onnx_export_is_checked_and_listed(evaluated: Evaluated) -> None:
    onnx = evaluated.json("metrics.json")["onnx"]
    assert onnx["check"]["raw"]["problem"] is None and onnx["check"]["nms"]["problem"] is None
    assert onnx["check"]["raw"]["max_box_diff"] < 0.01
    for name in onnx["files"].values():
        data = evaluated.storage.read_bytes(f"{evaluated.request.output_uri}/onnx/{name}")
        assert len(data) == onnx["size"][name]
    assert "ONNX export checked in onnxruntime" in evaluated.output


def test_a_retry_after_metrics_json_does_nothing(evaluated: Evaluated, moto_s3: MotoS3) -> None:
    bucket, key = evaluated.request.output_uri[len("s3://") :].split("/", 1)
    before = moto_s3.client.head_object(Bucket=bucket, Key=f"{key}/metrics.json")["ETag"]
    run = subprocess.run(evaluated.argv, env=evaluated.env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "evaluation already complete" in run.stdout
    assert moto_s3.client.head_object(Bucket=bucket, Key=f"{key}/metrics.json")["ETag"] == before
