"""Materialization stage: a Hugging Face detection dataset to JPEG files + COCO JSON, at the speed of the disk.

The export lands under ``<output_uri>/<fingerprint>/`` (local folder or ``s3://``)::

    images/<split>/<id>.jpg       stored JPEG bytes, unchanged where possible
    annotations/<split>.json      COCO: images, annotations (xywh px), categories 1..N in class-name order
    report.json                   counts per split, drops per reason, timings
    manifest.json                 written last: the completion marker the next stages look for

The fingerprint hashes the source content (or hub commit) and every setting that changes the output, so a
second run with the same inputs finds the manifest and does nothing. Rows stream through in bounded
batches; image conversions (non-JPEG, EXIF-rotated, downscaled) run in worker processes and writes in a
thread pool, and results are committed in row order, so ids and the COCO JSON are byte-identical on rerun.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from yolonas_pipeline.cpus import available_cpus
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.materialize_images import (
    CONVERT,
    CORRUPT,
    JPEG_QUALITY,
    PASSTHROUGH,
    VERIFY,
    ConversionJob,
    ConversionResult,
    ImagePlan,
    ImageSource,
    convert_chunk,
    inspect_image,
)
from yolonas_pipeline.materialize_pool import ConversionPool
from yolonas_pipeline.materialize_schema import (
    PRESETS,
    BoxStats,
    ResolvedSchema,
    SchemaConfig,
    convert_boxes,
    resolve_schema,
)
from yolonas_pipeline.materialize_sources import (
    SPLIT_ALIASES,
    FileOrigin,
    OpenedSource,
    SourceSplit,
    hub_offline_from_env,
    looks_local,
    open_source,
)
from yolonas_pipeline.storage import DEFAULT_TRANSFER_WORKERS, Storage, is_s3_uri, join_uri

__all__ = [
    "FORMAT",
    "PRESETS",
    "MaterializeRequest",
    "MaterializeResult",
    "SchemaConfig",
    "materialize",
    "read_manifest",
]

FORMAT = "yolonas-pipeline/coco-detection@1"
#: Bump when the bytes written for the same input change; it is part of the fingerprint.
EXPORTER_VERSION = 1
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"
OUTPUT_SPLITS = ("train", "validation", "test")
PROGRESS_EVERY_S = 5.0
#: Rows converted per conversion task: enough to amortise the pipe round trip, few enough to balance the load.
CONVERT_CHUNK = 4
#: Chunks queued per conversion worker before this process converts the next chunk itself: enough that a
#: worker does not run dry while this process converts one chunk (~30 ms for 640x480 PNGs).
WORKER_QUEUE_DEPTH = 4
#: Bounds on rows read but not yet committed; they hold image bytes, so they bound memory.
MAX_ROWS_IN_FLIGHT = 512
#: Plus 8 MiB per conversion worker: a few chunks queued per worker keep the pool busy.
MAX_BYTES_IN_FLIGHT = 32 << 20
#: Rows taken from a record batch at a time (slicing is free; Python lists of a whole batch are not).
SLICE_ROWS = 64
#: Local image writer threads. Two overlap the kernel's file creation with the row loop; more only contend
#: for the one directory's lock (measured on ext4: more kernel time, no more throughput).
LOCAL_WRITE_WORKERS = int(os.environ.get("YOLONAS_MATERIALIZE_LOCAL_WRITERS", "2"))
#: Local images per write task.
LOCAL_WRITE_GROUP = 16


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


@dataclass
class MaterializeResult:
    dataset_uri: str  # <output_uri>/<fingerprint>
    fingerprint: str
    class_names: list[str]
    splits: dict[str, dict[str, int]]  # {"train": {"images": n, "annotations": m}, ...}
    class_histogram: dict[str, int]  # annotations per class name, all splits
    reused: bool  # True when a complete export already existed (nothing written)
    report_uri: str
    manifest_uri: str

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def read_manifest(dataset_uri: str, *, storage: Storage) -> dict[str, Any]:
    """The manifest of a complete export; :class:`StageInputError` naming the URI when there is none."""
    uri = join_uri(dataset_uri, MANIFEST_NAME)
    try:
        text = storage.read_text(uri)
    except FileNotFoundError as exc:
        raise StageInputError(
            f"no {MANIFEST_NAME} at {uri}: the export at {dataset_uri} is incomplete or the URI is wrong "
            "(run the materialize stage first)"
        ) from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StageInputError(f"{uri} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise StageInputError(f"{uri} has format {found!r}; expected {FORMAT!r}")
    return manifest


def _result_from_manifest(dataset_uri: str, manifest: Mapping[str, Any], *, reused: bool) -> MaterializeResult:
    return MaterializeResult(
        dataset_uri=dataset_uri,
        fingerprint=manifest["fingerprint"],
        class_names=list(manifest["class_names"]),
        splits={s: {"images": v["images"], "annotations": v["annotations"]} for s, v in manifest["splits"].items()},
        class_histogram=dict(manifest["class_histogram"]),
        reused=reused,
        report_uri=join_uri(dataset_uri, REPORT_NAME),
        manifest_uri=join_uri(dataset_uri, MANIFEST_NAME),
    )


# -- splits ------------------------------------------------------------------------------------------


@dataclass
class _Pass:
    """One read of one source split; rows go to ``output``, or some to validation by the selector."""

    source_split: str
    output: str
    num_rows: int | None
    validation_selector: Callable[[int], bool] | None = None


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
) -> tuple[list[_Pass], dict[str, Any]]:
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
    passes = []
    seeded = None
    if "validation" not in mapping:
        seeded = {"fraction": fraction, "seed": seed}
        passes.append(_Pass(train.name, "train", train.num_rows, _validation_selector(train.num_rows, fraction, seed)))
    else:
        passes.append(_Pass(train.name, "train", train.num_rows))
    for output in ("validation", "test"):
        if output in mapping:
            split = source.splits[mapping[output]]
            passes.append(_Pass(split.name, output, split.num_rows))
    return passes, {"map": dict(sorted(mapping.items())), "seeded_validation": seeded}


# -- COCO writing ------------------------------------------------------------------------------------


class _SplitWriter:
    """Streams one split's COCO entries to temporary files; holds counters only, never the entries."""

    def __init__(self, name: str, tmpdir: Path, num_classes: int) -> None:
        self.name = name
        self._images_path = tmpdir / f"{name}.images.part"
        self._annotations_path = tmpdir / f"{name}.annotations.part"
        self._images: IO[str] = open(self._images_path, "w", encoding="utf-8", buffering=1 << 20)  # noqa: SIM115
        self._annotations: IO[str] = open(  # noqa: SIM115
            self._annotations_path, "w", encoding="utf-8", buffering=1 << 20
        )
        self.images = 0
        self.annotations = 0
        self.rows = 0
        self.passthrough = 0
        self.converted = 0
        self.without_boxes = 0
        self.histogram = [0] * num_classes
        self.stats = BoxStats()

    def add(self, width: int, height: int, boxes: list[tuple[int, float, float, float, float]], source_id: Any) -> str:
        self.images += 1
        image_id = self.images
        file_name = f"{image_id:08d}.jpg"
        if source_id is None:
            extra = ""
        elif type(source_id) is int:
            extra = f',"source_id":{source_id}'
        else:
            extra = f',"source_id":{json.dumps(source_id)}'
        self._images.write(
            ("" if image_id == 1 else ",\n")
            + f'{{"id":{image_id},"file_name":"{file_name}","width":{width},"height":{height}{extra}}}'
        )
        if not boxes:
            self.without_boxes += 1
        for index, x, y, w, h in boxes:
            self.annotations += 1
            self.histogram[index] += 1
            self._annotations.write(
                ("" if self.annotations == 1 else ",\n")
                + f'{{"id":{self.annotations},"image_id":{image_id},"category_id":{index + 1},'
                f'"bbox":[{x!r},{y!r},{w!r},{h!r}],"area":{round(w * h, 2)!r},"iscrowd":0}}'
            )
        return file_name

    def assemble(self, path: Path, class_names: list[str], fingerprint: str) -> None:
        """The final COCO JSON: fixed header, the streamed entries, the categories."""
        self._images.close()
        self._annotations.close()
        categories = ",\n".join(
            json.dumps({"id": i + 1, "name": name, "supercategory": "object"}) for i, name in enumerate(class_names)
        )
        info = json.dumps({"description": f"{FORMAT} {self.name}", "version": fingerprint})
        with open(path, "w", encoding="utf-8") as out:
            out.write(f'{{"info":{info},"licenses":[],\n"images":[\n')
            with open(self._images_path, encoding="utf-8") as part:
                shutil.copyfileobj(part, out, 1 << 20)
            out.write('\n],\n"annotations":[\n')
            with open(self._annotations_path, encoding="utf-8") as part:
                shutil.copyfileobj(part, out, 1 << 20)
            out.write(f'\n],\n"categories":[\n{categories}\n]}}\n')

    def close(self) -> None:
        self._images.close()
        self._annotations.close()

    def report(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "images": self.images,
            "annotations": self.annotations,
            "passthrough_jpeg": self.passthrough,
            "converted": self.converted,
            "images_without_boxes": self.without_boxes,
            "boxes_clipped": self.stats.clipped,
            "drops": dict(sorted(self.stats.drops.items())),
        }


