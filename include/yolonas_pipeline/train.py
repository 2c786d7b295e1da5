"""Stage 3: training. The trainer command's request from the run's settings and the first two stages'
results, and the result the command writes (``result.json`` under the run's train URI)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yolonas_pipeline
from yolonas_pipeline.contracts import (
    BUNDLE_MANIFEST_FILE,
    TRAIN_RESULT_FILE,
    BundleManifest,
    ClassPlan,
    DatasetExport,
    TrainingKey,
    TrainRequest,
    TrainResult,
)
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.run_settings import TrainingSettings
from yolonas_pipeline.storage import Storage, join_uri, sha256_file

#: Set by the deployment (image tag, git commit) to identify the code beyond the package version.
CODE_VERSION_ENV = "YOLONAS_CODE_VERSION"


def train_request(
    settings: TrainingSettings, dataset: DatasetExport, class_plan: ClassPlan, *, output_uri: str, processes: int
) -> TrainRequest:
    """What the ``train`` command does; ``processes``: how many train side by side (GPUs, or 1)."""
    if class_plan.num_classes != len(dataset.class_names):
        raise StageInputError(
            f"the class plan says {class_plan.num_classes} classes but the dataset {dataset.dataset_uri} has "
            f"{len(dataset.class_names)}"
        )
    return TrainRequest(
        dataset_uri=dataset.dataset_uri,
        output_uri=output_uri,
        num_classes=class_plan.num_classes,
        model_name=settings.model_name,
        checkpoint_uri=class_plan.checkpoint_uri,
        checkpoint_num_classes=class_plan.checkpoint_num_classes,
        gpus=processes,
        **settings.train_options(),
    )


def result_uri(output_uri: str) -> str:
    return join_uri(output_uri, TRAIN_RESULT_FILE)


def read_train_result(output_uri: str, *, storage: Storage) -> TrainResult:
    uri = result_uri(output_uri)
    try:
        return TrainResult.read(uri, storage=storage)
    except FileNotFoundError:
        raise StageInputError(f"the trainer finished without writing {uri}; see the task log above") from None


# -- never train the same model twice ----------------------------------------------------------------------------
#: Names the training transforms (trainer.data: the seed's random affine + HSV + flip); bump it when they change.
AUGMENTATION = "seed-affine-hsv-flip@1"
#: Where the trainer environment's lock is found: this repository (embedded default) or the airflow-local image.
TRAINER_LOCKS = (
    Path(__file__).resolve().parents[2] / "requirements" / "trainer.lock",
    Path("/opt/trainer/requirements/trainer.lock"),
)


def trainer_environment() -> str:
    """The trainer environment's identity: the SHA-256 of its lock file (the pod backend adds its image)."""
    for lock in TRAINER_LOCKS:
        if lock.is_file():
            return "trainer.lock sha256:" + hashlib.sha256(lock.read_bytes()).hexdigest()
    return "trainer.lock not found"


def code_version() -> str:
    build = os.environ.get(CODE_VERSION_ENV)
    return f"{yolonas_pipeline.__version__}+{build}" if build else yolonas_pipeline.__version__


def base_weights_sha256(class_plan: ClassPlan, *, storage: Storage) -> str | None:
    """The base checkpoint's SHA-256: the verified one when the user gave it, else computed (one full read)."""
    if not class_plan.checkpoint_uri:
        return None
    if class_plan.checkpoint and class_plan.checkpoint.sha256:
        return class_plan.checkpoint.sha256
    with tempfile.TemporaryDirectory(prefix="yolonas-base-") as tmp:
        local = Path(tmp) / "base.pth"
        storage.download_file(class_plan.checkpoint_uri, local)
        return sha256_file(local)


def training_key(
    request: TrainRequest,
    *,
    dataset_fingerprint: str,
    base_sha256: str | None,
    environment: str,
) -> TrainingKey:
    """Everything that changes what training learns, and its SHA-256: equal keys give the same model."""
    inputs: dict[str, Any] = {
        "dataset_fingerprint": dataset_fingerprint,
        "base_weights_sha256": base_sha256,
        "model_name": request.model_name,
        "num_classes": request.num_classes,
        "epochs": request.epochs,
        "batch_size": request.batch_size,
        "processes": request.gpus,
        "input_size": request.input_size,
        "learning_rate": request.learning_rate,
        "warmup_epochs": request.warmup_epochs,
        "ema": request.ema,
        "augmentation": AUGMENTATION,
        "seed": request.seed,
        "mixed_precision": request.mixed_precision,
        "trainer_environment": environment,
        "code_version": code_version(),
    }
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return TrainingKey(key=digest, inputs=inputs)


def find_reusable_bundle(
    models_uri: str, model_name: str, key: TrainingKey, *, storage: Storage
) -> tuple[BundleManifest | None, str, list[str]]:
    """The newest complete, verified bundle under ``<models_uri>/<model>/`` trained with ``key``.

    Returns ``(manifest or None, its bundle URI or "", reasons)``: ``reasons`` says why bundles with the same
    key were not reused (a file that fails its SHA-256, say), so the task log can say why it trains anyway.
    """
    from yolonas_pipeline.publish import verify_bundle  # publish imports this module

    root = join_uri(models_uri, model_name)
    candidates: list[tuple[str, BundleManifest]] = []
    for relative in storage.list_files(root):
        parts = relative.split("/")
        if len(parts) != 2 or parts[1] != BUNDLE_MANIFEST_FILE:
            continue  # <run>/manifest.json only
        bundle = join_uri(root, parts[0])
        try:
            manifest = BundleManifest.read_bundle(bundle, storage=storage)
        except (StageInputError, FileNotFoundError):
            continue  # another format or a half-written bundle: not a cache entry
        if manifest.training_key is not None and manifest.training_key.key == key.key:
            candidates.append((bundle, manifest))
    reasons: list[str] = []
    for bundle, manifest in sorted(candidates, key=lambda c: c[1].published_at, reverse=True):
        try:
            verify_bundle(bundle, storage=storage)
        except (StageInputError, FileNotFoundError) as exc:
            reasons.append(f"{bundle} was trained with the same inputs but fails verification: {exc}")
            continue
        return manifest, bundle, reasons
    return None, "", reasons
