"""Publishing against a real S3 API (moto): the bundle and its manifest, retries, interruptions, the gate.

The upstream stages' results are made up here (small files with the real names and shapes), so these
tests need neither torch nor a trained model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import uuid
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import MotoS3

from yolonas_pipeline import promote
from yolonas_pipeline.contracts import (
    ChampionPointer,
    ClassPlan,
    DatasetExport,
    DatasetManifest,
    Metrics,
    PublishResult,
    TrainResult,
)
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.publish import MANIFEST_FILE, publish_bundle, publish_run, verify_bundle
from yolonas_pipeline.run_notes import run_note
from yolonas_pipeline.run_settings import TrainingSettings
from yolonas_pipeline.storage import Storage

CLASSES = ["Coverall", "Mask"]
BASE_WEIGHTS = os.urandom(50_000)


@dataclass
class Run:
    """One DAG run's upstream results, as the operators pass them to the publish stage."""

    run_id: str
    dataset: DatasetExport
    class_plan: ClassPlan
    train_result: TrainResult
    metrics: Metrics


class Bucket:
    def __init__(self, moto_s3: MotoS3) -> None:
        self.client, self.bucket = moto_s3.client, moto_s3.bucket
        self.storage = Storage(moto_s3.client)
        self.prefix = f"publish-{uuid.uuid4().hex[:8]}"
        self.root = f"s3://{self.bucket}/{self.prefix}"
        self.models_uri = f"{self.root}/models"
        self.base_uri = f"{self.root}/base/yolo_nas_s_coco.pth"
        self.storage.write_bytes(self.base_uri, BASE_WEIGHTS)
        self.dataset = self._dataset("fp-1")

    def _dataset(self, fingerprint: str) -> DatasetExport:
        uri = f"{self.root}/datasets/{fingerprint}"
        files = {"images_dir": "images/x", "annotation_file": "annotations/x.json"}
        manifest = DatasetManifest(
            fingerprint=fingerprint,
            class_names=CLASSES,
            splits={
                "train": {"images": 8, "annotations": 12, **files},
                "test": {"images": 2, "annotations": 3, **files},
            },
            class_histogram={"Coverall": 8, "Mask": 7},
            source={"source": "cppe-5", "revision": "3f2a1b0c", "schema": {}},
            files=13,
        )
        manifest.write(f"{uri}/manifest.json", storage=self.storage)
        self.storage.write_text(f"{uri}/report.json", json.dumps({"rows": 10, "dropped": {}}))
        return DatasetExport.from_manifest(uri, manifest, reused=False)

    def run(
        self, run_id: str, map_50_95: float = 0.30, classes: dict[str, float] | None = None, *, legacy: bool = False
    ) -> Run:
        """Upload a run's training and evaluation outputs and return the upstream results for it (``legacy``: a
        train result from before the history files and the channel order were recorded)."""
        runs = f"{self.root}/runs/{run_id}"
        self.storage.write_bytes(f"{runs}/train/run/ckpt_best.pth", os.urandom(120_000))
        training_files = {} if legacy else {"history": "history.json", "training_curves": "training_curves.png"}
        for name in training_files.values():
            self.storage.write_bytes(f"{runs}/train/{name}", os.urandom(2_000))
        train_result = {
            "latest_checkpoint_uri": f"{runs}/train/run/ckpt_latest.pth",
            "loader_workers": 4,
            "seconds_this_attempt": 30.0,
            "run_id": "RUN_1",
            "model_name": "yolo_nas_s",
            "num_classes": 2,
            "class_names": CLASSES,
            "input_size": 640,
            "epochs_completed": 2,
            "best_checkpoint_uri": f"{runs}/train/run/ckpt_best.pth",
            "run_uri": f"{runs}/train/run",
            "history": [{"epoch": 1, "seconds": 10.0}, {"epoch": 2, "seconds": 12.5}],
            "device": "NVIDIA H100 80GB HBM3",
            "gpus": 2,
        }
        if not legacy:
            train_result |= {"files": training_files, "channel_order": "RGB"}
        train = TrainResult.parse(train_result, source="test")
        train.write(f"{runs}/train/result.json", storage=self.storage)
        classes = classes or dict.fromkeys(CLASSES, map_50_95)
        evaluate = f"{runs}/evaluate"
        metrics = {
            "map_50": map_50_95 + 0.2,
            "map_50_95": map_50_95,
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
            "best_f1": {"f1": 0.5, "score_threshold": 0.3},
            "per_class": {
                n: {"ap_50": ap + 0.2, "ap_50_95": ap, "boxes": 3, "images": 2, "predictions": 4}
                | {"precision": 0.5, "recall": 0.5, "f1": 0.5}
                for n, ap in classes.items()
            },
            "confusion_matrix": {},
            "worst_images": [],
            "dataset_uri": self.dataset.dataset_uri,
            "checkpoint_uri": f"{runs}/train/run/ckpt_best.pth",
            "model_name": "yolo_nas_s",
            "device": "NVIDIA H100 80GB HBM3",
            "split": "test",
            "images": 2,
            "class_names": CLASSES,
            "dataset_fingerprint": self.dataset.fingerprint,
            "input_size": 640,
            "thresholds": {"score_threshold": 0.1},
            "predictions": "predictions.json",
            "plots": {"pr_curves": "plots/pr_curves.png", "confusion_matrix": "plots/confusion_matrix.png"},
            "onnx": {"files": {"raw": "model.onnx", "nms": "model_nms.onnx"}},
            "champion": None,
            "seconds": 5.0,
            "gpus": 1,
        }
        scores = Metrics.parse(metrics, source="test")
        scores.write(f"{evaluate}/metrics.json", storage=self.storage)
        self.storage.write_text(f"{evaluate}/predictions.json", "[]")
        for name in ("plots/pr_curves.png", "plots/confusion_matrix.png", "onnx/model.onnx", "onnx/model_nms.onnx"):
            self.storage.write_bytes(f"{evaluate}/{name}", os.urandom(3_000))
        class_plan = ClassPlan(
            model_name="yolo_nas_s",
            num_classes=2,
            class_names=CLASSES,
            checkpoint_uri=self.base_uri,
            checkpoint_num_classes=80,
        )
        return Run(
            run_id,
            self.dataset,
            class_plan,
            train,
            scores.model_copy(update={"metrics_uri": f"{evaluate}/metrics.json"}),
        )

    def settings(self, **gate: Any) -> TrainingSettings:
        values = {"publish_bucket": self.bucket, "publish_prefix": f"{self.prefix}/models", "epochs": 2, **gate}
        return TrainingSettings.validated(values, origin="test")

    def publish(self, run: Run, storage: Storage | None = None, **gate: Any) -> PublishResult:
        return publish_run(
            dataset=run.dataset,
            class_plan=run.class_plan,
            train_result=run.train_result,
            metrics=run.metrics,
            settings=self.settings(**gate),
            run_id=run.run_id,
            storage=storage or self.storage,
        )

    def keys(self, prefix_uri: str) -> list[str]:
        return self.storage.list_files(prefix_uri)

    def manifest(self, bundle_uri: str) -> dict[str, Any]:
        return json.loads(self.storage.read_text(f"{bundle_uri}/{MANIFEST_FILE}"))

    def champion(self) -> ChampionPointer | None:
        return promote.read_champion(promote.champion_uri(self.models_uri, "yolo_nas_s"), storage=self.storage)[0]