_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def _write_file(path: str, data: bytes | memoryview, ref: tuple[FileOrigin, int] | None = None) -> None:
    """One image to a local file: plain create-and-write, no temporary name.

    A half-written image from a killed run is harmless: the manifest, written last, is what marks an
    export complete, and a rerun rewrites every file. (Storage.write_bytes' temp-file-and-rename and its
    mkdir per call would cost as much as the write itself.) With ``ref`` (where ``data`` lies in a mapped
    source file) the bytes go file to file in the kernel: no source page is faulted into this process.
    """
    fd = os.open(path, _CREATE_FLAGS, 0o644)  # os.open: no buffering layer, no isatty/fstat/lseek per file
    try:
        if ref is not None:
            origin, offset = ref
            try:
                _send(fd, origin.fd, offset, len(data))
                return
            except OSError as exc:  # no file-to-file sendfile here: write from the view instead
                if exc.errno not in _NO_SENDFILE:
                    raise
                os.lseek(fd, 0, os.SEEK_SET)
                os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if ref is not None:
            ref[0].release(ref[1], len(data))
    finally:
        os.close(fd)


def _send(out_fd: int, in_fd: int, offset: int, count: int) -> None:
    while count > 0:
        sent = os.sendfile(out_fd, in_fd, offset, count)
        if sent <= 0:
            raise OSError(errno.EIO, "sendfile made no progress")
        offset += sent
        count -= sent


