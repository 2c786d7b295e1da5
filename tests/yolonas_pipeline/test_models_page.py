"""The Models page's data and HTML, and the viewer's rules, against bundles published with the real publish code
into moto's S3."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import MotoS3, publish_sample_bundle

from yolonas_pipeline import models_page
from yolonas_pipeline.storage import Storage


@pytest.fixture
def published(moto_s3: MotoS3, tmp_path: Path) -> tuple[Storage, str, str]:
    """Three runs of one model: promoted, promoted again (the champion), not promoted."""
    bucket = moto_s3.new_bucket()
    storage, models_uri = Storage(moto_s3.client), f"s3://{bucket}/models"
    publish_sample_bundle(storage, models_uri, tmp_path, run_id="manual__2026-01-01T00:00:00+00:00", map_50_95=0.30)
    publish_sample_bundle(
        storage, models_uri, tmp_path, run_id="manual__2026-01-02T00:00:00+00:00", map_50_95=0.40, training_curves=False
    )
    publish_sample_bundle(storage, models_uri, tmp_path, run_id="manual__2026-01-03T00:00:00+00:00", map_50_95=0.35)
    return storage, models_uri, bucket


def test_read_model_gives_champion_history_and_every_run(published: tuple[Storage, str, str]) -> None:
    storage, models_uri, _ = published
    assert models_page.list_models(models_uri, storage=storage) == ["yolo_nas_s"]
    view = models_page.read_model(models_uri, "yolo_nas_s", storage=storage)

    assert view.problems == []
    assert view.champion is not None and view.champion.run_id == "manual__2026-01-02T00:00:00+00:00"
    assert [run.run_id[8:18] for run in view.runs] == ["2026-01-03", "2026-01-02", "2026-01-01"]
    assert [run.promoted for run in view.runs] == [False, True, True]
    assert [run.is_champion for run in view.runs] == [False, True, False]
    assert view.runs[0].reasons and view.runs[0].map_50_95 == pytest.approx(0.35)
    assert [run.run_id[8:18] for run in view.history] == ["2026-01-02", "2026-01-01"]
    # Plots are what each manifest lists, training curves first when the run has them.
    assert view.runs[0].plots == [
        "results.png",
        "plots/pr_curves.png",
        "plots/confusion_matrix.png",
        "plots/sample_predictions.png",
    ]
    assert "results.png" not in view.runs[1].plots and len(view.runs[1].plots) == 3
    assert set(view.runs[0].per_class) == {"coverall", "mask"}


def test_the_page_shows_metrics_per_class_ap_against_the_champion_plots_and_run_links(
    published: tuple[Storage, str, str],
) -> None:
    storage, models_uri, bucket = published
    view = models_page.read_model(models_uri, "yolo_nas_s", storage=storage)
    page = models_page.render_model_page(view, bucket=bucket)

    assert "<table id='champion'>" in page and "manual__2026-01-02T00:00:00+00:00" in page
    assert page.count("<section class='run") == 3 and "not promoted" in page
    assert "/dags/yolonas_training/runs/manual__2026-01-03T00%3A00%3A00%2B00%3A00" in page
    # per-class AP: the last run's mask class is 0.37, the champion's 0.42
    assert "0.3700" in page and "0.4200" in page and "-0.0500" in page
    assert "/yolonas/files/models/yolo_nas_s/manual__2026-01-03T00_00_00_00_00/results.png" in page
    assert "s3://" + bucket + "/models/yolo_nas_s/manual" not in page  # links go through the viewer only
    assert "Training curves" in page and "PR curves" in page


def test_a_bundle_without_a_manifest_is_not_listed_and_an_empty_bucket_says_so(
    published: tuple[Storage, str, str],
) -> None:
    storage, models_uri, bucket = published
    storage.write_text(f"{models_uri}/yolo_nas_s/half_published/model.pth", "x")
    view = models_page.read_model(models_uri, "yolo_nas_s", storage=storage)
    assert len(view.runs) == 3
    assert "No model has been published yet." in models_page.render_index([], bucket=bucket)


@pytest.mark.parametrize(
    ("key", "allowed"),
    [
        ("models/yolo_nas_s/run/plots/pr_curves.png", True),
        ("runs/r/evaluate/metrics.json", True),
        ("drift/r/drift_report.json", True),
        ("datasets/fp/manifest.json", False),
        ("models/../datasets/x", False),
        ("models/a//b", False),
        ("models/", False),
        ("/models/a", False),
    ],
)
def test_the_viewer_serves_only_the_pipelines_folders(key: str, allowed: bool) -> None:
    assert models_page.allowed_key(key) is allowed


def test_viewer_paths_and_content_types() -> None:
    assert models_page.viewer_path("s3://b/models/m/r/x.png", bucket="b") == "/yolonas/files/models/m/r/x.png"
    assert models_page.viewer_path("s3://other/models/m/r/x.png", bucket="b") is None
    assert models_page.viewer_path("s3://b/datasets/x", bucket="b") is None
    assert models_page.viewer_path("/local/path", bucket="b") is None
    assert models_page.viewer_path("s3://b/models/m/r+1/x.png", bucket="b", base="/airflow/") == (
        "/airflow/yolonas/files/models/m/r%2B1/x.png"
    )
    assert models_page.content_type("a/b.png") == "image/png" and models_page.is_inline("a/b.png")
    assert models_page.content_type("a/manifest.json") == "application/json"
    assert models_page.content_type("a/model.pth") == "application/octet-stream"
    assert not models_page.is_inline("a/model.onnx")
