"""How the materializer reads a detection row: the schema config, its presets, layout detection, box conversion.

Layout detection works on the Arrow schema (what the rows really hold) plus the Hugging Face ``Features``
(where the class names live, in a ``ClassLabel``); the materializer then reads raw Arrow columns without
letting ``datasets`` decode anything.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import zip_longest
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from yolonas_pipeline.errors import StageInputError

BBOX_FORMATS = ("xyxy", "xywh", "cxcywh")

#: Named layouts of common hub datasets. Auto-detection tries the first three in this order; the others
#: share a layout with an earlier one and differ only in box format, so they are chosen by name.
PRESETS: dict[str, dict[str, Any]] = {
    # cppe-5 and most hub detection sets made with the HF object-detection guide
    "cppe5": {"objects_column": "objects", "bbox_key": "bbox", "category_key": "category", "bbox_format": "xywh"},
    # objects.categories (plural), e.g. several Roboflow exports
    "objects_categories": {
        "objects_column": "objects",
        "bbox_key": "bbox",
        "category_key": "categories",
        "bbox_format": "xywh",
    },
    # top-level bbox / category list columns
    "top_level": {"objects_column": None, "bbox_key": "bbox", "category_key": "category", "bbox_format": "xywh"},
    # detection-datasets/* (coco, fashionpedia): objects.bbox in corner format
    "detection_datasets": {
        "objects_column": "objects",
        "bbox_key": "bbox",
        "category_key": "category",
        "bbox_format": "xyxy",
    },
    # YOLO-style labels: top-level normalized centre boxes
    "yolo": {
        "objects_column": None,
        "bbox_key": "bbox",
        "category_key": "category",
        "bbox_format": "cxcywh",
        "normalized": True,
    },
}
AUTO_PRESETS = ("cppe5", "objects_categories", "top_level")
#: Keys only about interpreting values; a mapping may override them on top of auto-detection.
_VALUE_KEYS = ("bbox_format", "normalized", "class_names", "width_column", "height_column")


@dataclass(frozen=True)
class SchemaConfig:
    """Where the image, the boxes and the categories live in a row, and what the box numbers mean.

    ``name`` records the preset it came from (``"auto"`` = detect the layout when the source is opened,
    ``"custom"`` = set field by field).
    """

    image_column: str = "image"
    objects_column: str | None = "objects"  # None = bbox/category are top-level columns
    bbox_key: str = "bbox"
    category_key: str = "category"
    bbox_format: str = "xywh"  # xyxy | xywh | cxcywh
    normalized: bool = False  # True = coordinates in 0..1
    class_names: tuple[str, ...] | None = None  # required when categories are plain ints
    image_id_column: str | None = "image_id"
    #: Top-level columns declaring each image's size; compared with the decoded image when present (None: ignored).
    width_column: str | None = "width"
    height_column: str | None = "height"
    name: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        if self.bbox_format not in BBOX_FORMATS:
            raise StageInputError(f"schema bbox_format {self.bbox_format!r} is not one of {', '.join(BBOX_FORMATS)}")
        if self.class_names is not None:
            names = tuple(str(n) for n in self.class_names)
            if not names or any(not n for n in names) or len(set(names)) != len(names):
                raise StageInputError(f"schema class_names must be unique non-empty names, got {list(names)!r}")
            object.__setattr__(self, "class_names", names)
        for key in ("image_column", "bbox_key", "category_key"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise StageInputError(f"schema {key} must be a non-empty column/key name, got {getattr(self, key)!r}")

    @property
    def is_auto(self) -> bool:
        return self.name == "auto"

    @classmethod
    def preset(cls, name: str) -> SchemaConfig:
        if name == "auto":
            return cls(name="auto")
        if name not in PRESETS:
            raise StageInputError(f"unknown schema preset {name!r}; known presets: auto, {', '.join(PRESETS)}")
        return cls(name=name, **PRESETS[name])

    @classmethod
    def from_mapping(cls, value: str | Mapping[str, Any] | SchemaConfig | None) -> SchemaConfig:
        """A preset name, ``None``/``"auto"`` (detect), or a mapping of fields, optionally with ``preset``."""
        if isinstance(value, SchemaConfig):
            return value
        if value is None:
            return cls.preset("auto")
        if isinstance(value, str):
            return cls.preset(value)
        if not isinstance(value, Mapping):
            raise StageInputError(f"schema must be a preset name or a mapping, got {type(value).__name__}")
        settable = {f.name for f in fields(cls)} - {"name"}
        unknown = set(value) - settable - {"preset"}
        if unknown:
            raise StageInputError(
                f"unknown schema keys {sorted(unknown)}; accepted: preset, {', '.join(sorted(settable))}"
            )
        check_schema_mapping(value)
        overrides = {k: v for k, v in value.items() if k != "preset"}
        if "preset" in value:
            base = cls.preset(str(value["preset"]))
        elif set(overrides) <= set(_VALUE_KEYS):
            base = cls.preset("auto")  # only value meanings given: still detect the layout
        else:
            base = cls()
        if "class_names" in overrides and overrides["class_names"] is not None:
            overrides["class_names"] = tuple(overrides["class_names"])
        if not overrides:
            return base
        name = base.name if base.is_auto and set(overrides) <= set(_VALUE_KEYS) else "custom"
        return replace(base, name=name, **overrides)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class_names"] = list(self.class_names) if self.class_names is not None else None
        return data


# -- the mapping form, for the Python API and the trigger form alike ----------------------------------------
_Name = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class SchemaMapping(BaseModel):
    """The keys a schema mapping may set, and their types: what :meth:`SchemaConfig.from_mapping` accepts and
    what the trigger form's ``schema`` field validates against (:func:`schema_form_json_schema`). Only the
    keys given are checked and applied; the others keep the preset's (or the default layout's) value."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    preset: Literal[("auto", *PRESETS)] | None = Field(  # type: ignore[valid-type]
        default=None, description="Start from this preset; the other keys override it."
    )
    image_column: _Name = Field(default="", description="Column with the image (HF Image, bytes or path).")
    objects_column: _Name | None = Field(
        default=None, description="Column holding the boxes and categories; null: they are top-level columns."
    )
    bbox_key: _Name = Field(default="", description="Key (or column) of the boxes.")
    category_key: _Name = Field(default="", description="Key (or column) of the categories.")
    bbox_format: Literal[BBOX_FORMATS] | None = Field(default=None, description="What the four numbers are.")  # type: ignore[valid-type]
    normalized: bool | None = Field(default=None, description="True: coordinates are fractions (0..1) of the image.")
    class_names: Annotated[list[_Name], Field(min_length=1, max_length=10000)] | None = Field(
        default=None, description="Class names, index i = category i (needed for plain-integer categories)."
    )
    image_id_column: _Name | None = Field(default=None, description="Column copied to COCO source_id; null: none.")
    width_column: _Name | None = Field(default=None, description="Column declaring the image width; null: none.")
    height_column: _Name | None = Field(default=None, description="Column declaring the image height; null: none.")


