"""Drift statistics on real exports: sample datasets materialized to local folders (and once to moto S3)."""

from __future__ import annotations

import io
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import MotoS3, crown_champion, shift_class_balance
from PIL import Image
from pydantic import ValidationError

from yolonas_pipeline import drift
from yolonas_pipeline.contracts import DatasetExport
from yolonas_pipeline.drift import (
    FEATURES,
    ChampionReference,
    DriftConfig,
    compare_profiles,
    js_divergence,
    profile_dataset,
    psi,
    read_champion,
    render_png,
    write_report,
)
from yolonas_pipeline.drift.report import render_figure
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.materialize import MaterializeRequest, materialize
from yolonas_pipeline.storage import Storage

DRIFT_LOGGER = "yolonas_pipeline.drift"


def export(source: Path, root: Path, storage: Storage, **request: Any) -> DatasetExport:
    return materialize(MaterializeRequest(source=str(source), output_uri=str(root), **request), storage=storage)


@pytest.fixture(scope="module")
def exports(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, DatasetExport]:
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
def profiles(exports: dict[str, DatasetExport]) -> dict[str, drift.DatasetProfile]:
    storage = Storage()
    return {name: profile_dataset(r.dataset_uri, storage=storage) for name, r in exports.items()}


# -- scores ----------------------------------------------------------------------------------------------


def test_psi_and_js_are_zero_for_equal_shapes_and_grow_with_the_shift() -> None:
    assert psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0, abs=0.02)  # proportions, not counts
    assert js_divergence([10, 20, 30], [20, 40, 60]) == pytest.approx(0.0)
    small, large = psi([50, 50], [40, 60]), psi([50, 50], [10, 90])
    assert 0 < small < large
    assert 0 < js_divergence([50, 50], [40, 60]) < js_divergence([50, 50], [10, 90]) <= 1.0
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)


def test_psi_and_js_keep_their_numbers() -> None:
    """The statistics are unchanged by the package split (worked by hand: Jeffreys-smoothed PSI, base-2 JS)."""
    r, c = [(50 + 0.5) / 101, (50 + 0.5) / 101], [(10 + 0.5) / 101, (90 + 0.5) / 101]
    expected = sum((ci - ri) * math.log(ci / ri) for ri, ci in zip(r, c, strict=True))
    assert psi([50, 50], [10, 90]) == pytest.approx(expected, rel=1e-12)
    m = [0.3, 0.7]
    expected_js = 0.5 * sum(p * math.log2(p / mi) for p, mi in zip([0.5, 0.5], m, strict=True))
    expected_js += 0.5 * sum(q * math.log2(q / mi) for q, mi in zip([0.1, 0.9], m, strict=True))
    assert js_divergence([50, 50], [10, 90]) == pytest.approx(expected_js, rel=1e-12)


def test_psi_smoothing_keeps_empty_bins_finite() -> None:
    assert math.isfinite(psi([10, 0], [5, 5]))
    assert psi([10, 0], [5, 5], smoothing=0) == math.inf
    with pytest.raises(ValueError, match="same, non-zero number of bins"):
        psi([1, 2], [1, 2, 3])


def test_every_feature_bins_its_whole_range() -> None:
    assert tuple(FEATURES) == drift.FEATURE_NAMES
    for spec in FEATURES.values():
        if spec.categorical:
            continue
        assert len(spec.labels()) == spec.bins
        low, high = spec.edges[0], spec.edges[-1]
        assert spec.bin_of(low - 1e-9 if not spec.integer else low) == 0
        assert spec.bin_of(high * 10) == spec.bins - 1
    boxes = FEATURES["boxes_per_image"]
    assert boxes.labels()[boxes.bin_of(0)] == "0"
    assert boxes.labels()[boxes.bin_of(13)] == "11-15"


# -- configuration ---------------------------------------------------------------------------------------


