"""Where the materializer's rows come from: hub datasets, ``save_to_disk`` folders, parquet and Arrow files.

Every source becomes a set of splits, each an iterator of Arrow record batches holding only the columns the
materializer needs. Local Arrow and parquet files are read sequentially through ordinary file reads, not
memory maps: a memory-mapped read leaves every touched page resident, so RSS would grow with the dataset.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from yolonas_pipeline.errors import StageInputError

#: Rows per record batch read from parquet and from streamed hub datasets.
READ_BATCH_ROWS = 64
DATA_SUFFIXES = (".parquet", ".arrow")
#: Recognised split names in file names (HF's own data-file naming: ``train-00000-of-00004.parquet``,
#: ``data/validation/...``); the first entry of each group is the canonical name.
SPLIT_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev", "eval"),
    "test": ("test", "testing"),
}
_HASH_CHUNK = 8 << 20
#: How far behind the reader pages are dropped again: more than the bytes the materializer keeps in flight.
RELEASE_WINDOW = 512 << 20
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass
class SourceSplit:
    """One split of a source: a row count when known, and a way to read it."""

    name: str
    num_rows: int | None
    arrow_schema: Any
    features: Any
    read: Callable[[list[str]], Iterator[tuple[Any, Any]]]  # columns -> (record batch or table, FileOrigin|None)


@dataclass
class OpenedSource:
    description: str
    kind: str  # save_to_disk | files | hub | hub-streaming
    splits: dict[str, SourceSplit]
    identity: Callable[[], dict[str, Any]]  # content identity for the fingerprint (may hash files)
    revision: str | None = None
    notes: list[str] = field(default_factory=list)


# -- offline mode ------------------------------------------------------------------------------------


@contextlib.contextmanager
def hub_offline_from_env() -> Iterator[bool]:
    """Apply ``HF_HUB_OFFLINE`` as it is set now; ``datasets`` and ``huggingface_hub`` read it only at import."""
    offline = os.environ.get("HF_HUB_OFFLINE", os.environ.get("HF_DATASETS_OFFLINE", "")).upper() in _TRUE
    import datasets.config
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = offline
    hub_constants.HF_HUB_OFFLINE = offline
    try:
        yield offline
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


# -- readers -----------------------------------------------------------------------------------------


def _select(batch: Any, columns: list[str]) -> Any:
    return batch.select(columns)


class FileOrigin:
    """A memory-mapped data file that image views point into. A local writer copies an image's byte range
    from ``fd`` in the kernel (``os.sendfile``), so no page of the source is faulted into this process;
    where that is not possible it writes from the view and drops the pages it touched (``release``). The
    descriptor is closed when the last reference goes, so pending writes may outlive the reader."""

    __slots__ = ("base", "fd", "map", "path", "size")

    def __init__(self, path: str, fd: int, mapped: Any, base: int, size: int) -> None:
        self.path = path  # for worker processes, which read image ranges themselves
        self.fd = fd
        self.map = mapped
        self.base = base
        self.size = size

    def offset_of(self, address: int, length: int) -> int | None:
        offset = address - self.base
        return offset if offset >= 0 and offset + length <= self.size else None

    def release(self, offset: int, length: int) -> None:
        """Drop this process's pages of ``[offset, offset + length)`` (always safe: see _MappedFile)."""
        import mmap

        start = offset - offset % mmap.PAGESIZE
        end = min(self.size, offset + length)
        if end > start and hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(ValueError, OSError):  # already unmapped: nothing resident anyway
                self.map.madvise(mmap.MADV_DONTNEED, start, end - start)

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class _MappedFile:
    """A read-only memory map whose pages are handed back to the kernel once the reader is past them.

    Reading through the map is zero-copy (no ``read()`` into the heap), and ``MADV_DONTNEED`` on a shared
    file mapping only drops this process's page-table entries: the pages stay in the page cache, a later
    access faults them back in, so releasing early is always safe. Without it every page touched would stay
    in RSS and memory would grow with the dataset.
    """

    def __init__(self, path: str) -> None:
        import mmap

        self._mmap_module = mmap
        self.path = path
        with open(path, "rb") as handle:
            self.size = os.fstat(handle.fileno()).st_size
            self.map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
            self._fileno = os.dup(handle.fileno()) if self.size else -1
        if self.map is not None and hasattr(self.map, "madvise") and hasattr(mmap, "MADV_SEQUENTIAL"):
            self.map.madvise(mmap.MADV_SEQUENTIAL)

    def origin(self, base: int) -> FileOrigin:
        return FileOrigin(self.path, os.dup(self._fileno), self.map, base, self.size)

    def release(self, upto: int) -> None:
        """Drop this process's pages in the window below byte ``upto`` (rounded down to a page).

        The whole trailing window is released each time, not only new pages: anything still reading images
        behind the reader faults pages back in, and those must go too.
        """
        mmap = self._mmap_module
        upto -= upto % mmap.PAGESIZE
        start = max(0, upto - RELEASE_WINDOW)
        if self.map is None or upto <= start or not hasattr(mmap, "MADV_DONTNEED"):
            return
        self.map.madvise(mmap.MADV_DONTNEED, start, upto - start)

    def close(self) -> None:
        if self.map is not None:
            if hasattr(self._mmap_module, "MADV_DONTNEED"):
                self.map.madvise(self._mmap_module.MADV_DONTNEED, 0, self.size)
            with contextlib.suppress(BufferError):  # Arrow buffers still point into it: GC unmaps it later
                self.map.close()
        if self._fileno >= 0:
            os.close(self._fileno)
            self._fileno = -1