_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.ENOTSOCK, errno.EOPNOTSUPP, errno.ENOTSUP}


class _WritePool:
    """Concurrent image writes with a bounded number of writes (and so bytes) in flight.

    Local files are written in groups per task (a thread hop per 100 KB file costs more than the write);
    S3 objects one per task, because there request latency, not CPU, is what concurrency hides.
    """

    def __init__(self, storage: Storage, *, s3: bool, workers: int, max_pending: int, group: int) -> None:
        self._storage = storage
        self._s3 = s3
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="materialize-write")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._group_size = group
        self._group: list[tuple[str, bytes | memoryview, tuple[FileOrigin, int] | None]] = []
        self._error: BaseException | None = None

    def submit(self, uri: str, data: bytes | memoryview, ref: tuple[FileOrigin, int] | None = None) -> None:
        self._group.append((uri, data, ref))
        if len(self._group) >= self._group_size:
            self.flush()

    def flush(self) -> None:
        if self._error is not None:
            raise self._error
        if not self._group:
            return
        group, self._group = self._group, []
        self._slots.acquire()
        self._pool.submit(self._write, group)

    def _write(self, group: list[tuple[str, bytes | memoryview, tuple[FileOrigin, int] | None]]) -> None:
        try:
            for uri, data, ref in group:
                if self._s3:
                    self._storage.write_bytes(uri, bytes(data))  # botocore wants bytes, not a memoryview
                else:
                    _write_file(uri, data, ref)
        except BaseException as exc:
            if self._error is None:
                self._error = exc
        finally:
            self._slots.release()

    def finish(self) -> None:
        self.flush()
        self._pool.shutdown(wait=True)
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        self._group = []
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass(slots=True)
class _Row:
    writer: _SplitWriter
    data: bytes | memoryview | None
    ref: tuple[FileOrigin, int] | None  # where ``data`` lies in a mapped source file
    plan: ImagePlan | None
    bboxes: Any
    categories: Any
    source_id: Any
    drop: str | None = None
    future: Future[list[ConversionResult]] | None = None
    slot: int = 0
    result: ConversionResult | None = None


