"""
### Detect drift from the champion's training data, and retrain when it drifted

`settings` → `materialize` → `detect_drift` → `drift_gate` → `emit_drift_event`

1. **materialize** the newest revision of the dataset (reused when that revision was exported before);
2. **detect_drift** compares it with the snapshot the current champion was trained on (the dataset in the
   manifest of the bundle `s3://<bucket>/<prefix>/<model>/champion.json` points at): class balance, boxes per
   image, box area, box aspect ratio, image size and brightness. A feature drifts when its PSI (or JS) is over
   its threshold *and* a permutation test says the change is not noise (Holm-adjusted p <= alpha); settings in
   *Drift settings* (default: `YOLONAS_DRIFT_CONFIG`). It writes
   `drift_report.json` and `drift_report.png` to `s3://<bucket>/drift/<run id>/`;
3. **drift_gate** stops the run when nothing drifted, when this same drift already started a retraining
   (tick *Retrigger* to retrain anyway), or when there is no champion and *When there is no champion* is
   `skip`. The report says which;
4. **emit_drift_event** emits an event on the `yolonas_drift` Asset with the scores and, in `conf`, the
   form values the retraining run uses (the drifted dataset plus *Retraining form values*).
   `yolonas_training` is scheduled on that Asset.

**When it runs**: the cron in `YOLONAS_DRIFT_SCHEDULE` (default daily at 04:00 UTC; empty: none), and
whenever an event on the `yolonas_dataset_source` Asset says that a new revision landed (its extra may carry
`{"conf": {"dataset_revision": "..."}}`); or trigger it by hand with the form.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, task

from yolonas_pipeline import settings
from yolonas_pipeline.callbacks import default_args, log_failure
from yolonas_pipeline.operators import MaterializeDatasetOperator
from yolonas_pipeline.operators.drift import (
    DATASET_SOURCE_ASSET_NAME,
    DetectDriftOperator,
    EmitDriftEventOperator,
    dataset_source_asset,
    drift_asset,
    drift_root,
    schedule_from_env,
)
from yolonas_pipeline.operators.run import resolve_run_settings
from yolonas_pipeline.run_settings import DriftSettings, defaults_with, form_params, json_from_env

log = logging.getLogger(__name__)
config = settings.load()
DEFAULTS = defaults_with(
    DriftSettings,
    {
        "dataset_source": config.sample_dataset or "cppe-5",
        "publish_bucket": config.bucket,
        "drift_config": json_from_env("YOLONAS_DRIFT_CONFIG"),
        "retrain_conf": json_from_env("YOLONAS_DRIFT_RETRAIN_CONF"),
    },
    origin="YOLONAS_DRIFT_CONFIG / YOLONAS_DRIFT_RETRAIN_CONF",
)
on_failure = log_failure(drift_root(config))

with DAG(
    dag_id="yolonas_drift",
    description="Compare the newest dataset revision with the champion's training data; retrain on drift",
    doc_md=__doc__,
    schedule=schedule_from_env("YOLONAS_DRIFT_SCHEDULE", "0 4 * * *", dataset_source_asset()),
    catchup=False,
    max_active_runs=1,
    tags=["yolo-nas", "drift", "monitoring"],
    default_args=default_args(on_failure),
    on_failure_callback=on_failure,
    params=form_params(DriftSettings, DEFAULTS),
) as dag:

    @task(task_id="settings", multiple_outputs=True)
    def run_settings(**context: Any) -> dict[str, Any]:
        """The run's settings, validated once (form, conf, a yolonas_dataset_source event's conf)."""
        return resolve_run_settings(DriftSettings, context, event_asset=DATASET_SOURCE_ASSET_NAME)

    run = run_settings()
    materialize = MaterializeDatasetOperator(
        task_id="materialize",
        source=run["dataset_source"],
        revision=run["dataset_revision"],
        schema=run["schema"],
        split_map=run["split_map"],
        retries=2,
        retry_delay=timedelta(seconds=30),
    )
    detect = DetectDriftOperator(
        task_id="detect_drift",
        current=materialize.output,
        model_name=run["model_name"],
        models_uri=run["models_uri"],
        reference_uri=run["reference_uri"],
        config=run["drift_config"],
        when_no_champion=run["when_no_champion"],
        retrigger=run["retrigger"],
        # S3 reads of manifests, annotations and sampled images; a retry succeeds after a blip.
        retries=2,
        retry_delay=timedelta(seconds=20),
    )

    @task.short_circuit(task_id="drift_gate", ignore_downstream_trigger_rules=True)
    def drift_gate(result: dict[str, Any]) -> bool:
        """Continue to the drift event only when the data drifted and that drift has not been acted on."""
        log.info("drift: %s", result["reason"])
        log.info("drift: %s (report %s)", result["action"], result["report_uri"])
        return bool(result["retrain"])

    emit = EmitDriftEventOperator(
        task_id="emit_drift_event",
        drift=detect.output,
        run_settings=run,
        outlets=[drift_asset(config)],
        retries=2,
        retry_delay=timedelta(seconds=20),
    )

    materialize >> detect >> drift_gate(detect.output) >> emit