def read_arrow_file(path: str, columns: list[str]) -> Iterator[tuple[Any, FileOrigin | None]]:
    """(record batch, origin) of an Arrow IPC file (stream or file format), zero-copy from a memory map
    whose pages are released behind the reader, so RSS stays flat however large the file."""
    import pyarrow as pa

    mapped = _MappedFile(path)
    if mapped.map is None:
        return
    try:
        buffer = pa.py_buffer(mapped.map)
        origin = mapped.origin(buffer.address)
        source = pa.BufferReader(buffer)
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            source.seek(0)
            stream = pa.ipc.open_stream(source)
            batch_start = 0
            while True:
                try:
                    batch = stream.read_next_batch()
                except StopIteration:
                    return
                mapped.release(batch_start)  # everything before this batch: the consumer is done with it
                batch_start = source.tell()
                yield _select(batch, columns), origin
        else:
            for index in range(reader.num_record_batches):
                yield _select(reader.get_batch(index), columns), origin
    finally:
        mapped.close()


def read_parquet_file(path: str, columns: list[str]) -> Iterator[tuple[Any, FileOrigin | None]]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(path, memory_map=False) as handle:
        for batch in handle.iter_batches(batch_size=READ_BATCH_ROWS, columns=columns):
            yield batch, None  # decoded pages: no file range to copy from


Reader = Callable[[list[str]], Iterator[tuple[Any, FileOrigin | None]]]


def _read_files(paths: list[str]) -> Reader:
    def read(columns: list[str]) -> Iterator[tuple[Any, FileOrigin | None]]:
        for path in paths:
            reader = read_parquet_file if path.endswith(".parquet") else read_arrow_file
            yield from reader(path, columns)

    return read


def _file_schema(path: str) -> tuple[Any, int]:
    """Arrow schema and row count of one data file, without reading its data pages."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if path.endswith(".parquet"):
        meta = pq.ParquetFile(path, memory_map=False)
        return meta.schema_arrow, meta.metadata.num_rows
    source = pa.memory_map(path)  # only record-batch headers are touched
    try:
        reader = pa.ipc.open_file(source)
        return reader.schema, sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:
        source.seek(0)
        stream = pa.ipc.open_stream(source)
        return stream.schema, sum(batch.num_rows for batch in stream)


def _features_of(arrow_schema: Any) -> dict[str, Any] | None:
    """The HF features JSON that ``datasets`` stores in an Arrow/parquet schema's metadata, if any."""
    metadata = arrow_schema.metadata or {}
    raw = metadata.get(b"huggingface")
    if not raw:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    features = (info.get("info") or {}).get("features") if isinstance(info, dict) else None
    return features if isinstance(features, dict) else None


