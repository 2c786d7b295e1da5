"""Plausibility checks: does the chosen reading of the boxes (preset or config) fit the data, before any export?

A layout can match a preset by its column names and still hold other numbers: corner boxes under a preset
that says ``xywh``, pixel coordinates marked ``normalized``. Converted blindly, such boxes are written wrong
(a negative-size corner box reads as a valid ``xywh`` one) or all clipped to the whole image, visible only
in counts. :func:`check_boxes` reads the first rows of a split (headers only: no image is decoded), reads
their boxes in every box format, and refuses the export when:

* ``normalized`` is set but coordinates above 1 are common (pixel coordinates);
* ``normalized`` is not set but every coordinate lies in 0..1 (fractions of the image);
* another box format explains the boxes clearly better than the chosen one: markedly fewer boxes with a
  negative size or reaching outside the image.

The message names both readings, an example row, and the schema key to set. What was sampled and how each
reading fared goes into the report (``box_checks``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.materialize_images import CORRUPT, STORED_FRAME, declared_frame, inspect_image, stored_size
from yolonas_pipeline.materialize_rows import read_rows
from yolonas_pipeline.materialize_schema import BBOX_FORMATS, ResolvedSchema
from yolonas_pipeline.materialize_sources import SourceSplit

__all__ = ["SAMPLE_BOXES", "SAMPLE_ROWS", "check_boxes"]

#: Rows read from the start of the split, and at most this many boxes.
SAMPLE_ROWS = 256
SAMPLE_BOXES = 4096
#: A box reaching past the border by more than this share of the image side (or 1 px) is "outside".
BORDER_TOLERANCE = 0.02
#: Normalized coordinates above this are not fractions of the image.
NORMALIZED_MAX = 1.01
#: Share of sampled boxes that may break a rule before the reading is refused (stray bad boxes are dropped).
MAX_BAD_SHARE = 0.05
#: Another format is "clearly better" when it has at least this much smaller share of bad boxes, and at most
#: half the chosen format's share.
CLEARLY_BETTER = 0.25


@dataclass(frozen=True)
class _Box:
    values: tuple[float, float, float, float]
    size: tuple[int, int]  # (w, h) of the frame the box refers to
    row: int


def _corners(fmt: str, values: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    a, b, c, d = values
    if fmt == "xywh":
        return a, b, a + c, b + d
    if fmt == "xyxy":
        return a, b, c, d
    return a - c / 2, b - d / 2, a + c / 2, b + d / 2


def _reading(fmt: str, normalized: bool, boxes: list[_Box]) -> dict[str, Any]:
    negative = outside = 0
    for box in boxes:
        x1, y1, x2, y2 = _corners(fmt, box.values)
        width, height = box.size
        if normalized:
            x1, x2, y1, y2 = x1 * width, x2 * width, y1 * height, y2 * height
        if x2 <= x1 or y2 <= y1:
            negative += 1
            continue
        tol_x, tol_y = max(1.0, BORDER_TOLERANCE * width), max(1.0, BORDER_TOLERANCE * height)
        if x1 < -tol_x or y1 < -tol_y or x2 > width + tol_x or y2 > height + tol_y:
            outside += 1
    count = len(boxes)
    return {
        "negative_size": negative,
        "outside_image": outside,
        "bad_share": round((negative + outside) / count, 4) if count else 0.0,
    }


def _sample(split: SourceSplit, schema: ResolvedSchema) -> tuple[list[_Box], int]:
    boxes: list[_Box] = []
    rows = read_rows(split, schema)
    count = 0
    try:
        for index, (data, _, bboxes, _, _, declared) in enumerate(rows):
            if index >= SAMPLE_ROWS or len(boxes) >= SAMPLE_BOXES:
                break
            count += 1
            if data is None or not bboxes:
                continue
            plan = inspect_image(data, None)
            if plan.action == CORRUPT:
                continue
            size = stored_size(plan) if declared_frame(plan, declared) == STORED_FRAME else plan.source_size
            for bbox in bboxes:
                if bbox is None or len(bbox) != 4 or any(v is None for v in bbox):
                    continue
                values = (float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3]))
                if all(math.isfinite(v) for v in values):
                    boxes.append(_Box(values, size, index))
    finally:
        rows.close()  # type: ignore[attr-defined]
    return boxes, count


def _example(box: _Box) -> str:
    values = ", ".join(f"{v:g}" for v in box.values)
    return f"row {box.row}: [{values}] on a {box.size[0]}x{box.size[1]} image"


def check_boxes(schema: ResolvedSchema, split: SourceSplit, where: str) -> dict[str, Any]:
    """Check the schema's box reading on the first rows of ``split``; returns what was found (for the report),
    or raises :class:`StageInputError` naming both readings and the key to set."""
    cfg = schema.config
    boxes, rows = _sample(split, schema)
    readings = {fmt: _reading(fmt, cfg.normalized, boxes) for fmt in BBOX_FORMATS}
    found: dict[str, Any] = {
        "sampled_rows": rows,
        "sampled_boxes": len(boxes),
        "bbox_format": cfg.bbox_format,
        "normalized": cfg.normalized,
        "readings": readings,
    }
    if not boxes:
        return found
    sampled = f"{len(boxes)} boxes sampled from the first {rows} rows of {where}"
    preset = f"schema {cfg.name!r}" if cfg.name != "custom" else "the schema"
    keep_as_is = "; or pass check_boxes=False to export as configured anyway"
    if cfg.normalized:
        above = [b for b in boxes if max(b.values) > NORMALIZED_MAX]
        if len(above) > MAX_BAD_SHARE * len(boxes):
            raise StageInputError(
                f"{preset} says normalized=true (coordinates are fractions 0..1 of the image), but "
                f"{len(above)} of the {sampled} have coordinates above 1, e.g. {_example(above[0])}: these are "
                f"pixel coordinates. Set the schema key normalized to false{keep_as_is}"
            )
    elif all(0.0 <= v <= 1.0 for b in boxes for v in b.values) and any(v != int(v) for b in boxes for v in b.values):
        raise StageInputError(
            f"{preset} reads boxes in pixels (normalized=false), but every coordinate of the {sampled} lies in "
            f"0..1, e.g. {_example(boxes[0])}: these are fractions of the image. Set the schema key normalized "
            f"to true{keep_as_is}"
        )
    chosen = readings[cfg.bbox_format]
    best = min(BBOX_FORMATS, key=lambda fmt: (readings[fmt]["bad_share"], fmt != cfg.bbox_format))
    margin = chosen["bad_share"] - readings[best]["bad_share"]
    if best != cfg.bbox_format and margin >= CLEARLY_BETTER and readings[best]["bad_share"] <= chosen["bad_share"] / 2:
        bad = next(b for b in boxes if _reading(cfg.bbox_format, cfg.normalized, [b])["bad_share"] > 0)
        example = {"preset": cfg.name, "bbox_format": best} if cfg.name not in ("custom", "auto") else None
        hint = f" (e.g. schema {json.dumps(example)})" if example else ""
        raise StageInputError(
            f"the boxes do not read as bbox_format {cfg.bbox_format!r} ({preset}): of the {sampled}, "
            f"{chosen['bad_share']:.0%} have a negative size or reach outside the image read that way "
            f"({chosen['negative_size']} negative, {chosen['outside_image']} outside; e.g. {_example(bad)}), but "
            f"read as {best!r} only {readings[best]['bad_share']:.0%} do. Set the schema key bbox_format to "
            f"{best!r}{hint} if the boxes are {best}, or to one of {', '.join(BBOX_FORMATS)}{keep_as_is}"
        )
    return found
