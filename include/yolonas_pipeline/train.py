"""Stage 3: training. The trainer command's request from the run's settings and the first two stages'
results, and the result the command writes (``result.json`` under the run's train URI)."""

from __future__ import annotations

from yolonas_pipeline.contracts import TRAIN_RESULT_FILE, ClassPlan, DatasetExport, TrainRequest, TrainResult
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.run_settings import TrainingSettings
from yolonas_pipeline.storage import Storage, join_uri


def train_request(
    settings: TrainingSettings, dataset: DatasetExport, class_plan: ClassPlan, *, output_uri: str, processes: int
) -> TrainRequest:
    """What the ``train`` command does; ``processes``: how many train side by side (GPUs, or 1)."""
    if class_plan.num_classes != len(dataset.class_names):
        raise StageInputError(
            f"the class plan says {class_plan.num_classes} classes but the dataset {dataset.dataset_uri} has "
            f"{len(dataset.class_names)}"
        )
    return TrainRequest(
        dataset_uri=dataset.dataset_uri,
        output_uri=output_uri,
        num_classes=class_plan.num_classes,
        model_name=settings.model_name,
        checkpoint_uri=class_plan.checkpoint_uri,
        checkpoint_num_classes=class_plan.checkpoint_num_classes,
        gpus=processes,
        **settings.train_options(),
    )


def result_uri(output_uri: str) -> str:
    return join_uri(output_uri, TRAIN_RESULT_FILE)


def read_train_result(output_uri: str, *, storage: Storage) -> TrainResult:
    uri = result_uri(output_uri)
    try:
        return TrainResult.read(uri, storage=storage)
    except FileNotFoundError:
        raise StageInputError(f"the trainer finished without writing {uri}; see the task log above") from None
