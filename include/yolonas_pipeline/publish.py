"""Stage 5: publish a run's artifacts as one bundle under ``<models_uri>/<model>/<run>/``, then run the
promotion gate (:mod:`yolonas_pipeline.promote`).

Every file is copied with its SHA-256 and size recorded (S3 uploads also carry an S3 SHA-256 checksum,
which S3 verifies on receipt). ``manifest.json`` is written **last** and is the only sign that a bundle
is complete, so nothing downstream can pick up a half-uploaded model:

1. a retry finds a complete manifest whose files all exist and copies nothing;
2. otherwise every file is copied (copies are idempotent, so a rerun after a crash mid-way is safe);
3. the gate decides against the current champion; the manifest is written with the decision;
4. when promoted, ``champion.json`` is replaced in one conditional write. A crash between 3 and 4 is
   completed by the retry (step 1 re-applies the recorded decision); a champion that changed in between
   makes the gate decide again and the manifest is rewritten with the new decision.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yolonas_pipeline
from yolonas_pipeline import promote
from yolonas_pipeline.contracts import (
    BUNDLE_MANIFEST_FILE,
    METRICS_FILE,
    TRAIN_RESULT_FILE,
    BundleManifest,
    ChampionPointer,
    ClassPlan,
    DatasetExport,
    DatasetManifest,
    Metrics,
    PromotionDecision,
    PublishResult,
    TrainingKey,
    TrainResult,
    bundle_uri,
    safe_segment,
)
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.run_settings import TrainingSettings
from yolonas_pipeline.storage import Storage, join_uri, sha256_file

log = logging.getLogger(__name__)
MANIFEST_FILE = BUNDLE_MANIFEST_FILE
MANIFEST_FORMAT = BundleManifest.FORMAT
__all__ = [
    "LICENCE_NOTE",
    "Gate",
    "bundle_uri",
    "model_event_extra",
    "publish_bundle",
    "publish_run",
    "safe_segment",
    "verify_bundle",
]
LICENCE_NOTE = (
    "YOLO-NAS pretrained weights, and models fine-tuned from them, are licensed for non-commercial use only "
    "(Deci-AI/super-gradients LICENSE.YOLONAS.md); check the licence of the base weights you used."
)
#: Set by the deployment (image tag, git commit) to identify the code beyond the package version.
CODE_VERSION_ENV = "YOLONAS_CODE_VERSION"


@dataclass
class _Published:
    bundle_uri: str
    manifest_uri: str
    files: dict[str, dict[str, Any]]
    reused: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)
    promotion: PromotionDecision | None = None  # the decision as recorded in the manifest
    champion_update: str | None = None  # updated | already | unchanged (None: no gate)


@dataclass(frozen=True)
class Gate:
    """Run the promotion gate after publishing: compare ``metrics`` with the champion named by ``champion_uri``."""

    champion_uri: str
    metrics: Metrics
    model_name: str
    run_id: str
    margin: float = promote.DEFAULT_MARGIN
    class_ap_tolerance: float = promote.DEFAULT_CLASS_AP_TOLERANCE
    min_map_50_95: float = promote.DEFAULT_MIN_MAP_50_95


def publish_bundle(
    artifacts: Mapping[str, str],
    *,
    destination_uri: str,
    metadata: Mapping[str, Any],
    storage: Storage,
    documents: Mapping[str, bytes] | None = None,
    gate: Gate | None = None,
) -> _Published:
    """Copy ``artifacts`` (bundle file name -> source URI) and write ``documents`` (name -> bytes) to
    ``destination_uri``, then the manifest (a :class:`BundleManifest`); then the gate, if any."""
    manifest_uri = join_uri(destination_uri, MANIFEST_FILE)
    existing = _complete_manifest(destination_uri, storage)
    if existing is not None:
        log.info("bundle already published at %s; nothing to copy", destination_uri)
        document = existing.to_xcom()
        listed = {name: entry.model_dump(exclude_none=True) for name, entry in existing.files.items()}
        result = _Published(destination_uri, manifest_uri, listed, reused=True, manifest=document)
        if gate is not None:
            _promote(result, document, gate, decision=existing.promotion, storage=storage)
        return result

    names = [*artifacts, *(documents or {})]
    duplicates = sorted({n for n in names if names.count(n) > 1} | ({MANIFEST_FILE} & set(names)))
    if duplicates:
        raise StageInputError(f"bundle file names must be unique and not {MANIFEST_FILE}: {', '.join(duplicates)}")
    missing = [f"{name} ({uri})" for name, uri in artifacts.items() if not storage.exists(uri)]
    if missing:
        raise StageInputError(f"cannot publish {destination_uri}: these artifacts do not exist: {', '.join(missing)}")

    files: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="yolonas-publish-") as tmp:
        sources: list[tuple[str, str | None, bytes | None]] = [(n, u, None) for n, u in sorted(artifacts.items())]
        sources += [(n, None, b) for n, b in sorted((documents or {}).items())]
        for name, source, body in sources:
            local = Path(tmp) / name
            if source is not None:
                storage.download_file(source, local)
            else:
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(body or b"")
            entry: dict[str, Any] = {"sha256": sha256_file(local), "size": local.stat().st_size}
            if source is not None:
                entry["source"] = source
            files[name] = entry
            storage.upload_file(local, join_uri(destination_uri, name))
            local.unlink()
            log.info("published %s (%d bytes, sha256 %s...)", name, entry["size"], entry["sha256"][:12])

    manifest = {
        "format": MANIFEST_FORMAT,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": {"package": yolonas_pipeline.__version__, "build": os.environ.get(CODE_VERSION_ENV) or None},
        **metadata,
        "files": files,
    }
    result = _Published(destination_uri, manifest_uri, files, manifest=manifest)
    if gate is None:
        _write_manifest(manifest_uri, manifest, storage)
        log.info("manifest written: %s", manifest_uri)
    else:
        _promote(result, manifest, gate, decision=None, storage=storage)
    return result


def _promote(
    result: _Published,
    manifest: dict[str, Any],
    gate: Gate,
    *,
    decision: PromotionDecision | None,
    storage: Storage,
) -> None:
    """Decide (or re-apply a recorded decision), record it in the manifest, move the champion pointer."""

    def record(new: PromotionDecision) -> None:
        manifest["promotion"] = new.model_dump(mode="json")
        _write_manifest(result.manifest_uri, manifest, storage)
        log.info("manifest written with the promotion decision: %s", result.manifest_uri)

    def pointer(new: PromotionDecision) -> ChampionPointer:
        return promote.pointer_document(
            model_name=gate.model_name,
            run_id=gate.run_id,
            bundle_uri=result.bundle_uri,
            manifest_uri=result.manifest_uri,
            metrics=gate.metrics,
            previous=new.champion,
        )

    final, outcome = promote.gate_and_apply(
        gate.metrics,
        candidate={"run_id": gate.run_id, "bundle_uri": result.bundle_uri},
        make_pointer=pointer,
        champion_pointer_uri=gate.champion_uri,
        storage=storage,
        margin=gate.margin,
        class_ap_tolerance=gate.class_ap_tolerance,
        min_map_50_95=gate.min_map_50_95,
        record=record,
        decision=decision,
    )
    result.promotion = final
    result.champion_update = outcome
    result.manifest = manifest


def _write_manifest(uri: str, manifest: Mapping[str, Any], storage: Storage) -> None:
    # Validated as the contract before it becomes visible: a bundle never gets a manifest its readers refuse.
    BundleManifest.parse(dict(manifest), source=f"the manifest for {uri}").write(uri, storage=storage)


def verify_bundle(destination_uri: str, *, storage: Storage) -> BundleManifest:
    """Recompute every file's SHA-256 and size against the manifest; raise if any differs. Returns the manifest."""
    manifest = BundleManifest.read_bundle(destination_uri, storage=storage)
    with tempfile.TemporaryDirectory(prefix="yolonas-verify-") as tmp:
        for name, entry in manifest.files.items():
            local = Path(tmp) / name
            uri = join_uri(destination_uri, name)
            storage.download_file(uri, local)
            digest, size = sha256_file(local), local.stat().st_size
            if digest != entry.sha256 or size != entry.size:
                raise StageInputError(
                    f"{uri}: sha256 {digest} and {size} bytes, but the manifest says {entry.sha256} and "
                    f"{entry.size} bytes"
                )
            local.unlink()
    return manifest


