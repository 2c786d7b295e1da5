"""Materialization stage: a Hugging Face detection dataset to JPEG files + COCO JSON, at the speed of the disk.

The export lands under ``<output_uri>/<fingerprint>/`` (local folder or ``s3://``)::

    images/<split>/<id>.jpg       stored JPEG bytes, unchanged where possible
    annotations/<split>.json      COCO: images, annotations (xywh px), categories 1..N in class-name order
    report.json                   counts per split, drops and corrections per reason, box checks, timings
    manifest.json                 written last: the completion marker the next stages look for
                                  (a :class:`~yolonas_pipeline.contracts.DatasetManifest`)

The final folder holds complete exports only: a local export is written to a hidden staging folder beside it
(``.incomplete-<fingerprint>-...``) and renamed into place once its manifest is written; an S3 export (no
rename there) is written in place, manifest last, deleted if the run fails, and a killed run's leftovers are
deleted by the next run of the same fingerprint before it writes.

Before anything is written, the box reading (preset or mapping) is checked on the first rows of train
(:mod:`~yolonas_pipeline.materialize_checks`); a reading that does not fit the numbers is refused.

The fingerprint hashes the source content (or hub commit) and every setting that changes the output, so a
second run with the same inputs finds the manifest and does nothing. Rows stream through in bounded
batches; image conversions (non-JPEG, EXIF-rotated, downscaled) run in worker processes and writes in a
thread pool, and results are committed in row order, so ids and the COCO JSON are byte-identical on rerun.

This module is the orchestration: open the source, plan the passes over its splits, fingerprint, reuse or
export, and write the report and the manifest. The parts, one job each:

* :mod:`~yolonas_pipeline.materialize_sources`: opening hub datasets, ``save_to_disk`` folders, files;
* :mod:`~yolonas_pipeline.materialize_schema`: which columns hold what, and box conversion;
* :mod:`~yolonas_pipeline.materialize_checks`: whether the chosen box reading fits the data;
* :mod:`~yolonas_pipeline.materialize_rows`: reading rows out of Arrow batches without copying images;
* :mod:`~yolonas_pipeline.materialize_images` and :mod:`~yolonas_pipeline.materialize_pool`: image
  inspection and conversion, in worker processes;
* :mod:`~yolonas_pipeline.materialize_pipeline`: the ordered row pipeline;
* :mod:`~yolonas_pipeline.materialize_writer`: image files and the COCO JSON.

Progress and the summary go to this package's loggers (``yolonas_pipeline.materialize*``) at INFO.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolonas_pipeline.contracts import (
    DATASET_MANIFEST_FILE,
    DATASET_REPORT_FILE,
    OUTPUT_SPLITS,
    DatasetExport,
    DatasetManifest,
    DatasetSource,
    SplitFiles,
)
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.materialize_checks import check_boxes
from yolonas_pipeline.materialize_images import EXIF_STORED_FRAME_POLICIES, JPEG_QUALITY
from yolonas_pipeline.materialize_pipeline import Exporter, Pass
from yolonas_pipeline.materialize_schema import PRESETS, ResolvedSchema, SchemaConfig, resolve_schema
from yolonas_pipeline.materialize_sources import (
    SPLIT_ALIASES,
    OpenedSource,
    hub_offline_from_env,
    looks_local,
    open_source,
)
from yolonas_pipeline.storage import Storage, is_s3_uri, join_uri

__all__ = [
    "FORMAT",
    "PRESETS",
    "MaterializeRequest",
    "SchemaConfig",
    "materialize",
]

log = logging.getLogger(__name__)

FORMAT = DatasetManifest.FORMAT
#: Bump when the bytes written for the same input change; it is part of the fingerprint.
EXPORTER_VERSION = 2  # 2: images whose every box was dropped are dropped; declared sizes and EXIF frames


@dataclass(frozen=True)
class MaterializeRequest:
    """What to export and how.

    ``streaming`` only matters for hub datasets (local files are always read batch by batch). ``workers``
    is how many processes convert non-JPEG, EXIF-rotated and downscaled images, this one included (0 or 1:
    only this one; default: the CPUs this process may use, see :mod:`yolonas_pipeline.cpus`); the others
    start only when a conversion is needed and import nothing of the caller's
    ``__main__`` (see :mod:`yolonas_pipeline.materialize_pool`), so no ``if __name__ == "__main__":``
    guard is needed.
    """

    source: str  # hub dataset name, local save_to_disk folder, or parquet/arrow file(s)/glob
    output_uri: str  # root (local path or s3://bucket/prefix); export goes under <output_uri>/<fingerprint>/
    revision: str | None = None
    schema: SchemaConfig | str | Mapping[str, Any] | None = None  # None = auto-detect among presets
    split_map: Mapping[str, str] | None = None  # output split -> source split; default: same names
    validation_fraction: float = 0.1  # used only when the source has no validation split
    seed: int = 0
    max_side: int | None = None
    streaming: bool = False
    workers: int | None = None  # processes converting images, this one included; default: the CPUs it may use
    #: An image whose every box was dropped (negative size, NaN, unknown class...) is dropped and counted
    #: (``all_boxes_dropped``); True keeps it as a background image. Images with no boxes in the source are kept.
    keep_emptied_images: bool = False
    #: When a row's declared width/height (schema width_column/height_column) match the stored frame of an image
    #: that EXIF turns by 90 degrees, its boxes refer to the stored pixels: "rotate" turns them with the pixels
    #: (counted: boxes_rotated_with_exif), "drop" leaves the row out (boxes_in_stored_exif_frame), "error" stops.
    exif_stored_frame: str = "rotate"
    #: Check the box reading (bbox_format, normalized) on the first rows of train before exporting, and refuse
    #: one that does not fit (see :mod:`~yolonas_pipeline.materialize_checks`); False exports as configured.
    check_boxes: bool = True


# -- splits ------------------------------------------------------------------------------------------


def _validation_selector(num_rows: int | None, fraction: float, seed: int) -> Callable[[int], bool]:
    """Seeded choice of validation rows: an exact-size random subset when the row count is known, else a
    hash of (seed, row index); both are reproducible and need no pass over the data."""
    if num_rows is not None:
        import numpy as np

        n_val = min(num_rows - 1, max(1, round(num_rows * fraction))) if num_rows >= 2 else 0
        mask = np.zeros(num_rows, dtype=bool)
        mask[np.random.default_rng(seed).permutation(num_rows)[:n_val]] = True
        return lambda index: bool(mask[index]) if index < num_rows else False
    import xxhash

    threshold = int(fraction * 2**64)
    return lambda index: xxhash.xxh3_64_intdigest(f"{seed}:{index}".encode()) < threshold


def _plan_passes(
    source: OpenedSource, split_map: Mapping[str, str] | None, fraction: float, seed: int
) -> tuple[list[Pass], dict[str, Any]]:
    found = sorted(source.splits)
    if split_map is None:
        mapping: dict[str, str] = {}
        for output in OUTPUT_SPLITS:
            match = next((a for a in SPLIT_ALIASES[output] if a in source.splits), None)
            if match is not None:
                mapping[output] = match
        if "train" not in mapping:
            raise StageInputError(
                f"{source.description} has no train split (splits found: {found}); set split_map, e.g. "
                f'{{"train": "{found[0] if found else "train"}"}}'
            )
    else:
        mapping = {str(k): str(v) for k, v in dict(split_map).items()}
        bad = sorted(set(mapping) - set(OUTPUT_SPLITS))
        if bad:
            raise StageInputError(f"split_map keys {bad} are not output splits; use {', '.join(OUTPUT_SPLITS)}")
        if "train" not in mapping:
            raise StageInputError(f"split_map must name the source split for 'train' (splits found: {found})")
        missing = {k: v for k, v in mapping.items() if v not in source.splits}
        if missing:
            raise StageInputError(
                f"split_map asks for source splits {sorted(set(missing.values()))} that {source.description} does "
                f"not have; splits found: {found}"
            )
        if len(set(mapping.values())) != len(mapping):
            raise StageInputError(f"split_map maps two output splits to one source split: {mapping}")
    train = source.splits[mapping["train"]]
    passes: list[Pass] = []
    seeded: dict[str, Any] | None = None
    if "validation" not in mapping:
        seeded = {"fraction": fraction, "seed": seed}
        passes.append(Pass(train.name, "train", train.num_rows, _validation_selector(train.num_rows, fraction, seed)))
    else:
        passes.append(Pass(train.name, "train", train.num_rows))
    for output in ("validation", "test"):
        if output in mapping:
            split = source.splits[mapping[output]]
            passes.append(Pass(split.name, output, split.num_rows))
    return passes, {"map": dict(sorted(mapping.items())), "seeded_validation": seeded}


def _resolve_all(config: SchemaConfig, source: OpenedSource, passes: list[Pass]) -> ResolvedSchema:
    """Resolve the schema on the train split and check that every other split reads the same way."""
    first = source.splits[passes[0].source_split]
    where = f"split {first.name!r} of {source.description}"
    schema = resolve_schema(config, first.arrow_schema, first.features, where)
    for one_pass in passes[1:]:
        split = source.splits[one_pass.source_split]
        other = resolve_schema(
            schema.config, split.arrow_schema, split.features, f"split {split.name!r} of {source.description}"
        )
        if other.class_names != schema.class_names:
            raise StageInputError(
                f"split {split.name!r} of {source.description} has classes {list(other.class_names)} but "
                f"{first.name!r} has {list(schema.class_names)}; splits must share their class names"
            )
    return schema


def _fingerprint(payload: Mapping[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _check_request(request: MaterializeRequest) -> None:
    if not isinstance(request.output_uri, str) or not request.output_uri.strip():
        raise StageInputError(f"output_uri must be a local folder or s3://bucket/prefix, got {request.output_uri!r}")
    fraction = request.validation_fraction
    if not isinstance(fraction, int | float) or not 0 < float(fraction) < 1:
        raise StageInputError(f"validation_fraction must be between 0 and 1 (exclusive), got {fraction!r}")
    if request.max_side is not None and (not isinstance(request.max_side, int) or request.max_side < 32):
        raise StageInputError(f"max_side must be an integer of at least 32 pixels or None, got {request.max_side!r}")
    if request.exif_stored_frame not in EXIF_STORED_FRAME_POLICIES:
        raise StageInputError(
            f"exif_stored_frame must be one of {', '.join(EXIF_STORED_FRAME_POLICIES)}, got "
            f"{request.exif_stored_frame!r}"
        )
    if not isinstance(request.check_boxes, bool):
        raise StageInputError(f"check_boxes must be true or false, got {request.check_boxes!r}")
    if not isinstance(request.keep_emptied_images, bool):
        raise StageInputError(f"keep_emptied_images must be true or false, got {request.keep_emptied_images!r}")
    if request.workers is not None and (not isinstance(request.workers, int) or request.workers < 0):
        raise StageInputError(f"workers must be a non-negative integer or None, got {request.workers!r}")


def materialize(request: MaterializeRequest, *, storage: Storage) -> DatasetExport:
    """Export ``request.source`` as JPEG + COCO JSON under ``<output_uri>/<fingerprint>/`` (or reuse it)."""
    started = time.monotonic()
    _check_request(request)
    config = SchemaConfig.from_mapping(request.schema)
    # hub sources read HF_HUB_OFFLINE as it is now; local ones never import datasets (1.5 s of start-up)
    with hub_offline_from_env() if not looks_local(request.source) else contextlib.nullcontext():
        source = open_source(request.source, revision=request.revision, streaming=request.streaming)
        for note in source.notes:
            log.warning("materialize: note: %s", note)
        passes, split_plan = _plan_passes(source, request.split_map, request.validation_fraction, request.seed)
        schema = _resolve_all(config, source, passes)
        opened = time.monotonic()
        identity = source.identity()
        fingerprinted = time.monotonic()
        schema_dict = schema.config.to_dict()
        schema_dict.pop("name")
        schema_dict["class_names"] = list(schema.class_names)
        fingerprint = _fingerprint(
            {
                "format": FORMAT,
                "exporter": EXPORTER_VERSION,
                "jpeg_quality": JPEG_QUALITY,
                "source": identity,
                "schema": schema_dict,
                "splits": split_plan,
                "max_side": request.max_side,
                "keep_emptied_images": request.keep_emptied_images,
                "exif_stored_frame": request.exif_stored_frame,
            }
        )
        root = request.output_uri if is_s3_uri(request.output_uri) else os.path.abspath(request.output_uri)
        dataset_uri = join_uri(root, fingerprint)
        if storage.exists(join_uri(dataset_uri, DATASET_MANIFEST_FILE)):
            existing = DatasetManifest.read_export(dataset_uri, storage=storage)
            if existing.fingerprint == fingerprint:
                log.info(
                    "materialize: complete export already at %s (fingerprint %s); nothing to do",
                    dataset_uri,
                    fingerprint,
                )
                return DatasetExport.from_manifest(dataset_uri, existing, reused=True)
        first = source.splits[passes[0].source_split]
        box_checks: dict[str, Any] | None = None
        if request.check_boxes:
            box_checks = check_boxes(schema, first, f"split {first.name!r} of {source.description}")
        seeded = f", validation = seeded {request.validation_fraction:.0%} of train"
        log.info(
            "materialize: %s -> %s (schema %s, %d classes, splits %s%s)",
            source.description,
            dataset_uri,
            schema.config.name,
            len(schema.class_names),
            split_plan["map"],
            seeded if split_plan["seeded_validation"] else "",
        )
        staging_uri = _prepare_staging(root, fingerprint, dataset_uri, storage)
        tmpdir = Path(tempfile.mkdtemp(prefix="yolonas-materialize-"))
        done = False
        try:
            exporter = Exporter(
                schema,
                staging_uri,
                storage,
                tmpdir,
                source.splits,
                max_side=request.max_side,
                workers=request.workers,
                keep_emptied_images=request.keep_emptied_images,
                exif_stored_frame=request.exif_stored_frame,
            )
            ok = False
            try:
                exporter.run(passes)
                ok = True
            finally:
                exporter.close(ok)
            manifest = _finish(
                request,
                source,
                schema,
                split_plan,
                exporter,
                fingerprint,
                staging_uri,
                dataset_uri,
                storage,
                {"open_s": opened - started, "fingerprint_s": fingerprinted - opened},
                started,
                box_checks,
            )
            manifest = _move_into_place(staging_uri, dataset_uri, manifest, storage)
            done = True
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
            if not done:
                _discard(staging_uri, storage)
        return DatasetExport.from_manifest(dataset_uri, manifest, reused=False)


# -- the final location holds complete exports only ----------------------------------------------------
#: Local exports are written to ``<root>/.incomplete-<fingerprint>-<pid>-<random>/`` and renamed into place.
STAGING_PREFIX = ".incomplete-"


def _prepare_staging(root: str, fingerprint: str, dataset_uri: str, storage: Storage) -> str:
    """Where this run writes, and the leftovers of earlier runs of the same fingerprint removed.

    Local: a fresh hidden folder beside the final one, renamed into place once complete (one ``rename``:
    the final folder appears whole or not at all). S3 has no rename, and a server-side copy of every image
    would double the requests and the time, so an S3 export is written in place, its manifest last: readers
    trust only an export with a manifest (:meth:`DatasetManifest.read_export`), a failed run deletes what
    it wrote, and a run killed outright leaves files that the next run of the same fingerprint deletes first.
    """
    if is_s3_uri(root):
        if storage.list_files(dataset_uri):  # no manifest (checked by the caller): a killed run's leftovers
            log.warning("materialize: removing the incomplete export at %s (no manifest) before writing", dataset_uri)
            storage.delete_tree(dataset_uri)
        return dataset_uri
    os.makedirs(root, exist_ok=True)
    for stale in Path(root).glob(f"{STAGING_PREFIX}{fingerprint}-*"):
        if _still_running(stale):  # a concurrent run of the same export: let it finish (one of the two renames wins)
            continue
        log.warning("materialize: removing %s, left by a run that did not finish", stale)
        shutil.rmtree(stale, ignore_errors=True)
    if os.path.lexists(dataset_uri):  # no manifest: written in place by an earlier version and never finished
        log.warning("materialize: removing the incomplete export at %s (no manifest) before writing", dataset_uri)
        shutil.rmtree(dataset_uri, ignore_errors=True)
    staging = os.path.join(root, f"{STAGING_PREFIX}{fingerprint}-{os.getpid()}-{secrets.token_hex(4)}")
    os.makedirs(staging)
    Path(staging, _OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    return staging


#: Inside a staging folder: "<host> <pid>" of the run writing it (not part of the export: removed before the rename).
_OWNER_FILE = ".owner"


def _still_running(staging: Path) -> bool:
    """Whether the run that owns ``staging`` is alive on this host (a run elsewhere, or unknown: no)."""
    try:
        host, pid = (staging / _OWNER_FILE).read_text().split()
        if host != socket.gethostname():
            return False
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return int(pid) != os.getpid()


def _move_into_place(
    staging_uri: str, dataset_uri: str, manifest: DatasetManifest, storage: Storage
) -> DatasetManifest:
    """Rename a complete local export to its final folder (S3: already there)."""
    if staging_uri == dataset_uri:
        return manifest
    Path(staging_uri, _OWNER_FILE).unlink(missing_ok=True)
    try:
        os.rename(staging_uri, dataset_uri)
    except OSError:
        # another run of the same fingerprint finished first: its export is the same, keep it
        if not storage.exists(join_uri(dataset_uri, DATASET_MANIFEST_FILE)):
            raise
        shutil.rmtree(staging_uri, ignore_errors=True)
        return DatasetManifest.read_export(dataset_uri, storage=storage)
    return manifest


def _discard(staging_uri: str, storage: Storage) -> None:
    """After a failure: nothing of this run stays (locally its staging folder; on S3 what it wrote)."""
    try:
        if is_s3_uri(staging_uri):
            if not storage.exists(join_uri(staging_uri, DATASET_MANIFEST_FILE)):
                storage.delete_tree(staging_uri)
        else:
            shutil.rmtree(staging_uri, ignore_errors=True)
    except Exception as exc:  # the original error matters more; the next run cleans up
        log.warning("materialize: could not remove the incomplete export at %s: %s", staging_uri, exc)


def _finish(
    request: MaterializeRequest,
    source: OpenedSource,
    schema: ResolvedSchema,
    split_plan: dict[str, Any],
    exporter: Exporter,
    fingerprint: str,
    write_uri: str,
    final_uri: str,
    storage: Storage,
    timings: dict[str, float],
    started: float,
    box_checks: dict[str, Any] | None = None,
) -> DatasetManifest:
    """Check the export is usable, upload the COCO files, write the report, and the manifest last, all under
    ``write_uri`` (the staging folder of a local export; ``final_uri`` is where it will be)."""
    class_names = list(schema.class_names)
    writers = exporter.writers
    train = writers["train"]
    drops_total: Counter[str] = Counter()
    corrections_total: Counter[str] = Counter()
    for writer in writers.values():
        drops_total.update(writer.stats.drops)
        corrections_total.update(writer.stats.corrections)
    if train.images == 0 or train.annotations == 0:
        raise StageInputError(
            f"{source.description} gave no usable training data: {train.rows} train rows, {train.images} images, "
            f"{train.annotations} boxes kept; drops: {dict(drops_total)}. Check the schema (bbox_format, "
            "normalized, category_key) against the data"
        )
    validation = writers.get("validation")
    if validation is not None and validation.images == 0:
        raise StageInputError(
            f"the validation split of {source.description} has no usable images ({validation.rows} rows, drops: "
            f"{dict(validation.stats.drops)}); map a usable split to 'validation' in split_map, or drop the mapping "
            "to hold out a seeded share of train (validation_fraction)"
        )
    histogram = {name: 0 for name in class_names}
    for writer in writers.values():
        for index, count in enumerate(writer.histogram):
            histogram[class_names[index]] += count
    splits: dict[str, SplitFiles] = {}
    for name, writer in writers.items():
        local = exporter.tmpdir / f"{name}.json"
        writer.assemble(local, class_names, fingerprint)
        annotation_file = f"annotations/{name}.json"
        storage.upload_file(local, join_uri(write_uri, annotation_file))
        local.unlink()
        splits[name] = SplitFiles(
            images=writer.images,
            annotations=writer.annotations,
            images_dir=f"images/{name}",
            annotation_file=annotation_file,
        )
    export_s = time.monotonic() - started - timings["open_s"] - timings["fingerprint_s"]
    rows = sum(w.rows for w in writers.values())
    images = sum(w.images for w in writers.values())
    total_s = time.monotonic() - started
    schema_dict = schema.config.to_dict()
    report = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "source": {"source": request.source, "revision": source.revision, "kind": source.kind},
        "schema": schema_dict,
        "split_plan": split_plan,
        "max_side": request.max_side,
        "keep_emptied_images": request.keep_emptied_images,
        "exif_stored_frame": request.exif_stored_frame,
        "splits": {name: writer.report() for name, writer in writers.items()},
        "drops_total": dict(sorted(drops_total.items())),
        "corrections_total": dict(sorted(corrections_total.items())),
        "box_checks": box_checks,
        "class_histogram": histogram,
        "timings": {
            **{k: round(v, 3) for k, v in timings.items()},
            "export_s": round(export_s, 3),
            "total_s": round(total_s, 3),
            "rows_per_s": round(rows / total_s, 1) if total_s > 0 else None,
        },
    }
    storage.write_text(join_uri(write_uri, DATASET_REPORT_FILE), json.dumps(report, indent=2) + "\n")
    manifest = DatasetManifest(
        fingerprint=fingerprint,
        class_names=class_names,
        splits=splits,
        class_histogram=histogram,
        source=DatasetSource(source=request.source, revision=source.revision, schema_=schema_dict),
        report_file=DATASET_REPORT_FILE,
        files=images + len(splits) + 1,  # images, annotation files, report
    )
    # last: the manifest is what makes the export visible as complete
    manifest.write(join_uri(write_uri, DATASET_MANIFEST_FILE), storage=storage)
    drops_text = ", ".join(f"{k} {v}" for k, v in sorted(drops_total.items())) or "none"
    passthrough = sum(w.passthrough for w in writers.values())
    log.info(
        "materialize: done in %.1fs: %d images (%d JPEG byte-for-byte, %d converted), %d boxes, %s rows/s; "
        "%s (images/boxes); dropped: %s; at %s",
        total_s,
        images,
        passthrough,
        images - passthrough,
        sum(w.annotations for w in writers.values()),
        f"{rows / max(total_s, 1e-9):,.0f}",
        ", ".join(f"{n} {s.images}/{s.annotations}" for n, s in splits.items()),
        drops_text,
        final_uri,
    )
    return manifest