def _features_json(features: Any) -> dict[str, Any] | None:
    """``datasets.Features`` -> its JSON dict (what dataset_info.json holds)."""
    return features.to_dict() if features is not None else None


def hash_files(paths: list[str]) -> list[str]:
    """xxh3-128 of each file: content identity at memory speed (sha256 would cost as much as the export)."""
    import xxhash

    digests = []
    for path in paths:
        digest = xxhash.xxh3_128()
        mapped = _MappedFile(path)
        try:
            if mapped.map is not None:
                view = memoryview(mapped.map)
                try:
                    for start in range(0, mapped.size, _HASH_CHUNK):
                        digest.update(view[start : start + _HASH_CHUNK])
                        mapped.release(start)
                finally:
                    view.release()
        finally:
            mapped.close()
        digests.append(digest.hexdigest())
    return digests


def _files_identity(kind: str, split_files: dict[str, list[str]]) -> Callable[[], dict[str, Any]]:
    def identity() -> dict[str, Any]:
        return {
            "kind": kind,
            "content": {
                split: [
                    {"size": os.path.getsize(p), "xxh3_128": h} for p, h in zip(paths, hash_files(paths), strict=True)
                ]
                for split, paths in sorted(split_files.items())
            },
        }

    return identity


# -- local sources -----------------------------------------------------------------------------------


#: What a hub dataset name can be: ``name`` or ``owner/name``, optionally ``:config``.
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?(:[A-Za-z0-9._-]+)?")


def looks_local(source: str) -> bool:
    """A path-like source (vs a hub name); existence is checked by the caller.

    Anything that cannot be a hub name (``name`` or ``owner/name``, optionally ``:config``) is a path: ``./x``,
    ``/x``, ``~/x``, ``x/``, ``a/b/c``, a backslash, a glob, a data-file suffix, or a name that exists here. Such a
    source is never sent to the hub, so a missing path fails at once as a missing path.
    """
    return (
        Path(os.path.expanduser(source)).exists()
        or source.startswith(("/", "./", "../", "~", "file://", "."))
        or source.endswith(("/", os.sep))
        or "\\" in source
        or any(ch in source for ch in "*?[")
        or source.endswith(DATA_SUFFIXES)
        or _HUB_NAME.fullmatch(source) is None
    )


def _split_of(path: str, root: str) -> str | None:
    """The split a data file belongs to, from HF's naming conventions (directory or file-name prefix)."""
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    tokens = [t for t in re.split(r"[\\/._\-]+", rel.lower()) if t]
    for canonical, aliases in SPLIT_ALIASES.items():
        if any(t in aliases for t in tokens):
            return canonical
    return None


def _arrow_rows(path: str) -> int:
    return _file_schema(path)[1]


def _open_save_to_disk(path: Path) -> OpenedSource:
    """A ``save_to_disk`` folder, read from its JSON state files (no ``datasets`` import: 1.5 s saved)."""
    if (path / "dataset_dict.json").is_file():
        names = json.loads((path / "dataset_dict.json").read_text()).get("splits") or []
        folders = {str(name): path / str(name) for name in names}
    else:
        folders = {"train": path}
    splits: dict[str, SourceSplit] = {}
    split_files: dict[str, list[str]] = {}
    for name, folder in folders.items():
        try:
            state = json.loads((folder / "state.json").read_text())
            info_path = folder / "dataset_info.json"
            info = json.loads(info_path.read_text()) if info_path.is_file() else {}
            files = [str(folder / entry["filename"]) for entry in state["_data_files"]]
            if not files:
                raise ValueError("no data files listed in state.json")
            schema, _ = _file_schema(files[0])
            num_rows = sum(_arrow_rows(f) for f in files)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StageInputError(f"cannot read split {name!r} of the save_to_disk folder {path}: {exc}") from exc
        features = info.get("features") if isinstance(info.get("features"), dict) else _features_of(schema)
        splits[name] = SourceSplit(name, num_rows, schema, features, _read_files(files))
        split_files[name] = files
    return OpenedSource(str(path), "save_to_disk", splits, _files_identity("save_to_disk", split_files))


