"""Inspect a YOLO-NAS checkpoint without torch, safely, and reconcile its classes with the dataset's.

A super-gradients checkpoint is a ``torch.save`` zip archive: ``<archive>/data.pkl`` pickles the dict (``net``,
``ema_net``, ``epoch``, ``metrics``, ``processing_params``, ...) and every tensor's bytes sit in their own
``<archive>/data/<key>`` record. The class count and architecture are in the tensor *shapes*, which the pickle
carries, so :func:`inspect_checkpoint` reads only the zip's end records, the central directory up to the
``data.pkl`` entry, and ``data.pkl`` itself (0.1-0.6 % of a YOLO-NAS file), through :class:`Storage` ranged reads
(ranged GETs on S3), and unpickles it with :mod:`yolonas_pipeline.safe_unpickle`, which never runs pickled code.
Torch's legacy (pre-1.6, non-zip) format is read the same way: a pickle stream at the start of the file, read
until the state dict is complete. :func:`plan_classes` then turns the result and the dataset into the one class
set the training stage uses, failing fast when the architecture differs from the requested model.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from yolonas_pipeline.contracts import CheckpointInfo, ClassPlan
from yolonas_pipeline.errors import CheckpointError, StageInputError
from yolonas_pipeline.safe_unpickle import RestrictedUnpickler, TensorMeta, _guarded, restricted_load
from yolonas_pipeline.storage import Storage, is_s3_uri

#: Head widths (``cls_pred`` input channels of heads 1/2/3) -> model size, for detection and pose alike.
HEAD_WIDTHS = {(64, 128, 256): "s", (96, 192, 384): "m", (128, 256, 512): "l"}
MODEL_NAMES = tuple(f"yolo_nas_{kind}{size}" for kind in ("", "pose_") for size in ("s", "m", "l"))

# The first read takes the file's tail: the end records (EOCD 22 + zip64 locator 20 + zip64 EOCD 56 bytes) and,
# sized at 1/400 of the file up to 256 KiB, usually the whole central directory too (~60 bytes per tensor record;
# a full YOLO-NAS-S Trainer checkpoint has ~3,200 records, 210 KB). Then one more read fetches data.pkl: two
# requests in all, because request latency, not bytes, dominates a ranged GET.
_MIN_TAIL_BYTES = 4096
_MAX_TAIL_FRACTION = 400
_MAX_TAIL_BYTES_FIRST = 256 * 1024
_MAX_TAIL_BYTES = 22 + 0xFFFF + 20 + 56  # the largest comment a zip can carry
_CD_CHUNK = 32 * 1024  # torch writes data.pkl first, so its central-directory entry is in the first chunk
_LOCAL_EXTRA_GUESS = 128  # torch pads local headers to 64-byte alignment; guess so one GET usually suffices
_LEGACY_BLOCK = 256 * 1024
_SHA_CHUNK = 32 * 1024 * 1024  # few requests: on S3 each chunk is one ranged GET
_MAX_PICKLE_BYTES = 512 * 1024 * 1024  # a YOLO-NAS data.pkl is well under 1 MB; refuse absurd ones up front
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
_EOCD_SIG, _EOCD64_LOC_SIG, _EOCD64_SIG = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_CDH_SIG, _LFH_SIG = b"PK\x01\x02", b"PK\x03\x04"
_CDH = struct.Struct("<4sHHHHHHIIIHHHHHII")
_LFH = struct.Struct("<4sHHHHHIIIHH")


# -- reading -------------------------------------------------------------------------------------------------
class _Reader:
    """Ranged reads of one URI through :class:`Storage`, counting the bytes actually returned."""

    def __init__(self, storage: Storage, uri: str, size: int) -> None:
        self.storage, self.uri, self.size = storage, uri, size
        self.bytes_read = 0

    def read(self, start: int, length: int) -> bytes:
        length = max(0, min(length, self.size - start))
        data = self.storage.read_range(self.uri, start, length)
        self.bytes_read += len(data)
        if len(data) != length:
            raise CheckpointError(
                f"{self.uri}: short read at offset {start} ({len(data)} of {length} bytes); "
                "the file changed or is truncated"
            )
        return data


class _RangeStream(io.RawIOBase):
    """A read-only file over :class:`_Reader`, so the legacy format's pickle stream can be read lazily."""

    def __init__(self, reader: _Reader) -> None:
        self.reader, self.pos = reader, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.reader.read(self.pos, len(buffer)) if self.pos < self.reader.size else b""
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def inspect_checkpoint(uri: str, *, storage: Storage, expected_sha256: str | None = None) -> CheckpointInfo:
    """Read the class count, architecture, class names, epoch and metrics of a checkpoint at ``uri``.

    Raises FileNotFoundError for a missing file and :class:`CheckpointError` for anything that is not a
    readable, safe YOLO-NAS checkpoint (or whose SHA-256 differs from ``expected_sha256``).
    """
    if not is_s3_uri(uri) and Path(uri).is_dir():
        raise CheckpointError(f"checkpoint {uri} is a directory; expected a .pth file written by torch.save")
    try:
        size = storage.size(uri)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"checkpoint {uri} does not exist") from exc
    reader = _Reader(storage, uri, size)
    digest = None
    if expected_sha256:
        # Verify before unpickling anything: a file that is not the one the user named is not inspected at all.
        digest = _verify_sha256(reader, expected_sha256)
    ckpt = _load_checkpoint_object(reader)
    return _describe(uri, size, reader.bytes_read, ckpt, digest)