def test_config_comes_from_a_mapping_and_names_what_is_wrong() -> None:
    config = DriftConfig.from_mapping({"metric": "js", "thresholds": {"class_balance": 0.05}, "default_threshold": 0.3})
    assert config.threshold("class_balance") == 0.05 and config.threshold("brightness") == 0.3
    assert DriftConfig.from_mapping(None).threshold("box_area") == drift.DEFAULT_THRESHOLDS["psi"]
    assert DriftConfig.from_mapping({"metric": "js"}).threshold("box_area") == drift.DEFAULT_THRESHOLDS["js"]
    bad = [
        ({"metric": "kl"}, r"drift metric='kl' is refused .*accepted: one of psi, js"),
        ({"thresholds": {"colour": 0.1}}, r"unknown feature 'colour'; features: class_balance, "),
        ({"thresholds": {"box_area": -1}}, r"thresholds\.box_area=-1 is refused \(input should be greater than 0\)"),
        ({"default_threshold": math.inf}, r"default_threshold=inf is refused"),
        ({"min_count": 2.5}, r"min_count=2\.5 is refused .*accepted: an integer >= 0"),
        ({"brightness_sample": True}, r"brightness_sample=True is refused"),
        ({"smoothing": "lots"}, r"smoothing='lots' is refused .*accepted: a finite number >= 0"),
        ({"splits": "train"}, r"splits='train' is refused \(input should be a valid list\)"),
        ({"features": ["image_size", "colour"]}, r"drift features name unknown feature 'colour'"),
        ({"threshold": 0.2}, r"unknown drift setting\(s\) \['threshold'\]; accepted: alpha, brightness_sample, "),
        ({"decision": "vote"}, r"drift decision='vote' is refused .*accepted: one of test, threshold"),
        ({"alpha": 1}, r"drift alpha=1 is refused .*accepted: a number > 0 and < 1"),
        ({"correction": "sidak"}, r"drift correction='sidak' is refused .*accepted: one of holm, bonferroni, none"),
        ({"permutations": 10}, r"drift permutations=10 is refused .*accepted: an integer from 99 to 100000"),
        (["metric"], r"drift settings must be an object"),
    ]
    for values, message in bad:
        with pytest.raises(StageInputError, match=message):
            DriftConfig.from_mapping(values)  # type: ignore[arg-type]
    # several problems are all named, in one message
    with pytest.raises(StageInputError, match=r"unknown drift setting.*'x'.*; drift metric='kl'"):
        DriftConfig.from_mapping({"x": 1, "metric": "kl"})


def test_config_defaults_and_empty_values_are_as_before() -> None:
    config = DriftConfig.from_mapping({"thresholds": None, "splits": [], "features": None})
    assert config == DriftConfig()
    assert (config.metric, config.min_count, config.brightness_sample, config.smoothing) == ("psi", 10, 256, 0.5)
    assert config.splits is None and config.features is None and config.judged("brightness")
    assert DriftConfig.from_mapping({"features": []}).judged("brightness") is False  # an empty list judges nothing
    assert DriftConfig.from_mapping({"splits": ["train"]}).splits == ("train",)
    recorded = config.to_dict()
    assert recorded["thresholds"] == dict.fromkeys(FEATURES, 0.2)
    assert json.loads(json.dumps(recorded)) == recorded


def test_config_is_frozen() -> None:
    config = DriftConfig()
    with pytest.raises(ValidationError, match="frozen"):
        config.metric = "js"
    assert DriftConfig.from_mapping(config) is config


GOOD_SETTINGS: list[dict[str, Any]] = [
    {},
    {"metric": "js", "thresholds": {"class_balance": 0.05}, "default_threshold": 0.3},
    {"min_count": 0, "brightness_sample": 8, "splits": ["train", "validation"], "smoothing": 0},
    {"features": ["image_size", "box_area"], "splits": None, "default_threshold": None},
]
BAD_SETTINGS: list[dict[str, Any]] = [
    {"metric": "kl"},
    {"thresholds": {"colour": 0.1}},
    {"thresholds": {"box_area": 0}},
    {"min_count": -1},
    {"min_count": 2.5},
    {"smoothing": -0.1},
    {"splits": "train"},
    {"features": ["colour"]},
    {"threshold": 0.2},
]


