"""Drift statistics on real exports: sample datasets materialized to local folders (and once to moto S3)."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import MotoS3
from PIL import Image

from yolonas_pipeline import drift
from yolonas_pipeline.drift import (
    FEATURES,
    DriftConfig,
    compare_profiles,
    js_divergence,
    profile_dataset,
    psi,
    read_champion,
    write_report,
)
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.materialize import MaterializeRequest, MaterializeResult, materialize
from yolonas_pipeline.storage import Storage


def shift_class_balance(source: Path, destination: Path, *, to_class: int = 0, keep_every: int = 4) -> Path:
    """A copy of a cppe-5-layout dataset where all but every ``keep_every``-th image's boxes become one class."""
    from datasets import load_from_disk

    def relabel(row: dict[str, Any], index: int) -> dict[str, Any]:
        if index % keep_every != keep_every - 1:
            row["objects"]["category"] = [to_class for _ in row["objects"]["category"]]
        return row

    load_from_disk(str(source)).map(relabel, with_indices=True).save_to_disk(str(destination))
    return destination


def export(source: Path, root: Path, storage: Storage, **request: Any) -> MaterializeResult:
    return materialize(
        MaterializeRequest(source=str(source), output_uri=str(root), **request), storage=storage, log=lambda _: None
    )


@pytest.fixture(scope="module")
def exports(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, MaterializeResult]:
    """The sample export, an identical copy saved elsewhere, a class-shifted and a downscaled revision."""
    root = tmp_path_factory.mktemp("drift")
    storage = Storage()
    copy = root / "copy"
    shutil.copytree(sample_dataset, copy)
    shifted = shift_class_balance(sample_dataset, root / "shifted")
    out = root / "exports"
    return {
        "base": export(sample_dataset, out, storage),
        "copy": export(copy, out, storage),
        "shifted": export(shifted, out, storage),
        "small": export(sample_dataset, out, storage, max_side=96),
    }


@pytest.fixture(scope="module")
def profiles(exports: dict[str, MaterializeResult]) -> dict[str, drift.DatasetProfile]:
    storage = Storage()
    return {name: profile_dataset(r.dataset_uri, storage=storage, log=lambda _: None) for name, r in exports.items()}


# -- scores ----------------------------------------------------------------------------------------------


def test_psi_and_js_are_zero_for_equal_shapes_and_grow_with_the_shift() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=0.02)  # proportions, not counts
    assert js_divergence([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0)
    small, large = psi([50, 50], [40, 60]), psi([50, 50], [10, 90])
    assert 0 < small < large
    assert 0 < js_divergence([50, 50], [40, 60]) < js_divergence([50, 50], [10, 90]) <= 1.0
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)


def test_psi_smoothing_keeps_empty_bins_finite() -> None:
    assert math.isfinite(psi([10, 0], [5, 5]))
    assert psi([10, 0], [5, 5], smoothing=0) == math.inf
    with pytest.raises(ValueError, match="same, non-zero number of bins"):
        psi([1, 2], [1, 2, 3])


def test_every_feature_bins_its_whole_range() -> None:
    for spec in FEATURES.values():
        if not spec.edges:
            continue
        assert len(spec.labels()) == spec.bins
        low, high = spec.edges[0], spec.edges[-1]
        assert spec.bin_of(low - 1e-9 if not spec.integer else low) == 0
        assert spec.bin_of(high * 10) == spec.bins - 1
    boxes = FEATURES["boxes_per_image"]
    assert boxes.labels()[boxes.bin_of(0)] == "0"
    assert boxes.labels()[boxes.bin_of(13)] == "11-15"


def test_config_comes_from_a_mapping_and_names_what_is_wrong() -> None:
    config = DriftConfig.from_mapping({"metric": "js", "thresholds": {"class_balance": 0.05}, "default_threshold": 0.3})
    assert config.threshold("class_balance") == 0.05 and config.threshold("brightness") == 0.3
    assert DriftConfig.from_mapping(None).threshold("box_area") == drift.DEFAULT_THRESHOLDS["psi"]
    bad = [
        ({"metric": "kl"}, "metric='kl'"),
        ({"thresholds": {"colour": 0.1}}, "unknown feature"),
        ({"thresholds": {"box_area": -1}}, "thresholds.box_area"),
        ({"min_count": 2.5}, "min_count"),
        ({"smoothing": "lots"}, "smoothing"),
        ({"threshold": 0.2}, "unknown drift setting"),
    ]
    for values, message in bad:
        with pytest.raises(StageInputError, match=message):
            DriftConfig.from_mapping(values)


