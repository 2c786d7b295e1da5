"""
### Fine-tune YOLO-NAS on a Hugging Face detection dataset

`materialize` → `inspect_checkpoint` → `preflight` → `train` → `evaluate` → `publish`

1. **materialize** the dataset into JPEG + COCO JSON (reused when the same revision was exported before);
2. **inspect_checkpoint** reads the class count from the base weights without torch and decides the one
   class set used by model, loss and metrics, before any GPU is requested;
3. **preflight** logs (and returns as XCom) what the run will do: dataset, classes, steps, where the
   artifacts go. With *Preflight only* ticked it stops here and the remaining stages are skipped;
4. **train** runs the trainer command (Kubernetes pod or local subprocess, the *Backend* field),
   resuming from the last epoch uploaded when retried;
5. **evaluate** scores the best checkpoint on the test split (validation if there is none);
6. **publish** copies the bundle to `s3://<bucket>/<prefix>/<model>/<run>/` with `manifest.json` last.

**Three ways to start it**

- *Trigger form*: ▶ "Trigger DAG" opens the form below; every field is validated against its schema and an
  invalid value is refused before a run exists.
- *Schedule*: the cron in `YOLONAS_TRAINING_SCHEDULE` (unset: no time schedule), read when the file is
  parsed. Scheduled runs use the form's defaults, which `YOLONAS_TRAINING_DEFAULTS` (a JSON object) sets.
- *Drift*: `yolonas_drift` emits an event on the `yolonas_drift` Asset when the data drifted from the
  champion's training snapshot; the run then trains on the drifted dataset (the event's `conf`).

Artifacts are keyed on the run id (`s3://<bucket>/runs/<run id>/`): asset-triggered runs have no
logical date. Stages hand each other URIs and small JSON results through XCom, never data.
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Asset, Param, task

from yolonas_pipeline import promote, settings
from yolonas_pipeline.callbacks import log_failure
from yolonas_pipeline.materialize_schema import PRESETS
from yolonas_pipeline.operators import (
    EvaluateModelOperator,
    InspectCheckpointOperator,
    MaterializeDatasetOperator,
    PublishModelOperator,
    TrainModelOperator,
)
from yolonas_pipeline.operators.drift import (
    DRIFT_ASSET_NAME,
    drift_asset,
    json_from_env,
    run_settings,
    schedule_from_env,
)
from yolonas_pipeline.publish import bundle_uri, safe_segment
from yolonas_pipeline.storage import join_uri

log = logging.getLogger(__name__)
config = settings.load()
DATASET_ASSET = Asset(name="yolonas_dataset", uri=f"{config.datasets_uri}/")
DRIFT_ASSET = drift_asset(config)
#: Form defaults, overridable without code edits; they are also what scheduled and drift-started runs use.
DEFAULTS_VARIABLE = "YOLONAS_TRAINING_DEFAULTS"
SCHEDULE_VARIABLE = "YOLONAS_TRAINING_SCHEDULE"


def training_form(overrides: dict[str, Any]) -> dict[str, Param]:
    """The trigger form: JSON-schema validated Params in sections; ``overrides`` replace defaults."""
    defaults: dict[str, Any] = {
        "preflight": False,
        "dataset_source": config.sample_dataset or "cppe-5",
        "dataset_revision": None,
        "schema": None,
        "split_map": None,
        "model_name": "yolo_nas_s",
        "checkpoint_uri": None,
        "checkpoint_sha256": None,
        "epochs": 10,
        "batch_size": 16,
        "input_size": 640,
        "learning_rate": 5e-4,
        "mixed_precision": True,
        "workers": 0,
        "backend": config.backend,
        "gpus": 1,
        "publish_bucket": config.bucket,
        "publish_prefix": "models",
        "promotion_margin": promote.DEFAULT_MARGIN,
        "class_ap_tolerance": promote.DEFAULT_CLASS_AP_TOLERANCE,
    }
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"{DEFAULTS_VARIABLE} names unknown field(s) {unknown}; fields: {', '.join(defaults)}")
    d = {**defaults, **overrides}
    return {
        "preflight": Param(
            d["preflight"],
            type="boolean",
            title="Preflight only",
            description="Materialize and inspect, report what a full run would do, then stop before training.",
            section="Run",
        ),
        "dataset_source": Param(
            d["dataset_source"],
            type="string",
            minLength=1,
            title="Dataset",
            description="Hugging Face hub name, local save_to_disk folder, or parquet/arrow files.",
            section="Dataset",
        ),
        "dataset_revision": Param(
            d["dataset_revision"],
            type=["null", "string"],
            title="Revision",
            description="Hub branch, tag or commit; empty: the newest.",
            section="Dataset",
        ),
        "schema": Param(
            d["schema"],
            type=["null", "string"],
            enum=[None, *PRESETS],
            title="Schema preset",
            description="How boxes and classes are stored; empty: detect.",
            section="Dataset",
        ),
        "split_map": Param(
            d["split_map"],
            type=["null", "object"],
            additionalProperties={"type": "string", "minLength": 1},
            propertyNames={"enum": ["train", "validation", "test"]},
            title="Splits",
            description='Output split -> source split, e.g. {"train": "train", "test": "test"}; empty: by name '
            "(a seeded 10% of train for validation if the source has none).",
            section="Dataset",
        ),
        "model_name": Param(
            d["model_name"],
            type="string",
            enum=["yolo_nas_s", "yolo_nas_m", "yolo_nas_l"],
            values_display={"yolo_nas_s": "YOLO-NAS S", "yolo_nas_m": "YOLO-NAS M", "yolo_nas_l": "YOLO-NAS L"},
            title="Architecture",
            section="Model",
        ),
        "checkpoint_uri": Param(
            d["checkpoint_uri"],
            type=["null", "string"],
            title="Base weights URI",
            description="Local path or s3:// URI of a super-gradients checkpoint; empty: train from scratch.",
            section="Model",
        ),
        "checkpoint_sha256": Param(
            d["checkpoint_sha256"],
            type=["null", "string"],
            pattern="^[0-9a-f]{64}$",
            title="Base weights SHA-256",
            description="Checked before the weights are used; empty: not checked.",
            section="Model",
        ),
        "epochs": Param(d["epochs"], type="integer", minimum=1, maximum=300, title="Epochs", section="Training"),
        "batch_size": Param(
            d["batch_size"], type="integer", minimum=1, maximum=256, title="Batch size", section="Training"
        ),
        "input_size": Param(
            d["input_size"],
            type="integer",
            minimum=64,
            maximum=1280,
            multipleOf=32,
            title="Input size (px)",
            section="Training",
        ),
        "learning_rate": Param(
            d["learning_rate"], type="number", exclusiveMinimum=0, maximum=1, title="Learning rate", section="Training"
        ),
        "mixed_precision": Param(d["mixed_precision"], type="boolean", title="Mixed precision", section="Training"),
        "workers": Param(
            d["workers"], type="integer", minimum=0, maximum=64, title="Loader workers", section="Training"
        ),
        "backend": Param(
            d["backend"],
            type="string",
            enum=list(settings.BACKENDS),
            values_display={"local": "Local subprocess", "kubernetes": "Kubernetes pod"},
            title="Backend",
            section="Resources",
        ),
        "gpus": Param(
            d["gpus"],
            type="integer",
            minimum=0,
            maximum=8,
            title="GPUs",
            description="GPUs for the training pod; above 1 the trainer runs under torchrun.",
            section="Resources",
        ),
        "publish_bucket": Param(
            d["publish_bucket"],
            type="string",
            pattern="^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
            title="Bucket",
            section="Publishing",
        ),
        "publish_prefix": Param(
            d["publish_prefix"],
            type="string",
            pattern="^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
            title="Prefix",
            description="Bundles go to s3://<bucket>/<prefix>/<model>/<run id>/.",
            section="Publishing",
        ),
        "promotion_margin": Param(
            d["promotion_margin"],
            type="number",
            minimum=0,
            maximum=1,
            title="Promotion margin (mAP@0.5:0.95)",
            description="The new model becomes champion (champion.json) if its mAP@0.5:0.95 beats the champion's "
            "by at least this much, on the same evaluation split.",
            section="Publishing",
        ),
        "class_ap_tolerance": Param(
            d["class_ap_tolerance"],
            type="number",
            minimum=0,
            maximum=1,
            title="Per-class AP tolerance",
            description="Largest drop of any one class's AP@0.5:0.95 that still allows promotion.",
            section="Publishing",
        ),
    }


def run_settings_macro(params: dict[str, Any], triggering_asset_events: Any) -> dict[str, Any]:
    """The form's values, overridden by the drift event's ``conf`` when the drift event started the run."""
    return run_settings(params, triggering_asset_events, form=dag.params, asset_name=DRIFT_ASSET_NAME)


def setting(key: str, *, empty: str | None = None) -> str:
    """A template for one effective run setting (``empty`` replaces a null value)."""
    expression = f"run_settings(params, triggering_asset_events)[{key!r}]"
    return "{{ " + expression + (f" or {empty}" if empty is not None else "") + " }}"


MODELS_URI = "s3://" + setting("publish_bucket") + "/" + setting("publish_prefix")


with DAG(
    dag_id="yolonas_training",
    description="Materialize, inspect, train, evaluate and publish a YOLO-NAS detector",
    doc_md=__doc__,
    schedule=schedule_from_env(SCHEDULE_VARIABLE, "", DRIFT_ASSET),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    user_defined_macros={"run_settings": run_settings_macro},
    tags=["yolo-nas", "training", "super-gradients"],
    default_args={
        "owner": "ml-platform",
        "retries": 0,
        # Tasks that retry wait retry_delay, then twice as long each time (True would mean a constant delay).
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": log_failure(config.runs_uri),
    },
    on_failure_callback=log_failure(config.runs_uri),
    params=training_form(json_from_env(DEFAULTS_VARIABLE)),
) as dag:
    materialize = MaterializeDatasetOperator(
        task_id="materialize",
        source=setting("dataset_source"),
        revision=setting("dataset_revision", empty="''"),
        schema=setting("schema", empty="''"),
        split_map=setting("split_map"),
        outlets=[DATASET_ASSET],
        retries=2,
        retry_delay=timedelta(seconds=30),
    )
    inspect_checkpoint = InspectCheckpointOperator(
        task_id="inspect_checkpoint",
        dataset=materialize.output,
        model_name=setting("model_name"),
        checkpoint_uri=setting("checkpoint_uri", empty="''"),
        checkpoint_sha256=setting("checkpoint_sha256", empty="''"),
        # No retries: a wrong URI, SHA-256 or architecture fails every try, and preflight should say so at once.
    )

    @task.short_circuit(task_id="preflight", ignore_downstream_trigger_rules=True)
    def preflight(dataset: dict[str, Any], class_plan: dict[str, Any], **context: Any) -> Any:
        """What the run will do; stop here (downstream skipped) when it is a preflight run."""
        plan = run_plan(dataset, class_plan, context)
        for line in plan["summary"]:
            log.info("%s", line)
        if plan["preflight"]:
            # A short circuit that stops pushes no return value; push the plan so the UI and API show it.
            context["ti"].xcom_push(key="return_value", value=plan)
            return False
        return plan

    plan = preflight(materialize.output, inspect_checkpoint.output)

    train = TrainModelOperator(
        task_id="train",
        dataset=materialize.output,
        class_plan=inspect_checkpoint.output,
        backend=setting("backend"),
        gpus=setting("gpus"),
        training={
            "epochs": setting("epochs"),
            "batch_size": setting("batch_size"),
            "input_size": setting("input_size"),
            "learning_rate": setting("learning_rate"),
            "mixed_precision": setting("mixed_precision"),
            "workers": setting("workers"),
        },
        retries=2,
        retry_delay=timedelta(minutes=1),
    )
    evaluate = EvaluateModelOperator(
        task_id="evaluate",
        dataset=materialize.output,
        train_result=train.output,
        backend=setting("backend"),
        evaluation={
            "batch_size": setting("batch_size"),
            "workers": setting("workers"),
            # the champion the publish stage gates against, re-scored on this run's split
            "champion_uri": MODELS_URI + "/" + setting("model_name") + "/champion.json",
        },
        retries=1,
        retry_delay=timedelta(seconds=30),
    )
    publish = PublishModelOperator(
        task_id="publish",
        dataset=materialize.output,
        class_plan=inspect_checkpoint.output,
        train_result=train.output,
        metrics=evaluate.output,
        models_uri=MODELS_URI,
        promotion_margin=setting("promotion_margin"),
        class_ap_tolerance=setting("class_ap_tolerance"),
        retries=2,
        retry_delay=timedelta(seconds=30),
    )

    materialize >> inspect_checkpoint >> plan >> train >> evaluate >> publish


def run_plan(dataset: dict[str, Any], class_plan: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    """Everything a full run would do, from the first two stages' results and the run's settings."""
    values = run_settings_macro(context["params"], context.get("triggering_asset_events"))
    run_id = context["run_id"]
    dag_run = context["dag_run"]
    train_images = int(dataset["splits"].get("train", {}).get("images", 0))
    steps = math.ceil(train_images / values["batch_size"]) if train_images else 0
    models_uri = f"s3://{values['publish_bucket']}/{values['publish_prefix']}"
    run_root = join_uri(config.runs_uri, safe_segment(run_id))
    run_type = getattr(dag_run, "run_type", None)
    trigger: dict[str, Any] = {"run_type": str(getattr(run_type, "value", run_type) or "")}
    events = context.get("triggering_asset_events") or {}
    for asset, found in events.items():
        if found:
            latest = max(found, key=lambda e: e.timestamp)
            trigger["asset"] = asset.name
            trigger["event"] = {k: v for k, v in (latest.extra or {}).items() if k != "conf"}
    plan: dict[str, Any] = {
        "preflight": bool(values["preflight"]),
        "run_id": run_id,
        "trigger": trigger,
        "dataset": {
            "source": values["dataset_source"],
            "revision": values["dataset_revision"],
            "uri": dataset["dataset_uri"],
            "fingerprint": dataset["fingerprint"],
            "reused": dataset.get("reused"),
            "splits": dataset["splits"],
            "class_histogram": dataset.get("class_histogram"),
        },
        "model": {
            "name": values["model_name"],
            "num_classes": class_plan.get("num_classes"),
            "class_names": class_plan.get("class_names"),
            "base_weights": values["checkpoint_uri"],
            "checkpoint_num_classes": class_plan.get("checkpoint_num_classes"),
            "warnings": class_plan.get("warnings", []),
        },
        "training": {
            "epochs": values["epochs"],
            "batch_size": values["batch_size"],
            "input_size": values["input_size"],
            "learning_rate": values["learning_rate"],
            "mixed_precision": values["mixed_precision"],
            "workers": values["workers"],
            "train_images": train_images,
            "steps_per_epoch": steps,
            "total_steps": steps * values["epochs"],
        },
        "resources": {
            "backend": values["backend"],
            "gpus": values["gpus"],
        },
        "outputs": {
            "run_uri": run_root + "/",
            "train_uri": join_uri(run_root, "train") + "/",
            "evaluate_uri": join_uri(run_root, "evaluate") + "/",
            "bundle_uri": bundle_uri(models_uri, values["model_name"], run_id) + "/",
        },
        "publishing": {
            "promotion_margin": values["promotion_margin"],
            "class_ap_tolerance": values["class_ap_tolerance"],
        },
    }
    mode = "PREFLIGHT (stops before training)" if plan["preflight"] else "full run"
    splits = ", ".join(f"{name} {s['images']} images/{s['annotations']} boxes" for name, s in dataset["splits"].items())
    summary = [
        f"preflight: {mode}, run {run_id} ({trigger['run_type'] or 'manual'}"
        + (f", started by {trigger['asset']}" if "asset" in trigger else "")
        + ")",
        f"preflight: dataset {values['dataset_source']} -> {dataset['dataset_uri']} ({splits})",
        f"preflight: model {values['model_name']} with {class_plan.get('num_classes')} classes, base weights "
        f"{values['checkpoint_uri'] or 'none (from scratch)'}",
        f"preflight: train {values['epochs']} epochs x {steps} steps (batch {values['batch_size']}, "
        f"{values['input_size']} px, lr {values['learning_rate']}) on the {values['backend']} backend, "
        f"{values['gpus']} GPU(s)",
        f"preflight: artifacts under {plan['outputs']['run_uri']}, bundle to {plan['outputs']['bundle_uri']}",
    ]
    summary.extend(f"preflight: WARNING: {w}" for w in class_plan.get("warnings", []))
    plan["summary"] = summary
    return plan
