"""The two small tasks around the stages: resolve the run's settings once, and plan the run (preflight).

Plain functions over the task context, so the DAG files stay declarative; :func:`plan_stages` declares the four
tasks up to the plan, which ``yolonas_training`` and ``yolonas_preflight`` share.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, NamedTuple

from airflow.sdk import Asset, task

from yolonas_pipeline import settings as deployment
from yolonas_pipeline import train
from yolonas_pipeline.contracts import ClassPlan, DatasetExport, RunPlan
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.operators._aws import storage_for
from yolonas_pipeline.operators._errors import input_errors_fail_without_retry
from yolonas_pipeline.operators.checkpoint import InspectCheckpointOperator
from yolonas_pipeline.operators.materialize import MaterializeDatasetOperator
from yolonas_pipeline.preflight import Backend, plan_run
from yolonas_pipeline.run_settings import DatasetFields, RunSettings, Settings, TrainingSettings, event_conf, resolve
from yolonas_pipeline.storage import Storage

log = logging.getLogger(__name__)


def resolve_run_settings(
    model: type[Settings],
    context: Mapping[str, Any],
    *,
    event_asset: str | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's settings, validated once: the form (``params``), the trigger's conf and, when ``event_asset``
    started the run, its event's ``conf``; ``fixed`` values (e.g. ``preflight`` of the preflight DAG) win over
    all of them. Logged, and returned for XCom (one key per field too)."""
    with input_errors_fail_without_retry():
        dag_run = context.get("dag_run")
        conf = getattr(dag_run, "conf", None) or {}
        if not isinstance(conf, Mapping):
            raise StageInputError(f"the run's conf must be a JSON object, got {conf!r}")
        event = event_conf(context.get("triggering_asset_events"), event_asset) if event_asset else {}
        resolved = resolve(
            model,
            params=context.get("params") or {},
            conf=conf,
            event=event,
            event_origin=f"the {event_asset} event" if event_asset else "the triggering asset event",
        )
        if fixed:
            resolved = model.validated({**resolved.to_xcom(), **fixed}, origin=f"the {model.DAG_ID} run's settings")
    for key, value in resolved.to_xcom().items():
        log.info("setting %s = %r", key, value)
    if isinstance(resolved, DatasetFields) and "ti" in context:
        # Derived, for the tasks that take the models root as one value.
        context["ti"].xcom_push(key="models_uri", value=resolved.models_uri)
    return resolved.to_xcom()


def trigger_of(context: Mapping[str, Any]) -> dict[str, Any]:
    """How the run started: its run type and, for an asset-triggered run, the asset and event extra."""
    run_type = getattr(context.get("dag_run"), "run_type", None)
    trigger: dict[str, Any] = {"run_type": str(getattr(run_type, "value", run_type) or "")}
    for asset, found in (context.get("triggering_asset_events") or {}).items():
        if found:
            latest = max(found, key=lambda e: e.timestamp)
            trigger["asset"] = asset.name
            trigger["event"] = {k: v for k, v in (latest.extra or {}).items() if k != "conf"}
    return trigger


def preflight(
    run_settings: Mapping[str, Any],
    dataset: Mapping[str, Any],
    class_plan: Mapping[str, Any],
    context: Mapping[str, Any],
    *,
    backend: Backend | None = None,
) -> RunPlan:
    """Plan the run, log the plan, and push each trainer command's parts for the train and evaluate tasks."""
    with input_errors_fail_without_retry():
        config = deployment.load()
        backend = backend or config.backend  # type: ignore[assignment]  # trainer_task checked it at parse time
        settings = TrainingSettings.parse_resolved(run_settings)
        plan_of_classes = ClassPlan.parse(class_plan, source="the inspect_checkpoint task's result")
        storage = storage_for(config.aws_conn_id)
        environment = train.trainer_environment()
        if backend == "kubernetes":
            environment += f"; image {config.trainer_image}"
        plan = plan_run(
            settings,
            DatasetExport.parse(dataset, source="the materialize task's result"),
            plan_of_classes,
            run_id=str(context["run_id"]),
            runs_uri=config.runs_uri,
            backend=backend,  # type: ignore[arg-type]
            trigger=trigger_of(context),
            base_sha256=train.base_weights_sha256(plan_of_classes, storage=storage),
            trainer_environment=environment,
        )
        plan = with_reuse_decision(plan, settings, storage=storage)
    for line in plan.summary:
        log.info("%s", line)
    ti = context["ti"]
    for name, command in (("train", plan.train), ("evaluate", plan.evaluate)):
        for part, value in command.model_dump(mode="json").items():
            ti.xcom_push(key=f"{name}_{part}", value=value)
    return plan