def check_schema_mapping(value: Mapping[str, Any]) -> None:
    """Refuse a schema mapping whose keys or value types :class:`SchemaMapping` does not accept."""
    data = {k: list(v) if k == "class_names" and isinstance(v, tuple) else v for k, v in value.items()}
    try:
        SchemaMapping.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'schema'}={error.get('input')!r}: {error['msg']}"
            for error in exc.errors()
        )
        raise StageInputError(
            f"schema mapping refused: {problems}. Accepted keys: {', '.join(SchemaMapping.model_fields)}; "
            f'e.g. {{"preset": "objects_categories", "bbox_format": "xyxy"}} or {{"objects_column": null, '
            f'"class_names": ["cat", "dog"]}}'
        ) from None


def schema_form_json_schema() -> dict[str, Any]:
    """JSON schema of a ``schema`` value: null (detect), a preset name, or a mapping (:class:`SchemaMapping`).

    Self-contained (no ``$ref``), so that Airflow's ``Param`` validates with it as it is; ``type`` lists
    ``object`` first after null, so that the trigger form shows a JSON editor (a preset is typed ``"cppe5"``
    or ``{"preset": "cppe5"}``).
    """
    mapping = SchemaMapping.model_json_schema()
    mapping.pop("title", None)
    mapping.pop("description", None)
    for prop in mapping["properties"].values():
        prop.pop("default", None)  # unset keys keep the preset's value; the defaults here are placeholders
    return {
        "type": ["null", "object", "string"],
        "anyOf": [
            {"type": "null"},
            {"type": "string", "enum": ["auto", *PRESETS]},
            mapping,
        ],
    }


