"""Airflow plugin: the listener that notes how a training or preflight run ended (``PREFLIGHT``,
``mAP@.5:.95 0.412 PROMOTED (champion was 0.398)``, ``not promoted: ...``) on the run, in the scheduler.

See :mod:`yolonas_pipeline.operators.listeners`. Plugins are loaded once: restart the scheduler after a change.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from yolonas_pipeline.operators import listeners


class YolonasListenersPlugin(AirflowPlugin):
    name = "yolonas_listeners"
    listeners = [listeners]