class _Progress:
    def __init__(self, log: Callable[[str], None], total: int | None, every_s: float) -> None:
        self._log = log
        self._total = total
        self._every = every_s
        self._start = time.monotonic()
        self._next = self._start + every_s
        self.done = 0

    def tick(self) -> None:
        self.done += 1
        if self.done & 63 == 0:
            now = time.monotonic()
            if now >= self._next:
                self._next = now + self._every
                self._log(self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        if self._total:
            eta = (self._total - self.done) / rate if rate > 0 else float("inf")
            return f"materialize: {self.done}/{self._total} rows, {rate:,.0f} rows/s, ETA {eta:,.0f}s"
        return f"materialize: {self.done} rows, {rate:,.0f} rows/s"


# -- the export --------------------------------------------------------------------------------------


def _column(batch: Any, name: str) -> Any:
    column = batch.column(name)
    return column.combine_chunks() if hasattr(column, "combine_chunks") else column


def _binary_values(array: Any, origin: FileOrigin | None = None) -> tuple[list[Any], list[Any]]:
    """Zero-copy ``memoryview``s of a binary array's values (None where null), and for each the
    ``(origin, file offset)`` of its bytes when the array lies in a memory-mapped file.

    No Python ``bytes`` copy of every image is made: that saves a memcpy of the whole dataset and keeps the
    heap flat; a local export then copies each image file to file in the kernel.
    """
    import numpy as np
    import pyarrow as pa

    count = len(array)
    if pa.types.is_binary(array.type):
        dtype: Any = np.int32
    elif pa.types.is_large_binary(array.type):
        dtype = np.int64
    else:
        return list(array.to_pylist()), [None] * count
    if count == 0:
        return [], []
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=dtype, count=array.offset + count + 1)[array.offset :].tolist()
    # cast: Arrow exports its buffers as signed chars, and the JPEG header parser compares bytes as 0..255
    view = memoryview(data_buffer).cast("B") if data_buffer is not None else memoryview(b"")
    values: list[Any] = [view[offsets[i] : offsets[i + 1]] for i in range(count)]
    refs: list[Any] = [None] * count
    if origin is not None and data_buffer is not None:
        base = origin.offset_of(data_buffer.address, data_buffer.size)
        if base is not None:
            refs = [(origin, base + offsets[i]) for i in range(count)]
    if array.null_count:
        for index, valid in enumerate(array.is_valid().to_pylist()):
            if not valid:
                values[index] = None
                refs[index] = None
    return values, refs


def _struct_field(array: Any, key: str) -> list[Any]:
    """``array[key]`` for a struct array, None where the struct itself is null."""
    values = array.field(key).to_pylist()
    if array.null_count:
        for index, valid in enumerate(array.is_valid().to_pylist()):
            if not valid:
                values[index] = None
    return values