# -- profiles --------------------------------------------------------------------------------------------


def test_profile_counts_agree_with_the_manifest(
    exports: dict[str, MaterializeResult], profiles: dict[str, drift.DatasetProfile]
) -> None:
    result, profile = exports["base"], profiles["base"]
    classes = profile.features["class_balance"]
    assert dict(zip(classes.labels, classes.counts, strict=True)) == result.class_histogram
    assert profile.images == sum(s["images"] for s in result.splits.values())
    assert profile.boxes == sum(s["annotations"] for s in result.splits.values())
    assert profile.features["box_area"].total == profile.boxes == profile.features["aspect_ratio"].total
    assert profile.features["image_size"].total == profile.images
    assert profile.features["brightness"].total == min(profile.images, DriftConfig().brightness_sample)
    assert 100 < profile.features["brightness"].summary["mean"] < 200  # grey backgrounds with colour boxes
    assert profile.features["image_size"].summary["median"] == pytest.approx(math.sqrt(320 * 240))


def test_profile_is_cached_by_fingerprint_and_settings(exports: dict[str, MaterializeResult], tmp_path: Path) -> None:
    storage, messages = Storage(), []
    uri = exports["base"].dataset_uri
    first = profile_dataset(uri, storage=storage, cache_root=str(tmp_path), log=messages.append)
    second = profile_dataset(uri, storage=storage, cache_root=str(tmp_path), log=messages.append)
    assert "reused" in messages[-1] and second.to_dict() == first.to_dict()
    fewer = DriftConfig(brightness_sample=4)
    third = profile_dataset(uri, storage=storage, config=fewer, cache_root=str(tmp_path), log=messages.append)
    assert "reused" not in messages[-1] and third.features["brightness"].total == 4
    assert len(list(tmp_path.iterdir())) == 2


# -- verdicts --------------------------------------------------------------------------------------------


def test_an_identical_revision_does_not_drift(profiles: dict[str, drift.DatasetProfile]) -> None:
    report = compare_profiles(profiles["base"], profiles["copy"])
    assert not report.drifted and report.drifted_features == []
    assert all(score == pytest.approx(0.0, abs=1e-9) for score in report.scores.values())
    assert report.reason.startswith("no feature over its threshold")


def test_a_shifted_class_balance_drifts_in_class_balance_only(profiles: dict[str, drift.DatasetProfile]) -> None:
    report = compare_profiles(profiles["base"], profiles["shifted"])
    assert report.drifted and report.drifted_features == ["class_balance"]
    assert report.scores["class_balance"] > 1.0
    assert report.reason.startswith("drift in class_balance (PSI ")
    assert report.features["class_balance"].js > 0.1


def test_downscaled_images_drift_in_image_size(profiles: dict[str, drift.DatasetProfile]) -> None:
    report = compare_profiles(profiles["base"], profiles["small"])
    assert "image_size" in report.drifted_features
    assert "class_balance" not in report.drifted_features


def test_thresholds_and_metric_come_from_the_config(profiles: dict[str, drift.DatasetProfile]) -> None:
    lenient = DriftConfig.from_mapping({"thresholds": {"class_balance": 10}})
    assert not compare_profiles(profiles["base"], profiles["shifted"], lenient).drifted
    js = DriftConfig.from_mapping({"metric": "js"})
    report = compare_profiles(profiles["base"], profiles["shifted"], js)
    assert report.drifted and report.scores["class_balance"] == report.features["class_balance"].js
    only_size = DriftConfig.from_mapping({"features": ["image_size"]})
    report = compare_profiles(profiles["base"], profiles["shifted"], only_size)
    assert not report.drifted and report.features["class_balance"].status == "not_judged"
    scarce = DriftConfig.from_mapping({"min_count": 10_000})
    report = compare_profiles(profiles["base"], profiles["shifted"], scarce)
    assert not report.drifted and "too little data" in report.reason