def _verify_sha256(reader: _Reader, expected: str) -> str:
    want = expected.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", want):
        raise StageInputError(f"expected_sha256 {expected!r} is not a SHA-256 hex digest (64 hex characters)")
    digest = hashlib.sha256()
    for start in range(0, reader.size, _SHA_CHUNK):
        digest.update(reader.read(start, _SHA_CHUNK))
    actual = digest.hexdigest()
    if actual != want:
        raise CheckpointError(
            f"checkpoint {reader.uri} has SHA-256 {actual}, expected {want}; the file is not the "
            "one the run names (re-upload it or fix the expected digest)"
        )
    return actual


def _load_checkpoint_object(reader: _Reader) -> Any:
    tail_len = max(_MIN_TAIL_BYTES, min(_MAX_TAIL_BYTES_FIRST, reader.size // _MAX_TAIL_FRACTION))
    tail_start = max(0, reader.size - tail_len)
    tail = reader.read(tail_start, reader.size - tail_start)
    eocd = _find_eocd(tail)
    if eocd is None:
        head = tail[:512] if tail_start == 0 else reader.read(0, 512)
        if head.startswith(_LFH_SIG) and tail_start > 0:  # a zip with a long archive comment
            tail_start = max(0, reader.size - _MAX_TAIL_BYTES)
            tail = reader.read(tail_start, reader.size - tail_start)
            eocd = _find_eocd(tail)
        if eocd is None:
            if head[:1] == b"\x80":
                return _load_legacy(reader)
            if head[257:262] == b"ustar":
                raise CheckpointError(
                    f"{reader.uri} is a tar archive: torch's pre-1.0 legacy checkpoint format; {_RESAVE_HINT}"
                )
            raise CheckpointError(f"{reader.uri} is not a torch checkpoint: {_describe_head(head)}")
    return _load_zip(reader, tail_start, tail, eocd)


_RESAVE_HINT = (
    "re-save it with a recent torch: torch.save(torch.load(path, weights_only=False), new_path) "
    "(only for a file you trust: weights_only=False runs the pickle's code)"
)


def _describe_head(head: bytes) -> str:
    """Say what a file that is not a checkpoint looks like, from its first bytes."""
    magic = {
        b"\x1f\x8b": "a gzip file",
        b"\x89PNG": "a PNG image",
        b"\xff\xd8\xff": "a JPEG image",
        b"PK\x03\x04": "a zip archive without a readable end record",
        b"\x08": "possibly an ONNX/protobuf file",
        b"%PDF": "a PDF document",
        b"\x7fELF": "an ELF binary",
    }
    for prefix, what in magic.items():
        if head.startswith(prefix):
            return f"found {what} (first bytes {head[:16]!r})"
    if len(head) >= 8 and head[8:10] == b'{"':
        return f"found a safetensors file (first bytes {head[:16]!r}); convert it to a torch.save checkpoint"
    if head.lstrip()[:1] in (b"{", b"[", b"<"):
        return f"found text (starts {head[:40]!r})"
    if not head:
        return "the file is empty"
    return f"found {len(head)}+ bytes starting {head[:16]!r}, neither a zip archive nor a pickle"


# -- zip format ----------------------------------------------------------------------------------------------
def _find_eocd(tail: bytes) -> int | None:
    """Offset in ``tail`` of the end-of-central-directory record whose comment runs exactly to the end."""
    pos = tail.rfind(_EOCD_SIG)
    while pos >= 0:
        if pos + 22 <= len(tail):
            (comment_len,) = struct.unpack_from("<H", tail, pos + 20)
            if pos + 22 + comment_len == len(tail):
                return pos
        pos = tail.rfind(_EOCD_SIG, 0, pos)
    return None


def _load_zip(reader: _Reader, tail_start: int, tail: bytes, eocd: int) -> Any:
    uri = reader.uri
    (_, _, _, _, entries, cd_size, cd_offset, _) = struct.unpack_from("<4sHHHHIIH", tail, eocd)
    loc = eocd - 20
    if loc >= 0 and tail[loc : loc + 4] == _EOCD64_LOC_SIG:
        (_, _, eocd64_offset, _) = struct.unpack_from("<4sIQI", tail, loc)
        rel = eocd64_offset - tail_start
        record = tail[rel : rel + 56] if 0 <= rel <= len(tail) - 56 else reader.read(eocd64_offset, 56)
        if record[:4] != _EOCD64_SIG:
            raise CheckpointError(f"{uri}: corrupt zip64 end record (bad signature at offset {eocd64_offset})")
        (_, _, _, _, _, _, _, entries, cd_size, cd_offset) = struct.unpack("<4sQHHIIQQQQ", record)
    if cd_offset + cd_size > reader.size:
        raise CheckpointError(f"{uri}: zip central directory points past the end of the file; it is truncated")
    entry = _find_data_pkl(reader, tail_start, tail, cd_offset, cd_size, entries)
    return restricted_load(_read_member(reader, entry), source=f"{uri} ({entry.name})")


@dataclass(frozen=True)
class _ZipEntry:
    name: str
    method: int
    flags: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int


def _find_data_pkl(
    reader: _Reader, tail_start: int, tail: bytes, cd_offset: int, cd_size: int, entries: int
) -> _ZipEntry:
    """Scan the central directory, fetching it in growing chunks, until ``<archive>/data.pkl`` is found."""
    uri = reader.uri
    buffer, buffer_start = b"", cd_offset
    if cd_offset >= tail_start:  # the tail already holds it (small files)
        buffer = tail[cd_offset - tail_start : cd_offset - tail_start + cd_size]
    seen: list[Any] = []
    pos, chunk, prefix = 0, _CD_CHUNK, None
    for _ in range(entries):
        while True:
            end = pos + _CDH.size
            if end <= len(buffer):
                name_len, extra_len, comment_len = struct.unpack_from("<HHH", buffer, pos + 28)
                end += name_len + extra_len + comment_len
            if end <= len(buffer):
                break
            fetched = buffer_start + len(buffer)
            if fetched >= cd_offset + cd_size:
                raise CheckpointError(f"{uri}: zip central directory is truncated")
            buffer += reader.read(fetched, min(chunk, cd_offset + cd_size - fetched))
            chunk *= 4
        fields = _CDH.unpack_from(buffer, pos)
        if fields[0] != _CDH_SIG:
            raise CheckpointError(f"{uri}: corrupt zip central directory (bad signature at {buffer_start + pos})")
        (_, _, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, _, _, _, _, offset) = fields
        name_raw = buffer[pos + _CDH.size : pos + _CDH.size + name_len]
        extra = buffer[pos + _CDH.size + name_len : pos + _CDH.size + name_len + extra_len]
        pos = end
        name = name_raw.decode("utf-8", errors="replace")
        usize, csize, offset = _zip64_values(extra, usize, csize, offset)
        if prefix is None:  # torch names every record "<archive>/..." after the first one's directory
            prefix = name.split("/", 1)[0] if "/" in name else ""
        if name == f"{prefix}/data.pkl":
            return _ZipEntry(name, method, flags, crc, csize, usize, offset)
        if len(seen) < 8:
            seen.append(name)
    what = "a TorchScript archive (torch.jit.save)" if any(n.endswith("constants.pkl") for n in seen) else "a zip"
    raise CheckpointError(
        f"{uri} is {what} without {prefix or '<archive>'}/data.pkl, not a torch.save checkpoint "
        f"(first entries: {', '.join(seen) or 'none'})"
    )


def _zip64_values(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Apply the zip64 extended-information extra field: 8-byte values for each field that reads 0xFFFFFFFF."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        if tag == 0x0001:
            data, i = extra[pos + 4 : pos + 4 + length], 0
            values = []
            for current in (usize, csize, offset):
                if current == 0xFFFFFFFF and i + 8 <= len(data):
                    values.append(struct.unpack_from("<Q", data, i)[0])
                    i += 8
                else:
                    values.append(current)
            return values[0], values[1], values[2]
        pos += 4 + length
    return usize, csize, offset


def _read_member(reader: _Reader, entry: _ZipEntry) -> bytes:
    uri = reader.uri
    if entry.flags & 0x1:
        raise CheckpointError(f"{uri}: {entry.name} is encrypted")
    if entry.method not in (0, 8):
        raise CheckpointError(
            f"{uri}: {entry.name} uses zip compression method {entry.method}; only stored (0) "
            "and deflate (8) are supported"
        )
    if entry.size > _MAX_PICKLE_BYTES or entry.compressed_size > _MAX_PICKLE_BYTES:
        raise CheckpointError(f"{uri}: {entry.name} is {entry.size} bytes, too large for a checkpoint's pickle")
    guess = _LFH.size + len(entry.name.encode()) + _LOCAL_EXTRA_GUESS
    blob = reader.read(entry.header_offset, guess + entry.compressed_size)
    header = _LFH.unpack_from(blob)
    if header[0] != _LFH_SIG:
        raise CheckpointError(f"{uri}: corrupt zip: no local header for {entry.name} at offset {entry.header_offset}")
    start = _LFH.size + header[9] + header[10]
    end = start + entry.compressed_size
    if end > len(blob):
        blob += reader.read(entry.header_offset + len(blob), end - len(blob))
    data = blob[start:end]
    if entry.method == 8:
        decompressor = zlib.decompressobj(-15)
        data = decompressor.decompress(data, _MAX_PICKLE_BYTES + 1)
        if len(data) != entry.size:
            raise CheckpointError(f"{uri}: {entry.name} inflates to {len(data)} bytes, expected {entry.size}")
    if zlib.crc32(data) != entry.crc:
        raise CheckpointError(f"{uri}: {entry.name} fails its CRC-32 check; the file is corrupt")
    return data


# -- legacy format -------------------------------------------------------------------------------------------
def _load_legacy(reader: _Reader) -> Any:
    """Torch's pre-1.6 format: pickles of magic number, protocol version, sys info, then the object."""
    stream = io.BufferedReader(_RangeStream(reader), buffer_size=_LEGACY_BLOCK)
    source = f"{reader.uri} (legacy torch format)"
    magic = restricted_load(stream, source=source)
    if magic != _LEGACY_MAGIC:
        raise CheckpointError(
            f"{reader.uri} is a pickle file but not a torch checkpoint (no torch magic number); "
            "save checkpoints with torch.save"
        )
    protocol = restricted_load(stream, source=source)
    if protocol != 1001:
        raise CheckpointError(f"{reader.uri}: unsupported legacy torch protocol version {protocol!r}; {_RESAVE_HINT}")
    restricted_load(stream, source=source)  # sys_info: byte order and type sizes, not needed for shapes
    return _guarded(RestrictedUnpickler(stream, source=source).load, source)


# -- interpretation ------------------------------------------------------------------------------------------
def _is_state_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and any(isinstance(v, TensorMeta) for v in value.values())


def _describe(uri: str, size: int, bytes_read: int, ckpt: Any, digest: str | None) -> CheckpointInfo:
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{uri} holds a pickled {type(ckpt).__name__}, not a checkpoint dict or state dict")
    key = next((k for k in ("ema_net", "net") if _is_state_dict(ckpt.get(k))), None)
    if key is None:
        if not _is_state_dict(ckpt):
            raise CheckpointError(
                f"{uri} has no state dict: no 'ema_net' or 'net' entry and no tensors at the top "
                f"level (keys: {', '.join(map(str, list(ckpt)[:10]))})"
            )
        key = ""
    state_dict = ckpt[key] if key else ckpt
    num_classes, architecture, keypoints = _read_heads(uri, key, state_dict)
    return CheckpointInfo(
        uri=uri,
        size_bytes=size,
        bytes_read=bytes_read,
        state_dict_key=key,
        num_classes=num_classes,
        architecture=architecture,
        num_keypoints=keypoints,
        class_names=_class_names(ckpt),
        epoch=ckpt.get("epoch") if type(ckpt.get("epoch")) is int else None,
        metrics=_metrics(ckpt.get("metrics")),
        sha256=digest,
    )


def _read_heads(uri: str, key: str, state_dict: Mapping[str, Any]) -> tuple[int, str, int | None]:
    """Class count, architecture and keypoint count from the three YOLO-NAS heads' prediction layers."""
    where = f"state dict {key!r}" if key else "top-level state dict"
    head1 = next((k for k in state_dict if isinstance(k, str) and k.endswith("heads.head1.cls_pred.weight")), None)
    if head1 is None:
        sample = ", ".join(str(k) for k in list(state_dict)[:5])
        raise CheckpointError(
            f"{uri} is not a YOLO-NAS checkpoint: its {where} has no heads.head1.cls_pred.weight (first keys: {sample})"
        )
    prefix = head1[: -len("heads.head1.cls_pred.weight")]  # e.g. "module." when saved from a DDP wrapper

    def shapes(layer: str) -> list[tuple[int, ...]] | None:
        found = [state_dict.get(f"{prefix}heads.head{i}.{layer}.weight") for i in (1, 2, 3)]
        if all(t is None for t in found):
            return None
        result = [_shape(t) for t in found]
        if any(s is None or len(s) != 4 for s in result):
            raise CheckpointError(f"{uri}: {where} lacks a 4-D heads.head{{1,2,3}}.{layer}.weight in one of the heads")
        return result  # type: ignore[return-value]

    cls = shapes("cls_pred")
    assert cls is not None
    rows = {s[0] for s in cls}
    if len(rows) != 1:
        raise CheckpointError(
            f"{uri}: the three heads disagree on the class count (cls_pred rows "
            f"{'/'.join(str(s[0]) for s in cls)}); the checkpoint is inconsistent"
        )
    cls_rows = cls[0][0]
    size = HEAD_WIDTHS.get(cast("tuple[int, int, int]", tuple(s[1] for s in cls)))
    pose = shapes("pose_pred")
    keypoints = None
    if pose is not None:
        pose_rows = {s[0] for s in pose}
        if len(pose_rows) != 1 or pose[0][0] % 2:
            raise CheckpointError(
                f"{uri}: pose heads disagree or are odd-sized (pose_pred rows "
                f"{'/'.join(str(s[0]) for s in pose)}); expected 2 x keypoints in each"
            )
        keypoints = pose[0][0] // 2
    # YOLO-NAS-Pose puts the keypoint confidences into the class head (pose_conf_in_class_head): rows = 1 + K.
    num_classes = cls_rows - keypoints if keypoints and cls_rows > keypoints else cls_rows
    if size is None:
        architecture = f"unknown (head widths {'/'.join(str(s[1]) for s in cls)})"
    else:
        architecture = f"yolo_nas_{'pose_' if keypoints else ''}{size}"
    return num_classes, architecture, keypoints


def _shape(tensor: Any) -> tuple[int, ...] | None:
    """A tensor's shape as ints, or None when the value is not a well-formed tensor record."""
    if not isinstance(tensor, TensorMeta) or not isinstance(tensor.size, tuple | list):
        return None
    if not all(type(d) is int and d >= 0 for d in tensor.size):
        return None
    return tuple(tensor.size)


def _class_names(ckpt: Mapping[str, Any]) -> list[str] | None:
    params = ckpt.get("processing_params")
    names = params.get("class_names") if isinstance(params, Mapping) else None
    if not isinstance(names, list | tuple):
        return None
    return [n.decode("utf-8", errors="replace") if isinstance(n, bytes) else str(n) for n in names]


def _metrics(raw: Any) -> dict[str, float] | None:
    """super-gradients stores {"tracked_metric_name", "valid": {...}, "train": {...}}; flatten the numbers."""
    if not isinstance(raw, Mapping):
        return None

    def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in values.items() if type(v) in (int, float)}

    if isinstance(raw.get("valid"), Mapping) or isinstance(raw.get("train"), Mapping):
        out = numbers(raw.get("valid") or {})
        out.update(numbers(raw.get("train") or {}, "train/"))
        return out
    return numbers(raw)


# -- class planning ------------------------------------------------------------------------------------------
def plan_classes(info: CheckpointInfo | None, *, dataset_class_names: Sequence[str], model_name: str) -> ClassPlan:
    """One consistent class set for training: the dataset's classes, plus the checkpoint's head size.

    ``info`` None means training from scratch. Raises :class:`CheckpointError` when the checkpoint's architecture
    is not ``model_name``; warns (in ``warnings``) when the class names differ but the counts match, because the
    head is then kept and each learned class silently takes the dataset's name at the same index.
    """
    requested = model_name.strip().lower()
    if requested not in MODEL_NAMES:
        raise StageInputError(f"model_name {model_name!r} is not supported; expected one of {', '.join(MODEL_NAMES)}")
    names = [str(n) for n in dataset_class_names]
    if not names:
        raise StageInputError("dataset_class_names is empty; the materialized dataset must define its categories")
    if info is None:
        return ClassPlan(
            model_name=requested,  # checked against MODEL_NAMES above
            num_classes=len(names),
            class_names=names,
        )
    if info.architecture != requested:
        raise CheckpointError(
            f"checkpoint {info.uri} holds a {info.architecture} model but the run requests {requested}; set "
            f"model_name to {info.architecture} or choose a {requested} checkpoint"
        )
    warnings: list[str] = []
    if info.num_classes == len(names) and info.class_names is not None and list(info.class_names) != names:
        if sorted(info.class_names) == sorted(names):
            detail = "the same names in a different order"
        else:
            detail = f"checkpoint {info.class_names[:10]} vs dataset {names[:10]}"
        changed = [
            f"{i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(info.class_names, names, strict=True)) if a != b
        ]
        warnings.append(
            f"checkpoint {info.uri} and the dataset both have {len(names)} classes but different names ({detail}); "
            f"the head is kept, so each index keeps what it learned under its new name ({'; '.join(changed[:5])}"
            f"{'; ...' if len(changed) > 5 else ''})"
        )
    return ClassPlan(
        model_name=requested,  # checked against MODEL_NAMES above
        num_classes=len(names),
        class_names=names,
        checkpoint_uri=info.uri,
        checkpoint_num_classes=info.num_classes,
        warnings=warnings,
        checkpoint=info,
    )