def with_reuse_decision(plan: RunPlan, settings: TrainingSettings, *, storage: Storage) -> RunPlan:
    """The plan, reusing a verified bundle trained from the same inputs unless ``force`` is set."""
    if settings.force:
        notes = ["force is set: training even if a bundle was trained from the same inputs"]
        return plan.model_copy(update={"reuse_notes": notes, "summary": [*plan.summary, f"preflight: {notes[0]}"]})
    manifest, bundle, notes = train.find_reusable_bundle(
        settings.models_uri, settings.model_name, plan.training_key, storage=storage
    )
    lines = [f"preflight: not reused: {note}; training anyway" for note in notes]
    if manifest is not None:
        evaluation = manifest.evaluation
        lines.append(
            f"preflight: REUSE {bundle} (run {manifest.run_id}, mAP@0.50:0.95 {evaluation.get('map_50_95')}): it was "
            f"trained from the same inputs (training key {plan.training_key.key[:12]}...); train, evaluate and "
            "publish are skipped (set force to train anyway)"
        )
    update: dict[str, Any] = {"reused_bundle_uri": bundle or None, "reuse_notes": notes}
    update["summary"] = [*plan.summary, *lines]
    return plan.model_copy(update=update)


def preflight_gate(
    run_settings: Mapping[str, Any],
    dataset: Mapping[str, Any],
    class_plan: Mapping[str, Any],
    context: Mapping[str, Any],
) -> dict[str, Any] | bool:
    """The ``preflight`` short circuit's condition: the plan (go on) or False (a preflight run, or a run that
    reuses a bundle trained from the same inputs, stops here)."""
    plan = preflight(run_settings, dataset, class_plan, context)
    if plan.preflight or plan.reused_bundle_uri:
        # A short circuit that stops pushes no return value; push the plan so the UI and API show it.
        context["ti"].xcom_push(key="return_value", value=plan.to_xcom())
        return False
    return plan.to_xcom()


class PlanStages(NamedTuple):
    """The first four tasks of a training run, up to the plan; a preflight-only DAG is just these."""

    settings: Any
    materialize: MaterializeDatasetOperator
    inspect_checkpoint: InspectCheckpointOperator
    plan: Any


def plan_stages(
    *,
    event_asset: str | None = None,
    fixed: Mapping[str, Any] | None = None,
    dataset_outlets: Sequence[Asset] = (),
    gate: bool = True,
) -> PlanStages:
    """``settings`` -> ``materialize`` -> ``inspect_checkpoint`` -> ``preflight``, declared in the current DAG.

    ``yolonas_training`` and ``yolonas_preflight`` share them, so a preflight plans exactly what a training run
    would. With ``gate``, ``preflight`` is a short circuit: a preflight run (or one that reuses a bundle) stops
    there; without (a DAG that ends at the plan), a plain task returning the plan.
    """

    @task(task_id="settings", multiple_outputs=True)
    def run_settings(**context: Any) -> dict[str, Any]:
        """The run's settings, validated once; every task reads them from here."""
        return resolve_run_settings(TrainingSettings, context, event_asset=event_asset, fixed=fixed)

    # XComArgs: resolved to the typed values when each task runs (the operators' fields are templated).
    run: Any = run_settings()
    materialize = MaterializeDatasetOperator(
        task_id="materialize",
        source=run["dataset_source"],
        revision=run["dataset_revision"],
        schema=run["schema"],
        split_map=run["split_map"],
        outlets=list(dataset_outlets),
        retries=2,
        retry_delay=timedelta(seconds=30),
    )
    dataset: Any = materialize.output
    inspect_checkpoint = InspectCheckpointOperator(
        task_id="inspect_checkpoint",
        dataset=dataset,
        model_name=run["model_name"],
        checkpoint_uri=run["checkpoint_uri"],
        checkpoint_sha256=run["checkpoint_sha256"],
    )

    def what_the_run_will_do(
        run_settings: dict[str, Any], dataset: dict[str, Any], class_plan: dict[str, Any], **context: Any
    ) -> Any:
        """What the run will do; a preflight run stops here (the later tasks are skipped)."""
        if not gate:
            return preflight(run_settings, dataset, class_plan, context).to_xcom()
        return preflight_gate(run_settings, dataset, class_plan, context)

    if gate:
        decorate = task.short_circuit(task_id="preflight", ignore_downstream_trigger_rules=True)
    else:  # without downstream tasks a short circuit's False would replace the plan as the return value
        decorate = task(task_id="preflight")
    class_plan: Any = inspect_checkpoint.output
    plan = decorate(what_the_run_will_do)(run, dataset, class_plan)
    return PlanStages(run, materialize, inspect_checkpoint, plan)


__all__ = [
    "PlanStages",
    "RunSettings",
    "plan_stages",
    "preflight",
    "preflight_gate",
    "resolve_run_settings",
    "trigger_of",
]
