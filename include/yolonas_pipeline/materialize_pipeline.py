"""The materializer's row pipeline: rows in, in source order; images converted and written; COCO entries out.

:class:`Exporter` reads each :class:`Pass` (one source split into one output split, or into train and a
seeded validation share) row by row, plans each image (passthrough, conversion, verification, drop),
hands conversions to worker processes in chunks (or converts them itself when every worker is busy),
and commits rows strictly in source order: ids and the COCO JSON are byte-identical on rerun, whatever
the worker count. The rows in flight are bounded in number and bytes, so memory does not grow with
the dataset.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yolonas_pipeline.contracts import OUTPUT_SPLITS
from yolonas_pipeline.cpus import available_cpus
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.materialize_images import (
    BOXES_ROTATED,
    CONVERT,
    CORRUPT,
    DECLARED_SIZE_MISMATCH,
    PASSTHROUGH,
    STORED_FRAME,
    VERIFY,
    ConversionJob,
    ConversionResult,
    ImagePlan,
    ImageSource,
    convert_chunk,
    declared_frame,
    inspect_image,
)
from yolonas_pipeline.materialize_pool import ConversionPool
from yolonas_pipeline.materialize_rows import read_rows
from yolonas_pipeline.materialize_schema import ResolvedSchema, convert_boxes
from yolonas_pipeline.materialize_sources import SourceSplit
from yolonas_pipeline.materialize_writer import FileRef, ImageData, SplitWriter, WritePool
from yolonas_pipeline.storage import DEFAULT_TRANSFER_WORKERS, Storage, is_s3_uri, join_uri

__all__ = ["Exporter", "Pass"]

log = logging.getLogger(__name__)

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
#: Local image writer threads. Two overlap the kernel's file creation with the row loop; more only contend
#: for the one directory's lock (measured on ext4: more kernel time, no more throughput).
LOCAL_WRITE_WORKERS = int(os.environ.get("YOLONAS_MATERIALIZE_LOCAL_WRITERS", "2"))
#: Local images per write task.
LOCAL_WRITE_GROUP = 16


@dataclass
class Pass:
    """One read of one source split; rows go to ``output``, or some to validation by the selector."""

    source_split: str
    output: str
    num_rows: int | None
    validation_selector: Callable[[int], bool] | None = None


@dataclass(slots=True)
class _Row:
    """One row between reading and committing."""

    writer: SplitWriter
    data: ImageData | None
    ref: FileRef | None  # where ``data`` lies in a mapped source file
    plan: ImagePlan | None
    bboxes: Any
    categories: Any
    source_id: Any
    declared: tuple[Any, Any] | None = None  # (width, height) the row declares
    where: tuple[str, int] = ("", 0)  # (source split, row index) for error messages
    drop: str | None = None
    future: Future[list[ConversionResult]] | None = None
    slot: int = 0
    result: ConversionResult | None = None


class _Progress:
    """A progress line every ``every_s`` seconds (checked every 64 rows: the clock is not free)."""

    def __init__(self, total: int | None, every_s: float) -> None:
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
                log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        if self._total:
            eta = (self._total - self.done) / rate if rate > 0 else float("inf")
            return f"materialize: {self.done}/{self._total} rows, {rate:,.0f} rows/s, ETA {eta:,.0f}s"
        return f"materialize: {self.done} rows, {rate:,.0f} rows/s"


class Exporter:
    """Writes the passes' rows under ``dataset_uri``: images by :class:`WritePool`, COCO entries by one
    :class:`SplitWriter` per output split (in :attr:`writers`). Call :meth:`run`, then always :meth:`close`."""

    def __init__(
        self,
        schema: ResolvedSchema,
        dataset_uri: str,
        storage: Storage,
        tmpdir: Path,
        sources: dict[str, SourceSplit],
        *,
        max_side: int | None,
        workers: int | None,
        keep_emptied_images: bool = False,
        exif_stored_frame: str = "rotate",
    ) -> None:
        self.sources = sources
        self.keep_emptied_images = keep_emptied_images
        self.exif_stored_frame = exif_stored_frame
        self.schema = schema
        self.dataset_uri = dataset_uri
        self.tmpdir = tmpdir
        self.max_side = max_side
        self.class_names = list(schema.class_names)
        self.name_to_index = {n: i for i, n in enumerate(self.class_names)} if schema.category_is_str else None
        self.workers = max(0, int(workers if workers is not None else available_cpus()))
        self._pool: ConversionPool | None = None
        self._max_bytes = MAX_BYTES_IN_FLIGHT + (8 << 20) * self.workers
        s3 = is_s3_uri(dataset_uri)
        self.writes = WritePool(
            storage,
            s3=s3,
            workers=DEFAULT_TRANSFER_WORKERS if s3 else LOCAL_WRITE_WORKERS,
            max_pending=4 * DEFAULT_TRANSFER_WORKERS if s3 else 2 * LOCAL_WRITE_WORKERS,
            group=1 if s3 else LOCAL_WRITE_GROUP,
        )
        self._images_prefix = join_uri(dataset_uri, "images")
        self.writers: dict[str, SplitWriter] = {}
        self._pending: deque[_Row] = deque()
        self._pending_bytes = 0
        self._chunk: list[_Row] = []
        self.progress: _Progress | None = None

    def _writer(self, name: str) -> SplitWriter:
        if name not in self.writers:
            self.writers[name] = SplitWriter(name, self.tmpdir, len(self.class_names))
            if not is_s3_uri(self.dataset_uri):
                os.makedirs(join_uri(self.dataset_uri, "images", name), exist_ok=True)
        return self.writers[name]

    def run(self, passes: list[Pass]) -> None:
        counts = [p.num_rows for p in passes]
        total = sum(n for n in counts if n is not None) if None not in counts else None
        self.progress = _Progress(total, PROGRESS_EVERY_S)
        for output in OUTPUT_SPLITS:  # fixed order: the split files exist even when a split ends up empty
            if any(p.output == output for p in passes) or (output == "validation" and passes[0].validation_selector):
                self._writer(output)
        for one_pass in passes:
            train, validation = self._writer(one_pass.output), self.writers.get("validation")
            selector = one_pass.validation_selector
            rows = read_rows(self.sources[one_pass.source_split], self.schema)
            for index, (data, ref, bboxes, categories, source_id, declared) in enumerate(rows):
                writer = validation if selector is not None and selector(index) else train
                assert writer is not None
                self._add(writer, data, ref, bboxes, categories, source_id, declared, (one_pass.source_split, index))
            self._flush_chunk()
        while self._pending:
            self._commit(self._pending.popleft())

    def _add(
        self,
        writer: SplitWriter,
        data: ImageData | None,
        ref: FileRef | None,
        bboxes: Any,
        categories: Any,
        source_id: Any,
        declared: tuple[Any, Any] | None = None,
        where: tuple[str, int] = ("", 0),
    ) -> None:
        row = _Row(writer, data, ref, None, bboxes, categories, source_id, declared, where)
        if data is None:
            row.drop = "missing_image"
        else:
            row.plan = inspect_image(data, self.max_side)
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
        data: ImageData
        ref = None
        if status == PASSTHROUGH:
            data, ref = row.data, row.ref
            writer.passthrough += 1
        else:
            data = payload
            writer.converted += 1
        cfg = self.schema.config
        stored_orientation = 1
        frame = declared_frame(row.plan, row.declared)
        if frame == DECLARED_SIZE_MISMATCH:
            writer.stats.corrections[DECLARED_SIZE_MISMATCH] += 1  # the decoded size is what the JPEG has
        elif frame == STORED_FRAME:
            if self.exif_stored_frame == "error":
                raise self._stored_frame_error(row)
            if self.exif_stored_frame == "drop":
                writer.stats.drops["boxes_in_stored_exif_frame"] += 1
                count = max(len(row.bboxes or ()), len(row.categories or ()))
                if count:
                    writer.stats.drops["boxes_on_dropped_images"] += count
                row.data = None
                return
            writer.stats.corrections[BOXES_ROTATED] += 1
            stored_orientation = row.plan.orientation
        boxes = convert_boxes(
            row.bboxes,
            row.categories,
            fmt=cfg.bbox_format,
            normalized=cfg.normalized,
            source_size=row.plan.source_size,
            output_size=row.plan.output_size,
            num_classes=len(self.class_names),
            name_to_index=self.name_to_index,
            stats=writer.stats,
            stored_orientation=stored_orientation,
        )
        if not boxes and not self.keep_emptied_images and (row.bboxes or row.categories):
            # the source says there are objects here, none usable: as a background image it would teach the
            # model that they are not objects
            writer.stats.drops["all_boxes_dropped"] += 1
            row.data = None
            return
        width, height = row.plan.output_size
        file_name = writer.add(width, height, boxes, row.source_id)
        self.writes.submit(f"{self._images_prefix}/{writer.name}/{file_name}", data, ref)
        row.data = None

    def _stored_frame_error(self, row: _Row) -> StageInputError:
        assert row.plan is not None
        split, index = row.where
        cfg = self.schema.config
        return StageInputError(
            f"row {index} of split {split!r}: its declared size {cfg.width_column}/{cfg.height_column} = "
            f"{row.declared[0] if row.declared else None}x{row.declared[1] if row.declared else None} is the stored "
            f"frame of an image that EXIF orientation {row.plan.orientation} shows as "
            f"{row.plan.source_size[0]}x{row.plan.source_size[1]}, so its boxes refer to the stored pixels; "
            'exif_stored_frame="error" refuses such rows. Accepted: "rotate" (turn the boxes with the pixels), '
            '"drop" (leave the row out), or set the schema keys width_column/height_column to null to ignore the '
            "declared sizes"
        )

    def close(self, ok: bool) -> None:
        """Stop the conversion workers; finish the writes when ``ok`` (raising their first error), else drop them."""
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