class Killed(BaseException):
    """The task process dying (SIGKILL, OOM): no ``except Exception`` can clean up after it."""


class CrashingStorage(Storage):
    """Real S3, but the process "dies" (raises) at the ``crash_at``-th upload: an interrupted task."""

    def __init__(self, client: Any, crash_at: int) -> None:
        super().__init__(client)
        self.crash_at, self.uploads = crash_at, 0

    def upload_file(self, path: Any, uri: str) -> None:
        self.uploads += 1
        if self.uploads == self.crash_at:
            raise Killed(f"killed while uploading {uri}")
        super().upload_file(path, uri)


@pytest.fixture
def bucket(moto_s3: MotoS3) -> Bucket:
    return Bucket(moto_s3)


EXPECTED_FILES = {
    "model.pth",
    "metrics.json",
    "predictions.json",
    "plots/pr_curves.png",
    "plots/confusion_matrix.png",
    "plots/training_curves.png",
    "training_history.json",
    "onnx/model.onnx",
    "onnx/model_nms.onnx",
    "training_result.json",
    "training_config.json",
    "dataset_manifest.json",
    "materialization_report.json",
}


def test_the_bundle_holds_every_file_and_its_manifest_verifies(bucket: Bucket) -> None:
    run = bucket.run("manual__2026-11-26T10:00:00+00:00")
    result = bucket.publish(run)

    assert result.bundle_uri == f"{bucket.models_uri}/yolo_nas_s/manual__2026-11-26T10_00_00_00_00"
    assert set(bucket.keys(result.bundle_uri)) == EXPECTED_FILES | {MANIFEST_FILE}
    manifest = verify_bundle(result.bundle_uri, storage=bucket.storage).to_xcom()  # every SHA-256 recomputed
    assert set(manifest["files"]) == EXPECTED_FILES
    assert manifest["dataset"] == {
        "uri": bucket.dataset.dataset_uri,
        "fingerprint": "fp-1",
        "source": "cppe-5",
        "revision": "3f2a1b0c",
        "splits": {name: counts.model_dump() for name, counts in bucket.dataset.splits.items()},
    }
    assert manifest["base_weights"]["uri"] == bucket.base_uri
    assert manifest["base_weights"]["sha256"] == hashlib.sha256(BASE_WEIGHTS).hexdigest()
    assert "non-commercial" in manifest["base_weights"]["licence_note"]
    assert manifest["code_version"]["package"]
    # (10 s + 12.5 s of training) x 2 GPUs + 5 s of evaluation x 1 GPU
    assert manifest["compute"]["gpu_seconds"] == pytest.approx(50.0)
    assert manifest["evaluation"]["map_50_95"] == 0.30 and manifest["evaluation"]["split"] == "test"
    assert manifest["promotion"]["promote"] and manifest["promotion"]["min_map_50_95"] == 0.05
    assert manifest["promotion"]["reasons"][-1] == (
        "there is no champion yet: the first model that reaches the floor wins"
    )
    config = json.loads(bucket.storage.read_text(f"{result.bundle_uri}/training_config.json"))
    assert config["run_settings"]["epochs"] == 2 and config["run_settings"]["publish_prefix"].endswith("/models")
    assert manifest["training"]["channel_order"] == "RGB"


