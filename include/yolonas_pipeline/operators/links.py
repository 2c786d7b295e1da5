"""Extra links on the train, evaluate, publish and drift tasks: the artifacts their results name.

Each link reads the task's own result (its ``return_value`` XCom: a :class:`~yolonas_pipeline.contracts.TrainResult`,
:class:`~yolonas_pipeline.contracts.Metrics`, :class:`~yolonas_pipeline.contracts.PublishResult` or the drift
summary) and points at the UI plugin's viewer (``/yolonas/files/<key>``) or Models page, never at ``s3://`` or
a presigned URL. The worker calls :meth:`~airflow.sdk.BaseOperatorLink.get_link` when the task ends and stores the
answer as XCom ``_link_<class>``; an empty answer (the result names no such file) hides the button.

Plot links are looked up in the files the result lists (``Metrics.plots``, ``PublishResult.files``), by file
name, so a plot that a run does not have shows no button and a new plot needs only an entry in :data:`PLOTS`;
the Models page shows every plot a bundle lists.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperatorLink
from airflow.sdk.configuration import conf
from airflow.sdk.execution_time.xcom import XCom

from yolonas_pipeline import models_page, settings
from yolonas_pipeline.contracts import (
    BUNDLE_MANIFEST_FILE,
    METRICS_FILE,
    TRAIN_RESULT_FILE,
    Metrics,
    PublishResult,
    TrainResult,
)
from yolonas_pipeline.storage import join_uri

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

log = logging.getLogger(__name__)
RETURN_KEY = "return_value"


def ui_base_path() -> str:
    """The path part of ``[api] base_url`` (empty when Airflow is served at the root)."""
    base_url = conf.get("api", "base_url", fallback="") or ""
    return urllib.parse.urlsplit(base_url).path.rstrip("/")


def result_format(result: Mapping[str, Any]) -> str:
    return str(result.get("format") or "")


class YolonasArtifactLink(BaseOperatorLink):
    """A link to one artifact named by the task's result; subclasses say which (:meth:`target`)."""

    name: ClassVar[str]

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        try:
            result = XCom.get_value(ti_key=ti_key, key=RETURN_KEY)
        except Exception:  # no result (a failed task): no link, never a failed finalisation
            log.debug("no result for %s", ti_key, exc_info=True)
            return ""
        return self.link_for(result) or ""

    def link_for(self, result: Any, *, bucket: str | None = None, base: str | None = None) -> str | None:
        """The viewer path of :meth:`target` for ``result``, or None."""
        if not isinstance(result, Mapping):
            return None
        bucket = bucket or settings.load().bucket
        base = ui_base_path() if base is None else base
        return self.href(result, bucket=bucket, base=base)

    def href(self, result: Mapping[str, Any], *, bucket: str, base: str) -> str | None:
        return models_page.viewer_path(self.target(result), bucket=bucket, base=base)

    def target(self, result: Mapping[str, Any]) -> str | None:
        """The ``s3://`` URI this link opens, from the result (None: this result has no such artifact)."""
        raise NotImplementedError


def _plot_uri(result: Mapping[str, Any], file_names: tuple[str, ...], keys: tuple[str, ...]) -> str | None:
    """The URI of the first plot in ``result`` whose key is in ``keys`` or whose file name is in ``file_names``."""
    kind = result_format(result)
    if kind == Metrics.FORMAT:
        metrics_uri = result.get("metrics_uri") or ""
        plots: Mapping[str, str] = result.get("plots") or {}
        root = metrics_uri.rsplit("/", 1)[0] if metrics_uri.endswith(METRICS_FILE) else ""
        for key, relative in plots.items():
            if root and (key in keys or relative.rsplit("/", 1)[-1] in file_names):
                return join_uri(root, relative)
    elif kind == PublishResult.FORMAT:
        for name in result.get("files") or []:
            if str(name).rsplit("/", 1)[-1] in file_names:
                return join_uri(str(result["bundle_uri"]), str(name))
    elif kind == TrainResult.FORMAT:
        for key, relative in (result.get("plots") or {}).items():
            if key in keys or str(relative).rsplit("/", 1)[-1] in file_names:
                return join_uri(str(result["run_uri"]).rsplit("/", 1)[0], str(relative))
    return None


