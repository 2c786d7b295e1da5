"""Extra links: each task's result (its XCom) gives viewer paths for its artifacts, never an s3:// URL; the train,
evaluate, publish and drift tasks carry them through DAG serialization, which is what the UI reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from conftest import MotoS3, publish_sample_bundle, sample_metrics

from yolonas_pipeline.operators import links
from yolonas_pipeline.storage import Storage

BUCKET = "yolonas-test"


def link_for(link: links.YolonasArtifactLink, result: Any) -> str | None:
    return link.link_for(result, bucket=BUCKET, base="")


@pytest.fixture
def published(moto_s3: MotoS3, tmp_path: Path) -> dict[str, Any]:
    result = publish_sample_bundle(
        Storage(moto_s3.client), f"s3://{moto_s3.bucket}/models", tmp_path, run_id="manual__1", map_50_95=0.3
    )
    return dict(result.to_xcom())


def test_publish_links_open_the_bundle_page_its_manifest_champion_and_each_plot(published: dict[str, Any]) -> None:
    by_name = {link.name: link_for(link, published) for link in links.PUBLISH_LINKS}  # type: ignore[arg-type]
    bundle = "/yolonas/files/models/yolo_nas_s/manual__1"
    assert by_name == {
        "Bundle": "/yolonas/models/yolo_nas_s#run-manual__1",
        "Manifest": f"{bundle}/manifest.json",
        "champion.json": "/yolonas/files/models/yolo_nas_s/champion.json",
        "Metrics": f"{bundle}/metrics.json",
        "Training curves": f"{bundle}/results.png",
        "PR curves": f"{bundle}/plots/pr_curves.png",
        "Confusion matrix": f"{bundle}/plots/confusion_matrix.png",
        "Sample predictions": f"{bundle}/plots/sample_predictions.png",
    }


def test_a_plot_the_result_does_not_list_has_no_link(moto_s3: MotoS3, tmp_path: Path) -> None:
    result = publish_sample_bundle(
        Storage(moto_s3.client),
        f"s3://{moto_s3.new_bucket()}/models",
        tmp_path,
        run_id="r",
        map_50_95=0.3,
        training_curves=False,
    )
    assert link_for(links.TrainingCurvesLink(), result.to_xcom()) is None
    assert link_for(links.PrCurvesLink(), result.to_xcom()) is None  # another bucket: not served


def test_evaluate_links_follow_the_metrics_plots() -> None:
    metrics = sample_metrics(map_50_95=0.3, metrics_uri=f"s3://{BUCKET}/runs/r/evaluate/metrics.json")
    result = metrics.model_copy(update={"plots": {**metrics.plots, "results": "plots/results.png"}}).to_xcom()
    by_name = {link.name: link_for(link, result) for link in links.TRAINER_LINKS}  # type: ignore[arg-type]
    assert by_name == {
        "Train result": None,
        "Metrics": "/yolonas/files/runs/r/evaluate/metrics.json",
        "Training curves": "/yolonas/files/runs/r/evaluate/plots/results.png",
        "PR curves": "/yolonas/files/runs/r/evaluate/plots/pr_curves.png",
        "Confusion matrix": "/yolonas/files/runs/r/evaluate/plots/confusion_matrix.png",
        "Sample predictions": "/yolonas/files/runs/r/evaluate/plots/sample_predictions.png",
    }


def test_train_and_drift_links() -> None:
    from yolonas_pipeline.contracts import TrainResult

    train = {"format": TrainResult.FORMAT, "run_uri": f"s3://{BUCKET}/runs/r/train/run"}
    assert link_for(links.TrainResultLink(), train) == "/yolonas/files/runs/r/train/result.json"
    assert link_for(links.PrCurvesLink(), train) is None
    drift = {"report_uri": f"s3://{BUCKET}/drift/r/drift_report.json", "png_uri": f"s3://{BUCKET}/drift/r/x.png"}
    assert [link_for(link, drift) for link in links.DRIFT_LINKS] == [  # type: ignore[arg-type]
        "/yolonas/files/drift/r/drift_report.json",
        "/yolonas/files/drift/r/x.png",
    ]
    assert link_for(links.DriftReportLink(), None) is None


def test_get_link_reads_the_tasks_result_and_is_empty_without_one(published: dict[str, Any]) -> None:
    key = mock.Mock(dag_id="d", task_id="publish", run_id="r", map_index=-1)
    with mock.patch.object(links.XCom, "get_value", return_value=published) as get_value:
        link = links.ManifestLink().get_link(mock.Mock(), ti_key=key)
    assert link == "/yolonas/files/models/yolo_nas_s/manual__1/manifest.json"
    get_value.assert_called_with(ti_key=key, key="return_value")
    with mock.patch.object(links.XCom, "get_value", side_effect=RuntimeError("no XCom")):
        assert links.ManifestLink().get_link(mock.Mock(), ti_key=key) == ""
    assert links.ManifestLink().xcom_key == "_link_ManifestLink"


def test_the_dags_tasks_serialize_their_links(airflow_db: Path) -> None:
    from airflow.models import DagBag
    from airflow.serialization.serialized_objects import OperatorSerialization
    from conftest import REPO

    dagbag = DagBag(dag_folder=str(REPO / "dags"))
    expected = {
        ("yolonas_training", "train"): "Training curves",
        ("yolonas_training", "evaluate"): "Confusion matrix",
        ("yolonas_training", "publish"): "Bundle",
        ("yolonas_drift", "detect_drift"): "Drift report",
    }
    for (dag_id, task_id), name in expected.items():
        serialized = OperatorSerialization.serialize_operator(dagbag.get_dag(dag_id).get_task(task_id))
        assert name in serialized["_operator_extra_links"], (dag_id, task_id, serialized["_operator_extra_links"])