def test_a_train_result_from_before_the_training_curves_still_publishes(bucket: Bucket) -> None:
    """Results written before ``files`` and ``channel_order`` existed parse, and their bundle says BGR (what the
    pipeline trained on then)."""
    result = bucket.publish(bucket.run("manual__2026-11-20T10:00:00+00:00", legacy=True))
    manifest = bucket.manifest(result.bundle_uri)
    assert set(manifest["files"]) == EXPECTED_FILES - {"plots/training_curves.png", "training_history.json"}
    assert manifest["training"]["channel_order"] == "BGR"


def test_uploads_carry_s3_sha256_checksums(bucket: Bucket) -> None:
    result = bucket.publish(bucket.run("run-checksums"))
    manifest = bucket.manifest(result.bundle_uri)
    _, prefix = result.bundle_uri[len("s3://") :].split("/", 1)
    for name in ("model.pth", "metrics.json", "plots/pr_curves.png"):
        head = bucket.client.head_object(Bucket=bucket.bucket, Key=f"{prefix}/{name}", ChecksumMode="ENABLED")
        assert base64.b64decode(head["ChecksumSHA256"]).hex() == manifest["files"][name]["sha256"]


def test_a_retried_publish_after_a_complete_manifest_is_a_no_op(
    bucket: Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    run = bucket.run("run-retry")
    first = bucket.publish(run)
    watcher = Storage(bucket.client)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="yolonas_pipeline"):
        again = bucket.publish(run, storage=watcher)
    log = [r.getMessage() for r in caplog.records]

    assert again.reused and again.bundle_uri == first.bundle_uri
    assert watcher.stats.bytes_written == 0
    assert "nothing to copy" in log[0]
    assert again.champion_update == "already"