class _Exporter:
    def __init__(
        self,
        request: MaterializeRequest,
        schema: ResolvedSchema,
        dataset_uri: str,
        storage: Storage,
        log: Callable[[str], None],
        tmpdir: Path,
        sources: dict[str, SourceSplit],
    ) -> None:
        self.request = request
        self.sources = sources
        self.schema = schema
        self.dataset_uri = dataset_uri
        self.storage = storage
        self.log = log
        self.tmpdir = tmpdir
        self.class_names = list(schema.class_names)
        self.name_to_index = {n: i for i, n in enumerate(self.class_names)} if schema.category_is_str else None
        workers = request.workers if request.workers is not None else available_cpus()
        self.workers = max(0, int(workers))
        self._pool: ConversionPool | None = None
        self._max_bytes = MAX_BYTES_IN_FLIGHT + (8 << 20) * self.workers
        s3 = is_s3_uri(dataset_uri)
        self.writes = _WritePool(
            storage,
            s3=s3,
            workers=DEFAULT_TRANSFER_WORKERS if s3 else LOCAL_WRITE_WORKERS,
            max_pending=4 * DEFAULT_TRANSFER_WORKERS if s3 else 2 * LOCAL_WRITE_WORKERS,
            group=1 if s3 else LOCAL_WRITE_GROUP,
        )
        self._images_prefix = join_uri(dataset_uri, "images")
        self.writers: dict[str, _SplitWriter] = {}
        self._pending: deque[_Row] = deque()
        self._pending_bytes = 0
        self._chunk: list[_Row] = []
        self.progress: _Progress | None = None

    # rows -----------------------------------------------------------------------------------------
    def _writer(self, name: str) -> _SplitWriter:
        if name not in self.writers:
            self.writers[name] = _SplitWriter(name, self.tmpdir, len(self.class_names))
            if not is_s3_uri(self.dataset_uri):
                os.makedirs(join_uri(self.dataset_uri, "images", name), exist_ok=True)
        return self.writers[name]

    def _images(self, part: Any, origin: FileOrigin | None) -> tuple[list[Any], list[Any]]:
        """Image bytes (memoryviews where possible) and file references of one slice of rows."""
        cfg = self.schema.config
        images = _column(part, cfg.image_column)
        if self.schema.image_kind == "path":
            return [_read_path(p) for p in images.to_pylist()], [None] * part.num_rows
        if self.schema.image_kind == "binary":
            return _binary_values(images, origin)
        data, refs = _binary_values(images.field("bytes"), origin)
        null_structs = (not valid for valid in images.is_valid().to_pylist()) if images.null_count else ()
        for index, missing in enumerate(null_structs):
            if missing:
                data[index] = refs[index] = None
        if "path" in {f.name for f in images.type}:  # Image features stored as file paths only
            for index, path in enumerate(_struct_field(images, "path")):
                if data[index] is None and path:
                    data[index] = _read_path(path)
        return data, refs

    def _rows(self, split: SourceSplit) -> Iterator[tuple[Any, Any, Any, Any, Any]]:
        """(image bytes or None, file reference, bboxes, categories, source id) per row, in source order."""
        cfg = self.schema.config
        for batch, origin in split.read(self.schema.columns):
            for start in range(0, batch.num_rows, SLICE_ROWS):
                part = batch.slice(start, SLICE_ROWS)
                data, refs = self._images(part, origin)
                if cfg.objects_column is None:
                    bboxes = _column(part, cfg.bbox_key).to_pylist()
                    categories = _column(part, cfg.category_key).to_pylist()
                elif self.schema.objects_kind == "struct":
                    objects = _column(part, cfg.objects_column)
                    bboxes = _struct_field(objects, cfg.bbox_key)
                    categories = _struct_field(objects, cfg.category_key)
                else:
                    objects = _column(part, cfg.objects_column).to_pylist()
                    bboxes = [None if o is None else [b.get(cfg.bbox_key) for b in o] for o in objects]
                    categories = [None if o is None else [b.get(cfg.category_key) for b in o] for o in objects]
                ids = (
                    _column(part, cfg.image_id_column).to_pylist()
                    if self.schema.has_image_id and cfg.image_id_column
                    else [None] * part.num_rows
                )
                yield from zip(data, refs, bboxes, categories, ids, strict=True)

    def run(self, passes: list[_Pass]) -> None:
        total = sum(p.num_rows for p in passes) if all(p.num_rows is not None for p in passes) else None
        self.progress = _Progress(self.log, total, PROGRESS_EVERY_S)
        for output in OUTPUT_SPLITS:  # fixed order: the split files exist even when a split ends up empty
            if any(p.output == output for p in passes) or (output == "validation" and passes[0].validation_selector):
                self._writer(output)
        for one_pass in passes:
            train, validation = self._writer(one_pass.output), self.writers.get("validation")
            selector = one_pass.validation_selector
            for index, (data, ref, bboxes, categories, source_id) in enumerate(self._rows(self._split(one_pass))):
                writer = validation if selector is not None and selector(index) else train
                assert writer is not None
                self._add(writer, data, ref, bboxes, categories, source_id)
            self._flush_chunk()
        while self._pending:
            self._commit(self._pending.popleft())

    def _split(self, one_pass: _Pass) -> SourceSplit:
        return self.sources[one_pass.source_split]

    def _add(self, writer: _SplitWriter, data: Any, ref: Any, bboxes: Any, categories: Any, source_id: Any) -> None:
        row = _Row(writer, data, ref, None, bboxes, categories, source_id)
        if data is None:
            row.drop = "missing_image"
        else:
            row.plan = inspect_image(data, self.request.max_side)
            if row.plan.action == CORRUPT:
                row.drop = "corrupt_image"
            elif row.plan.action in (CONVERT, VERIFY):
                self._queue_conversion(row)
            else:
                row.result = (PASSTHROUGH, None)
        self._pending.append(row)
        self._pending_bytes += len(data) if data else 0
        while self._pending and (
            len(self._pending) > MAX_ROWS_IN_FLIGHT or self._pending_bytes > self._max_bytes or self._ready()
        ):
            self._commit(self._pending.popleft())

    def _ready(self) -> bool:
        """Whether the oldest row can be committed without waiting for a conversion."""
        head = self._pending[0]
        if head.drop is not None or head.result is not None:
            return True
        return head.future is not None and head.future.done()  # not yet submitted: not ready either

    def _queue_conversion(self, row: _Row) -> None:
        self._chunk.append(row)
        if len(self._chunk) >= CONVERT_CHUNK:
            self._flush_chunk()

    def _flush_chunk(self) -> None:
        """Hand the rows gathered so far to a conversion worker, or convert them here.

        ``workers`` counts this process: it converts a chunk itself whenever every worker already has
        ``WORKER_QUEUE_DEPTH`` chunks queued, so N processes keep N cores busy with nothing idle while the
        workers start, and no (N+1)th process competes for the cores and their caches.
        """
        if not self._chunk:
            return
        chunk, self._chunk = self._chunk, []
        future = None
        if self.workers > 1:
            if self._pool is None:  # started by the first image that needs converting: JPEG-only exports never pay
                self._pool = ConversionPool(self.workers - 1)
            future = self._pool.try_submit([_job(r, by_reference=True) for r in chunk], max_queued=WORKER_QUEUE_DEPTH)
        if future is None:
            for row, result in zip(chunk, convert_chunk([_job(r, by_reference=False) for r in chunk]), strict=True):
                row.result = result
            return
        for slot, row in enumerate(chunk):
            row.future, row.slot = future, slot

    def _commit(self, row: _Row) -> None:
        """Finish one row in source order: decide drops, convert boxes, write the image, append the JSON."""
        self._pending_bytes -= len(row.data) if row.data else 0
        writer = row.writer
        writer.rows += 1
        if self.progress is not None:
            self.progress.tick()
        if row.result is None and row.drop is None:
            if row.future is None:
                self._flush_chunk()
            if row.result is None:
                assert row.future is not None
                row.result = row.future.result()[row.slot]
        if row.drop is None and row.result is not None and row.result[0] == CORRUPT:
            row.drop = "corrupt_image"
        if row.drop is not None:
            writer.stats.drops[row.drop] += 1
            count = max(len(row.bboxes or ()), len(row.categories or ()))
            if count:
                writer.stats.drops["boxes_on_dropped_images"] += count
            return
        assert row.plan is not None and row.result is not None and row.data is not None
        status, payload = row.result
        ref = None
        if status == PASSTHROUGH:
            data, ref = row.data, row.ref
            writer.passthrough += 1
        else:
            data = payload
            writer.converted += 1
        boxes = convert_boxes(
            row.bboxes,
            row.categories,
            fmt=self.schema.config.bbox_format,
            normalized=self.schema.config.normalized,
            source_size=row.plan.source_size,
            output_size=row.plan.output_size,
            num_classes=len(self.class_names),
            name_to_index=self.name_to_index,
            stats=writer.stats,
        )
        width, height = row.plan.output_size
        file_name = writer.add(width, height, boxes, row.source_id)
        self.writes.submit(f"{self._images_prefix}/{writer.name}/{file_name}", data, ref)
        row.data = None

    def close(self, ok: bool) -> None:
        if self._pool is not None:
            self._pool.close(wait=ok)
        if ok:
            self.writes.finish()
        else:
            self.writes.abort()
        for writer in self.writers.values():
            writer.close()


