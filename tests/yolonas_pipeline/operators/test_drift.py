"""The drift operators against a real S3 API (moto): champion lookup, report, retraining markers, event conf."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from conftest import MotoS3, crown_champion, shift_class_balance

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.materialize import MaterializeRequest, materialize
from yolonas_pipeline.run_settings import DriftSettings
from yolonas_pipeline.storage import Storage


@dataclass
class World:
    bucket: str
    storage: Storage
    base: dict[str, Any]
    shifted: dict[str, Any]

    @property
    def models_uri(self) -> str:
        return f"s3://{self.bucket}/models"

    @property
    def reports_uri(self) -> str:
        return f"s3://{self.bucket}/drift"

    def crown(self, dataset: dict[str, Any], run_id: str = "manual__champion") -> None:
        """Publish a minimal bundle manifest for ``dataset`` and point champion.json at it."""
        crown_champion(
            self.storage,
            self.models_uri,
            dataset_uri=dataset["dataset_uri"],
            fingerprint=dataset["fingerprint"],
            run_id=run_id,
        )


@pytest.fixture(scope="module")
def world(moto_s3: MotoS3, sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
    storage = Storage(moto_s3.client)
    bucket = moto_s3.new_bucket()
    shifted = shift_class_balance(sample_dataset, tmp_path_factory.mktemp("drift-op") / "shifted")
    exported = {}
    for name, source in (("base", sample_dataset), ("shifted", shifted)):
        request = MaterializeRequest(source=str(source), output_uri=f"s3://{bucket}/datasets")
        exported[name] = materialize(request, storage=storage).to_xcom()
    return World(bucket, storage, exported["base"], exported["shifted"])


@pytest.fixture
def fresh(world: World) -> Iterator[World]:
    """No champion and no retraining markers before and after each test."""
    world.storage.delete_tree(world.models_uri)
    world.storage.delete_tree(f"{world.reports_uri}/triggered")
    yield world


def detect(world: World, current: dict[str, Any], run_id: str = "manual__1", **kwargs: Any) -> dict[str, Any]:
    from yolonas_pipeline.operators.drift import DetectDriftOperator

    operator = DetectDriftOperator(
        task_id="detect_drift", current=current, models_uri=world.models_uri, reports_uri=world.reports_uri, **kwargs
    )
    return operator.execute({"run_id": run_id})


def emit(result: dict[str, Any], run_id: str = "manual__1", **kwargs: Any) -> tuple[dict[str, Any], dict[Any, Any]]:
    from airflow.sdk import Asset

    from yolonas_pipeline.operators.drift import EmitDriftEventOperator

    asset = Asset(name="yolonas_drift", uri="s3://x/drift/")
    operator = EmitDriftEventOperator(task_id="emit_drift_event", drift=result, outlets=[asset], **kwargs)
    events: defaultdict[Any, SimpleNamespace] = defaultdict(SimpleNamespace)
    return operator.execute({"run_id": run_id, "outlet_events": events}), events


def test_shifted_data_drifts_writes_the_report_and_asks_for_retraining(fresh: World) -> None:
    fresh.crown(fresh.base)
    result = detect(fresh, fresh.shifted, run_id="scheduled__2026-01-01T04:00:00+00:00")
    assert result["drifted"] and result["retrain"]
    assert result["drifted_features"] == ["class_balance"]
    assert result["reference"]["fingerprint"] == fresh.base["fingerprint"]
    assert result["champion"]["run_id"] == "manual__champion"
    assert result["report_uri"] == f"{fresh.reports_uri}/scheduled__2026-01-01T04_00_00_00_00/drift_report.json"
    report = json.loads(fresh.storage.read_text(result["report_uri"]))
    assert report["drifted"] and report["retrain"] and report["reason"] == result["reason"]
    assert fresh.storage.read_bytes(result["png_uri"])[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps(result)  # the XCom is JSON


def test_identical_data_does_not_drift_and_the_report_says_why(fresh: World) -> None:
    fresh.crown(fresh.base)
    result = detect(fresh, fresh.base)
    assert not result["drifted"] and not result["retrain"]
    assert result["action"] == "nothing to do: no drift"
    report = json.loads(fresh.storage.read_text(result["report_uri"]))
    assert report["reason"].startswith("no feature over its threshold")
    assert "reference snapshot itself" in report["reason"]


def test_one_drift_starts_one_retraining_unless_retriggered(fresh: World) -> None:
    fresh.crown(fresh.base)
    first = detect(fresh, fresh.shifted, run_id="run_a")
    drift_settings = DriftSettings.validated(
        {
            "dataset_source": "src",
            "publish_prefix": "team-a/models",
            "model_name": "yolo_nas_m",
            "retrain_conf": {"epochs": 3},
        },
        origin="test",
    )
    extra, events = emit(first, run_id="run_a", run_settings=drift_settings.to_xcom())
    (event,) = events.values()
    assert event.extra == extra
    # the drift run's architecture, bucket and prefix reach the retraining run with the drifted dataset
    expected = {
        "epochs": 3,
        "dataset_source": "src",
        "model_name": "yolo_nas_m",
        "publish_bucket": "yolonas",
        "publish_prefix": "team-a/models",
    }
    revision = first["current"]["source"].get("revision")
    assert extra["conf"] == (expected | {"dataset_revision": revision} if revision else expected)
    assert extra["scores"]["class_balance"] > 1 and extra["fingerprint"] == fresh.shifted["fingerprint"]
    assert extra["reference_fingerprint"] == fresh.base["fingerprint"]

    again = detect(fresh, fresh.shifted, run_id="run_b")
    assert again["drifted"] and not again["retrain"]
    assert "already started a retraining from run run_a" in again["action"]
    assert detect(fresh, fresh.shifted, run_id="run_c", retrigger=True)["retrain"]


def test_without_a_champion_the_policy_decides(fresh: World) -> None:
    result = detect(fresh, fresh.base, when_no_champion="retrain")
    assert result["drifted"] and result["retrain"] and result["reference"] is None
    assert result["reason"].startswith(f"no champion yet: {fresh.models_uri}/yolo_nas_s/champion.json does not exist")
    result = detect(fresh, fresh.base, when_no_champion="skip")
    assert not result["drifted"] and not result["retrain"]
    with pytest.raises(AirflowFailException, match=r"when_no_champion=.maybe."):
        detect(fresh, fresh.base, when_no_champion="maybe")


def test_an_explicit_reference_replaces_the_champion(fresh: World) -> None:
    result = detect(fresh, fresh.shifted, reference_uri=fresh.base["dataset_uri"])
    assert result["drifted"] and result["reference"]["dataset_uri"] == fresh.base["dataset_uri"]
    with pytest.raises(StageInputError, match="drift metric"):
        detect(fresh, fresh.shifted, reference_uri=fresh.base["dataset_uri"], config={"metric": "kl"})


# -- event conf and parse-time settings --------------------------------------------------------------------


def event(extra: dict[str, Any], minutes: int = 0) -> SimpleNamespace:
    return SimpleNamespace(extra=extra, timestamp=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes))


def test_the_newest_drift_event_conf_overrides_the_form() -> None:
    from airflow.sdk import Asset

    from yolonas_pipeline.operators.run import resolve_run_settings
    from yolonas_pipeline.run_settings import TrainingSettings, event_conf

    drift, other = Asset(name="yolonas_drift", uri="s3://x/drift/"), Asset(name="other", uri="s3://x/other/")
    events = {drift: [event({"conf": {"epochs": 3}}, 2), event({"conf": {"epochs": 2}}, 1)], other: [event({})]}
    assert event_conf(events, "yolonas_drift") == {"epochs": 3}
    assert event_conf(events, "missing") == {} and event_conf(None, "yolonas_drift") == {}
    params = TrainingSettings.validated({"epochs": 10}, origin="test").to_xcom()
    context = {"params": params, "dag_run": SimpleNamespace(conf={}), "triggering_asset_events": events}
    assert resolve_run_settings(TrainingSettings, context, event_asset="yolonas_drift")["epochs"] == 3
    context["triggering_asset_events"] = {}
    assert resolve_run_settings(TrainingSettings, context, event_asset="yolonas_drift") == params


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"epochz": 3}, r"the yolonas_drift event's conf sets unknown field\(s\) 'epochz' \(did you mean 'epochs'\?\)"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
    ],
)
def test_an_invalid_event_conf_is_refused_with_the_field(conf: dict[str, Any], message: str) -> None:
    from airflow.sdk import Asset

    from yolonas_pipeline.operators.run import resolve_run_settings
    from yolonas_pipeline.run_settings import TrainingSettings

    events = {Asset(name="yolonas_drift", uri="s3://x/drift/"): [event({"conf": conf})]}
    context = {
        "params": TrainingSettings.validated({}, origin="test").to_xcom(),
        "dag_run": SimpleNamespace(conf={}),
        "triggering_asset_events": events,
    }
    with pytest.raises(AirflowFailException, match=message):
        resolve_run_settings(TrainingSettings, context, event_asset="yolonas_drift")


def test_schedules_and_json_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.sdk import Asset, AssetOrTimeSchedule

    from yolonas_pipeline.operators.drift import schedule_from_env
    from yolonas_pipeline.run_settings import json_from_env

    asset = Asset(name="a", uri="s3://x/a/")
    monkeypatch.delenv("YOLONAS_X", raising=False)
    assert schedule_from_env("YOLONAS_X", "", asset) is asset
    assert schedule_from_env("YOLONAS_X", "@daily", asset).timetable.expression == "0 0 * * *"
    monkeypatch.setenv("YOLONAS_X", "none")
    assert schedule_from_env("YOLONAS_X", "@daily", asset) is asset
    monkeypatch.setenv("YOLONAS_X", "*/5 * * * *")
    schedule = schedule_from_env("YOLONAS_X", "", asset)
    assert isinstance(schedule, AssetOrTimeSchedule) and schedule.timetable.expression == "*/5 * * * *"
    monkeypatch.setenv("YOLONAS_X", "61 * * * *")
    with pytest.raises(ValueError, match="YOLONAS_X='61 \\* \\* \\* \\*' is not a cron"):
        schedule_from_env("YOLONAS_X", "", asset)

    assert json_from_env("YOLONAS_UNSET_JSON") == {}
    monkeypatch.setenv("YOLONAS_J", '{"epochs": 2}')
    assert json_from_env("YOLONAS_J") == {"epochs": 2}
    for bad in ("{epochs: 2}", "[1]"):
        monkeypatch.setenv("YOLONAS_J", bad)
        with pytest.raises(ValueError, match="YOLONAS_J"):
            json_from_env("YOLONAS_J")
