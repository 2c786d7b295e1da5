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
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yolonas_pipeline
from yolonas_pipeline import promote
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.evaluate import METRICS_FILE, evaluation_files
from yolonas_pipeline.storage import Storage, join_uri, sha256_file

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "yolonas-pipeline/model-bundle@2"
LICENCE_NOTE = (
    "YOLO-NAS pretrained weights, and models fine-tuned from them, are licensed for non-commercial use only "
    "(Deci-AI/super-gradients LICENSE.YOLONAS.md); check the licence of the base weights you used."
)
#: Set by the deployment (image tag, git commit) to identify the code beyond the package version.
CODE_VERSION_ENV = "YOLONAS_CODE_VERSION"


@dataclass
class PublishResult:
    bundle_uri: str
    manifest_uri: str
    files: dict[str, dict[str, Any]]
    reused: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    promotion: dict[str, Any] | None = None  # the decision as recorded in the manifest
    champion_update: str | None = None  # updated | already | unchanged (None: no gate)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Gate:
    """Run the promotion gate after publishing: compare ``metrics`` with the champion named by ``champion_uri``."""

    champion_uri: str
    metrics: Mapping[str, Any]
    model_name: str
    run_id: str
    margin: float = promote.DEFAULT_MARGIN
    class_ap_tolerance: float = promote.DEFAULT_CLASS_AP_TOLERANCE


def bundle_uri(models_uri: str, model_name: str, run_id: str) -> str:
    return join_uri(models_uri, model_name, safe_segment(run_id))


def safe_segment(value: str) -> str:
    """Airflow run ids contain ``:`` and ``+``; keep S3 keys and local paths portable."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)


def publish_bundle(
    artifacts: Mapping[str, str],
    *,
    destination_uri: str,
    metadata: Mapping[str, Any],
    storage: Storage,
    documents: Mapping[str, bytes] | None = None,
    gate: Gate | None = None,
    log: Callable[[str], None] = print,
) -> PublishResult:
    """Copy ``artifacts`` (bundle file name -> source URI) and write ``documents`` (name -> bytes) to
    ``destination_uri``, then the manifest; then the gate, if any."""
    manifest_uri = join_uri(destination_uri, MANIFEST_FILE)
    existing = _complete_manifest(manifest_uri, storage)
    if existing is not None:
        log(f"bundle already published at {destination_uri}; nothing to copy")
        result = PublishResult(destination_uri, manifest_uri, existing["files"], reused=True, metadata=existing)
        if gate is not None:
            recorded = existing.get("promotion")
            decision = promote.PromotionDecision.from_dict(recorded) if recorded else None
            _promote(result, existing, gate, decision=decision, storage=storage, log=log)
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
            log(f"published {name} ({entry['size']} bytes, sha256 {entry['sha256'][:12]}...)")

    manifest = {
        "format": MANIFEST_FORMAT,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": {"package": yolonas_pipeline.__version__, "build": os.environ.get(CODE_VERSION_ENV) or None},
        **metadata,
        "files": files,
    }
    result = PublishResult(destination_uri, manifest_uri, files, metadata=manifest)
    if gate is None:
        _write_manifest(manifest_uri, manifest, storage)
        log(f"manifest written: {manifest_uri}")
    else:
        _promote(result, manifest, gate, decision=None, storage=storage, log=log)
    return result


def _promote(
    result: PublishResult,
    manifest: dict[str, Any],
    gate: Gate,
    *,
    decision: promote.PromotionDecision | None,
    storage: Storage,
    log: Callable[[str], None],
) -> None:
    """Decide (or re-apply a recorded decision), record it in the manifest, move the champion pointer."""

    def record(new: promote.PromotionDecision) -> None:
        manifest["promotion"] = new.to_dict()
        _write_manifest(result.manifest_uri, manifest, storage)
        log(f"manifest written with the promotion decision: {result.manifest_uri}")

    def pointer(new: promote.PromotionDecision) -> dict[str, Any]:
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
        record=record,
        decision=decision,
        log=log,
    )
    result.promotion = final.to_dict()
    result.champion_update = outcome
    result.metadata = manifest


def _write_manifest(uri: str, manifest: Mapping[str, Any], storage: Storage) -> None:
    storage.write_text(uri, json.dumps(manifest, indent=2, sort_keys=True))


def verify_bundle(destination_uri: str, *, storage: Storage) -> dict[str, Any]:
    """Recompute every file's SHA-256 and size against the manifest; raise if any differs. Returns the manifest."""
    manifest_uri = join_uri(destination_uri, MANIFEST_FILE)
    try:
        manifest = json.loads(storage.read_text(manifest_uri))
    except FileNotFoundError:
        raise StageInputError(f"{destination_uri} has no {MANIFEST_FILE}: the bundle is incomplete") from None
    with tempfile.TemporaryDirectory(prefix="yolonas-verify-") as tmp:
        for name, entry in manifest["files"].items():
            local = Path(tmp) / name
            uri = join_uri(destination_uri, name)
            storage.download_file(uri, local)
            digest, size = sha256_file(local), local.stat().st_size
            if digest != entry["sha256"] or size != entry["size"]:
                raise StageInputError(
                    f"{uri}: sha256 {digest} and {size} bytes, but the manifest says {entry['sha256']} and "
                    f"{entry['size']} bytes"
                )
            local.unlink()
    return manifest