def _job(row: _Row, *, by_reference: bool) -> ConversionJob:
    """One row's conversion job. For a worker, the image is where it lies in a source file when it lies in
    one (the worker reads it itself: nothing large goes through the pipe), else its bytes."""
    assert row.plan is not None and row.data is not None
    source: ImageSource = row.data
    if by_reference:
        source = (row.ref[0].path, row.ref[1], len(row.data)) if row.ref is not None else bytes(row.data)
    return (row.plan.action, source, row.plan.orientation, row.plan.output_size)


def _read_path(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


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
    if request.workers is not None and (not isinstance(request.workers, int) or request.workers < 0):
        raise StageInputError(f"workers must be a non-negative integer or None, got {request.workers!r}")


def materialize(
    request: MaterializeRequest, *, storage: Storage, log: Callable[[str], None] = print
) -> MaterializeResult:
    """Export ``request.source`` as JPEG + COCO JSON under ``<output_uri>/<fingerprint>/`` (or reuse it)."""
    started = time.monotonic()
    _check_request(request)
    config = SchemaConfig.from_mapping(request.schema)
    # hub sources read HF_HUB_OFFLINE as it is now; local ones never import datasets (1.5 s of start-up)
    with hub_offline_from_env() if not looks_local(request.source) else contextlib.nullcontext():
        source = open_source(request.source, revision=request.revision, streaming=request.streaming)
        for note in source.notes:
            log(f"materialize: note: {note}")
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
            }
        )
        root = request.output_uri if is_s3_uri(request.output_uri) else os.path.abspath(request.output_uri)
        dataset_uri = join_uri(root, fingerprint)
        manifest_uri = join_uri(dataset_uri, MANIFEST_NAME)
        if storage.exists(manifest_uri):
            manifest = read_manifest(dataset_uri, storage=storage)
            if manifest.get("fingerprint") == fingerprint:
                log(f"materialize: complete export already at {dataset_uri} (fingerprint {fingerprint}); nothing to do")
                return _result_from_manifest(dataset_uri, manifest, reused=True)
        log(
            f"materialize: {source.description} -> {dataset_uri} (schema {schema.config.name}, "
            f"{len(schema.class_names)} classes, splits {split_plan['map']}"
            + (
                f", validation = seeded {request.validation_fraction:.0%} of train"
                if split_plan["seeded_validation"]
                else ""
            )
            + ")"
        )
        tmpdir = Path(tempfile.mkdtemp(prefix="yolonas-materialize-"))
        exporter = _Exporter(request, schema, dataset_uri, storage, log, tmpdir, source.splits)
        ok = False
        try:
            exporter.run(passes)
            ok = True
        finally:
            exporter.close(ok)
            if not ok:
                shutil.rmtree(tmpdir, ignore_errors=True)
        try:
            return _finish(
                request,
                source,
                schema,
                split_plan,
                exporter,
                fingerprint,
                dataset_uri,
                storage,
                log,
                {"open_s": opened - started, "fingerprint_s": fingerprinted - opened},
                started,
            )
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)


