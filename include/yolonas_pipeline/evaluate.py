"""Stage 4: evaluation. The trainer's ``evaluate`` request, fully known before training starts (it names the
training result rather than a checkpoint), and the ``metrics.json`` it writes, which lists the other files
the command wrote next to it (predictions, plots, ONNX)."""

from __future__ import annotations

from yolonas_pipeline.contracts import METRICS_FILE, DatasetExport, EvaluateRequest, Metrics, champion_uri
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.run_settings import TrainingSettings
from yolonas_pipeline.storage import Storage, join_uri
from yolonas_pipeline.train import result_uri


def evaluate_request(
    settings: TrainingSettings, dataset: DatasetExport, *, train_uri: str, output_uri: str
) -> EvaluateRequest:
    """Score the model ``train_uri``'s result describes; the champion is re-scored on the same split."""
    return EvaluateRequest(
        dataset_uri=dataset.dataset_uri,
        train_result_uri=result_uri(train_uri),
        output_uri=output_uri,
        batch_size=settings.batch_size,
        workers=settings.workers,
        champion_uri=champion_uri(settings.models_uri, settings.model_name),
    )


def metrics_uri(output_uri: str) -> str:
    return join_uri(output_uri, METRICS_FILE)


def read_metrics(output_uri: str, *, storage: Storage) -> Metrics:
    uri = metrics_uri(output_uri)
    try:
        metrics = Metrics.read(uri, storage=storage)
    except FileNotFoundError:
        raise StageInputError(f"the evaluation finished without writing {uri}; see the task log above") from None
    return metrics.model_copy(update={"metrics_uri": uri})
