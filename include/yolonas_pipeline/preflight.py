"""The run plan: everything a training run will do, decided before any GPU is asked for.

:func:`plan_run` turns the run's settings and the first two stages' results into a
:class:`~yolonas_pipeline.contracts.RunPlan`: both trainer commands (train and evaluate) exactly as the pod or
the local subprocess will run them, their resources, the steps per epoch the trainer will take, and where
every artifact goes. The ``preflight`` task logs it and hands the commands to the trainer tasks.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Mapping
from typing import Any, Literal

from yolonas_pipeline import evaluate, train
from yolonas_pipeline.contracts import (
    ClassPlan,
    DatasetExport,
    Request,
    RunPlan,
    TrainerCommand,
    bundle_uri,
    champion_uri,
    stage_uri,
    trainer_argv,
)
from yolonas_pipeline.run_settings import TrainingSettings

Backend = Literal["local", "kubernetes"]
#: Per GPU (a CPU pod counts as one): the data loader needs the CPUs; no CPU limit (a quota would throttle it).
CPU_REQUEST_PER_GPU = 8
MEMORY_REQUEST_GI_PER_GPU = 16
MEMORY_LIMIT_GI_PER_GPU = 32


def local_gpu_count() -> int:
    """NVIDIA GPUs visible on this machine (``/dev/nvidia<N>``), without importing torch."""
    return len(glob.glob("/dev/nvidia[0-9]*"))


def steps_per_epoch(images: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps per epoch as the trainer's loader takes them (``trainer.data.build_loader``): each of
    ``world_size`` processes gets ``ceil(images / world_size)`` images and drops a partial last batch when it
    has more than one batch."""
    if images <= 0:
        return 0
    per_process = math.ceil(images / max(world_size, 1))
    return per_process // batch_size if per_process > batch_size else math.ceil(per_process / batch_size)


def command(request: Request, *, gpus: int, result_uri: str) -> TrainerCommand:
    argv = trainer_argv(request, gpus=gpus)
    split = argv.index(request.COMMAND)
    per_gpu = max(gpus, 1)
    limits = {"memory": f"{MEMORY_LIMIT_GI_PER_GPU * per_gpu}Gi"}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)  # GPUs go in limits only (requests default to them)
    return TrainerCommand(
        cmds=argv[:split],
        arguments=argv[split:],
        result_uri=result_uri,
        gpus=gpus,
        requests={"cpu": str(CPU_REQUEST_PER_GPU * per_gpu), "memory": f"{MEMORY_REQUEST_GI_PER_GPU * per_gpu}Gi"},
        limits=limits,
        node_selector={"nvidia.com/gpu.present": "true"} if gpus else {},
    )


def plan_run(
    settings: TrainingSettings,
    dataset: DatasetExport,
    class_plan: ClassPlan,
    *,
    run_id: str,
    runs_uri: str,
    backend: Backend,
    trigger: Mapping[str, Any] | None = None,
    local_gpus: int | None = None,
    base_sha256: str | None = None,
    trainer_environment: str = "",
) -> RunPlan:
    """The plan of one run. ``backend``: the deployment's; ``local_gpus``: GPUs the local backend sees;
    ``base_sha256`` and ``trainer_environment`` go into the training key (:func:`.train.training_key`)."""
    if backend == "kubernetes":
        gpus = settings.gpus
        where = f"the kubernetes backend, {gpus} GPU(s)" if gpus else "the kubernetes backend, a CPU pod"
    else:
        visible = local_gpu_count() if local_gpus is None else local_gpus
        gpus = min(settings.gpus, visible)
        where = f"the local backend, {gpus} GPU(s)" if gpus else "the local backend, on the CPU"
    world = max(gpus, 1)
    train_uri = stage_uri(runs_uri, run_id, "train")
    evaluate_uri = stage_uri(runs_uri, run_id, "evaluate")
    models_uri = settings.models_uri
    pointer = champion_uri(models_uri, settings.model_name)
    train_request = train.train_request(settings, dataset, class_plan, output_uri=train_uri, processes=world)
    evaluate_request = evaluate.evaluate_request(settings, dataset, train_uri=train_uri, output_uri=evaluate_uri)
    train_images = dataset.images("train")
    steps = steps_per_epoch(train_images, settings.batch_size, world)
    run_root = stage_uri(runs_uri, run_id, "").rstrip("/")
    trigger = dict(trigger or {})
    outputs = {
        "run_uri": run_root + "/",
        "train_uri": train_uri + "/",
        "evaluate_uri": evaluate_uri + "/",
        "bundle_uri": bundle_uri(models_uri, settings.model_name, run_id) + "/",
        "champion_uri": pointer,
    }
    mode = "PREFLIGHT (stops before training)" if settings.preflight else "full run"
    splits = ", ".join(f"{name} {s.images} images/{s.annotations} boxes" for name, s in dataset.splits.items())
    summary = [
        f"preflight: {mode}, run {run_id} ({trigger.get('run_type') or 'manual'}"
        + (f", started by {trigger['asset']}" if "asset" in trigger else "")
        + ")",
        f"preflight: dataset {settings.dataset_source} -> {dataset.dataset_uri} ({splits})",
        f"preflight: model {settings.model_name} with {class_plan.num_classes} classes, base weights "
        f"{class_plan.checkpoint_uri or 'none (from scratch)'}",
        f"preflight: train {settings.epochs} epochs x {steps} steps (batch {settings.batch_size} x {world} "
        f"process(es), {settings.input_size} px, lr {settings.learning_rate}) on {where}",
        f"preflight: promotion gate: mAP@0.50:0.95 must reach {settings.min_map_50_95} (the first champion too) "
        f"and beat the champion ({pointer}) by more than {settings.promotion_margin} (a tie keeps the champion), "
        f"with no class AP@0.50:0.95 dropping by more than {settings.class_ap_tolerance}",
        f"preflight: artifacts under {outputs['run_uri']}, bundle to {outputs['bundle_uri']}",
    ]
    summary.extend(f"preflight: WARNING: {w}" for w in class_plan.warnings)
    return RunPlan(
        preflight=settings.preflight,
        run_id=run_id,
        trigger=trigger,
        dataset={
            "source": settings.dataset_source,
            "revision": settings.dataset_revision,
            "uri": dataset.dataset_uri,
            "fingerprint": dataset.fingerprint,
            "reused": dataset.reused,
            "splits": {name: s.model_dump() for name, s in dataset.splits.items()},
            "class_histogram": dataset.class_histogram,
        },
        model={
            "name": settings.model_name,
            "num_classes": class_plan.num_classes,
            "class_names": class_plan.class_names,
            "base_weights": class_plan.checkpoint_uri,
            "checkpoint_num_classes": class_plan.checkpoint_num_classes,
            "warnings": class_plan.warnings,
        },
        training={
            **settings.train_options(),
            "train_images": train_images,
            "steps_per_epoch": steps,
            "total_steps": steps * settings.epochs,
        },
        resources={"backend": backend, "gpus": gpus, "processes": world},
        outputs=outputs,
        publishing={
            "promotion_margin": settings.promotion_margin,
            "class_ap_tolerance": settings.class_ap_tolerance,
            "min_map_50_95": settings.min_map_50_95,
        },
        training_key=train.training_key(
            train_request,
            dataset_fingerprint=dataset.fingerprint,
            base_sha256=base_sha256,
            environment=trainer_environment,
        ),
        train=command(train_request, gpus=gpus, result_uri=train.result_uri(train_uri)),
        evaluate=command(evaluate_request, gpus=min(gpus, 1), result_uri=evaluate.metrics_uri(evaluate_uri)),
        summary=summary,
    )
