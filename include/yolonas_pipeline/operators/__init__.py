"""Airflow operators: a thin layer over the stage modules (the only part of the package that imports Airflow)."""

from yolonas_pipeline.operators.checkpoint import InspectCheckpointOperator
from yolonas_pipeline.operators.materialize import MaterializeDatasetOperator
from yolonas_pipeline.operators.publish import PublishModelOperator
from yolonas_pipeline.operators.trainer import TrainerPodOperator, TrainerProcessOperator, trainer_task

__all__ = [
    "InspectCheckpointOperator",
    "MaterializeDatasetOperator",
    "PublishModelOperator",
    "TrainerPodOperator",
    "TrainerProcessOperator",
    "trainer_task",
]
