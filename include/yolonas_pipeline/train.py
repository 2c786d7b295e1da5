"""Stage 3: training. Turns the upstream stages' results into the trainer command's request, and reads
back the result the trainer command writes (``result.json`` under the run's output URI)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage, join_uri
from yolonas_pipeline.trainer_command import RESULT_FILE, TrainRequest, coerce_options


def build_train_request(
    *, dataset: Mapping[str, Any], class_plan: Mapping[str, Any], output_uri: str, **options: Any
) -> TrainRequest:
    """``dataset``: the materialize stage's result; ``class_plan``: the inspection stage's; ``options``:
    the TrainRequest fields a user may set (epochs, batch_size, input_size, learning_rate, ...)."""
    if class_plan["num_classes"] != len(dataset["class_names"]):
        raise StageInputError(
            f"class plan says {class_plan['num_classes']} classes but the dataset has {len(dataset['class_names'])}"
        )
    return TrainRequest(
        dataset_uri=dataset["dataset_uri"],
        output_uri=output_uri,
        num_classes=class_plan["num_classes"],
        model_name=class_plan["model_name"],
        checkpoint_uri=class_plan.get("checkpoint_uri"),
        checkpoint_num_classes=class_plan.get("checkpoint_num_classes"),
        **coerce_options(TrainRequest, options),
    )


def read_train_result(output_uri: str, *, storage: Storage) -> dict[str, Any]:
    uri = join_uri(output_uri, RESULT_FILE)
    if not storage.exists(uri):
        raise StageInputError(f"the trainer finished without writing {uri}; see the task log above for its output")
    return json.loads(storage.read_text(uri))