def _resolve_all(config: SchemaConfig, source: OpenedSource, passes: list[_Pass]) -> ResolvedSchema:
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


def _finish(
    request: MaterializeRequest,
    source: OpenedSource,
    schema: ResolvedSchema,
    split_plan: dict[str, Any],
    exporter: _Exporter,
    fingerprint: str,
    dataset_uri: str,
    storage: Storage,
    log: Callable[[str], None],
    timings: dict[str, float],
    started: float,
) -> MaterializeResult:
    class_names = list(schema.class_names)
    writers = exporter.writers
    train = writers["train"]
    drops_total: Counter[str] = Counter()
    for writer in writers.values():
        drops_total.update(writer.stats.drops)
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
    splits: dict[str, dict[str, Any]] = {}
    for name, writer in writers.items():
        local = exporter.tmpdir / f"{name}.json"
        writer.assemble(local, class_names, fingerprint)
        annotation_file = f"annotations/{name}.json"
        storage.upload_file(local, join_uri(dataset_uri, annotation_file))
        local.unlink()
        splits[name] = {
            "images": writer.images,
            "annotations": writer.annotations,
            "images_dir": f"images/{name}",
            "annotation_file": annotation_file,
        }
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
        "splits": {name: writer.report() for name, writer in writers.items()},
        "drops_total": dict(sorted(drops_total.items())),
        "class_histogram": histogram,
        "timings": {
            **{k: round(v, 3) for k, v in timings.items()},
            "export_s": round(export_s, 3),
            "total_s": round(total_s, 3),
            "rows_per_s": round(rows / total_s, 1) if total_s > 0 else None,
        },
    }
    storage.write_text(join_uri(dataset_uri, REPORT_NAME), json.dumps(report, indent=2) + "\n")
    manifest = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "class_names": class_names,
        "splits": splits,
        "class_histogram": histogram,
        "source": {"source": request.source, "revision": source.revision, "schema": schema_dict},
        "report_file": REPORT_NAME,
        "files": images + len(splits) + 1,  # images, annotation files, report
    }
    # last: the manifest is what makes the export visible as complete
    storage.write_text(join_uri(dataset_uri, MANIFEST_NAME), json.dumps(manifest, indent=2) + "\n")
    drops_text = ", ".join(f"{k} {v}" for k, v in sorted(drops_total.items())) or "none"
    passthrough = sum(w.passthrough for w in writers.values())
    log(
        f"materialize: done in {total_s:.1f}s: {images} images ({passthrough} JPEG byte-for-byte, "
        f"{images - passthrough} converted), {sum(w.annotations for w in writers.values())} boxes, "
        f"{rows / max(total_s, 1e-9):,.0f} rows/s; "
        + ", ".join(f"{n} {s['images']}/{s['annotations']}" for n, s in splits.items())
        + f" (images/boxes); dropped: {drops_text}; at {dataset_uri}"
    )
    return _result_from_manifest(dataset_uri, manifest, reused=False)
