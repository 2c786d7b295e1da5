"""Deployment settings read from ``YOLONAS_*`` environment variables (see config/airflow.env).

Operators take their defaults from here, so switching the embedded default to Kubernetes, or changing
the bucket or trainer image, is configuration and never a DAG edit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    bucket: str
    backend: str
    aws_conn_id: str
    kubernetes_conn_id: str
    namespace: str
    trainer_image: str
    trainer_secret: str | None
    trainer_service_account: str | None
    sample_dataset: str | None

    @property
    def datasets_uri(self) -> str:
        return f"s3://{self.bucket}/datasets"

    @property
    def runs_uri(self) -> str:
        return f"s3://{self.bucket}/runs"

    @property
    def models_uri(self) -> str:
        return f"s3://{self.bucket}/models"


BACKENDS = ("local", "kubernetes")


def load() -> Settings:
    env = os.environ
    return Settings(
        bucket=env.get("YOLONAS_BUCKET", "yolonas"),
        backend=env.get("YOLONAS_BACKEND", "local"),
        aws_conn_id=env.get("YOLONAS_AWS_CONN_ID", "aws_default"),
        kubernetes_conn_id=env.get("YOLONAS_KUBERNETES_CONN_ID", "kubernetes_default"),
        namespace=env.get("YOLONAS_NAMESPACE", "yolonas"),
        trainer_image=env.get("YOLONAS_TRAINER_IMAGE", "ghcr.io/yolonas-pipeline/trainer:0.1.0"),
        # Set either to an empty string to run without it (IRSA instead of a Secret, the default account).
        trainer_secret=env.get("YOLONAS_TRAINER_SECRET", "yolonas-s3") or None,
        trainer_service_account=env.get("YOLONAS_TRAINER_SERVICE_ACCOUNT", "yolonas-trainer") or None,
        sample_dataset=env.get("YOLONAS_SAMPLE_DATASET") or None,
    )