def test_without_a_reference_the_policy_decides_and_the_reason_says_so(
    profiles: dict[str, drift.DatasetProfile],
) -> None:
    report = compare_profiles(None, profiles["base"], no_reference_reason="no champion yet")
    assert report.drifted and report.reason.startswith("no champion yet; treated as drift")
    report = compare_profiles(None, profiles["base"], no_reference_is_drift=False, no_reference_reason="none")
    assert not report.drifted and "not treated as drift" in report.reason
    assert all(f.status == "not_judged" for f in report.features.values())


def test_the_report_is_json_plus_a_png(profiles: dict[str, drift.DatasetProfile], tmp_path: Path) -> None:
    report = compare_profiles(profiles["base"], profiles["shifted"])
    json_uri, png_uri = write_report(report, str(tmp_path / "run"), storage=Storage(), extra={"retrain": True})
    payload = json.loads(Path(json_uri).read_text())
    assert payload["format"] == drift.REPORT_FORMAT and payload["drifted"] is True and payload["retrain"] is True
    assert payload["drifted_features"] == ["class_balance"] and payload["png_uri"] == png_uri
    assert set(payload["features"]) == set(FEATURES)
    feature = payload["features"]["class_balance"]
    assert feature["labels"] == ["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]
    assert sum(feature["current"]) == profiles["shifted"].boxes
    with Image.open(io.BytesIO(Path(png_uri).read_bytes())) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600
    # a report without a reference renders too
    write_report(compare_profiles(None, profiles["base"]), str(tmp_path / "none"), storage=Storage())


# -- the champion ----------------------------------------------------------------------------------------


def test_the_champion_pointer_leads_to_its_training_snapshot(tmp_path: Path) -> None:
    storage = Storage()
    pointer = str(tmp_path / "models" / "yolo_nas_s" / "champion.json")
    assert read_champion(pointer, storage=storage) is None
    bundle = tmp_path / "models" / "yolo_nas_s" / "run1"
    bundle.mkdir(parents=True)
    Path(pointer).write_text(json.dumps({"bundle_uri": str(bundle), "run_id": "run1"}))
    with pytest.raises(StageInputError, match=r"manifest\.json is missing"):
        read_champion(pointer, storage=storage)
    (bundle / "manifest.json").write_text(json.dumps({"dataset": {}}))
    with pytest.raises(StageInputError, match=r"records no dataset\.uri"):
        read_champion(pointer, storage=storage)
    (bundle / "manifest.json").write_text(json.dumps({"dataset": {"uri": "s3://b/datasets/abc", "fingerprint": "abc"}}))
    champion = read_champion(pointer, storage=storage)
    assert champion is not None
    assert (champion.bundle_uri, champion.run_id, champion.dataset_uri, champion.fingerprint) == (
        str(bundle),
        "run1",
        "s3://b/datasets/abc",
        "abc",
    )
    Path(pointer).write_text("{not json")
    with pytest.raises(StageInputError, match="not valid JSON"):
        read_champion(pointer, storage=storage)


def test_profiles_and_reports_work_on_s3(exports: dict[str, MaterializeResult], moto_s3: MotoS3) -> None:
    storage = Storage(moto_s3.client)
    bucket = moto_s3.new_bucket()
    storage.upload_tree(exports["shifted"].dataset_uri, f"s3://{bucket}/datasets/shifted")
    profile = profile_dataset(
        f"s3://{bucket}/datasets/shifted", storage=storage, cache_root=f"s3://{bucket}/drift/profiles", log=print
    )
    local = profile_dataset(exports["shifted"].dataset_uri, storage=Storage(), log=print)
    assert {k: v.counts for k, v in profile.features.items()} == {k: v.counts for k, v in local.features.items()}
    json_uri, png_uri = write_report(compare_profiles(None, profile), f"s3://{bucket}/drift/run1", storage=storage)
    assert storage.exists(json_uri) and storage.exists(png_uri)
    assert storage.list_files(f"s3://{bucket}/drift/profiles")