def test_an_interrupted_publish_leaves_no_manifest_and_the_rerun_completes_it(bucket: Bucket) -> None:
    run = bucket.run("run-interrupted")
    with pytest.raises(Killed):
        bucket.publish(run, storage=CrashingStorage(bucket.client, crash_at=5))
    bundle = f"{bucket.models_uri}/yolo_nas_s/run-interrupted"
    partial = bucket.keys(bundle)
    assert 0 < len(partial) < len(EXPECTED_FILES) and MANIFEST_FILE not in partial
    assert bucket.champion() is None  # nothing was promoted either
    with pytest.raises(StageInputError, match="incomplete"):
        verify_bundle(bundle, storage=bucket.storage)

    result = bucket.publish(run)
    assert not result.reused and result.promoted
    verify_bundle(bundle, storage=bucket.storage)
    assert bucket.champion().bundle_uri  # type: ignore[union-attr] == bundle


def test_a_tampered_file_fails_verification(bucket: Bucket) -> None:
    result = bucket.publish(bucket.run("run-tampered"))
    bucket.storage.write_text(f"{result.bundle_uri}/metrics.json", "{}")
    with pytest.raises(StageInputError, match=r"metrics\.json: sha256"):
        verify_bundle(result.bundle_uri, storage=bucket.storage)


def test_the_gate_promotes_a_better_model_and_refuses_a_regressed_class(
    bucket: Bucket, caplog: pytest.LogCaptureFixture
) -> None:
    first = bucket.publish(bucket.run("run-1", 0.30))
    assert first.promoted and first.champion_update == "updated"

    better = bucket.publish(bucket.run("run-2", 0.35), promotion_margin=0.01)
    assert better.promoted and bucket.champion().bundle_uri  # type: ignore[union-attr] == better.bundle_uri
    # what the run's note and the model asset event say: its score and the champion's it beat
    assert better.map_50_95 == pytest.approx(0.35) and better.champion_map_50_95 == pytest.approx(0.30)
    assert first.champion_map_50_95 is None and better.model_name == "yolo_nas_s"
    assert run_note(succeeded=True, published=better.to_xcom()) == "mAP@.5:.95 0.350 PROMOTED (champion was 0.300)"
    assert bucket.champion().previous["bundle_uri"]  # type: ignore[union-attr,index] == first.bundle_uri

    regressed = bucket.run("run-3", 0.40, {"Coverall": 0.60, "Mask": 0.20})
    with caplog.at_level(logging.INFO, logger="yolonas_pipeline"):
        refused = bucket.publish(regressed, promotion_margin=0.01, class_ap_tolerance=0.05)
    log = [r.getMessage() for r in caplog.records]
    assert not refused.promoted and refused.champion_update == "unchanged"
    assert bucket.champion().bundle_uri  # type: ignore[union-attr] == better.bundle_uri
    recorded = bucket.manifest(refused.bundle_uri)["promotion"]
    assert not recorded["promote"] and recorded["champion"]["run_id"] == "run-2"
    assert any("'Mask'" in reason and "more than the tolerance" in reason for reason in recorded["reasons"])
    assert any(line.startswith("promotion gate: KEEP CHAMPION") for line in log)  # in the task log too
    note = run_note(succeeded=True, published=refused.to_xcom())
    assert note == "not promoted: " + "; ".join(recorded["reasons"]) and "'Mask'" in note
    verify_bundle(refused.bundle_uri, storage=bucket.storage)  # refused, but still a complete bundle


