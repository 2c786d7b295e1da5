"""Image handling for the materializer: header inspection (no pixel decode) and conversion to RGB JPEG.

A JPEG that is RGB, upright (no EXIF orientation other than 1), complete (ends in an EOI marker) and small
enough is written byte for byte. Everything else is decoded and re-encoded by ``convert_chunk``, in the
conversion workers of ``materialize_pool`` (or in-process with ``workers`` 0 or 1).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Literal

JPEG_QUALITY = 95
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: How far from the end an EOI marker may sit; encoders and cameras append a few bytes of padding.
EOI_SEARCH_TAIL = 1024
ORIENTATION_TAG = 0x0112
#: Orientations 5-8 swap width and height.
_TRANSPOSING = {5, 6, 7, 8}

# what to do with an image
PASSTHROUGH = "passthrough"
VERIFY = "verify"  # JPEG without a visible EOI: decode to tell a truncated file from trailing padding
CONVERT = "convert"
CORRUPT = "corrupt"


@dataclass(frozen=True)
class ImagePlan:
    """What the main process decided from the header alone."""

    action: str
    source_size: tuple[int, int]  # (w, h) after EXIF orientation: the frame the boxes refer to
    output_size: tuple[int, int]  # (w, h) of the written JPEG
    orientation: int = 1
    reason: str = ""


#: What to do when a row's declared width/height match the stored frame of an EXIF-rotated image (its boxes
#: then refer to the stored frame, not the displayed one the export writes).
EXIF_STORED_FRAME_POLICIES = ("rotate", "drop", "error")
#: Correction reasons counted in the report.
BOXES_ROTATED = "boxes_rotated_with_exif"
DECLARED_SIZE_MISMATCH = "declared_size_mismatch"
STORED_FRAME = "stored_frame"  # not a correction: a row in the stored frame, under policy "drop" or "error"


def stored_size(plan: ImagePlan) -> tuple[int, int]:
    """(w, h) of the image as stored, before its EXIF orientation is applied."""
    width, height = plan.source_size
    return (height, width) if plan.orientation in _TRANSPOSING else (width, height)


def declared_frame(plan: ImagePlan, declared: tuple[Any, Any] | None) -> str | None:
    """How a row's declared (width, height) relate to its image: None when they agree with the displayed frame
    (or nothing usable is declared), :data:`STORED_FRAME` when they are the stored frame of an image that EXIF
    rotates by 90 degrees (its boxes were drawn on the stored pixels), else :data:`DECLARED_SIZE_MISMATCH`
    (the decoded size is used). Flips and 180-degree turns keep the size, so they cannot be told apart here."""
    if declared is None:
        return None
    width, height = declared
    if width is None or height is None:
        return None
    try:
        size = (round(float(width)), round(float(height)))
    except (TypeError, ValueError, OverflowError):
        return DECLARED_SIZE_MISMATCH
    if size == plan.source_size:
        return None
    if plan.orientation in _TRANSPOSING and size == stored_size(plan):
        return STORED_FRAME
    return DECLARED_SIZE_MISMATCH


def target_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(w, h) scaled so that the longer side is at most ``max_side``; never upscales."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}


def _exif_orientation(data: bytes | memoryview, start: int, end: int) -> int | None:
    """The orientation tag of an APP1 Exif payload ``data[start:end]`` (TIFF header first); None if unreadable."""
    order = data[start : start + 2]
    if order == b"II":
        big = False
    elif order == b"MM":
        big = True
    else:
        return None
    endian: Literal["big", "little"] = "big" if big else "little"
    ifd = start + int.from_bytes(data[start + 4 : start + 8], endian)
    if ifd + 2 > end:
        return None
    count = int.from_bytes(data[ifd : ifd + 2], endian)
    for entry in range(ifd + 2, min(ifd + 2 + 12 * count, end - 11), 12):
        if int.from_bytes(data[entry : entry + 2], endian) == ORIENTATION_TAG:
            return int.from_bytes(data[entry + 8 : entry + 10], endian)  # a SHORT, left-justified in the value
    return 1


def jpeg_header(data: bytes | memoryview) -> tuple[int, int, str, int] | None:
    """(width, height, mode, EXIF orientation) from a JPEG's markers, or None to let PIL decide.

    PIL's header parser spends ~50 us per file in Python on quantisation tables we do not need; this walks
    the marker segments up to the frame header only. Anything unusual returns None.
    """
    size = len(data)
    index = 2
    orientation = 1
    while index + 4 <= size:
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        if marker in _STANDALONE_MARKERS:
            index += 2
            continue
        length = (data[index + 2] << 8) | data[index + 3]
        if length < 2:
            return None
        if marker in _SOF_MARKERS:
            if index + 10 > size:
                return None
            height = (data[index + 5] << 8) | data[index + 6]
            width = (data[index + 7] << 8) | data[index + 8]
            mode = _JPEG_MODES.get(data[index + 9])
            if mode is None or width == 0 or height == 0:
                return None
            return width, height, mode, orientation
        if marker == 0xE1 and data[index + 4 : index + 10] == b"Exif\x00\x00":
            found = _exif_orientation(data, index + 10, min(index + 2 + length, size))
            if found is None:
                return None
            orientation = found
        elif marker == 0xDA:  # scan data before any frame header: not a JPEG we understand
            return None
        index += 2 + length
    return None


def png_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) of a PNG without EXIF, from its chunk headers alone; None to let PIL decide.

    A PNG is always converted, so only its size matters here; PIL's open costs ~0.35 ms per file in the
    process that reads the rows, the one process the conversion pool cannot parallelise. A PNG with an
    eXIf chunk before its image data may carry an orientation and goes to PIL, which reads it the same way.
    """
    size = len(data)
    if size < 33 or bytes(data[12:16]) != b"IHDR":
        return None
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    index = 33  # signature (8) + IHDR: length (4), type (4), data (13), CRC (4)
    while index + 8 <= size:
        kind = bytes(data[index + 4 : index + 8])
        if kind == b"IDAT":
            return (width, height) if width and height else None
        if kind == b"eXIf":
            return None
        index += 12 + int.from_bytes(data[index : index + 4], "big")
    return None


