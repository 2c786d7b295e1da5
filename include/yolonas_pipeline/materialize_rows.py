"""Reading the materializer's rows out of Arrow record batches, in source order, without copying images.

:func:`read_rows` turns one source split into ``(image, file reference, bboxes, categories, source id)``
tuples, whatever the dataset's layout (HF ``Image`` structs, raw binary or paths; boxes in an ``objects``
struct, a list of structs, or top-level columns), as :class:`ResolvedSchema` describes it. Images are
zero-copy ``memoryview``s of the Arrow buffers and, where those are memory-mapped from a file, come with
where they lie in it, so a local export can copy them file to file in the kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeAlias

from yolonas_pipeline.materialize_schema import ResolvedSchema
from yolonas_pipeline.materialize_sources import FileOrigin, SourceSplit
from yolonas_pipeline.materialize_writer import FileRef, ImageData

__all__ = ["SLICE_ROWS", "SourceRow", "read_rows"]

#: Rows taken from a record batch at a time (slicing is free; Python lists of a whole batch are not).
SLICE_ROWS = 64

#: (image bytes or None, file reference or None, bboxes, categories, source id, declared (width, height) or
#: None): one row as read. The boxes, categories and sizes are what the dataset holds (checked later).
SourceRow: TypeAlias = tuple[ImageData | None, FileRef | None, Any, Any, Any, tuple[Any, Any] | None]


def read_rows(split: SourceSplit, schema: ResolvedSchema) -> Iterator[SourceRow]:
    """Every row of ``split``, in source order."""
    cfg = schema.config
    for batch, origin in split.read(schema.columns):
        for start in range(0, batch.num_rows, SLICE_ROWS):
            part = batch.slice(start, SLICE_ROWS)
            data, refs = _images(part, origin, schema)
            bboxes: list[Any]
            categories: list[Any]
            if cfg.objects_column is None:
                bboxes = _column(part, cfg.bbox_key).to_pylist()
                categories = _column(part, cfg.category_key).to_pylist()
            elif schema.objects_kind == "struct":
                objects = _column(part, cfg.objects_column)
                bboxes = _struct_field(objects, cfg.bbox_key)
                categories = _struct_field(objects, cfg.category_key)
            else:
                listed = _column(part, cfg.objects_column).to_pylist()
                bboxes = [None if o is None else [b.get(cfg.bbox_key) for b in o] for o in listed]
                categories = [None if o is None else [b.get(cfg.category_key) for b in o] for o in listed]
            ids: list[Any] = (
                _column(part, cfg.image_id_column).to_pylist()
                if schema.has_image_id and cfg.image_id_column
                else [None] * part.num_rows
            )
            sizes: list[tuple[Any, Any] | None]
            if schema.size_columns is not None:
                widths = _column(part, schema.size_columns[0]).to_pylist()
                heights = _column(part, schema.size_columns[1]).to_pylist()
                sizes = list(zip(widths, heights, strict=True))
            else:
                sizes = [None] * part.num_rows
            yield from zip(data, refs, bboxes, categories, ids, sizes, strict=True)


def _images(
    part: Any, origin: FileOrigin | None, schema: ResolvedSchema
) -> tuple[list[ImageData | None], list[FileRef | None]]:
    """Image bytes (memoryviews where possible) and file references of one slice of rows."""
    images = _column(part, schema.config.image_column)
    if schema.image_kind == "path":
        return [_read_path(p) for p in images.to_pylist()], [None] * part.num_rows
    if schema.image_kind == "binary":
        return binary_values(images, origin)
    data, refs = binary_values(images.field("bytes"), origin)
    null_structs = (not valid for valid in images.is_valid().to_pylist()) if images.null_count else ()
    for index, missing in enumerate(null_structs):
        if missing:
            data[index] = refs[index] = None
    if "path" in {f.name for f in images.type}:  # Image features stored as file paths only
        for index, path in enumerate(_struct_field(images, "path")):
            if data[index] is None and path:
                data[index] = _read_path(path)
    return data, refs


def _column(batch: Any, name: str) -> Any:
    column = batch.column(name)
    return column.combine_chunks() if hasattr(column, "combine_chunks") else column


def binary_values(array: Any, origin: FileOrigin | None = None) -> tuple[list[ImageData | None], list[FileRef | None]]:
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
    offsets: list[int] = np.frombuffer(offsets_buffer, dtype=dtype, count=array.offset + count + 1)[
        array.offset :
    ].tolist()
    # cast: Arrow exports its buffers as signed chars, and the JPEG header parser compares bytes as 0..255
    view = memoryview(data_buffer).cast("B") if data_buffer is not None else memoryview(b"")
    values: list[ImageData | None] = [view[offsets[i] : offsets[i + 1]] for i in range(count)]
    refs: list[FileRef | None] = [None] * count
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
    values: list[Any] = array.field(key).to_pylist()
    if array.null_count:
        for index, valid in enumerate(array.is_valid().to_pylist()):
            if not valid:
                values[index] = None
    return values


def _read_path(path: str | None) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None
