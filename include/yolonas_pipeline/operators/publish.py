"""Operator for stage 5: publish the run's artifacts as one bundle with a manifest written last, then run
the promotion gate against the current champion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from yolonas_pipeline import promote, settings
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.operators._aws import storage_for
from yolonas_pipeline.publish import LICENCE_NOTE, publish_run

__all__ = ["LICENCE_NOTE", "PublishModelOperator"]


class PublishModelOperator(BaseOperator):
    """Copy checkpoint, metrics, plots, predictions, ONNX (when exported), training result and config, and
    the dataset's manifest and report to ``<models_uri>/<model>/<run id>/``; then decide whether the model
    becomes the champion (``<models_uri>/<model>/champion.json``).

    ``manifest.json`` lists every file with its SHA-256 and size, the dataset's source, revision and
    fingerprint, the base weights with their SHA-256 and licence note, the code version, the GPU-seconds
    spent and the promotion decision with its reasons; it is written last, so a bundle without it is
    incomplete.

    :param dataset: the materialize stage's result. (templated)
    :param class_plan: the inspection stage's result. (templated)
    :param train_result: the training stage's result. (templated)
    :param metrics: the evaluation stage's result. (templated)
    :param models_uri: root of published bundles. (templated)
    :param promotion_margin: mAP@0.50:0.95 gain over the champion needed to promote. (templated)
    :param class_ap_tolerance: largest drop of any class's AP@0.50:0.95 a promotion accepts. (templated)
    :param gate: run the promotion gate at all (False: publish only). (templated)
    :param aws_conn_id: Airflow connection for S3.
    """

    template_fields: Sequence[str] = (
        "dataset",
        "class_plan",
        "train_result",
        "metrics",
        "models_uri",
        "promotion_margin",
        "class_ap_tolerance",
        "gate",
    )

    def __init__(
        self,
        *,
        dataset: Mapping[str, Any],
        class_plan: Mapping[str, Any],
        train_result: Mapping[str, Any],
        metrics: Mapping[str, Any],
        models_uri: str | None = None,
        promotion_margin: float | str = promote.DEFAULT_MARGIN,
        class_ap_tolerance: float | str = promote.DEFAULT_CLASS_AP_TOLERANCE,
        gate: bool | str = True,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        config = settings.load()
        self.dataset = dataset
        self.class_plan = class_plan
        self.train_result = train_result
        self.metrics = metrics
        self.models_uri = models_uri or config.models_uri
        self.promotion_margin = promotion_margin
        self.class_ap_tolerance = class_ap_tolerance
        self.gate = gate
        self.aws_conn_id = aws_conn_id or config.aws_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        result = publish_run(
            dataset=self.dataset,
            class_plan=self.class_plan,
            train_result=self.train_result,
            metrics=self.metrics,
            run_id=context["run_id"],
            models_uri=self.models_uri,
            storage=storage_for(self.aws_conn_id),
            params=dict(context.get("params") or {}),
            promotion=_flag("gate", self.gate),
            promotion_margin=_number("promotion_margin", self.promotion_margin, promote.DEFAULT_MARGIN),
            class_ap_tolerance=_number(
                "class_ap_tolerance", self.class_ap_tolerance, promote.DEFAULT_CLASS_AP_TOLERANCE
            ),
            log=self.log.info,
        )
        self.log.info(
            "published %s; %s (champion pointer: %s)",
            result["bundle_uri"],
            "PROMOTED" if result["promoted"] else "not promoted",
            result["champion_update"],
        )
        return result


def _number(name: str, value: Any, default: float) -> float:
    """Rendered templates arrive as strings (empty or None: the default); name the parameter when one is not
    a number."""
    if value is None or (isinstance(value, str) and not value.strip()) or str(value).strip() == "None":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StageInputError(f"{name}={value!r} is not a number") from None
    if number < 0:
        raise StageInputError(f"{name}={number} must not be negative")
    return number


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in {"true", "false", "1", "0"}:
        raise StageInputError(f"{name}={value!r} is not a boolean (true/false)")
    return text in {"true", "1"}