def _pil_header(data: bytes | memoryview) -> tuple[int, int, str | None, str, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        orientation = 1
        if "exif" in image.info:
            orientation = int(image.getexif().get(ORIENTATION_TAG, 1) or 1)
        return width, height, image.format, image.mode, orientation


def inspect_image(data: bytes | memoryview, max_side: int | None) -> ImagePlan:
    """Read the header (no pixel decode) and decide passthrough / verify / convert."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, memoryview) and data.format != "B":
        data = data.cast("B")  # index as 0..255 whatever the exporter's format
    magic = bytes(data[:8])
    header = jpeg_header(data) if magic.startswith(JPEG_MAGIC) else None
    png = png_size(data) if magic == PNG_MAGIC else None
    if header is not None:
        width, height, mode, orientation = header
        fmt: str | None = "JPEG"
    elif png is not None:
        (width, height), fmt, mode, orientation = png, "PNG", "", 1
    else:
        try:
            width, height, fmt, mode, orientation = _pil_header(data)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            return ImagePlan(CORRUPT, (0, 0), (0, 0), reason=f"{type(exc).__name__}: {exc}")
    if width <= 0 or height <= 0:
        return ImagePlan(CORRUPT, (0, 0), (0, 0), reason="zero-sized image")
    if orientation not in range(1, 9):
        orientation = 1  # an invalid tag: decoders ignore it, so the stored frame is what they show
    source = (height, width) if orientation in _TRANSPOSING else (width, height)
    output = target_size(*source, max_side)
    if fmt != "JPEG" or mode != "RGB" or orientation != 1 or output != source:
        return ImagePlan(CONVERT, source, output, orientation)
    if bytes(data[-EOI_SEARCH_TAIL:]).rfind(b"\xff\xd9") < 0:
        return ImagePlan(VERIFY, source, output, orientation)
    return ImagePlan(PASSTHROUGH, source, output, orientation)


def _to_rgb(image: Any) -> Any:
    """Any PIL mode to 8-bit RGB; 16-bit and float data are scaled, not clipped."""
    from PIL import Image

    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in {"I", "F"}:
        import numpy as np  # only here: a worker that never sees 16-bit data skips numpy's import

        pixels = np.asarray(image)
        if mode == "F":
            top = float(np.nanmax(pixels)) if pixels.size else 1.0
            scaled = np.nan_to_num(pixels) * (255.0 / top if top > 255.0 else 1.0)
        else:
            # 16-bit images use the full 0..65535 range; 32-bit "I" may hold either 8- or 16-bit data
            shift = 8 if (mode.startswith("I;16") or int(pixels.max(initial=0)) > 255) else 0
            scaled = pixels.astype(np.int64) >> shift
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in {"P", "PA"}:
        return image.convert("RGBA").convert("RGB")  # via RGBA: palette transparency needs no special case
    # alpha is dropped (as cv2.imread(IMREAD_COLOR) does); CMYK, YCbCr, L, LA, 1 use PIL's converters
    return image.convert("RGB")


def convert_one(
    action: str, data: bytes | memoryview, orientation: int, output_size: tuple[int, int]
) -> ConversionResult:
    """Decode and re-encode one image; returns (``"ok"``, jpeg bytes), (``"passthrough"``, None) or
    (``"corrupt"``, reason)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as image:
            if action == VERIFY:
                image.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES stays False)
                return PASSTHROUGH, None
            if image.format == "JPEG":
                # let libjpeg decode at 1/2, 1/4 or 1/8 scale when downscaling: far less work than full size
                raw_target = output_size[::-1] if orientation in _TRANSPOSING else output_size
                image.draft("RGB", raw_target)
            image.load()
            frame: Image.Image = image
            if orientation != 1:
                frame = ImageOps.exif_transpose(image)
            rgb = _to_rgb(frame)
            if rgb.size != output_size:
                rgb = rgb.resize(output_size, Image.Resampling.LANCZOS, reducing_gap=2.0)
            out = io.BytesIO()
            rgb.save(out, format="JPEG", quality=JPEG_QUALITY)
            return "ok", out.getvalue()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return CORRUPT, f"{type(exc).__name__}: {exc}"