def _complete_manifest(destination_uri: str, storage: Storage) -> BundleManifest | None:
    if not storage.exists(join_uri(destination_uri, MANIFEST_FILE)):
        return None
    manifest = BundleManifest.read_bundle(destination_uri, storage=storage)
    if all(
        storage.exists(join_uri(destination_uri, name)) and storage.size(join_uri(destination_uri, name)) == e.size
        for name, e in manifest.files.items()
    ):
        return manifest
    return None


# -- the stage: the upstream results to a bundle ------------------------------------------------------------
def publish_run(
    *,
    dataset: DatasetExport,
    class_plan: ClassPlan,
    train_result: TrainResult,
    metrics: Metrics,
    settings: TrainingSettings,
    run_id: str,
    storage: Storage,
    promotion: bool = True,
    training_key: TrainingKey | None = None,
) -> PublishResult:
    """Publish one DAG run (the results of materialize, inspect_checkpoint, train and evaluate) and gate it.

    Returns the :class:`PublishResult` for XCom: bundle and manifest URIs, file names, the promotion decision.
    """
    model_name = train_result.model_name
    models_uri = settings.models_uri
    destination = bundle_uri(models_uri, model_name, run_id)
    metrics_uri = metrics.metrics_uri or ""
    if not metrics_uri.endswith(METRICS_FILE):
        raise StageInputError(f"metrics has no metrics_uri ending in {METRICS_FILE} (got {metrics_uri!r})")
    evaluate_uri = metrics_uri.rsplit("/", 1)[0]
    train_uri = train_result.run_uri.rsplit("/", 1)[0]

    artifacts = {
        "model.pth": train_result.best_checkpoint_uri,
        METRICS_FILE: metrics_uri,
        "training_result.json": join_uri(train_uri, TRAIN_RESULT_FILE),
        "dataset_manifest.json": dataset.manifest_uri,
        "materialization_report.json": dataset.report_uri,
    }
    artifacts.update({relative: join_uri(evaluate_uri, relative) for relative in metrics.files()})
    artifacts.update({name: join_uri(train_uri, relative) for name, relative in training_files(train_result).items()})
    training_config = {
        "train_request": train_result.request.model_dump(mode="json") if train_result.request else None,
        "model_name": model_name,
        "input_size": train_result.input_size,
        "num_classes": train_result.num_classes,
        "class_names": train_result.class_names,
        "class_plan": {
            "checkpoint_uri": class_plan.checkpoint_uri,
            "checkpoint_num_classes": class_plan.checkpoint_num_classes,
            "warnings": class_plan.warnings,
        },
        "run_settings": settings.to_xcom(),
    }
    documents = {"training_config.json": json.dumps(training_config, indent=2, sort_keys=True).encode()}
    metadata = {
        "run_id": run_id,
        "model_name": model_name,
        "class_names": list(train_result.class_names or metrics.class_names),
        "input_size": train_result.input_size,
        "dataset": dataset_identity(dataset, storage=storage),
        "base_weights": base_weights(
            class_plan, storage=storage, sha256=training_key.inputs.get("base_weights_sha256") if training_key else None
        ),
        "evaluation": {
            "split": metrics.split,
            "images": metrics.images,
            "dataset_fingerprint": metrics.dataset_fingerprint,
            "map_50": metrics.map_50,
            "map_50_95": metrics.map_50_95,
            "precision": metrics.precision,
            "recall": metrics.recall,
            "f1": metrics.f1,
            "thresholds": metrics.thresholds,
            "per_class_ap_50_95": {name: entry.ap_50_95 for name, entry in metrics.per_class.items()},
        },
        "training": {
            "epochs_completed": train_result.epochs_completed,
            "device": train_result.device,
            "gpus": train_result.gpus,
            # What the model's input must be (results from before this was recorded trained on BGR).
            "channel_order": train_result.channel_order or "BGR",
        },
        "compute": compute_usage(train_result, metrics),
        "training_key": training_key.model_dump(mode="json") if training_key else None,
    }
    gate = None
    if promotion:
        gate = Gate(
            champion_uri=promote.champion_uri(models_uri, model_name),
            metrics=metrics,
            model_name=model_name,
            run_id=run_id,
            margin=settings.promotion_margin,
            class_ap_tolerance=settings.class_ap_tolerance,
            min_map_50_95=settings.min_map_50_95,
        )
    result = publish_bundle(
        artifacts, destination_uri=destination, metadata=metadata, storage=storage, documents=documents, gate=gate
    )
    return PublishResult(
        bundle_uri=result.bundle_uri,
        manifest_uri=result.manifest_uri,
        files=sorted(result.files),
        reused=result.reused,
        champion_uri=gate.champion_uri if gate else None,
        promoted=bool(result.promotion and result.promotion.promote),
        promotion_reasons=list(result.promotion.reasons) if result.promotion else [],
        champion_update=result.champion_update,
        model_name=model_name,
        map_50=metrics.map_50,
        map_50_95=metrics.map_50_95,
        champion_map_50_95=_champion_score(result.promotion),
    )


