"""Airflow plugin: template macros for the YOLO-NAS pipeline.

``{{ macros.yolonas.safe_segment(run_id) }}`` gives the S3-safe form of a run id, the one the
operators use for ``runs/<run>/`` and ``models/<model>/<run>/`` paths.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from yolonas_pipeline.contracts import safe_segment


class YolonasPlugin(AirflowPlugin):
    name = "yolonas"
    macros = [safe_segment]
