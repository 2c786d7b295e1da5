"""
### Detect drift from the champion's training data, and retrain when it drifted

`materialize` → `detect_drift` → `drift_gate` → `emit_drift_event`

1. **materialize** the newest revision of the dataset (reused when that revision was exported before);
2. **detect_drift** compares it with the snapshot the current champion was trained on (the dataset in the
   manifest of the bundle `s3://<bucket>/<prefix>/<model>/champion.json` points at): class balance, boxes per
   image, box area, box aspect ratio, image size and brightness, each scored with PSI and Jensen-Shannon
   divergence against the thresholds in *Drift settings* (default: `YOLONAS_DRIFT_CONFIG`). It writes
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

from airflow.sdk import DAG, Param, task

from yolonas_pipeline import settings
from yolonas_pipeline.callbacks import log_failure
from yolonas_pipeline.drift import FEATURES
from yolonas_pipeline.materialize_schema import PRESETS
from yolonas_pipeline.operators import MaterializeDatasetOperator
from yolonas_pipeline.operators.drift import (
    DATASET_SOURCE_ASSET_NAME,
    NO_CHAMPION_POLICIES,
    DetectDriftOperator,
    EmitDriftEventOperator,
    dataset_source_asset,
    drift_asset,
    drift_root,
    json_from_env,
    run_settings,
    schedule_from_env,
)

log = logging.getLogger(__name__)
config = settings.load()
DRIFT_ASSET = drift_asset(config)
SOURCE_ASSET = dataset_source_asset()


def run_settings_macro(params: dict[str, Any], triggering_asset_events: Any) -> dict[str, Any]:
    """The form's values, overridden by a ``yolonas_dataset_source`` event's ``conf`` when one started the run."""
    return run_settings(params, triggering_asset_events, form=dag.params, asset_name=DATASET_SOURCE_ASSET_NAME)


def setting(key: str, *, empty: str | None = None) -> str:
    expression = f"run_settings(params, triggering_asset_events)[{key!r}]"
    return "{{ " + expression + (f" or {empty}" if empty is not None else "") + " }}"


with DAG(
    dag_id="yolonas_drift",
    description="Compare the newest dataset revision with the champion's training data; retrain on drift",
    doc_md=__doc__,
    schedule=schedule_from_env("YOLONAS_DRIFT_SCHEDULE", "0 4 * * *", SOURCE_ASSET),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    user_defined_macros={"run_settings": run_settings_macro},
    tags=["yolo-nas", "drift", "monitoring"],
    default_args={
        "owner": "ml-platform",
        "retries": 0,
        # Tasks that retry wait retry_delay, then twice as long each time (True would mean a constant delay).
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": log_failure(drift_root(config)),
    },
    on_failure_callback=log_failure(drift_root(config)),
    params={
        "dataset_source": Param(
            config.sample_dataset or "cppe-5",
            type="string",
            minLength=1,
            title="Dataset",
            description="Hugging Face hub name, local save_to_disk folder, or parquet/arrow files.",
            section="Dataset",
        ),
        "dataset_revision": Param(
            None,
            type=["null", "string"],
            title="Revision",
            description="Hub branch, tag or commit; empty: the newest.",
            section="Dataset",
        ),
        "schema": Param(None, type=["null", "string"], enum=[None, *PRESETS], title="Schema preset", section="Dataset"),
        "split_map": Param(
            None,
            type=["null", "object"],
            additionalProperties={"type": "string", "minLength": 1},
            propertyNames={"enum": ["train", "validation", "test"]},
            title="Splits",
            section="Dataset",
        ),
        "model_name": Param(
            "yolo_nas_s",
            type="string",
            enum=["yolo_nas_s", "yolo_nas_m", "yolo_nas_l"],
            title="Champion of",
            description="The architecture whose champion model's training data is the reference.",
            section="Reference",
        ),
        "publish_bucket": Param(
            config.bucket,
            type="string",
            pattern="^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
            title="Bucket",
            section="Reference",
        ),
        "publish_prefix": Param(
            "models", type="string", pattern="^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$", title="Prefix", section="Reference"
        ),
        "reference_uri": Param(
            None,
            type=["null", "string"],
            title="Reference export (instead of the champion's)",
            description="A materialized export (s3://.../datasets/<fingerprint>) to compare with.",
            section="Reference",
        ),
        "when_no_champion": Param(
            "retrain",
            type="string",
            enum=list(NO_CHAMPION_POLICIES),
            values_display={"retrain": "Treat as drift: train a first model", "skip": "Do nothing"},
            title="When there is no champion",
            section="Reference",
        ),
        "drift_config": Param(
            json_from_env("YOLONAS_DRIFT_CONFIG"),
            type="object",
            properties={
                "metric": {"enum": ["psi", "js"]},
                "thresholds": {
                    "type": "object",
                    "propertyNames": {"enum": list(FEATURES)},
                    "additionalProperties": {"type": "number", "exclusiveMinimum": 0},
                },
                "default_threshold": {"type": "number", "exclusiveMinimum": 0},
                "min_count": {"type": "integer", "minimum": 0},
                "brightness_sample": {"type": "integer", "minimum": 0},
                "splits": {"type": ["null", "array"], "items": {"type": "string"}},
                "smoothing": {"type": "number", "minimum": 0},
                "features": {"type": ["null", "array"], "items": {"enum": list(FEATURES)}},
            },
            additionalProperties=False,
            title="Drift settings",
            description='e.g. {"metric": "psi", "thresholds": {"class_balance": 0.1}, "default_threshold": 0.25}; '
            f"features: {', '.join(FEATURES)}. Empty: PSI, threshold 0.2 each.",
            section="Drift",
        ),
        "retrigger": Param(
            False,
            type="boolean",
            title="Retrigger",
            description="Emit the drift event even if this same drift already started a retraining.",
            section="Drift",
        ),
        "retrain_conf": Param(
            json_from_env("YOLONAS_DRIFT_RETRAIN_CONF"),
            type="object",
            title="Retraining form values",
            description='yolonas_training form values for the run drift starts, e.g. {"epochs": 50}; the '
            "drifted dataset is added.",
            section="Drift",
        ),
    },
) as dag:
    materialize = MaterializeDatasetOperator(
        task_id="materialize",
        source=setting("dataset_source"),
        revision=setting("dataset_revision", empty="''"),
        schema=setting("schema", empty="''"),
        split_map=setting("split_map"),
        retries=2,
        retry_delay=timedelta(seconds=30),
    )
    detect = DetectDriftOperator(
        task_id="detect_drift",
        current=materialize.output,
        model_name=setting("model_name"),
        models_uri="s3://" + setting("publish_bucket") + "/" + setting("publish_prefix"),
        reference_uri=setting("reference_uri", empty="''"),
        config=setting("drift_config"),
        when_no_champion=setting("when_no_champion"),
        retrigger=setting("retrigger"),
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
        dataset_conf={
            "dataset_source": setting("dataset_source"),
            "dataset_revision": setting("dataset_revision"),
            "schema": setting("schema"),
            "split_map": setting("split_map"),
        },
        retrain_conf=setting("retrain_conf"),
        outlets=[DRIFT_ASSET],
        retries=2,
        retry_delay=timedelta(seconds=20),
    )

    materialize >> detect >> drift_gate(detect.output) >> emit