def _champion_score(decision: PromotionDecision | None) -> float | None:
    """The champion's mAP@0.50:0.95 the gate compared with (None: no gate, no champion, or not compared)."""
    value = (decision.champion or {}).get(promote.METRIC) if decision else None
    return float(value) if isinstance(value, int | float) else None


#: The largest gate reason and the most reasons an asset event carries (the Assets view shows the extra).
_EVENT_REASON_CHARS = 300
_EVENT_REASONS = 8


def model_event_extra(result: PublishResult, *, run_id: str) -> dict[str, Any]:
    """The extra of the ``yolonas_model`` asset event a publish emits: small, JSON-safe, no credentials."""
    return {
        "run_id": run_id,
        "model_name": result.model_name,
        "map_50": result.map_50,
        "map_50_95": result.map_50_95,
        "champion_map_50_95": result.champion_map_50_95,
        "promoted": result.promoted,
        "reasons": [reason[:_EVENT_REASON_CHARS] for reason in result.promotion_reasons[:_EVENT_REASONS]],
        "bundle_uri": result.bundle_uri,
        "champion_update": result.champion_update,
    }


def training_files(train_result: TrainResult) -> dict[str, str]:
    """The train stage's files for the bundle (bundle name -> path relative to the train output): the training
    curves beside the evaluation's plots (``plots/``), the per-epoch history as ``training_history.json``."""
    names = {}
    for relative in train_result.files.values():
        base = relative.rsplit("/", 1)[-1]
        names[f"plots/{base}" if base.endswith(".png") else f"training_{base}"] = relative
    return names


