"""
### Fine-tune YOLO-NAS on a Hugging Face detection dataset

`settings` → `materialize` → `inspect_checkpoint` → `preflight` → `train` → `evaluate` → `publish`

1. **settings** validates the run's settings once (form, trigger conf, drift event); unknown keys are refused;
2. **materialize** the dataset into JPEG + COCO JSON (reused when the same revision was exported before);
3. **inspect_checkpoint** reads the class count from the base weights without torch and decides the one
   class set used by model, loss and metrics, before any GPU is requested;
4. **preflight** logs (and returns as XCom) what the run will do: dataset, classes, steps, both trainer
   commands, where the artifacts go. With *Preflight only* ticked it stops here;
5. **train** runs the trainer command (Kubernetes pod or local subprocess: the deployment's
   `YOLONAS_BACKEND`), resuming from the last epoch uploaded when retried;
6. **evaluate** scores the best checkpoint on the test split (validation if there is none);
7. **publish** copies the bundle to `s3://<bucket>/<prefix>/<model>/<run>/` with `manifest.json` last, runs
   the promotion gate and emits an event on the `yolonas_model` Asset (run, mAP, promoted, reasons, bundle).

One run at a time. **A preflight does not wait for a training run**: trigger `yolonas_preflight` (the same
first four tasks, stopping at the plan). A listener notes each finished run: `PREFLIGHT`,
`mAP@.5:.95 0.412 PROMOTED (champion was 0.398)`, `not promoted: <reason>`.

**Three ways to start it**: the trigger form (every field validated against its schema), the cron in
`YOLONAS_TRAINING_SCHEDULE`, and the `yolonas_drift` Asset (the run then trains on the drifted data).
Stages hand each other URIs and small typed documents (`yolonas_pipeline.contracts`) through XCom.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset

from yolonas_pipeline import settings
from yolonas_pipeline.callbacks import default_args, log_failure
from yolonas_pipeline.operators import PublishModelOperator
from yolonas_pipeline.operators.drift import DRIFT_ASSET_NAME, drift_asset, schedule_from_env
from yolonas_pipeline.operators.run import plan_stages
from yolonas_pipeline.operators.trainer import trainer_task
from yolonas_pipeline.run_settings import TrainingSettings, defaults_with, form_params, json_from_env

config = settings.load()
DATASET_ASSET = Asset(name="yolonas_dataset", uri=f"{config.datasets_uri}/")
#: Every publish emits an event on it: the Assets view is the model history (run, mAP, promoted, bundle).
MODEL_ASSET = Asset(name="yolonas_model", uri=f"{config.models_uri}/")
DEFAULTS = defaults_with(
    TrainingSettings,
    {
        "dataset_source": config.sample_dataset or "cppe-5",
        "publish_bucket": config.bucket,
        # Form defaults, overridable without code edits; scheduled and drift-started runs use them too.
        **json_from_env("YOLONAS_TRAINING_DEFAULTS"),
    },
    origin="YOLONAS_TRAINING_DEFAULTS",
)
on_failure = log_failure(config.runs_uri)

with DAG(
    dag_id="yolonas_training",
    description="Materialize, inspect, train, evaluate and publish a YOLO-NAS detector",
    doc_md=__doc__,
    schedule=schedule_from_env("YOLONAS_TRAINING_SCHEDULE", "", drift_asset(config)),
    catchup=False,
    max_active_runs=1,
    tags=["yolo-nas", "training", "super-gradients"],
    default_args=default_args(on_failure),
    on_failure_callback=on_failure,
    params=form_params(TrainingSettings, DEFAULTS),
) as dag:
    run, materialize, inspect_checkpoint, plan = plan_stages(
        event_asset=DRIFT_ASSET_NAME, dataset_outlets=[DATASET_ASSET]
    )
    train = trainer_task(task_id="train", plan=plan, command="train", retries=2, retry_delay=timedelta(minutes=1))
    evaluate = trainer_task(
        task_id="evaluate", plan=plan, command="evaluate", retries=1, retry_delay=timedelta(seconds=30)
    )
    publish = PublishModelOperator(
        task_id="publish",
        dataset=materialize.output,
        class_plan=inspect_checkpoint.output,
        train_result=train.output,
        metrics=evaluate.output,
        run_settings=run,
        plan=plan,
        outlets=[MODEL_ASSET],
        retries=2,
        retry_delay=timedelta(seconds=30),
    )

    plan >> train >> evaluate >> publish
