"""Stage 4: evaluation. Builds the trainer's ``evaluate`` request from the training result and reads
back ``metrics.json``, which names the other files the command wrote next to it (predictions, plots, ONNX)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from yolonas_pipeline import settings
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.promote import champion_uri
from yolonas_pipeline.storage import Storage, join_uri
from yolonas_pipeline.trainer_command import EvaluateRequest, coerce_options

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.json"


def build_evaluate_request(
    *, dataset: Mapping[str, Any], train_result: Mapping[str, Any], output_uri: str, **options: Any
) -> EvaluateRequest:
    """``options``: EvaluateRequest fields (split, batch_size, score_threshold, export_onnx, ...).

    ``champion_uri`` defaults to the deployment's ``<models_uri>/<model>/champion.json`` so the champion is
    re-scored on the same split for the promotion gate; an empty value turns that off.
    """
    coerced = coerce_options(EvaluateRequest, options)
    model_name = train_result["model_name"]
    if "champion_uri" not in coerced:
        coerced["champion_uri"] = champion_uri(settings.load().models_uri, model_name)
    coerced["champion_uri"] = coerced["champion_uri"] or None
    return EvaluateRequest(
        dataset_uri=dataset["dataset_uri"],
        checkpoint_uri=train_result["best_checkpoint_uri"],
        output_uri=output_uri,
        num_classes=train_result["num_classes"],
        model_name=model_name,
        input_size=train_result["input_size"],
        **coerced,
    )


def read_metrics(output_uri: str, *, storage: Storage) -> dict[str, Any]:
    uri = join_uri(output_uri, METRICS_FILE)
    if not storage.exists(uri):
        raise StageInputError(f"the evaluation finished without writing {uri}; see the task log above")
    return json.loads(storage.read_text(uri))


def evaluation_files(metrics: Mapping[str, Any]) -> list[str]:
    """Paths, relative to the evaluate output URI, of the files listed in ``metrics.json`` (sorted)."""
    files: list[str] = []
    if metrics.get("predictions"):
        files.append(str(metrics["predictions"]))
    files += [str(name) for name in (metrics.get("plots") or {}).values()]
    onnx = metrics.get("onnx") or {}
    files += [f"onnx/{name}" for name in (onnx.get("files") or {}).values()]
    return sorted(files)


def summary_line(metrics: Mapping[str, Any]) -> str:
    return (
        f"{metrics['split']}: mAP@0.50={metrics['map_50']:.4f} mAP@0.50:0.95={metrics['map_50_95']:.4f} "
        f"precision={metrics['precision']:.4f} recall={metrics['recall']:.4f} f1={metrics['f1']:.4f}"
    )
