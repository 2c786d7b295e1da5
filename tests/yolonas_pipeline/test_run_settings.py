"""The settings models: one validation for the form, the trigger's conf and the drift event."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.run_settings import DriftSettings, TrainingSettings, defaults_with, form_params, resolve

DEFAULTS = TrainingSettings.validated({}, origin="test").to_xcom()


def event(conf: dict[str, Any], name: str = "yolonas_drift") -> dict[Any, list[Any]]:
    return {SimpleNamespace(name=name): [SimpleNamespace(timestamp=1, extra={"conf": conf})]}


def test_values_keep_their_type_whatever_they_look_like() -> None:
    """A digit-only digest stays a string: nothing here depends on how a template renders."""
    digest = "0" * 64
    resolved = resolve(TrainingSettings, params={**DEFAULTS, "checkpoint_sha256": digest}, conf={})
    assert resolved.checkpoint_sha256 == digest
    with pytest.raises(StageInputError, match=r"checkpoint_sha256: Input should be a valid string \(got 0\)"):
        resolve(TrainingSettings, params={**DEFAULTS, "checkpoint_sha256": 0}, conf={})
    with pytest.raises(StageInputError, match="epochs: Input should be a valid integer"):
        resolve(TrainingSettings, params={**DEFAULTS, "epochs": "12"}, conf={})


@pytest.mark.parametrize(
    ("conf", "hint"),
    [
        ({"architecture": "yolo_nas_l"}, "'architecture' (did you mean 'model_name'?)"),
        ({"Epochs": 3}, "'Epochs' (did you mean 'epochs'?)"),
        ({"lr": 0.1}, "'lr'; accepted:"),
    ],
)
def test_unknown_conf_keys_are_refused_with_a_hint(conf: dict[str, Any], hint: str) -> None:
    with pytest.raises(StageInputError, match="the yolonas_training run's conf sets unknown field") as error:
        resolve(TrainingSettings, params={**DEFAULTS, **conf}, conf=conf)
    assert hint in str(error.value)


def test_every_string_is_bounded() -> None:
    for key in ("dataset_source", "dataset_revision", "checkpoint_uri", "publish_prefix"):
        with pytest.raises(StageInputError, match=f"{key}: String should have at most"):
            TrainingSettings.validated({key: "x" * 5000}, origin="test")
    schema = TrainingSettings.model_json_schema(by_alias=True)["properties"]
    for key, prop in schema.items():
        options = prop.get("anyOf", [prop])
        strings = [o for o in options if o.get("type") == "string"]
        assert all("maxLength" in o or "enum" in o or "pattern" in o for o in strings), key


@pytest.mark.parametrize("prefix", ["../../etc", "models/../x", "./models", "/abs", "models/", "a//b"])
def test_prefixes_that_leave_the_bucket_layout_are_refused(prefix: str) -> None:
    with pytest.raises(StageInputError, match="publish_prefix"):
        TrainingSettings.validated({"publish_prefix": prefix}, origin="test")


def test_a_drift_event_overrides_the_form_and_is_checked_the_same_way() -> None:
    resolved = resolve(
        TrainingSettings,
        params=DEFAULTS,
        conf={},
        event={"dataset_revision": "abc123", "publish_prefix": "team-a/models"},
    )
    assert (resolved.dataset_revision, resolved.models_uri) == ("abc123", "s3://yolonas/team-a/models")
    with pytest.raises(StageInputError, match=r"the triggering asset event's conf sets unknown field.*'epoch'"):
        resolve(TrainingSettings, params=DEFAULTS, conf={}, event={"epoch": 3})


def test_drift_settings_reach_the_retraining_run() -> None:
    drift = DriftSettings.validated(
        {
            "dataset_source": "org/data",
            "model_name": "yolo_nas_m",
            "publish_bucket": "team-bucket",
            "publish_prefix": "team-a/models",
            "retrain_conf": {"epochs": 50},
        },
        origin="test",
    )
    conf = drift.retraining_conf(dataset_revision="rev-7")
    assert conf == {
        "dataset_source": "org/data",
        "dataset_revision": "rev-7",
        "model_name": "yolo_nas_m",
        "publish_bucket": "team-bucket",
        "publish_prefix": "team-a/models",
        "epochs": 50,
    }
    training = resolve(TrainingSettings, params=DEFAULTS, conf={}, event=conf)
    assert training.models_uri == "s3://team-bucket/team-a/models" and training.model_name == "yolo_nas_m"


def test_retraining_values_are_checked_when_the_drift_run_starts() -> None:
    with pytest.raises(StageInputError, match=r"retrain_conf.*'epoch' \(did you mean 'epochs'\?\)"):
        DriftSettings.validated({"retrain_conf": {"epoch": 3}}, origin="the drift form")
    with pytest.raises(StageInputError, match="epochs: Input should be less than or equal to 300"):
        DriftSettings.validated({"retrain_conf": {"epochs": 1000}}, origin="the drift form")


def test_the_form_is_generated_from_the_model() -> None:
    params = form_params(TrainingSettings, defaults_with(TrainingSettings, {"epochs": 7}, origin="test"))
    assert list(params) == [
        "preflight",
        *[k for k in params if k != "preflight"],
    ]
    assert set(params) == set(DEFAULTS)
    epochs = params["epochs"]
    assert epochs.value == 7
    expected = {"type": "integer", "minimum": 1, "maximum": 300, "section": "Training"}
    assert {k: epochs.schema.get(k) for k in expected} == expected
    assert "1 to 300" in (epochs.description or "")
    assert params["input_size"].schema["multipleOf"] == 32
    assert params["checkpoint_sha256"].schema["type"] == ["null", "string"]
    assert params["schema"].schema["type"] == ["null", "object", "string"]  # the form shows a JSON editor
    for key, param in params.items():
        param.resolve(param.value)  # every default is valid in the form's own schema
        assert param.schema.get("title") and param.schema.get("section"), key


def test_the_gate_has_a_floor_and_a_margin_above_zero_in_the_publishing_section() -> None:
    settings = TrainingSettings.validated({}, origin="test")
    assert settings.min_map_50_95 > 0 and settings.promotion_margin > 0  # nothing crowned for detecting nothing
    params = form_params(TrainingSettings, settings)
    floor = params["min_map_50_95"].schema
    expected = {"type": "number", "minimum": 0, "maximum": 1, "section": "Publishing"}
    assert {k: floor.get(k) for k in expected} == expected
    assert floor["title"] == "Minimum mAP@0.5:0.95"
    assert "first one included" in (params["min_map_50_95"].description or "")
    with pytest.raises(StageInputError, match="min_map_50_95: Input should be less than or equal to 1"):
        TrainingSettings.validated({"min_map_50_95": 2.0}, origin="test")


def test_defaults_from_the_environment_are_checked() -> None:
    with pytest.raises(StageInputError, match=r"YOLONAS_TRAINING_DEFAULTS sets unknown field.*'epochz'"):
        defaults_with(TrainingSettings, {"epochz": 3}, origin="YOLONAS_TRAINING_DEFAULTS")


MAPPING = {"objects_column": None, "bbox_key": "boxes", "category_key": "labels", "class_names": ["cat", "dog"]}


@pytest.mark.parametrize(
    "value", [None, "cppe5", "auto", {"preset": "objects_categories", "bbox_format": "xyxy"}, MAPPING]
)
def test_the_schema_field_takes_a_preset_or_a_mapping(value: Any) -> None:
    params = form_params(TrainingSettings, defaults_with(TrainingSettings, {}, origin="test"))
    schema = params["schema"]
    assert schema.resolve(value) == value  # the form's own JSON schema accepts it
    resolved = resolve(TrainingSettings, params={**DEFAULTS, "schema": value}, conf={"schema": value})
    assert resolved.schema_ == value and resolved.to_xcom()["schema"] == value
    assert TrainingSettings.parse_resolved(resolved.to_xcom()).schema_ == value
    assert "e.g." in (schema.description or "") and '"class_names"' in (schema.description or "")


@pytest.mark.parametrize(
    ("value", "form_error", "settings_error"),
    [
        ("coco-ish", "is not one of", "known presets"),
        ({"box": "x"}, "'box' was unexpected", "unknown schema keys"),
        ({"normalized": "yes"}, "not valid under any", "normalized='yes'"),
        ({"bbox_format": "ltrb"}, "is not one of", "bbox_format"),
        ({"class_names": []}, "should be non-empty|is too short", "class_names"),
        ({"image_column": None}, "is not of type 'string'", "image_column"),
        (3, "is not of type", "schema"),
    ],
)
def test_a_bad_schema_is_refused_by_the_form_and_by_the_settings(
    value: Any, form_error: str, settings_error: str
) -> None:
    from airflow.sdk.definitions.param import ParamValidationError

    schema = form_params(TrainingSettings, defaults_with(TrainingSettings, {}, origin="test"))["schema"]
    with pytest.raises(ParamValidationError, match=form_error):
        schema.resolve(value)
    with pytest.raises(StageInputError, match=settings_error):
        TrainingSettings.validated({"schema": value}, origin="test")


def test_a_schema_mapping_reaches_the_retraining_run() -> None:
    drift = DriftSettings.validated({"schema": MAPPING}, origin="test")
    conf = drift.retraining_conf(dataset_revision=None)
    assert conf["schema"] == MAPPING
    assert resolve(TrainingSettings, params=DEFAULTS, conf={}, event=conf).schema_ == MAPPING
