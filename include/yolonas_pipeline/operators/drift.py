"""Operators and glue for drift-triggered retraining.

``yolonas_drift`` materializes the newest revision, :class:`DetectDriftOperator` compares it with the snapshot
the champion model was trained on and writes the report, and :class:`EmitDriftEventOperator` emits an event
on the drift Asset, on which ``yolonas_training`` is scheduled. The event's extra carries the scores and a
``conf``: the training form values the retraining run uses (the drifted dataset first of all).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import Asset, AssetOrTimeSchedule, BaseOperator, Context, CronTriggerTimetable

from yolonas_pipeline import settings
from yolonas_pipeline.contracts import champion_uri, safe_segment
from yolonas_pipeline.drift import (
    ChampionReference,
    DriftConfig,
    compare_profiles,
    profile_dataset,
    read_champion,
    write_report,
)
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.operators._aws import storage_for
from yolonas_pipeline.operators._errors import input_errors_fail_without_retry
from yolonas_pipeline.operators.links import DRIFT_LINKS
from yolonas_pipeline.run_settings import DriftSettings
from yolonas_pipeline.storage import join_uri

#: Emitted by upstream data pipelines (REST, UI "Create Asset Event") when a new dataset revision lands.
DATASET_SOURCE_ASSET_NAME = "yolonas_dataset_source"
#: Emitted by yolonas_drift when the data drifted; yolonas_training is scheduled on it.
DRIFT_ASSET_NAME = "yolonas_drift"
NO_CHAMPION_POLICIES = ("retrain", "skip")


def drift_root(config: settings.Settings) -> str:
    """Drift reports (``<run>/``), cached profiles (``profiles/``) and retraining markers (``triggered/``)."""
    return f"s3://{config.bucket}/drift"


def dataset_source_asset() -> Asset:
    return Asset(name=DATASET_SOURCE_ASSET_NAME)


def drift_asset(config: settings.Settings) -> Asset:
    return Asset(name=DRIFT_ASSET_NAME, uri=f"{drift_root(config)}/")


def schedule_from_env(variable: str, default: str, assets: Asset) -> Any:
    """``assets`` OR the cron in ``$variable`` (``default`` when unset; empty or ``none``: assets only).

    Read at parse time, so changing the schedule is a change of environment, never of code. A bad cron
    fails the parse with croniter's message, which the UI shows as the DAG's import error.
    """
    cron = os.environ.get(variable, default).strip()
    if not cron or cron.lower() in ("none", "off"):
        return assets
    timetable = CronTriggerTimetable(cron, timezone=os.environ.get("YOLONAS_SCHEDULE_TIMEZONE", "UTC"))
    try:
        timetable.validate()
    except Exception as exc:
        raise ValueError(f"{variable}={cron!r} is not a cron expression or preset: {exc}") from exc
    return AssetOrTimeSchedule(timetable=timetable, assets=assets)


class DetectDriftOperator(BaseOperator):
    """Compare the current export with the champion's training snapshot and write the drift report.

    The reference is the dataset recorded in the manifest of the bundle that ``<models_uri>/<model>/
    champion.json`` points at (``reference_uri`` overrides it). Writes ``drift_report.json`` and
    ``drift_report.png`` to ``<reports_uri>/<run id>/`` and returns a summary whose ``retrain`` says whether
    to emit the drift event: drift, and this reference/current pair has not started a retraining before
    (``retrigger`` overrides that), so a champion that the new data could not beat is not retrained daily.

    :param current: the materialize stage's result. (templated)
    :param model_name: whose champion is the reference. (templated)
    :param models_uri: root of published bundles. (templated)
    :param reference_uri: a dataset export to compare with instead of the champion's. (templated)
    :param config: :class:`~yolonas_pipeline.drift.DriftConfig` settings (metric, thresholds, ...). (templated)
    :param reports_uri: root of reports, profiles and markers. (templated)
    :param when_no_champion: ``retrain`` (treat as drift, so a first model gets trained) or ``skip``. (templated)
    :param retrigger: emit even if this same drift already started a retraining. (templated)
    :param aws_conn_id: Airflow connection for S3.
    """

    template_fields: Sequence[str] = (
        "current",
        "model_name",
        "models_uri",
        "reference_uri",
        "config",
        "reports_uri",
        "when_no_champion",
        "retrigger",
    )
    operator_extra_links = DRIFT_LINKS

    def __init__(
        self,
        *,
        current: Mapping[str, Any],
        model_name: str = "yolo_nas_s",
        models_uri: str | None = None,
        reference_uri: str | None = None,
        config: Mapping[str, Any] | None = None,
        reports_uri: str | None = None,
        when_no_champion: str = "retrain",
        retrigger: bool = False,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        defaults = settings.load()
        self.current = current
        self.model_name = model_name
        self.models_uri = models_uri or defaults.models_uri
        self.reference_uri = reference_uri
        self.config = config
        self.reports_uri = reports_uri or drift_root(defaults)
        self.when_no_champion = when_no_champion
        self.retrigger = retrigger
        self.aws_conn_id = aws_conn_id or defaults.aws_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        with input_errors_fail_without_retry():
            return self._detect(context)

    def _detect(self, context: Context) -> dict[str, Any]:
        if self.when_no_champion not in NO_CHAMPION_POLICIES:
            raise StageInputError(
                f"when_no_champion={self.when_no_champion!r} is not one of {', '.join(NO_CHAMPION_POLICIES)}"
            )
        config = DriftConfig.from_mapping(self.config)
        storage = storage_for(self.aws_conn_id)
        pointer = champion_uri(self.models_uri, self.model_name)
        if self.reference_uri:
            champion: ChampionReference | None = ChampionReference.for_export(self.reference_uri, storage=storage)
            no_reference = ""
        else:
            champion = read_champion(pointer, storage=storage)
            no_reference = f"no champion yet: {pointer} does not exist"
            if not champion:
                self.log.warning("%s", no_reference)

        profiles = join_uri(self.reports_uri, "profiles")
        current = profile_dataset(self.current["dataset_uri"], storage=storage, config=config, cache_root=profiles)
        reference = (
            profile_dataset(champion.dataset_uri, storage=storage, config=config, cache_root=profiles)
            if champion
            else None
        )
        report = compare_profiles(
            reference,
            current,
            config,
            no_reference_is_drift=self.when_no_champion == "retrain",
            no_reference_reason=no_reference,
            champion=champion.to_dict() if champion else None,
        )

        marker = join_uri(
            self.reports_uri,
            "triggered",
            f"{reference.fingerprint if reference else 'none'}--{current.fingerprint}.json",
        )
        retrain, action = report.drifted, "emit the drift event: yolonas_training retrains"
        if not report.drifted:
            action = "nothing to do: no drift"
        elif storage.exists(marker) and not self.retrigger:
            previous = json.loads(storage.read_text(marker))
            retrain = False
            action = (
                f"not retraining again: this drift (reference {reference.fingerprint if reference else 'none'}, "
                f"current {current.fingerprint}) already started a retraining from run {previous.get('run_id')} at "
                f"{previous.get('emitted_at')}; trigger with retrigger=true to retrain anyway"
            )
        destination = join_uri(self.reports_uri, safe_segment(context["run_id"]))
        report_uri, png_uri = write_report(
            report, destination, storage=storage, extra={"retrain": retrain, "action": action, "marker_uri": marker}
        )
        self.log.info("drift: %s; %s", report.reason, action)
        self.log.info("drift report: %s (plot %s)", report_uri, png_uri)
        return {
            "drifted": report.drifted,
            "retrain": retrain,
            "reason": report.reason,
            "action": action,
            "metric": report.metric,
            "scores": report.scores,
            "drifted_features": report.drifted_features,
            "report_uri": report_uri,
            "png_uri": png_uri,
            "marker_uri": marker,
            "current": report.current,
            "reference": report.reference,
            "champion": report.champion,
        }


class EmitDriftEventOperator(BaseOperator):
    """Emit the drift event on every outlet Asset, with scores and the retraining run's settings.

    The event's ``extra["conf"]`` is what the retraining ``yolonas_training`` run uses
    (:meth:`~yolonas_pipeline.run_settings.DriftSettings.retraining_conf`): the drifted dataset (source, and
    the revision the export resolved to, so the retraining trains on exactly what drifted), this drift run's
    architecture, bucket and prefix, and its *Retraining form values*. Records the reference/current pair
    under the detect task's ``marker_uri`` first.

    :param drift: the detect task's result. (templated)
    :param run_settings: the drift run's resolved :class:`~yolonas_pipeline.run_settings.DriftSettings`. (templated)
    :param aws_conn_id: Airflow connection for S3.
    """

    template_fields: Sequence[str] = ("drift", "run_settings")

    def __init__(
        self,
        *,
        drift: Mapping[str, Any],
        run_settings: Mapping[str, Any],
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.drift = drift
        self.run_settings = run_settings
        self.aws_conn_id = aws_conn_id or settings.load().aws_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        with input_errors_fail_without_retry():
            drift_settings = DriftSettings.parse_resolved(self.run_settings)
            revision = ((self.drift.get("current") or {}).get("source") or {}).get("revision")
            conf = drift_settings.retraining_conf(dataset_revision=revision)
        emitted_at = datetime.now(UTC).isoformat(timespec="seconds")
        storage_for(self.aws_conn_id).write_text(
            self.drift["marker_uri"],
            json.dumps({"run_id": context["run_id"], "emitted_at": emitted_at, "report_uri": self.drift["report_uri"]}),
        )
        extra = {
            "scores": self.drift["scores"],
            "drifted_features": self.drift["drifted_features"],
            "metric": self.drift["metric"],
            "reason": self.drift["reason"],
            "report_uri": self.drift["report_uri"],
            "png_uri": self.drift["png_uri"],
            "dataset_uri": self.drift["current"]["dataset_uri"],
            "fingerprint": self.drift["current"]["fingerprint"],
            "reference_fingerprint": (self.drift.get("reference") or {}).get("fingerprint"),
            "drift_run_id": context["run_id"],
            "conf": conf,
        }
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = extra
        self.log.info("drift event emitted on %s: %s", [o.name for o in self.outlets], self.drift["reason"])
        self.log.info("the retraining run uses: %s", json.dumps(conf, sort_keys=True))
        return extra
