"""Airflow operators: a thin layer over the stage modules (the only part of the package that imports Airflow)."""

from yolonas_pipeline.operators.checkpoint import InspectCheckpointOperator
from yolonas_pipeline.operators.materialize import MaterializeDatasetOperator
from yolonas_pipeline.operators.publish import PublishModelOperator
from yolonas_pipeline.operators.trainer import EvaluateModelOperator, TrainModelOperator

__all__ = [
    "EvaluateModelOperator",
    "InspectCheckpointOperator",
    "MaterializeDatasetOperator",
    "PublishModelOperator",
    "TrainModelOperator",
]