#: A job's image: the bytes themselves, or (path, offset, length) of the bytes inside a source file, which
#: the worker reads itself, so that large PNGs are not pickled through a pipe.
ImageSource = bytes | memoryview | tuple[str, int, int]
#: (action, image, EXIF orientation, output (w, h)): one image for ``convert_chunk``.
ConversionJob = tuple[str, ImageSource, int, tuple[int, int]]
#: ("ok", JPEG bytes), ("passthrough", None) or ("corrupt", reason).
ConversionResult = tuple[str, Any]
_OPEN_FILES: dict[str, int] = {}  # per worker process: source files stay open across tasks


def _read_source(source: ImageSource) -> bytes | memoryview:
    if not isinstance(source, tuple):
        return source
    path, offset, length = source
    fd = _OPEN_FILES.get(path)
    if fd is None:
        if len(_OPEN_FILES) >= 16:  # a source has few files; do not hoard descriptors
            for old in _OPEN_FILES.values():
                os.close(old)
            _OPEN_FILES.clear()
        fd = _OPEN_FILES[path] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(f"short read of {path} at {offset}: {len(data)} of {length} bytes")
    return data


def convert_chunk(jobs: list[ConversionJob]) -> list[ConversionResult]:
    """The conversion workers' entry point: a few images per message to amortise the round trip."""
    results = []
    for action, source, orientation, output_size in jobs:
        try:
            data = _read_source(source)
        except OSError as exc:
            results.append((CORRUPT, f"cannot read the image bytes: {exc}"))
            continue
        results.append(convert_one(action, data, orientation, output_size))
    return results
