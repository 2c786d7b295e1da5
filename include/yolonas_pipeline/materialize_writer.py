"""The materializer's write engine: image files (local or S3) and the streamed COCO JSON of each split.

* :func:`write_file` puts one image in a local file, file to file in the kernel (``sendfile``) when its
  bytes lie in a memory-mapped source file.
* :class:`WritePool` runs those writes (or S3 puts) on a few threads with a bounded number in flight.
* :class:`SplitWriter` streams one split's COCO ``images`` and ``annotations`` entries to temporary files
  and assembles the final JSON; it holds counters only, never the entries.

Nothing here decides what is written: that is :mod:`yolonas_pipeline.materialize_pipeline`'s job.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeAlias

from yolonas_pipeline.contracts import DatasetManifest
from yolonas_pipeline.materialize_schema import BoxStats
from yolonas_pipeline.materialize_sources import FileOrigin
from yolonas_pipeline.storage import Storage

__all__ = ["Box", "FileRef", "ImageData", "SplitWriter", "WritePool", "write_file"]

#: Image bytes as the row reader hands them on: zero-copy views into Arrow buffers where possible.
ImageData: TypeAlias = bytes | memoryview
#: Where an image's bytes lie in a memory-mapped source file: (the file, byte offset).
FileRef: TypeAlias = tuple[FileOrigin, int]
#: One kept box: (class index, x, y, width, height) in output pixels.
Box: TypeAlias = tuple[int, float, float, float, float]
_Write: TypeAlias = tuple[str, ImageData, FileRef | None]


# -- COCO JSON -----------------------------------------------------------------------------------------------
class SplitWriter:
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

    def add(self, width: int, height: int, boxes: list[Box], source_id: Any) -> str:
        """Append one image and its boxes; returns the image's file name (``<id>.jpg``, ids from 1)."""
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
        info = json.dumps({"description": f"{DatasetManifest.FORMAT} {self.name}", "version": fingerprint})
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
            "corrections": dict(sorted(self.stats.corrections.items())),
        }


# -- image files ---------------------------------------------------------------------------------------------
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
_NO_SENDFILE = {errno.EINVAL, errno.ENOSYS, errno.EXDEV, errno.ENOTSOCK, errno.EOPNOTSUPP, errno.ENOTSUP}


def write_file(path: str, data: ImageData, ref: FileRef | None = None) -> None:
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


class WritePool:
    """Concurrent image writes with a bounded number of writes (and so bytes) in flight.

    Local files are written in groups per task (a thread hop per 100 KB file costs more than the write);
    S3 objects one per task, because there request latency, not CPU, is what concurrency hides. The first
    error of any write is raised by the next :meth:`submit`, :meth:`flush` or :meth:`finish`.
    """

    def __init__(self, storage: Storage, *, s3: bool, workers: int, max_pending: int, group: int) -> None:
        self._storage = storage
        self._s3 = s3
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="materialize-write")
        self._slots = threading.BoundedSemaphore(max_pending)
        self._group_size = group
        self._group: list[_Write] = []
        self._error: BaseException | None = None

    def submit(self, uri: str, data: ImageData, ref: FileRef | None = None) -> None:
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

    def _write(self, group: list[_Write]) -> None:
        try:
            for uri, data, ref in group:
                if self._s3:
                    self._storage.write_bytes(uri, bytes(data))  # botocore wants bytes, not a memoryview
                else:
                    write_file(uri, data, ref)
        except BaseException as exc:
            if self._error is None:
                self._error = exc
        finally:
            self._slots.release()

    def finish(self) -> None:
        """Write what is queued, wait for every write, and raise the first error, if any."""
        self.flush()
        self._pool.shutdown(wait=True)
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Drop what is queued and wait for the writes already running."""
        self._group = []
        self._pool.shutdown(wait=True, cancel_futures=True)