class _PlotLink(YolonasArtifactLink):
    file_names: ClassVar[tuple[str, ...]]
    keys: ClassVar[tuple[str, ...]]

    def target(self, result: Mapping[str, Any]) -> str | None:
        return _plot_uri(result, self.file_names, self.keys)


class TrainingCurvesLink(_PlotLink):
    name = "Training curves"
    file_names = ("results.png", "training_curves.png")
    keys = ("results", "training_curves")


class PrCurvesLink(_PlotLink):
    name = "PR curves"
    file_names = ("pr_curves.png",)
    keys = ("pr_curves",)


class ConfusionMatrixLink(_PlotLink):
    name = "Confusion matrix"
    file_names = ("confusion_matrix.png",)
    keys = ("confusion_matrix",)


class SamplePredictionsLink(_PlotLink):
    name = "Sample predictions"
    file_names = ("sample_predictions.png",)
    keys = ("sample_predictions",)


#: Every plot that has a link of its own; the Models page shows the rest too.
PLOTS: tuple[type[_PlotLink], ...] = (TrainingCurvesLink, PrCurvesLink, ConfusionMatrixLink, SamplePredictionsLink)


class TrainResultLink(YolonasArtifactLink):
    name = "Train result"

    def target(self, result: Mapping[str, Any]) -> str | None:
        if result_format(result) != TrainResult.FORMAT:
            return None
        return join_uri(str(result["run_uri"]).rsplit("/", 1)[0], TRAIN_RESULT_FILE)


class MetricsLink(YolonasArtifactLink):
    name = "Metrics"

    def target(self, result: Mapping[str, Any]) -> str | None:
        if result_format(result) == Metrics.FORMAT:
            return str(result.get("metrics_uri") or "") or None
        if result_format(result) == PublishResult.FORMAT and METRICS_FILE in (result.get("files") or []):
            return join_uri(str(result["bundle_uri"]), METRICS_FILE)
        return None


class BundleLink(YolonasArtifactLink):
    """The bundle on the Models page: its metrics, gate verdict, per-class AP and every plot."""

    name = "Bundle"

    def target(self, result: Mapping[str, Any]) -> str | None:
        return str(result["bundle_uri"]) if result_format(result) == PublishResult.FORMAT else None

    def href(self, result: Mapping[str, Any], *, bucket: str, base: str) -> str | None:
        uri = self.target(result)
        if not uri or models_page.viewer_path(join_uri(uri, BUNDLE_MANIFEST_FILE), bucket=bucket) is None:
            return None
        model, run = uri.rstrip("/").rsplit("/", 2)[-2:]
        return models_page.model_page_path(model, run, base=base)


class ManifestLink(YolonasArtifactLink):
    name = "Manifest"

    def target(self, result: Mapping[str, Any]) -> str | None:
        return str(result["manifest_uri"]) if result_format(result) == PublishResult.FORMAT else None


class ChampionLink(YolonasArtifactLink):
    name = "champion.json"

    def target(self, result: Mapping[str, Any]) -> str | None:
        if result_format(result) != PublishResult.FORMAT:
            return None
        return str(result.get("champion_uri") or "") or None


class DriftReportLink(YolonasArtifactLink):
    name = "Drift report"

    def target(self, result: Mapping[str, Any]) -> str | None:
        return str(result.get("report_uri") or "") or None


class DriftPlotLink(YolonasArtifactLink):
    name = "Drift plot"

    def target(self, result: Mapping[str, Any]) -> str | None:
        return str(result.get("png_uri") or "") or None


#: The links of the trainer tasks (train and evaluate are the same operator; each result shows its own).
TRAINER_LINKS: tuple[BaseOperatorLink, ...] = (TrainResultLink(), MetricsLink(), *(plot() for plot in PLOTS))
PUBLISH_LINKS: tuple[BaseOperatorLink, ...] = (
    BundleLink(),
    ManifestLink(),
    ChampionLink(),
    MetricsLink(),
    *(plot() for plot in PLOTS),
)
DRIFT_LINKS: tuple[BaseOperatorLink, ...] = (DriftReportLink(), DriftPlotLink())
