"""Operator for stage 2: read the class count from the base checkpoint and reconcile it with the dataset."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from yolonas_pipeline import settings
from yolonas_pipeline.checkpoint import inspect_checkpoint, plan_classes
from yolonas_pipeline.contracts import DatasetExport
from yolonas_pipeline.operators._aws import storage_for
from yolonas_pipeline.operators._errors import input_errors_fail_without_retry


class InspectCheckpointOperator(BaseOperator):
    """Decide the one class set that model, loss and metrics use, on the CPU, before any GPU is asked for.

    Reads only the pickle metadata of the checkpoint (never its tensors, never arbitrary pickled code),
    checks its SHA-256 when one is given, and fails fast when the architecture differs from the
    requested model. Without a checkpoint the model trains from scratch with the dataset's classes.

    :param dataset: the materialize stage's result (an XComArg). (templated)
    :param model_name: requested architecture, e.g. ``yolo_nas_s``. (templated)
    :param checkpoint_uri: base weights, local path or ``s3://``; empty = from scratch. (templated)
    :param checkpoint_sha256: expected SHA-256 of the checkpoint file. (templated)
    :param aws_conn_id: Airflow connection for S3.
    """

    template_fields: Sequence[str] = ("dataset", "model_name", "checkpoint_uri", "checkpoint_sha256")

    def __init__(
        self,
        *,
        dataset: Mapping[str, Any],
        model_name: str = "yolo_nas_s",
        checkpoint_uri: str | None = None,
        checkpoint_sha256: str | None = None,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.model_name = model_name
        self.checkpoint_uri = checkpoint_uri
        self.checkpoint_sha256 = checkpoint_sha256
        self.aws_conn_id = aws_conn_id or settings.load().aws_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        with input_errors_fail_without_retry():
            dataset = DatasetExport.parse(self.dataset, source="the materialize task's result")
            storage = storage_for(self.aws_conn_id)
            info = None
            if self.checkpoint_uri:
                info = inspect_checkpoint(self.checkpoint_uri, storage=storage, expected_sha256=self.checkpoint_sha256)
                self.log.info(
                    "checkpoint %s: %s, %d classes (%s), read %d of %d bytes",
                    self.checkpoint_uri,
                    info.architecture,
                    info.num_classes,
                    info.state_dict_key or "top level",
                    info.bytes_read,
                    info.size_bytes,
                )
            else:
                self.log.info("no checkpoint given: %s trains from scratch", self.model_name)
            plan = plan_classes(info, dataset_class_names=dataset.class_names, model_name=self.model_name)
        for warning in plan.warnings:
            self.log.warning("%s", warning)
        self.log.info(
            "class plan: %d classes for model, loss and metrics; checkpoint_num_classes=%s",
            plan.num_classes,
            plan.checkpoint_num_classes,
        )
        return plan.to_xcom()