def _read_dataset(ds: Any) -> Reader:
    def read(columns: list[str]) -> Iterator[tuple[Any, FileOrigin | None]]:
        for table in ds.select_columns(columns).with_format("arrow").iter(batch_size=READ_BATCH_ROWS):
            yield table, None

    return read


def _open_files(files: list[str], root: str, description: str) -> OpenedSource:
    grouped: dict[str, list[str]] = {}
    for path in files:
        grouped.setdefault(_split_of(path, root) or "", []).append(path)
    if "" in grouped:
        if len(grouped) > 1:
            unknown = grouped[""][:3]
            raise StageInputError(
                f"cannot tell the split of {unknown} in {description}: name files or folders after their split "
                f"(train-*.parquet, validation/*.parquet, ...) or pass one split's files only"
            )
        grouped = {"train": grouped.pop("")}
    splits: dict[str, SourceSplit] = {}
    for name, paths in grouped.items():
        schemas = []
        total = 0
        for path in paths:
            try:
                schema, rows = _file_schema(path)
            except Exception as exc:
                raise StageInputError(f"cannot read {path} as parquet/Arrow: {exc}") from exc
            schemas.append(schema)
            total += rows
        first = schemas[0]
        for path, schema in zip(paths, schemas, strict=True):
            if schema.names != first.names:
                raise StageInputError(
                    f"{path} has columns {schema.names} but {paths[0]} has {first.names}; one split must share a schema"
                )
        splits[name] = SourceSplit(name, total, first, _features_of(first), _read_files(paths))
    return OpenedSource(description, "files", splits, _files_identity("files", grouped))


def _open_local(source: str) -> OpenedSource:
    expanded = os.path.expanduser(source.removeprefix("file://"))
    path = Path(expanded)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return _open_save_to_disk(path)
        files = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.name.endswith(DATA_SUFFIXES))
        if not files:
            raise StageInputError(
                f"{source} is a folder without a save_to_disk dataset (dataset_dict.json / state.json) or any "
                f"{'/'.join(DATA_SUFFIXES)} files"
            )
        return _open_files(files, str(path), source)
    if path.is_file():
        if not path.name.endswith(DATA_SUFFIXES):
            raise StageInputError(f"{source} is not a {' or '.join(DATA_SUFFIXES)} file")
        return _open_files([str(path)], "", source)
    matches = sorted(p for p in glob.glob(expanded, recursive=True) if p.endswith(DATA_SUFFIXES))
    if any(ch in expanded for ch in "*?[") and matches:
        return _open_files(matches, os.path.commonpath([os.path.dirname(m) for m in matches]), source)
    raise StageInputError(
        f"source {source!r} does not exist; expected a save_to_disk folder, parquet/Arrow file(s) or a glob "
        "matching them, or a Hugging Face hub dataset name like 'owner/name'"
    )


# -- hub ---------------------------------------------------------------------------------------------