def _complete_manifest(manifest_uri: str, storage: Storage) -> dict[str, Any] | None:
    if not storage.exists(manifest_uri):
        return None
    manifest = json.loads(storage.read_text(manifest_uri))
    base = manifest_uri.rsplit("/", 1)[0]
    files = manifest.get("files", {})
    if all(
        storage.exists(join_uri(base, name)) and storage.size(join_uri(base, name)) == e["size"]
        for name, e in files.items()
    ):
        return manifest
    return None


# -- the stage: the upstream results to a bundle ------------------------------------------------------------
def publish_run(
    *,
    dataset: Mapping[str, Any],
    class_plan: Mapping[str, Any],
    train_result: Mapping[str, Any],
    metrics: Mapping[str, Any],
    run_id: str,
    models_uri: str,
    storage: Storage,
    params: Mapping[str, Any] | None = None,
    promotion: bool = True,
    promotion_margin: float = promote.DEFAULT_MARGIN,
    class_ap_tolerance: float = promote.DEFAULT_CLASS_AP_TOLERANCE,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Publish one DAG run (the results of materialize, inspect_checkpoint, train and evaluate) and gate it.

    Returns a small JSON-able summary for XCom: bundle and manifest URIs, file names, the promotion decision.
    """
    model_name = str(train_result["model_name"])
    destination = bundle_uri(models_uri, model_name, run_id)
    metrics_uri = str(metrics.get("metrics_uri") or "")
    if not metrics_uri.endswith(METRICS_FILE):
        raise StageInputError(f"metrics has no metrics_uri ending in {METRICS_FILE} (got {metrics_uri!r})")
    evaluate_uri = metrics_uri.rsplit("/", 1)[0]
    train_uri = str(train_result["run_uri"]).rsplit("/", 1)[0]

    artifacts = {
        "model.pth": str(train_result["best_checkpoint_uri"]),
        METRICS_FILE: metrics_uri,
        "training_result.json": join_uri(train_uri, "result.json"),
        "dataset_manifest.json": str(dataset["manifest_uri"]),
        "materialization_report.json": str(dataset["report_uri"]),
    }
    artifacts.update({relative: join_uri(evaluate_uri, relative) for relative in evaluation_files(metrics)})
    training_config = {
        "train_request": train_result.get("request"),
        "model_name": model_name,
        "input_size": train_result.get("input_size"),
        "num_classes": train_result.get("num_classes"),
        "class_names": train_result.get("class_names"),
        "class_plan": {k: class_plan.get(k) for k in ("checkpoint_uri", "checkpoint_num_classes", "warnings")},
        "dag_params": dict(params or {}),
    }
    documents = {"training_config.json": json.dumps(training_config, indent=2, sort_keys=True, default=str).encode()}
    metadata = {
        "run_id": run_id,
        "model_name": model_name,
        "class_names": list(train_result.get("class_names") or metrics.get("class_names") or []),
        "input_size": train_result.get("input_size"),
        "dataset": dataset_identity(dataset, storage=storage),
        "base_weights": base_weights(class_plan, storage=storage),
        "evaluation": {
            k: metrics.get(k)
            for k in ("split", "images", "dataset_fingerprint", "map_50", "map_50_95", "precision", "recall", "f1")
        }
        | {"thresholds": metrics.get("thresholds"), "per_class_ap_50_95": _per_class_ap(metrics)},
        "training": {
            "epochs_completed": train_result.get("epochs_completed"),
            "device": train_result.get("device"),
            "gpus": train_result.get("gpus"),
        },
        "compute": compute_usage(train_result, metrics),
    }
    gate = None
    if promotion:
        gate = Gate(
            champion_uri=promote.champion_uri(models_uri, model_name),
            metrics=metrics,
            model_name=model_name,
            run_id=run_id,
            margin=float(promotion_margin),
            class_ap_tolerance=float(class_ap_tolerance),
        )
    result = publish_bundle(
        artifacts,
        destination_uri=destination,
        metadata=metadata,
        storage=storage,
        documents=documents,
        gate=gate,
        log=log,
    )
    return {
        "bundle_uri": result.bundle_uri,
        "manifest_uri": result.manifest_uri,
        "files": sorted(result.files),
        "reused": result.reused,
        "champion_uri": gate.champion_uri if gate else None,
        "promoted": bool(result.promotion and result.promotion["promote"]),
        "promotion_reasons": list(result.promotion["reasons"]) if result.promotion else [],
        "champion_update": result.champion_update,
    }


def dataset_identity(dataset: Mapping[str, Any], *, storage: Storage) -> dict[str, Any]:
    """Where the training data came from: the source and revision recorded in the export's manifest."""
    source = json.loads(storage.read_text(str(dataset["manifest_uri"]))).get("source") or {}
    return {
        "uri": dataset.get("dataset_uri"),
        "fingerprint": dataset.get("fingerprint"),
        "source": source.get("source"),
        "revision": source.get("revision"),
        "splits": dataset.get("splits"),
    }


def base_weights(class_plan: Mapping[str, Any], *, storage: Storage) -> dict[str, Any]:
    """The checkpoint training started from, with its SHA-256 (computed here when the user gave none)."""
    uri = class_plan.get("checkpoint_uri")
    if not uri:
        return {"uri": None, "sha256": None, "num_classes": None, "licence_note": "trained from scratch"}
    digest = (class_plan.get("checkpoint") or {}).get("sha256")
    if not digest:
        with tempfile.TemporaryDirectory(prefix="yolonas-base-") as tmp:
            local = Path(tmp) / "base.pth"
            storage.download_file(str(uri), local)
            digest = sha256_file(local)
    return {
        "uri": uri,
        "sha256": digest,
        "num_classes": class_plan.get("checkpoint_num_classes"),
        "licence_note": LICENCE_NOTE,
    }


def compute_usage(train_result: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Seconds spent training (every epoch of every attempt, from the history) and evaluating, and the
    GPU-seconds they cost (seconds x GPUs; 0 on CPU)."""
    gpus = int(train_result.get("gpus") or 0)
    train_seconds = float(
        train_result.get("train_seconds")
        or sum(float(e.get("seconds") or 0) for e in train_result.get("history") or [])
        or train_result.get("seconds_this_attempt")
        or 0
    )
    evaluate_seconds = float(metrics.get("seconds") or 0)
    evaluate_gpus = int(metrics.get("gpus") or 0)
    gpu_seconds = train_result.get("gpu_seconds")
    if gpu_seconds is None:
        gpu_seconds = train_seconds * gpus
    return {
        "train_seconds": round(train_seconds, 1),
        "train_gpus": gpus,
        "evaluate_seconds": round(evaluate_seconds, 1),
        "evaluate_gpus": evaluate_gpus,
        "gpu_seconds": round(float(gpu_seconds) + evaluate_seconds * evaluate_gpus, 1),
    }


def _per_class_ap(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {name: (entry or {}).get("ap_50_95") for name, entry in (metrics.get("per_class") or {}).items()}
