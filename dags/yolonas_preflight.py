"""
### Preflight a YOLO-NAS training run, without waiting for one that is training

`settings` → `materialize` → `inspect_checkpoint` → `preflight`

The first four tasks of **yolonas_training**, shared with it (`yolonas_pipeline.operators.run.plan_stages`), with
*Preflight only* always on: materialize the dataset, inspect the base weights and report what a full run with
these form values would do (steps per epoch, GPUs, both trainer commands, where the artifacts go, whether a
bundle trained from the same inputs would be reused). Nothing is trained and no GPU is asked for.

**yolonas_training** runs one at a time, so a preflight there waits for the training run ahead of it. This DAG
has its own runs (up to four at once), so a preflight starts at once, beside a training run. The run's note says
`PREFLIGHT`; the plan is the `preflight` task's log and XCom.
"""

from __future__ import annotations

from airflow.sdk import DAG

from yolonas_pipeline import settings
from yolonas_pipeline.callbacks import default_args, log_failure
from yolonas_pipeline.operators.run import plan_stages
from yolonas_pipeline.run_settings import TrainingSettings, defaults_with, form_params, json_from_env

config = settings.load()
DEFAULTS = defaults_with(
    TrainingSettings,
    {
        "dataset_source": config.sample_dataset or "cppe-5",
        "publish_bucket": config.bucket,
        # The training form's defaults, so a preflight plans what a scheduled or drift-started run would do.
        **json_from_env("YOLONAS_TRAINING_DEFAULTS"),
        "preflight": True,
    },
    origin="YOLONAS_TRAINING_DEFAULTS",
)
on_failure = log_failure(config.runs_uri)

with DAG(
    dag_id="yolonas_preflight",
    description="Plan a YOLO-NAS training run (materialize, inspect, preflight) without training, at once",
    doc_md=__doc__,
    schedule=None,
    catchup=False,
    max_active_runs=4,
    tags=["yolo-nas", "training", "preflight"],
    default_args=default_args(on_failure),
    on_failure_callback=on_failure,
    # The training form without its Preflight only toggle: here it is always on.
    params={k: v for k, v in form_params(TrainingSettings, DEFAULTS).items() if k != "preflight"},
) as dag:
    plan_stages(fixed={"preflight": True}, gate=False)