def dataset_identity(dataset: DatasetExport, *, storage: Storage) -> dict[str, Any]:
    """Where the training data came from: the source and revision recorded in the export's manifest."""
    manifest = DatasetManifest.read(dataset.manifest_uri, storage=storage)
    return {
        "uri": dataset.dataset_uri,
        "fingerprint": dataset.fingerprint,
        "source": manifest.source.source,
        "revision": manifest.source.revision,
        "splits": {name: counts.model_dump() for name, counts in dataset.splits.items()},
    }


def base_weights(class_plan: ClassPlan, *, storage: Storage, sha256: str | None = None) -> dict[str, Any]:
    """The checkpoint training started from, with its SHA-256 (``sha256`` when preflight computed it, the
    verified one, or computed here)."""
    uri = class_plan.checkpoint_uri
    if not uri:
        return {"uri": None, "sha256": None, "num_classes": None, "licence_note": "trained from scratch"}
    digest = sha256 or (class_plan.checkpoint.sha256 if class_plan.checkpoint else None)
    if not digest:
        with tempfile.TemporaryDirectory(prefix="yolonas-base-") as tmp:
            local = Path(tmp) / "base.pth"
            storage.download_file(uri, local)
            digest = sha256_file(local)
    return {
        "uri": uri,
        "sha256": digest,
        "num_classes": class_plan.checkpoint_num_classes,
        "licence_note": LICENCE_NOTE,
    }


def compute_usage(train_result: TrainResult, metrics: Metrics) -> dict[str, Any]:
    """Seconds spent training (every epoch of every attempt, from the history) and evaluating, and the
    GPU-seconds they cost (seconds x GPUs; 0 on CPU)."""
    gpus = train_result.gpus
    train_seconds = train_result.train_seconds or train_result.seconds_this_attempt
    evaluate_seconds = metrics.seconds
    return {
        "train_seconds": round(train_seconds, 1),
        "train_gpus": gpus,
        "evaluate_seconds": round(evaluate_seconds, 1),
        "evaluate_gpus": metrics.gpus,
        "gpu_seconds": round(train_seconds * gpus + evaluate_seconds * metrics.gpus, 1),
    }