@dataclass(frozen=True)
class ResolvedSchema:
    """A schema checked against a real source: Arrow layouts known, class names fixed."""

    config: SchemaConfig
    class_names: tuple[str, ...]
    image_kind: str  # "struct" (HF Image: bytes + path) | "binary" | "path"
    objects_kind: str | None  # "struct" (struct of lists) | "list" (list of structs) | None (top-level columns)
    category_is_str: bool
    has_image_id: bool
    size_columns: tuple[str, str] | None = None  # (width, height) columns declaring each image's size

    @property
    def columns(self) -> list[str]:
        """The Arrow columns the materializer reads."""
        cfg = self.config
        cols = [cfg.image_column]
        cols += [cfg.objects_column] if cfg.objects_column else [cfg.bbox_key, cfg.category_key]
        if self.has_image_id and cfg.image_id_column:
            cols.append(cfg.image_id_column)
        if self.size_columns is not None:
            cols += [c for c in self.size_columns if c not in cols]
        return cols


_LIST_TYPES = ("List", "Sequence", "LargeList")


def _describe(feature: Any) -> str:
    """A compact text form of a features JSON dict (``Features.to_dict()`` / dataset_info.json)."""
    if isinstance(feature, list):
        return f"[{_describe(feature[0])}]" if feature else "[]"
    if not isinstance(feature, dict):
        return repr(feature)
    kind = feature.get("_type")
    if kind is None:
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in feature.items()) + "}"
    if kind in _LIST_TYPES:
        return f"{kind}({_describe(feature.get('feature'))})"
    if kind == "Value":
        return str(feature.get("dtype", "?"))
    if kind == "ClassLabel":
        return f"ClassLabel({feature.get('names')})"
    return str(kind)


def _feature_summary(features: Mapping[str, Any] | None) -> str:
    if not features:
        return "none recorded"
    return _describe(dict(features))


def _layout_error(where: str, arrow_schema: Any, features: Any, problem: str) -> StageInputError:
    columns = list(arrow_schema.names) if arrow_schema is not None else []
    return StageInputError(
        f"cannot read detections from {where}: {problem}. Columns found: {columns}; features: "
        f"{_feature_summary(features)}. Set the schema config keys image_column, objects_column (null for "
        f"top-level columns), bbox_key, category_key, bbox_format ({'/'.join(BBOX_FORMATS)}), normalized and "
        f"class_names, or pick a preset: {', '.join(PRESETS)}"
    )


def _unwrap_list(arrow_type: Any) -> Any:
    import pyarrow as pa

    while pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        arrow_type = arrow_type.value_type
    return arrow_type


def _image_kind(arrow_type: Any) -> str | None:
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):
        names = {arrow_type.field(i).name for i in range(arrow_type.num_fields)}
        return "struct" if "bytes" in names else None
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type):
        return "binary"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "path"
    return None