def test_the_form_schema_accepts_and_refuses_what_the_config_does() -> None:
    import jsonschema

    schema = {"type": "object", **DriftConfig.form_schema()}
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "$defs" not in json.dumps(schema) and "$ref" not in json.dumps(schema)
    assert list(schema["properties"]) == list(DriftConfig.field_names()) == list(DriftConfig.model_fields)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["thresholds"]["propertyNames"] == {"enum": list(FEATURES)}
    assert all(p.get("description") for p in schema["properties"].values())
    validator = jsonschema.Draft202012Validator(schema)
    for values in GOOD_SETTINGS:
        assert not list(validator.iter_errors(values)), values
        DriftConfig.from_mapping(values)
    for values in BAD_SETTINGS:
        assert list(validator.iter_errors(values)), values
        with pytest.raises(StageInputError):
            DriftConfig.from_mapping(values)


def test_the_form_schema_builds_an_airflow_param() -> None:
    from airflow.sdk import Param

    param = Param({}, type="object", title="Drift settings", **DriftConfig.form_schema())
    assert param.resolve(GOOD_SETTINGS[1]) == GOOD_SETTINGS[1]
    with pytest.raises(Exception, match="kl"):
        Param({}, type="object", **DriftConfig.form_schema()).resolve({"metric": "kl"})


# -- profiles --------------------------------------------------------------------------------------------


def test_profile_counts_agree_with_the_manifest(
    exports: dict[str, DatasetExport], profiles: dict[str, drift.DatasetProfile]
) -> None:
    result, profile = exports["base"], profiles["base"]
    classes = profile.features["class_balance"]
    assert dict(zip(classes.labels, classes.counts, strict=True)) == result.class_histogram
    assert profile.images == sum(s.images for s in result.splits.values())
    assert profile.boxes == sum(s.annotations for s in result.splits.values())
    assert profile.features["box_area"].total == profile.boxes == profile.features["aspect_ratio"].total
    assert profile.features["image_size"].total == profile.images
    assert profile.features["brightness"].total == min(profile.images, DriftConfig().brightness_sample)
    mean = profile.features["brightness"].summary["mean"]
    assert mean is not None and 100 < mean < 200  # grey backgrounds with colour boxes
    assert profile.features["image_size"].summary["median"] == pytest.approx(math.sqrt(320 * 240))
    assert set(profile.source) == {"source", "revision", "schema"}  # the manifest's DatasetSource


def test_profile_splits_and_an_incomplete_export_are_named(exports: dict[str, DatasetExport], tmp_path: Path) -> None:
    storage, uri = Storage(), exports["base"].dataset_uri
    train = profile_dataset(uri, storage=storage, config=DriftConfig.from_mapping({"splits": ["train"]}))
    assert train.splits == ["train"] and train.images == exports["base"].splits["train"].images
    with pytest.raises(StageInputError, match=r"drift splits \['nope'\] are not in the export"):
        profile_dataset(uri, storage=storage, config=DriftConfig(splits=("nope",)))
    with pytest.raises(StageInputError, match=r"no manifest\.json at .*incomplete"):
        profile_dataset(str(tmp_path), storage=storage)