def _resolve_revision(name: str, revision: str | None, offline: bool) -> str | None:
    """The commit sha of ``revision`` on the hub, so that the fingerprint pins the data; None if unknown."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        if offline:
            from huggingface_hub import constants

            ref = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}" / "refs" / (revision or "main")
            return ref.read_text().strip() if ref.is_file() else None
        from huggingface_hub import HfApi

        sha = HfApi().dataset_info(name, revision=revision).sha
        return str(sha) if sha else None
    except Exception:
        return None


def _in_local_cache(name: str) -> bool:
    """Whether the hub dataset ``name`` has anything in the local Hugging Face caches (hub files or ``datasets``'
    prepared Arrow cache): what an offline ``load_dataset`` can use."""
    import datasets.config
    from huggingface_hub import constants

    hub = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}"
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / name.replace("/", "___")
    return hub.is_dir() or prepared.is_dir()


def _open_hub(source: str, revision: str | None, streaming: bool, offline: bool) -> OpenedSource:
    name, _, config = source.partition(":")
    description = (
        f"hub dataset {name}" + (f" (config {config})" if config else "") + (f" @ {revision}" if revision else "")
    )
    if offline and not Path(name).exists() and not _in_local_cache(name):
        # fail now: offline, datasets would only look for it in the caches (and may retry before saying so)
        raise StageInputError(
            f"source {source!r}: HF_HUB_OFFLINE is set and {description} is not in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME') or '~/.cache/huggingface'}); unset HF_HUB_OFFLINE to download it, or give "
            "a local path (./folder, /abs/path, folder/) to a save_to_disk folder or parquet/Arrow files"
        )
    from datasets import IterableDataset, load_dataset

    try:
        loaded = load_dataset(name, config or None, revision=revision, streaming=streaming)
    except Exception as exc:
        hint = (
            " HF_HUB_OFFLINE is set, so only datasets already in the local Hugging Face cache can be loaded."
            if offline
            else ""
        )
        raise StageInputError(
            f"cannot load {description}: {type(exc).__name__}: {exc}. The source is neither an existing local path "
            f"nor a loadable hub dataset.{hint}"
        ) from exc
    sha = _resolve_revision(name, revision, offline)
    parts = dict(loaded.items()) if hasattr(loaded, "items") else {"train": loaded}
    splits: dict[str, SourceSplit] = {}
    for split, ds in parts.items():
        if isinstance(ds, IterableDataset):
            features = _features_json(ds.features)
            info_splits = getattr(ds.info, "splits", None) or {}
            num_rows = info_splits[split].num_examples if split in info_splits else None
            schema = ds.features.arrow_schema if ds.features is not None else None
            read = _read_iterable(ds)
            if schema is None:
                first = next(iter(ds.with_format("arrow").iter(batch_size=1)), None)
                if first is None:
                    raise StageInputError(f"split {split!r} of {description} is empty")
                schema = first.schema
                features = _features_of(schema)
            splits[split] = SourceSplit(split, num_rows or None, schema, features, read)
        else:
            files = [entry["filename"] for entry in ds.cache_files]
            read = _read_files(files) if files and ds._indices is None else _read_dataset(ds)
            splits[split] = SourceSplit(split, ds.num_rows, ds.data.schema, _features_json(ds.features), read)

    def identity() -> dict[str, Any]:
        ident: dict[str, Any] = {"kind": "hub", "name": name, "config": config or None, "revision": sha or revision}
        if sha is None:  # unpinned: fall back on datasets' own cache fingerprints where there are any
            ident["fingerprints"] = {s: getattr(d, "_fingerprint", None) for s, d in sorted(parts.items())}
        return ident

    opened = OpenedSource(description, "hub-streaming" if streaming else "hub", splits, identity, sha or revision)
    if sha is None:
        opened.notes.append(f"could not resolve the commit of {description}; the fingerprint is not pinned to a commit")
    return opened


def _read_iterable(ds: Any) -> Reader:
    def read(columns: list[str]) -> Iterator[tuple[Any, FileOrigin | None]]:
        for table in ds.select_columns(columns).with_format("arrow").iter(batch_size=READ_BATCH_ROWS):
            yield table, None

    return read


def open_source(source: str, *, revision: str | None = None, streaming: bool = False) -> OpenedSource:
    """Open a hub name, a local ``save_to_disk`` folder, or parquet/Arrow file(s)/glob.

    ``streaming`` matters for hub datasets only (rows are fetched as they are read, nothing is cached on
    disk); local files are always read batch by batch.
    """
    if not source or not isinstance(source, str):
        raise StageInputError(f"source must be a dataset name or path, got {source!r}")
    if looks_local(source):
        return _open_local(source)
    with hub_offline_from_env() as offline:  # nested in the caller's: same values
        return _open_hub(source, revision, streaming, offline)