def _objects_fields(arrow_type: Any) -> tuple[str | None, dict[str, Any]]:
    """(kind, {key: arrow type of one box's value}) of an objects column."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):  # struct of lists (HF Sequence of a dict)
        return "struct", {arrow_type.field(i).name: arrow_type.field(i).type for i in range(arrow_type.num_fields)}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        inner = arrow_type.value_type
        if pa.types.is_struct(inner):  # list of structs (HF List of a dict)
            return "list", {inner.field(i).name: pa.list_(inner.field(i).type) for i in range(inner.num_fields)}
    return None, {}


def _unwrap_feature(feature: Any) -> Any:
    for _ in range(4):
        if isinstance(feature, list) and len(feature) == 1:
            feature = feature[0]
        elif isinstance(feature, dict) and feature.get("_type") in _LIST_TYPES:
            feature = feature.get("feature")
        else:
            break
    return feature


def _class_label_names(feature: Any) -> tuple[str, ...] | None:
    """Names of a ClassLabel found at any list depth of a features JSON entry."""
    feature = _unwrap_feature(feature)
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel":
        if feature.get("names"):
            return tuple(str(n) for n in feature["names"])
        if feature.get("num_classes"):
            return tuple(str(i) for i in range(int(feature["num_classes"])))
    return None


def _category_feature(features: Mapping[str, Any] | None, cfg: SchemaConfig) -> Any:
    if not features:
        return None
    if cfg.objects_column is None:
        return features.get(cfg.category_key)
    objects = _unwrap_feature(features.get(cfg.objects_column))
    if isinstance(objects, dict) and "_type" not in objects:
        return objects.get(cfg.category_key)
    return None


def _matches(cfg: SchemaConfig, arrow_schema: Any) -> bool:
    names = set(arrow_schema.names)
    if cfg.image_column not in names:
        return False
    if cfg.objects_column is None:
        return cfg.bbox_key in names and cfg.category_key in names
    if cfg.objects_column not in names:
        return False
    _, keys = _objects_fields(arrow_schema.field(cfg.objects_column).type)
    return cfg.bbox_key in keys and cfg.category_key in keys


def resolve_schema(
    config: SchemaConfig, arrow_schema: Any, features: Mapping[str, Any] | None, where: str
) -> ResolvedSchema:
    """Check ``config`` against a source's Arrow schema and features; detect the layout when it is ``auto``.

    ``features`` is the Hugging Face features JSON (``Features.to_dict()``), used for ClassLabel names.
    """
    import pyarrow as pa

    cfg = config
    if cfg.is_auto:
        found = next((p for p in AUTO_PRESETS if _matches(SchemaConfig.preset(p), arrow_schema)), None)
        if found is None:
            raise _layout_error(where, arrow_schema, features, "no preset layout matches")
        overrides = {k: getattr(cfg, k) for k in _VALUE_KEYS if getattr(cfg, k) != getattr(SchemaConfig(), k)}
        cfg = replace(SchemaConfig.preset(found), **overrides)
    names = set(arrow_schema.names)
    if cfg.image_column not in names:
        raise _layout_error(where, arrow_schema, features, f"image column {cfg.image_column!r} is missing")
    image_kind = _image_kind(arrow_schema.field(cfg.image_column).type)
    if image_kind is None:
        raise _layout_error(
            where,
            arrow_schema,
            features,
            f"image column {cfg.image_column!r} holds {arrow_schema.field(cfg.image_column).type}, not image bytes "
            "(an Image feature, binary, or a file path)",
        )
    if cfg.objects_column is None:
        objects_kind = None
        missing = [k for k in (cfg.bbox_key, cfg.category_key) if k not in names]
        if missing:
            raise _layout_error(where, arrow_schema, features, f"top-level columns {missing} are missing")
        bbox_type = arrow_schema.field(cfg.bbox_key).type
        category_type = arrow_schema.field(cfg.category_key).type
    else:
        if cfg.objects_column not in names:
            raise _layout_error(where, arrow_schema, features, f"objects column {cfg.objects_column!r} is missing")
        objects_kind, keys = _objects_fields(arrow_schema.field(cfg.objects_column).type)
        if objects_kind is None:
            raise _layout_error(
                where,
                arrow_schema,
                features,
                f"objects column {cfg.objects_column!r} is not a struct or list of structs",
            )
        missing = [k for k in (cfg.bbox_key, cfg.category_key) if k not in keys]
        if missing:
            raise _layout_error(
                where,
                arrow_schema,
                features,
                f"objects column {cfg.objects_column!r} has no keys {missing} (its keys: {sorted(keys)})",
            )
        bbox_type, category_type = keys[cfg.bbox_key], keys[cfg.category_key]
    box_value = _unwrap_list(bbox_type)
    if not (pa.types.is_floating(box_value) or pa.types.is_integer(box_value) or pa.types.is_decimal(box_value)):
        raise _layout_error(where, arrow_schema, features, f"{cfg.bbox_key!r} holds {bbox_type}, not lists of numbers")
    category_value = _unwrap_list(category_type)
    category_is_str = pa.types.is_string(category_value) or pa.types.is_large_string(category_value)
    if not (category_is_str or pa.types.is_integer(category_value)):
        raise _layout_error(
            where, arrow_schema, features, f"{cfg.category_key!r} holds {category_type}, not integer or string labels"
        )
    label_names = _class_label_names(_category_feature(features, cfg))
    if cfg.class_names is not None:
        if label_names is not None and len(label_names) != len(cfg.class_names):
            raise StageInputError(
                f"schema class_names has {len(cfg.class_names)} names but the ClassLabel of {cfg.category_key!r} "
                f"in {where} has {len(label_names)}: {list(label_names)}; leave class_names unset or give one name "
                "per label"
            )
        class_names = cfg.class_names
    elif label_names is not None:
        class_names = label_names
    else:
        kind = "strings" if category_is_str else "plain integers"
        raise StageInputError(
            f"categories in {cfg.category_key!r} of {where} are {kind} with no ClassLabel names; set the schema "
            "key class_names to the list of class names (index i = category i)"
        )
    if not class_names:
        raise StageInputError(f"{where} declares no class names; set schema class_names")
    has_image_id = bool(cfg.image_id_column) and cfg.image_id_column in names
    size_columns = _size_columns(cfg, arrow_schema, where)
    return ResolvedSchema(
        cfg, tuple(class_names), image_kind, objects_kind, category_is_str, has_image_id, size_columns
    )


def _size_columns(cfg: SchemaConfig, arrow_schema: Any, where: str) -> tuple[str, str] | None:
    """The declared-size columns, when both are numeric top-level columns. The default names are used when
    present; names set in the schema must exist."""
    import pyarrow as pa

    if cfg.width_column is None or cfg.height_column is None:
        return None
    defaults = SchemaConfig()
    explicit = (cfg.width_column, cfg.height_column) != (defaults.width_column, defaults.height_column)
    found: list[str] = []
    for key, column in (("width_column", cfg.width_column), ("height_column", cfg.height_column)):
        if column not in arrow_schema.names:
            if explicit:
                raise StageInputError(
                    f"schema {key}={column!r}: {where} has no such column (columns: {list(arrow_schema.names)}); "
                    f"name the column that declares each image's size, or set {key} to null"
                )
            return None
        kind = arrow_schema.field(column).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            if explicit:
                raise StageInputError(
                    f"schema {key}={column!r}: the column holds {kind} in {where}, not numbers; set {key} to the "
                    "column with each image's size in pixels, or to null"
                )
            return None
        found.append(column)
    return found[0], found[1]


# -- boxes ---------------------------------------------------------------------------------------


@dataclass
class BoxStats:
    """Per-split box and row counters for the materialization report."""

    drops: Counter[str] = field(default_factory=Counter)
    clipped: int = 0
    corrections: Counter[str] = field(default_factory=Counter)  # rows read differently than they say, by reason


def convert_boxes(
    bboxes: Sequence[Any] | None,
    categories: Sequence[Any] | None,
    *,
    fmt: str,
    normalized: bool,
    source_size: tuple[int, int],
    output_size: tuple[int, int],
    num_classes: int,
    name_to_index: Mapping[str, int] | None,
    stats: BoxStats,
    stored_orientation: int = 1,
) -> list[tuple[int, float, float, float, float]]:
    """Boxes as ``(class_index, x, y, w, h)`` in output pixels, clipped to the image; bad boxes are counted.

    ``source_size`` is the (oriented, displayed) size of the image, ``output_size`` the size of the written
    JPEG (differs when downscaled). The coordinates refer to the displayed frame, unless
    ``stored_orientation`` is an EXIF orientation other than 1: then they refer to the stored pixels, and are
    turned with them.
    """
    out: list[tuple[int, float, float, float, float]] = []
    if not bboxes and not categories:
        return out
    src_w, src_h = source_size
    out_w, out_h = output_size
    sx = out_w / src_w
    sy = out_h / src_h
    if normalized:
        sx, sy = float(out_w), float(out_h)
    turn = stored_orientation != 1
    if turn:  # stored frame: (w, h) before the orientation; boxes to stored pixels, turned, then scaled
        stored_w, stored_h = (src_h, src_w) if stored_orientation in (5, 6, 7, 8) else (src_w, src_h)
        px, py = (float(stored_w), float(stored_h)) if normalized else (1.0, 1.0)
        sx, sy = out_w / src_w, out_h / src_h
    drops = stats.drops
    for bbox, category in zip_longest(bboxes or (), categories or ()):
        if bbox is None or len(bbox) != 4:
            drops["missing_bbox"] += 1
            continue
        a, b, c, d = bbox
        if a is None or b is None or c is None or d is None:
            drops["missing_bbox"] += 1
            continue
        if type(a) is not float:  # ints, decimals
            a, b, c, d = float(a), float(b), float(c), float(d)
        if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c) and math.isfinite(d)):
            drops["nan_bbox"] += 1
            continue
        if category is None:
            drops["missing_category"] += 1
            continue
        if name_to_index is not None:
            index = name_to_index.get(str(category))
            if index is None:
                drops["unknown_category"] += 1
                continue
        else:
            index = int(category)
            if not 0 <= index < num_classes:
                drops["category_out_of_range"] += 1
                continue
        if fmt == "xywh":
            x1, y1, x2, y2 = a, b, a + c, b + d
        elif fmt == "xyxy":
            x1, y1, x2, y2 = a, b, c, d
        else:  # cxcywh
            x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
        if x2 <= x1 or y2 <= y1:
            drops["degenerate_box"] += 1
            continue
        if turn:
            x1, y1, x2, y2 = turn_box(x1 * px, y1 * py, x2 * px, y2 * py, stored_orientation, stored_w, stored_h)
        x1, x2, y1, y2 = x1 * sx, x2 * sx, y1 * sy, y2 * sy
        # clip, then snap to hundredths of a pixel: precision to spare, and stable text in the JSON
        ix1 = round(min(max(x1, 0.0), out_w) * 100)
        ix2 = round(min(max(x2, 0.0), out_w) * 100)
        iy1 = round(min(max(y1, 0.0), out_h) * 100)
        iy2 = round(min(max(y2, 0.0), out_h) * 100)
        if ix2 <= ix1 or iy2 <= iy1:
            inside = x2 > 0 and y2 > 0 and x1 < out_w and y1 < out_h
            drops["degenerate_box" if inside else "outside_image"] += 1
            continue
        # sub-pixel overshoot is rounding in the source, not a box that crossed the border
        if x1 < -0.01 or y1 < -0.01 or x2 > out_w + 0.01 or y2 > out_h + 0.01:
            stats.clipped += 1
        out.append((index, ix1 / 100, iy1 / 100, (ix2 - ix1) / 100, (iy2 - iy1) / 100))
    return out


def turn_box(
    x1: float, y1: float, x2: float, y2: float, orientation: int, width: float, height: float
) -> tuple[float, float, float, float]:
    """A corner box on the stored pixels (``width`` x ``height``) moved as EXIF ``orientation`` moves the
    pixels (what ``ImageOps.exif_transpose`` does), as a corner box in the displayed frame."""
    if orientation == 2:
        return width - x2, y1, width - x1, y2
    if orientation == 3:
        return width - x2, height - y2, width - x1, height - y1
    if orientation == 4:
        return x1, height - y2, x2, height - y1
    if orientation == 5:
        return y1, x1, y2, x2
    if orientation == 6:
        return height - y2, x1, height - y1, x2
    if orientation == 7:
        return height - y2, width - x2, height - y1, width - x1
    if orientation == 8:
        return y1, width - x2, y2, width - x1
    return x1, y1, x2, y2
