"""Operator for stage 5: publish the run's artifacts as one bundle with a manifest written last, then run
the promotion gate against the current champion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from yolonas_pipeline import settings
from yolonas_pipeline.contracts import ClassPlan, DatasetExport, Metrics, RunPlan, TrainResult
from yolonas_pipeline.operators._aws import storage_for
from yolonas_pipeline.operators._errors import input_errors_fail_without_retry
from yolonas_pipeline.operators.links import PUBLISH_LINKS
from yolonas_pipeline.publish import LICENCE_NOTE, model_event_extra, publish_run
from yolonas_pipeline.run_settings import TrainingSettings

__all__ = ["LICENCE_NOTE", "PublishModelOperator"]


class PublishModelOperator(BaseOperator):
    """Copy checkpoint, metrics, plots, predictions, ONNX (when exported), training result and config, and
    the dataset's manifest and report to ``s3://<bucket>/<prefix>/<model>/<run id>/``; then decide whether the
    model becomes the champion (``s3://<bucket>/<prefix>/<model>/champion.json``).

    ``manifest.json`` lists every file with its SHA-256 and size, the dataset's source, revision and
    fingerprint, the base weights with their SHA-256 and licence note, the code version, the GPU-seconds
    spent and the promotion decision with its reasons; it is written last, so a bundle without it is
    incomplete.

    :param dataset: the materialize stage's result. (templated)
    :param class_plan: the inspection stage's result. (templated)
    :param train_result: the training stage's result. (templated)
    :param metrics: the evaluation stage's result. (templated)
    :param run_settings: the run's resolved :class:`~yolonas_pipeline.run_settings.TrainingSettings`
        (bucket, prefix, promotion margin, per-class AP tolerance). (templated)
    :param plan: the preflight task's :class:`~yolonas_pipeline.contracts.RunPlan`; its training key goes into
        the manifest, so a later run with the same inputs reuses this bundle. (templated)
    :param gate: run the promotion gate at all (False: publish only).
    :param aws_conn_id: Airflow connection for S3.

    Each Asset in ``outlets`` (the DAG's ``yolonas_model``) gets an event whose extra holds the run id, the
    model, its mAP@0.50 and mAP@0.50:0.95, whether it was promoted, the gate's reasons and the bundle URI
    (:func:`~yolonas_pipeline.publish.model_event_extra`); Airflow emits it only when the task succeeds.
    """

    template_fields: Sequence[str] = ("dataset", "class_plan", "train_result", "metrics", "run_settings", "plan")
    operator_extra_links = PUBLISH_LINKS

    def __init__(
        self,
        *,
        dataset: Mapping[str, Any],
        class_plan: Mapping[str, Any],
        train_result: Mapping[str, Any],
        metrics: Mapping[str, Any],
        run_settings: Mapping[str, Any],
        plan: Mapping[str, Any] | None = None,
        gate: bool = True,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.class_plan = class_plan
        self.train_result = train_result
        self.metrics = metrics
        self.run_settings = run_settings
        self.plan = plan
        self.gate = gate
        self.aws_conn_id = aws_conn_id or settings.load().aws_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        with input_errors_fail_without_retry():
            result = publish_run(
                dataset=DatasetExport.parse(self.dataset, source="the materialize task's result"),
                class_plan=ClassPlan.parse(self.class_plan, source="the inspect_checkpoint task's result"),
                train_result=TrainResult.parse(self.train_result, source="the train task's result"),
                metrics=Metrics.parse(self.metrics, source="the evaluate task's result"),
                settings=TrainingSettings.parse_resolved(self.run_settings),
                run_id=context["run_id"],
                storage=storage_for(self.aws_conn_id),
                promotion=self.gate,
                training_key=RunPlan.parse(self.plan, source="the preflight task's plan").training_key
                if self.plan
                else None,
            )
        self.log.info(
            "published %s; %s (champion pointer: %s)",
            result.bundle_uri,
            "PROMOTED" if result.promoted else "not promoted",
            result.champion_update,
        )
        extra = model_event_extra(result, run_id=context["run_id"])
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = extra
        return result.to_xcom()