def test_a_crash_between_manifest_and_pointer_is_completed_by_the_retry(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = bucket.run("run-pointer")
    real_write = promote.write_champion

    def dies(*args: Any, **kwargs: Any) -> bool:
        raise Killed("killed before the pointer write")

    monkeypatch.setattr(promote, "write_champion", dies)
    with pytest.raises(Killed):
        bucket.publish(run)
    bundle = f"{bucket.models_uri}/yolo_nas_s/run-pointer"
    assert bucket.manifest(bundle)["promotion"]["promote"]  # decided and recorded...
    assert bucket.champion() is None  # ...but not carried out

    monkeypatch.setattr(promote, "write_champion", real_write)
    result = bucket.publish(run)
    assert result.reused and result.champion_update == "updated"
    assert bucket.champion().bundle_uri  # type: ignore[union-attr] == bundle


def test_bundle_names_must_be_unique(bucket: Bucket) -> None:
    with pytest.raises(StageInputError, match="unique"):
        publish_bundle(
            {"a.json": bucket.dataset.manifest_uri},
            destination_uri=f"{bucket.root}/dup",
            metadata={},
            storage=bucket.storage,
            documents={"a.json": b"{}"},
        )


def test_the_operator_publishes_with_the_runs_settings(bucket: Bucket) -> None:
    from airflow.sdk import Asset
    from airflow.sdk.exceptions import AirflowFailException

    from yolonas_pipeline.operators.publish import PublishModelOperator

    run = bucket.run("run-operator")
    upstream = {
        "dataset": run.dataset.to_xcom(),
        "class_plan": run.class_plan.to_xcom(),
        "train_result": run.train_result.to_xcom(),
        "metrics": run.metrics.to_xcom(),
    }
    model = Asset(name="yolonas_model", uri=f"{bucket.models_uri}/")
    operator = PublishModelOperator(
        task_id="publish", run_settings=bucket.settings(promotion_margin=0.01).to_xcom(), outlets=[model], **upstream
    )
    run_id = "scheduled__2026-11-26T00:00:00+00:00"
    events: defaultdict[Any, SimpleNamespace] = defaultdict(SimpleNamespace)
    result = PublishResult.parse(
        operator.execute({"run_id": run_id, "outlet_events": events}), source="the publish task's XCom"
    )
    assert result.promoted and result.files == sorted(EXPECTED_FILES)
    # the yolonas_model event's extra: the model history's line, small and JSON-safe
    extra = events[model].extra
    assert extra == {
        "run_id": run_id,
        "model_name": "yolo_nas_s",
        "map_50": result.map_50,
        "map_50_95": result.map_50_95,
        "champion_map_50_95": None,
        "promoted": True,
        "reasons": [
            "mAP@0.50:0.95 0.3000 reaches the floor min_map_50_95 0.0500",
            "there is no champion yet: the first model that reaches the floor wins",
        ],
        "bundle_uri": result.bundle_uri,
        "champion_update": "updated",
    }
    assert json.loads(json.dumps(extra)) == extra
    assert result.bundle_uri.startswith(f"{bucket.models_uri}/yolo_nas_s/")
    verify_bundle(result.bundle_uri, storage=bucket.storage)

    # A value that is not the settings' type is refused (not coerced), and the task is not retried.
    settings = {**bucket.settings().to_xcom(), "promotion_margin": "0.01"}
    bad = PublishModelOperator(task_id="bad", run_settings=settings, **upstream)
    with pytest.raises(AirflowFailException, match="promotion_margin: Input should be a valid number"):
        bad.execute({"run_id": "x"})