def test_profile_is_cached_by_fingerprint_and_settings(
    exports: dict[str, DatasetExport], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = Storage()
    uri = exports["base"].dataset_uri
    caplog.set_level(logging.INFO, logger=DRIFT_LOGGER)
    first = profile_dataset(uri, storage=storage, cache_root=str(tmp_path))
    assert caplog.records[-1].name == "yolonas_pipeline.drift.profile"
    assert caplog.records[-1].getMessage().startswith(f"drift: profiled {uri}: {first.images} images")
    second = profile_dataset(uri, storage=storage, cache_root=str(tmp_path))
    assert "reused from" in caplog.records[-1].getMessage() and second.to_dict() == first.to_dict()
    fewer = DriftConfig(brightness_sample=4)
    third = profile_dataset(uri, storage=storage, config=fewer, cache_root=str(tmp_path))
    assert "reused" not in caplog.records[-1].getMessage() and third.features["brightness"].total == 4
    cached = sorted(tmp_path.iterdir())
    assert len(cached) == 2
    assert drift.DatasetProfile.from_dict(json.loads(cached[0].read_text())).format == drift.PROFILE_FORMAT
    # a copy of the export elsewhere reuses the profile, under its own URI
    moved = profile_dataset(uri, storage=storage, cache_root=str(tmp_path))
    assert moved.dataset_uri == uri


def test_an_unreadable_cached_profile_is_recomputed(
    exports: dict[str, DatasetExport], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage, uri = Storage(), exports["base"].dataset_uri
    first = profile_dataset(uri, storage=storage, cache_root=str(tmp_path))
    (cached,) = tmp_path.iterdir()
    cached.write_text(json.dumps({"format": drift.PROFILE_FORMAT, "fingerprint": 3}))
    caplog.set_level(logging.INFO, logger=DRIFT_LOGGER)
    again = profile_dataset(uri, storage=storage, cache_root=str(tmp_path))
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "is unusable, profiling again" in warning.getMessage() and "dataset_uri" in warning.getMessage()
    assert again.to_dict() == first.to_dict()
    assert drift.DatasetProfile.read(str(cached), storage=storage) == first  # rewritten


def test_a_profile_document_is_validated() -> None:
    with pytest.raises(StageInputError, match=r"the drift profile is not a valid DatasetProfile: .*format is"):
        drift.DatasetProfile.from_dict({"format": "something/else@1"})


# -- verdicts --------------------------------------------------------------------------------------------


def test_an_identical_revision_does_not_drift(profiles: dict[str, drift.DatasetProfile]) -> None:
    report = compare_profiles(profiles["base"], profiles["copy"])
    assert not report.drifted and report.drifted_features == []
    assert all(score == pytest.approx(0.0, abs=1e-9) for score in report.scores.values())
    assert report.reason.startswith("no feature over its threshold")


def test_the_same_export_is_named_as_the_reference_itself(profiles: dict[str, drift.DatasetProfile]) -> None:
    report = compare_profiles(profiles["base"], profiles["base"])
    assert not report.drifted
    assert report.reason.endswith(f"reference snapshot itself, fingerprint {profiles['base'].fingerprint})")


def test_a_shifted_class_balance_drifts_in_class_balance_only(profiles: dict[str, drift.DatasetProfile]) -> None:
    report = compare_profiles(profiles["base"], profiles["shifted"])
    assert report.drifted and report.drifted_features == ["class_balance"]
    score = report.scores["class_balance"]
    assert score is not None and score > 1.0
    assert report.reason.startswith("drift in class_balance (PSI ")
    js = report.features["class_balance"].js
    assert js is not None and js > 0.1
    assert {f.status for name, f in report.features.items() if name != "class_balance"} == {"stable"}


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
    assert report.reason.startswith("drift in class_balance (JS ")
    only_size = DriftConfig.from_mapping({"features": ["image_size"]})
    report = compare_profiles(profiles["base"], profiles["shifted"], only_size)
    assert not report.drifted and report.features["class_balance"].status == "not_judged"
    scarce = DriftConfig.from_mapping({"min_count": 10_000})
    report = compare_profiles(profiles["base"], profiles["shifted"], scarce)
    assert not report.drifted and "too little data" in report.reason
    assert {f.status for f in report.features.values()} == {"insufficient_data"}


def test_without_a_reference_the_policy_decides_and_the_reason_says_so(
    profiles: dict[str, drift.DatasetProfile],
) -> None:
    report = compare_profiles(None, profiles["base"], no_reference_reason="no champion yet")
    assert report.drifted and report.reason.startswith("no champion yet; treated as drift")
    report = compare_profiles(None, profiles["base"], no_reference_is_drift=False, no_reference_reason="none")
    assert not report.drifted and "not treated as drift" in report.reason
    assert all(f.status == "not_judged" for f in report.features.values())
    assert report.reference is None and report.scores == dict.fromkeys(FEATURES)


# -- the decision: significance and effect size ----------------------------------------------------------


def constructed(base: drift.DatasetProfile, name: str, **counts: list[int]) -> drift.DatasetProfile:
    """``base`` with some features' counts replaced (labels kept, or numbered for a new bin count)."""
    features = dict(base.features)
    for feature, values in counts.items():
        labels = list(base.features[feature].labels)
        if len(labels) != len(values):
            labels = [f"bin{i}" for i in range(len(values))]
        features[feature] = drift.FeatureHistogram(labels=labels, counts=values, summary={})
    return base.model_copy(update={"features": features, "fingerprint": name, "dataset_uri": f"constructed://{name}"})


def test_permutation_p_values_tell_noise_from_a_shift() -> None:
    from yolonas_pipeline.drift.significance import permutation_test

    # the same shape: the p-value is large, for counts and for class shares alike
    for categorical in (True, False):
        statistic, p = permutation_test([30, 40, 30], [28, 44, 28], categorical=categorical)
        assert statistic > 0 and p > 0.5
        _, p = permutation_test([100, 100, 100, 100], [160, 80, 80, 80], categorical=categorical)
        assert p <= 0.002  # the smallest value 999 permutations can give is 0.001
    # reproducible: the seed comes from the counts
    assert permutation_test([5, 9, 3], [7, 2, 8], categorical=False) == permutation_test(
        [5, 9, 3], [7, 2, 8], categorical=False
    )
    # nothing to tell apart: one occupied bin, or an empty side
    assert permutation_test([0, 50, 0], [0, 20, 0], categorical=False)[1] == 1.0
    assert permutation_test([0, 0], [3, 4], categorical=True)[1] == 1.0
    _, p = permutation_test([10, 10], [10, 10], categorical=True, permutations=99)
    assert 0.01 <= p <= 1.0
    with pytest.raises(ValueError, match="same, non-zero number of bins"):
        permutation_test([1], [1, 2], categorical=True)


def test_the_p_value_is_calibrated_under_the_null() -> None:
    """Same-distribution histograms: p <= 0.1 at most about 10 % of the time, for both statistics."""
    import numpy as np

    from yolonas_pipeline.drift.significance import permutation_test

    rng = np.random.default_rng(7)
    shares = [0.1, 0.3, 0.4, 0.15, 0.05]
    for categorical in (True, False):
        p_values = [
            permutation_test(
                list(rng.multinomial(40, shares)),
                list(rng.multinomial(60, shares)),
                categorical=categorical,
                permutations=199,
            )[1]
            for _ in range(600)
        ]
        rate = sum(p <= 0.1 for p in p_values) / len(p_values)
        # valid (not above 10 % beyond noise); KS on 5 ordered bins is discrete, so somewhat conservative
        assert (0.06 if categorical else 0.04) <= rate <= 0.13, (categorical, rate)


def test_holm_and_bonferroni_adjust_as_defined() -> None:
    from yolonas_pipeline.drift.significance import adjust

    p = [0.01, 0.04, 0.03, 0.5]
    assert adjust(p, "bonferroni") == pytest.approx([0.04, 0.16, 0.12, 1.0])
    # Holm: sorted 0.01*4, 0.03*3, 0.04*2 (monotone: 0.09), 0.5*1
    assert adjust(p, "holm") == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert adjust(p, "none") == p and adjust([], "holm") == []


def test_noise_in_a_small_dataset_passes_the_test_but_not_the_old_threshold(
    profiles: dict[str, drift.DatasetProfile],
) -> None:
    base = profiles["base"]
    # 48 vs 48 images whose box counts differ by chance: PSI over 0.2, but a permutation test finds it ordinary
    reference = constructed(base, "ref", boxes_per_image=[0, 12, 20, 16] + [0] * 13)
    current = constructed(base, "cur", boxes_per_image=[0, 21, 10, 17] + [0] * 13)
    old = compare_profiles(reference, current, DriftConfig(decision="threshold"))
    assert old.drifted and old.drifted_features == ["boxes_per_image"]  # today's rule: a false alarm
    report = compare_profiles(reference, current)
    feature = report.features["boxes_per_image"]
    assert feature.score is not None and feature.score > feature.threshold
    assert feature.p_value is not None and feature.p_adjusted is not None and feature.p_adjusted > 0.05
    assert feature.test == "ks" and (feature.reference_total, feature.current_total) == (48, 48)
    assert not report.drifted and feature.status == "stable"
    assert "but p " in feature.why and "within sampling noise for 48 vs 48 observations" in feature.why
    assert report.reason.startswith("no feature drifted: boxes_per_image PSI ")
    assert "(noise for 48 vs 48 observations)" in report.reason


def test_a_real_shift_is_flagged_with_its_p_value(profiles: dict[str, drift.DatasetProfile]) -> None:
    base = profiles["base"]
    reference = constructed(base, "ref", class_balance=[100, 100, 100, 100, 100])
    current = constructed(base, "cur", class_balance=[250, 63, 62, 63, 62])
    report = compare_profiles(reference, current)
    feature = report.features["class_balance"]
    assert report.drifted and report.drifted_features == ["class_balance"]
    assert feature.test == "chi2" and feature.statistic is not None and feature.statistic > 50
    assert feature.p_adjusted is not None and feature.p_adjusted <= 0.05
    assert feature.why.startswith("PSI ") and "a real change that matters (500 vs 500 observations)" in feature.why
    assert report.reason.startswith("drift in class_balance (PSI ") and ", p " in report.reason
    assert (report.decision, report.alpha, report.correction) == ("test", 0.05, "holm")
    # the adjusted p-value is Holm's over the features that vary (image_size, one bin on both sides, does not)
    assert "Holm over 5" in feature.why
    assert "nothing to tell apart" in report.features["image_size"].why


def test_a_tiny_but_significant_shift_is_not_drift(profiles: dict[str, drift.DatasetProfile]) -> None:
    base = profiles["base"]
    reference = constructed(base, "ref", class_balance=[20_000] * 5)
    current = constructed(base, "cur", class_balance=[21_500, 19_625, 19_625, 19_625, 19_625])
    report = compare_profiles(reference, current)
    feature = report.features["class_balance"]
    assert feature.p_adjusted is not None and feature.p_adjusted <= 0.05  # certainly not noise ...
    assert feature.score is not None and feature.score < 0.01  # ... but far below PSI 0.2
    assert not report.drifted and feature.status == "stable"
    assert "a real change too small to matter" in feature.why
    assert report.reason.startswith("no feature over its threshold")


def test_the_decision_settings_are_validated_together() -> None:
    assert DriftConfig().decision == "test" and DriftConfig().alpha == 0.05 and DriftConfig().permutations == 999
    with pytest.raises(StageInputError, match=r"drift settings refused: permutations=99 cannot reach alpha 0.05"):
        DriftConfig.from_mapping({"permutations": 99})
    assert DriftConfig.from_mapping({"permutations": 99, "correction": "none"}).permutations == 99
    assert DriftConfig.from_mapping({"permutations": 99, "features": ["box_area"]}).permutations == 99
    assert DriftConfig.from_mapping({"alpha": 0.001, "decision": "threshold"}).alpha == 0.001
    schema = DriftConfig.form_schema()["properties"]
    assert schema["alpha"]["default"] == 0.05 and schema["decision"]["enum"] == ["test", "threshold"]
    assert schema["correction"]["enum"] == ["holm", "bonferroni", "none"]


def test_the_threshold_rule_reports_no_p_values(profiles: dict[str, drift.DatasetProfile]) -> None:
    report = compare_profiles(profiles["base"], profiles["shifted"], DriftConfig(decision="threshold"))
    assert report.drifted and report.decision == "threshold" and report.alpha is None
    assert all(f.p_value is None and f.test is None for f in report.features.values())
    assert report.features["class_balance"].why.startswith("PSI ")


# -- the report ------------------------------------------------------------------------------------------


def colours(png: bytes) -> set[tuple[int, int, int]]:
    with Image.open(io.BytesIO(png)) as image:
        counted = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    return {cast("tuple[int, int, int]", colour) for _, colour in counted}


def test_the_report_is_json_plus_a_png(
    profiles: dict[str, drift.DatasetProfile], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=DRIFT_LOGGER)
    report = compare_profiles(profiles["base"], profiles["shifted"], champion={"run_id": "run1"})
    json_uri, png_uri = write_report(report, str(tmp_path / "run"), storage=Storage(), extra={"retrain": True})
    assert caplog.records[-1].getMessage() == f"drift: report written to {json_uri} (chart {png_uri})"
    payload = json.loads(Path(json_uri).read_text())
    assert payload["format"] == drift.REPORT_FORMAT and payload["drifted"] is True and payload["retrain"] is True
    assert payload["drifted_features"] == ["class_balance"] and payload["png_uri"] == png_uri
    assert payload["champion"] == {"run_id": "run1"} and payload["config"] == DriftConfig().to_dict()
    assert set(payload["features"]) == set(FEATURES) and set(payload["scores"]) == set(FEATURES)
    feature = payload["features"]["class_balance"]
    assert payload["decision"] == "test" and payload["alpha"] == 0.05 and payload["correction"] == "holm"
    assert feature["p_adjusted"] <= 0.05 and feature["test"] == "chi2" and "a real change" in feature["why"]
    assert (
        feature["reference_total"] == profiles["base"].boxes and feature["current_total"] == profiles["shifted"].boxes
    )
    assert feature["labels"] == ["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]
    assert sum(feature["current"]) == profiles["shifted"].boxes
    png = Path(png_uri).read_bytes()
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600
    drawn = colours(png)
    # matplotlib's bars in the two series' colours, and the verdict in red
    assert {(0x5A, 0x78, 0xC8), (0xEB, 0x82, 0x32), (0xC8, 0x1E, 0x1E)} <= drawn


def test_a_report_without_a_reference_renders_only_the_current_bars(
    profiles: dict[str, drift.DatasetProfile], tmp_path: Path
) -> None:
    report = compare_profiles(None, profiles["base"], no_reference_is_drift=False)
    json_uri, png_uri = write_report(report, str(tmp_path / "none"), storage=Storage())
    assert json.loads(Path(json_uri).read_text())["reference"] is None
    drawn = colours(Path(png_uri).read_bytes())
    assert (0xEB, 0x82, 0x32) in drawn and (0x5A, 0x78, 0xC8) not in drawn
    assert (0x28, 0x8C, 0x3C) in drawn  # "no drift" in green


def test_many_classes_get_a_readable_axis(profiles: dict[str, drift.DatasetProfile]) -> None:
    """80 classes: every bar is drawn, but only every k-th class is labelled."""
    classes = drift.FeatureHistogram(
        labels=[f"class_{i:02d}" for i in range(80)], counts=[i % 7 + 1 for i in range(80)], summary={"classes": 80.0}
    )
    wide = profiles["base"].model_copy(update={"features": {**profiles["base"].features, "class_balance": classes}})
    report = compare_profiles(profiles["base"], wide)
    assert len(report.features["class_balance"].labels) == 85  # the union of both exports' classes
    figure = render_figure(report)
    panel = figure.axes[0]
    labels = [label.get_text() for label in panel.get_xticklabels()]
    assert 1 < len(labels) <= drift.report.MAX_TICKS and labels[0] == "Coverall"
    assert len(panel.patches) == 2 * 85  # reference and current bars
    with Image.open(io.BytesIO(render_png(report))) as image:
        assert image.format == "PNG"


def test_an_infinite_score_is_written_as_a_string(profiles: dict[str, drift.DatasetProfile], tmp_path: Path) -> None:
    report = compare_profiles(profiles["base"], profiles["small"], DriftConfig(smoothing=0))
    assert report.features["image_size"].score == math.inf
    json_uri, _ = write_report(report, str(tmp_path), storage=Storage())
    payload = json.loads(Path(json_uri).read_text())
    assert payload["scores"]["image_size"] == "inf" and payload["features"]["image_size"]["score"] == "inf"
    json.dumps(payload, allow_nan=False)


# -- the champion ----------------------------------------------------------------------------------------


def test_the_champion_pointer_leads_to_its_training_snapshot(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = Storage()
    models = str(tmp_path / "models")
    pointer = f"{models}/yolo_nas_s/champion.json"
    assert read_champion(pointer, storage=storage) is None
    assert crown_champion(storage, models, dataset_uri="s3://b/datasets/abc", fingerprint="abc", run_id="run1") == (
        pointer
    )
    caplog.set_level(logging.INFO, logger=DRIFT_LOGGER)
    champion = read_champion(pointer, storage=storage)
    assert champion == ChampionReference(
        champion_uri=pointer,
        bundle_uri=f"{models}/yolo_nas_s/run1",
        run_id="run1",
        dataset_uri="s3://b/datasets/abc",
        fingerprint="abc",
    )
    assert champion.to_dict()["dataset_uri"] == "s3://b/datasets/abc"
    assert (
        caplog.records[-1].getMessage()
        == f"drift: champion {models}/yolo_nas_s/run1 (run run1) trained on s3://b/datasets/abc"
    )


def test_a_bad_champion_is_named(tmp_path: Path) -> None:
    storage = Storage()
    models = str(tmp_path / "models")
    pointer = crown_champion(storage, models, dataset_uri="", fingerprint="abc", run_id="run1")
    with pytest.raises(StageInputError, match=r"records no dataset\.uri"):
        read_champion(pointer, storage=storage)
    Path(models, "yolo_nas_s", "run1", "manifest.json").unlink()
    with pytest.raises(StageInputError, match=rf"the champion {pointer} points at .*run1 has no manifest\.json"):
        read_champion(pointer, storage=storage)
    Path(models, "yolo_nas_s", "run1", "manifest.json").write_text(json.dumps({"dataset": {}}))
    with pytest.raises(StageInputError, match=r"is not a valid BundleManifest: .*published_at: Field required"):
        read_champion(pointer, storage=storage)
    Path(pointer).write_text(json.dumps({"bundle_uri": "s3://b/models/run1", "run_id": "run1"}))
    with pytest.raises(StageInputError, match=r"champion\.json is not a valid ChampionPointer: .*model_name"):
        read_champion(pointer, storage=storage)
    Path(pointer).write_text("{not json")
    with pytest.raises(StageInputError, match="not valid JSON"):
        read_champion(pointer, storage=storage)


def test_a_reference_export_given_by_hand(exports: dict[str, DatasetExport], tmp_path: Path) -> None:
    storage = Storage()
    reference = ChampionReference.for_export(exports["base"].dataset_uri, storage=storage)
    assert (reference.dataset_uri, reference.fingerprint) == (exports["base"].dataset_uri, exports["base"].fingerprint)
    assert reference.run_id is None and reference.bundle_uri == ""
    with pytest.raises(StageInputError, match="incomplete"):
        ChampionReference.for_export(str(tmp_path), storage=storage)


# -- S3 ---------------------------------------------------------------------------------------------------


def test_profiles_and_reports_work_on_s3(exports: dict[str, DatasetExport], moto_s3: MotoS3) -> None:
    storage = Storage(moto_s3.client)
    bucket = moto_s3.new_bucket()
    storage.upload_tree(exports["shifted"].dataset_uri, f"s3://{bucket}/datasets/shifted")
    profile = profile_dataset(
        f"s3://{bucket}/datasets/shifted", storage=storage, cache_root=f"s3://{bucket}/drift/profiles"
    )
    local = profile_dataset(exports["shifted"].dataset_uri, storage=Storage())
    assert {k: v.counts for k, v in profile.features.items()} == {k: v.counts for k, v in local.features.items()}
    json_uri, png_uri = write_report(compare_profiles(None, profile), f"s3://{bucket}/drift/run1", storage=storage)
    assert storage.exists(json_uri) and storage.exists(png_uri)
    assert storage.list_files(f"s3://{bucket}/drift/profiles")
    # the champion, read through the contracts on S3
    crown_champion(storage, f"s3://{bucket}/models", dataset_uri=f"s3://{bucket}/datasets/shifted", fingerprint="f")
    champion = read_champion(f"s3://{bucket}/models/yolo_nas_s/champion.json", storage=storage)
    assert champion is not None and champion.dataset_uri == f"s3://{bucket}/datasets/shifted"
