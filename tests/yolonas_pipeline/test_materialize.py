"""The materialization stage on real datasets (built with ``datasets``), real files, and a real S3 API (moto)."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from yolonas_pipeline import materialize as materialize_module
from yolonas_pipeline import materialize_pipeline, materialize_sources, materialize_writer
from yolonas_pipeline.contracts import DatasetExport, DatasetManifest
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.materialize import (
    FORMAT,
    MaterializeRequest,
    SchemaConfig,
    materialize,
)
from yolonas_pipeline.storage import Storage

REPO = Path(__file__).resolve().parents[2]
NAMES = ["cat", "dog", "bird"]


# -- dataset builders ------------------------------------------------------------------------------


def jpeg(width: int, height: int, colour: tuple[int, int, int] = (200, 40, 40), **save: Any) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def noisy_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def encoded(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def image_value(data: bytes | None) -> dict[str, Any] | None:
    return None if data is None else {"bytes": data, "path": None}


def save_splits(path: Path, splits: Mapping[str, Mapping[str, list[Any]]], features: Any) -> Path:
    from datasets import Dataset, DatasetDict

    DatasetDict({name: Dataset.from_dict(dict(cols), features=features) for name, cols in splits.items()}).save_to_disk(
        str(path)
    )
    return path


def objects_features(category_key: str = "category", class_label: bool = True) -> Any:
    from datasets import ClassLabel, Features, Image, Sequence, Value

    category = ClassLabel(names=NAMES) if class_label else Value("int64")
    return Features(
        {
            "image_id": Value("int64"),
            "image": Image(),
            "objects": Sequence({"bbox": Sequence(Value("float32"), length=4), category_key: category}),
        }
    )


def top_level_features(category: Any = None, box_length: int = -1) -> Any:
    from datasets import ClassLabel, Features, Image, Sequence, Value

    return Features(
        {
            "image": Image(),
            "bbox": Sequence(Sequence(Value("float64"), length=box_length)),
            "category": Sequence(category if category is not None else ClassLabel(names=NAMES)),
        }
    )


def objects_rows(
    images: list[bytes | None], boxes: list[list[list[float]]], cats: list[list[int]], key: str = "category"
):
    return {
        "image_id": list(range(len(images))),
        "image": [image_value(i) for i in images],
        "objects": [{"bbox": b, key: c} for b, c in zip(boxes, cats, strict=True)],
    }


def top_rows(images: list[bytes | None], boxes: list[Any], cats: list[Any]) -> dict[str, list[Any]]:
    return {"image": [image_value(i) for i in images], "bbox": boxes, "category": cats}


def coco(dataset_uri: str, split: str) -> dict[str, Any]:
    return json.loads(Path(dataset_uri, "annotations", f"{split}.json").read_text())


def report(dataset_uri: str) -> dict[str, Any]:
    return json.loads(Path(dataset_uri, "report.json").read_text())


def run(source: Path | str, out: Path, **kwargs: Any) -> DatasetExport:
    kwargs.setdefault("workers", 0)
    return materialize(MaterializeRequest(str(source), str(out), **kwargs), storage=Storage())


def read_manifest(dataset_uri: str, storage: Storage | None = None) -> DatasetManifest:
    return DatasetManifest.read_export(dataset_uri, storage=storage or Storage())


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("yolonas_pipeline.")]


# -- the sample dataset end to end ----------------------------------------------------------------


def test_cppe5_export_layout_passthrough_and_manifest(
    sample_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from datasets import Image as ImageFeature
    from datasets import load_from_disk
    from pycocotools.coco import COCO

    caplog.set_level(logging.INFO, logger="yolonas_pipeline")
    result = materialize(MaterializeRequest(str(sample_dataset), str(tmp_path / "out")), storage=Storage())
    assert not result.reused
    assert result.dataset_uri == str(tmp_path / "out" / result.fingerprint)
    assert result.class_names == ["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]
    source = load_from_disk(str(sample_dataset))
    for split in ("train", "validation"):
        rows = source[split].cast_column("image", ImageFeature(decode=False))
        ann = coco(result.dataset_uri, split)
        assert [c["id"] for c in ann["categories"]] == [1, 2, 3, 4, 5]
        assert [c["name"] for c in ann["categories"]] == result.class_names
        assert len(ann["images"]) == rows.num_rows == result.splits[split].images
        assert len(ann["annotations"]) == sum(len(r["objects"]["bbox"]) for r in rows)
        for entry, row in zip(ann["images"], rows, strict=True):
            written = Path(result.dataset_uri, "images", split, entry["file_name"]).read_bytes()
            assert written == row["image"]["bytes"]  # byte for byte, no re-encode
            assert (entry["width"], entry["height"]) == (320, 240)
            assert entry["source_id"] == row["image_id"]
            mine = [a for a in ann["annotations"] if a["image_id"] == entry["id"]]
            assert [a["bbox"] for a in mine] == [[float(v) for v in b] for b in row["objects"]["bbox"]]
            assert [a["category_id"] - 1 for a in mine] == row["objects"]["category"]
            assert all(a["iscrowd"] == 0 and a["area"] == a["bbox"][2] * a["bbox"][3] for a in mine)
        loaded = COCO(str(Path(result.dataset_uri, "annotations", f"{split}.json")))
        assert len(loaded.getImgIds()) == rows.num_rows
    manifest = read_manifest(result.dataset_uri)
    assert manifest.format == FORMAT == "yolonas-pipeline/coco-detection@1"
    assert manifest.fingerprint == result.fingerprint
    assert manifest.splits["train"].images_dir == "images/train"
    assert manifest.splits["validation"].annotation_file == "annotations/validation.json"
    assert manifest.source.schema_["name"] == "cppe5"
    assert json.loads(Path(result.manifest_uri).read_text())["source"]["schema"]["name"] == "cppe5"  # the alias
    files = [p for p in Path(result.dataset_uri).rglob("*") if p.is_file()]
    assert manifest.files == len(files) - 1  # everything but the manifest itself
    assert sum(result.class_histogram.values()) == sum(s.annotations for s in result.splits.values())
    assert (result.source, result.revision) == (str(sample_dataset), None)
    assert result.report_uri == str(Path(result.dataset_uri, "report.json"))
    assert DatasetExport.parse(json.loads(json.dumps(result.to_xcom())), source="xcom") == result
    assert any(line.startswith("materialize: done") for line in messages(caplog))
    written = report(result.dataset_uri)  # the width/height columns were read, and agree with the images
    assert written["corrections_total"] == {} and written["box_checks"]["sampled_boxes"] > 0


def test_second_run_reuses_and_writes_nothing(
    sample_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = run(sample_dataset, tmp_path)
    marker = Path(first.manifest_uri).stat().st_mtime_ns
    storage = Storage()
    caplog.set_level(logging.INFO, logger="yolonas_pipeline")
    again = materialize(MaterializeRequest(str(sample_dataset), str(tmp_path)), storage=storage)
    assert again.reused and again.fingerprint == first.fingerprint and again.splits == first.splits
    assert again.model_copy(update={"reused": False}) == first
    assert Path(first.manifest_uri).stat().st_mtime_ns == marker
    assert any("nothing to do" in line for line in messages(caplog))
    # a setting that changes the output changes the fingerprint
    assert run(sample_dataset, tmp_path, max_side=160).fingerprint != first.fingerprint


def test_read_manifest_of_incomplete_export_names_the_uri(tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match=str(tmp_path / "nope")):
        read_manifest(str(tmp_path / "nope"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(StageInputError, match="format"):
        read_manifest(str(tmp_path / "bad"))


def test_manifest_of_an_earlier_export_still_reads(tmp_path: Path) -> None:
    """A manifest.json as the exporter wrote it before the contracts (keys unsorted, no defaults filled)."""
    earlier = {
        "format": "yolonas-pipeline/coco-detection@1",
        "fingerprint": "0123456789abcdef",
        "class_names": ["a", "b"],
        "splits": {
            "train": {
                "images": 3,
                "annotations": 4,
                "images_dir": "images/train",
                "annotation_file": "annotations/train.json",
            }
        },
        "class_histogram": {"a": 3, "b": 1},
        "source": {"source": "some/dataset", "revision": "abc", "schema": {"name": "cppe5"}},
        "report_file": "report.json",
        "files": 5,
    }
    (tmp_path / "manifest.json").write_text(json.dumps(earlier, indent=2) + "\n")
    manifest = read_manifest(str(tmp_path))
    assert json.loads(manifest.to_json()) == earlier
    export = DatasetExport.from_manifest(str(tmp_path), manifest, reused=True)
    assert (export.source, export.revision, export.images("train")) == ("some/dataset", "abc", 3)


# -- schemas and box formats ------------------------------------------------------------------------

# one 100x80 image with one box at x=10, y=20, w=30, h=40
EXPECTED = [10.0, 20.0, 30.0, 40.0]
AS_FORMAT = {
    ("xywh", False): [10, 20, 30, 40],
    ("xyxy", False): [10, 20, 40, 60],
    ("cxcywh", False): [25, 40, 30, 40],
    ("xywh", True): [0.1, 0.25, 0.3, 0.5],
    ("xyxy", True): [0.1, 0.25, 0.4, 0.75],
    ("cxcywh", True): [0.25, 0.5, 0.3, 0.5],
}


def _one_box_dataset(path: Path, layout: str, box: list[float]) -> Path:
    image = [jpeg(100, 80), jpeg(100, 80, (10, 200, 10))]
    if layout == "top_level":
        cols = top_rows(image, [[box], [box]], [[1], [2]])
        return save_splits(path, {"train": cols, "validation": cols}, top_level_features())
    key = "categories" if layout == "objects_categories" else "category"
    cols = objects_rows(image, [[box], [box]], [[1], [2]], key=key)
    return save_splits(path, {"train": cols, "validation": cols}, objects_features(key))


@pytest.mark.parametrize(
    ("preset", "layout", "fmt"),
    [
        ("cppe5", "cppe5", ("xywh", False)),
        ("objects_categories", "objects_categories", ("xywh", False)),
        ("top_level", "top_level", ("xywh", False)),
        ("detection_datasets", "cppe5", ("xyxy", False)),
        ("yolo", "top_level", ("cxcywh", True)),
    ],
)
def test_each_preset(tmp_path: Path, preset: str, layout: str, fmt: tuple[str, bool]) -> None:
    source = _one_box_dataset(tmp_path / "src", layout, AS_FORMAT[fmt])
    result = run(source, tmp_path / "out", schema=preset)
    ann = coco(result.dataset_uri, "train")
    assert [a["bbox"] for a in ann["annotations"]] == [EXPECTED, EXPECTED]
    assert [a["category_id"] for a in ann["annotations"]] == [2, 3]
    assert result.class_names == NAMES


@pytest.mark.parametrize("layout", ["cppe5", "objects_categories", "top_level"])
def test_auto_detects_the_common_layouts(tmp_path: Path, layout: str) -> None:
    source = _one_box_dataset(tmp_path / "src", layout, AS_FORMAT[("xywh", False)])
    result = run(source, tmp_path / "out")  # schema=None: detect
    assert read_manifest(result.dataset_uri).source.schema_["name"] == layout
    assert [a["bbox"] for a in coco(result.dataset_uri, "train")["annotations"]] == [EXPECTED, EXPECTED]


@pytest.mark.parametrize(("fmt", "normalized"), list(AS_FORMAT))
def test_every_bbox_format_absolute_and_normalized(tmp_path: Path, fmt: str, normalized: bool) -> None:
    source = _one_box_dataset(tmp_path / "src", "top_level", AS_FORMAT[(fmt, normalized)])
    schema = {"preset": "top_level", "bbox_format": fmt, "normalized": normalized}
    result = run(source, tmp_path / "out", schema=schema)
    boxes = [a["bbox"] for a in coco(result.dataset_uri, "train")["annotations"]]
    assert all(math.isclose(v, e, abs_tol=0.011) for box in boxes for v, e in zip(box, EXPECTED, strict=True))
    assert len(boxes) == 2


def test_plain_int_and_string_categories_need_class_names(tmp_path: Path) -> None:
    from datasets import Value

    images = [jpeg(100, 80), jpeg(100, 80)]
    ints = save_splits(
        tmp_path / "ints",
        {"train": top_rows(images, [[[1, 2, 3, 4]], [[1, 2, 3, 4]]], [[0], [1]])},
        top_level_features(Value("int64")),
    )
    with pytest.raises(StageInputError, match="class_names"):
        run(ints, tmp_path / "out")
    result = run(ints, tmp_path / "out", schema={"class_names": ["a", "b"]})
    assert result.class_names == ["a", "b"]
    strings = save_splits(
        tmp_path / "strings",
        {"train": top_rows(images, [[[1, 2, 3, 4]], [[1, 2, 3, 4], [5, 5, 5, 5]]], [["b"], ["a", "zebra"]])},
        top_level_features(Value("string")),
    )
    result = run(strings, tmp_path / "out2", schema={"class_names": ["a", "b"]}, validation_fraction=0.5)
    assert result.class_histogram == {"a": 1, "b": 1}
    assert report(result.dataset_uri)["drops_total"] == {"unknown_category": 1}
    # class_names that disagree with the ClassLabel in length are refused
    labelled = _one_box_dataset(tmp_path / "labelled", "cppe5", [1, 2, 3, 4])
    with pytest.raises(StageInputError, match="ClassLabel"):
        run(labelled, tmp_path / "out3", schema={"class_names": ["only", "two"]})


def test_schema_config_presets_and_mappings() -> None:
    assert SchemaConfig.from_mapping(None).is_auto
    assert SchemaConfig.from_mapping("auto").is_auto
    assert SchemaConfig.from_mapping("top_level").objects_column is None
    assert SchemaConfig.from_mapping({"preset": "cppe5", "bbox_format": "xyxy"}).bbox_format == "xyxy"
    custom = SchemaConfig.from_mapping({"image_column": "img", "objects_column": None, "class_names": ["a"]})
    assert (custom.image_column, custom.objects_column, custom.class_names, custom.name) == (
        "img",
        None,
        ("a",),
        "custom",
    )
    assert SchemaConfig.preset("yolo").normalized
    with pytest.raises(StageInputError, match="known presets"):
        SchemaConfig.preset("nope")
    with pytest.raises(StageInputError, match="accepted"):
        SchemaConfig.from_mapping({"box": "x"})
    with pytest.raises(StageInputError, match="bbox_format"):
        SchemaConfig(bbox_format="ltrb")
    with pytest.raises(StageInputError, match="unique"):
        SchemaConfig(class_names=("a", "a"))


# -- splits -----------------------------------------------------------------------------------------


def _train_only(path: Path, n: int) -> Path:
    images = [jpeg(64, 48, (i * 7 % 255, 100, 100)) for i in range(n)]
    cols = objects_rows(images, [[[1, 1, 10, 10]] for _ in range(n)], [[i % 3] for i in range(n)])
    return save_splits(path, {"train": cols}, objects_features())


def test_seeded_validation_split_is_reproducible(tmp_path: Path) -> None:
    source = _train_only(tmp_path / "src", 20)
    a = run(source, tmp_path / "a", validation_fraction=0.25, seed=1)
    b = run(source, tmp_path / "b", validation_fraction=0.25, seed=1)
    c = run(source, tmp_path / "c", validation_fraction=0.25, seed=2)
    assert a.splits["validation"].images == 5 and a.splits["train"].images == 15
    assert a.fingerprint == b.fingerprint != c.fingerprint
    for split in ("train", "validation"):
        assert (
            Path(a.dataset_uri, "annotations", f"{split}.json").read_bytes()
            == Path(b.dataset_uri, "annotations", f"{split}.json").read_bytes()
        )

    def ids(result: Any, split: str) -> set[int]:
        return {i["source_id"] for i in coco(result.dataset_uri, split)["images"]}

    assert ids(a, "train") | ids(a, "validation") == set(range(20))
    assert not ids(a, "train") & ids(a, "validation")
    assert ids(a, "validation") != ids(c, "validation")


def test_split_map_and_missing_splits(tmp_path: Path) -> None:
    cols = objects_rows([jpeg(64, 48)] * 2, [[[1, 1, 10, 10]]] * 2, [[0], [1]])
    source = save_splits(tmp_path / "src", {"training": cols, "val": cols, "test": cols}, objects_features())
    result = run(source, tmp_path / "out")  # aliases: training -> train, val -> validation
    assert set(result.splits) == {"train", "validation", "test"}
    result = run(source, tmp_path / "out", split_map={"train": "test", "validation": "val"})
    assert set(result.splits) == {"train", "validation"}
    with pytest.raises(StageInputError, match=r"splits found: \['test', 'training', 'val'\]"):
        run(source, tmp_path / "out", split_map={"train": "train"})
    with pytest.raises(StageInputError, match="not output splits"):
        run(source, tmp_path / "out", split_map={"train": "training", "holdout": "test"})
    other = save_splits(tmp_path / "other", {"everything": cols}, objects_features())
    with pytest.raises(StageInputError, match=r"no train split \(splits found: \['everything'\]\)"):
        run(other, tmp_path / "out")


# -- images -----------------------------------------------------------------------------------------


def test_exif_orientation_is_applied_and_boxes_stay_in_the_displayed_frame(tmp_path: Path) -> None:
    # stored 60x40 landscape, EXIF 6 (rotate 90 CW to display): shown as 40x60 portrait
    stored = Image.new("RGB", (60, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # red in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(stored, "JPEG", exif=exif.tobytes(), quality=95)
    upright = jpeg(40, 60)
    cols = objects_rows([data, upright], [[[5, 5, 10, 50]], [[1, 1, 5, 5]]], [[0], [1]])
    source = save_splits(tmp_path / "src", {"train": cols, "validation": cols}, objects_features())
    result = run(source, tmp_path / "out")
    ann = coco(result.dataset_uri, "train")
    assert (ann["images"][0]["width"], ann["images"][0]["height"]) == (40, 60)
    assert ann["annotations"][0]["bbox"] == [5.0, 5.0, 10.0, 50.0]  # kept: boxes refer to the displayed frame
    written = Image.open(
        io.BytesIO(Path(result.dataset_uri, "images", "train", ann["images"][0]["file_name"]).read_bytes())
    )
    assert written.size == (40, 60)
    assert written.getexif().get(0x0112) in (None, 1)
    # rotating 90 CW moves the stored top-left corner to the top-right
    assert np.asarray(written.convert("RGB"))[3, 36].tolist()[0] > 200
    assert report(result.dataset_uri)["splits"]["train"]["converted"] == 1
    assert report(result.dataset_uri)["splits"]["train"]["passthrough_jpeg"] == 1


def _non_jpeg_images() -> dict[str, bytes]:
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    sixteen = Image.fromarray(np.full((30, 50), 32896, dtype=np.uint16))  # 128 * 257: mid-grey in 16 bits
    return {
        "png_rgba": encoded(rgb.convert("RGBA"), "PNG"),
        "png_grey": encoded(rgb.convert("L"), "PNG"),
        "png_16bit": encoded(sixteen, "PNG"),
        "png_palette": encoded(rgb.convert("P"), "PNG"),
        "jpeg_cmyk": encoded(rgb.convert("CMYK"), "JPEG"),
        "jpeg_grey": encoded(rgb.convert("L"), "JPEG"),
        "webp": encoded(rgb, "WEBP"),
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_non_jpeg_sources_become_rgb_jpeg(tmp_path: Path, workers: int) -> None:
    kinds = _non_jpeg_images()
    images = list(kinds.values())
    cols = objects_rows(images, [[[1, 1, 20, 20]]] * len(images), [[0]] * len(images))
    source = save_splits(tmp_path / "src", {"train": cols, "validation": cols}, objects_features())
    result = run(source, tmp_path / "out", workers=workers)
    ann = coco(result.dataset_uri, "train")
    assert report(result.dataset_uri)["splits"]["train"]["converted"] == len(kinds)
    for entry, kind in zip(ann["images"], kinds, strict=True):
        data = Path(result.dataset_uri, "images", "train", entry["file_name"]).read_bytes()
        written = Image.open(io.BytesIO(data))
        assert (written.format, written.mode, written.size) == ("JPEG", "RGB", (50, 30)), kind
        assert (entry["width"], entry["height"]) == (50, 30)
        if kind == "png_16bit":
            assert abs(float(np.asarray(written).mean()) - 128) < 3  # scaled, not clipped to 255
    if workers:  # the pool and the in-process path write the same bytes
        serial = run(source, tmp_path / "serial", workers=0)
        for split in ("train", "validation"):
            assert (
                Path(serial.dataset_uri, "annotations", f"{split}.json").read_bytes()
                == Path(result.dataset_uri, "annotations", f"{split}.json").read_bytes()
            )
        for path in Path(serial.dataset_uri, "images").rglob("*.jpg"):
            assert path.read_bytes() == Path(result.dataset_uri, path.relative_to(serial.dataset_uri)).read_bytes()


def test_max_side_downscales_images_and_boxes(tmp_path: Path) -> None:
    cols = objects_rows([noisy_jpeg(320, 240), jpeg(100, 50)], [[[32, 24, 64, 48]], [[10, 10, 20, 20]]], [[0], [1]])
    source = save_splits(tmp_path / "src", {"train": cols, "validation": cols}, objects_features())
    result = run(source, tmp_path / "out", max_side=160)
    ann = coco(result.dataset_uri, "train")
    assert [(i["width"], i["height"]) for i in ann["images"]] == [(160, 120), (100, 50)]  # never upscaled
    assert [a["bbox"] for a in ann["annotations"]] == [[16.0, 12.0, 32.0, 24.0], [10.0, 10.0, 20.0, 20.0]]
    first = Image.open(
        io.BytesIO(Path(result.dataset_uri, "images", "train", ann["images"][0]["file_name"]).read_bytes())
    )
    assert first.size == (160, 120)


# -- bad rows ---------------------------------------------------------------------------------------


def test_every_kind_of_bad_row_is_dropped_and_counted(tmp_path: Path) -> None:
    good = jpeg(100, 80)
    big = noisy_jpeg(256, 256)
    truncated = big[: len(big) * 2 // 3]
    nan = float("nan")
    rows = [
        (good, [[10, 10, 20, 20]], [0]),  # fine
        (b"definitely not an image", [[10, 10, 20, 20], [1, 1, 2, 2]], [0, 1]),  # corrupt bytes
        (truncated, [[10, 10, 20, 20]], [1]),  # header fine, data cut off
        (None, [[10, 10, 20, 20]], [1]),  # no image at all
        (good, [None, [1, 2, 3]], [0, 1]),  # missing / short bbox
        (good, [[10, 10, 20, 20], [10, 10, 20, 20]], [7, -1]),  # category out of range
        (good, [[nan, 10, 20, 20]], [2]),  # NaN
        (good, [[200, 200, 20, 20]], [2]),  # entirely outside the 100x80 image
        (good, [[90, 70, 20, 20]], [2]),  # partly outside: clipped to 10x10, kept
        (good, [[10, 10, 0, 20]], [2]),  # zero width
        (good, [], []),  # no boxes: kept as a background image
        (good, [[10, 10, 20, 20]], [None]),  # no category
    ]
    from datasets import ClassLabel, Value

    features = top_level_features(ClassLabel(names=NAMES))
    features["category"].feature = Value("int64")  # raw ints so that out-of-range values can be stored
    cols = top_rows([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    source = save_splits(
        tmp_path / "src", {"train": cols, "validation": top_rows([good], [[[1, 1, 5, 5]]], [[0]])}, features
    )
    result = run(source, tmp_path / "out", schema={"preset": "top_level", "class_names": NAMES})
    train = report(result.dataset_uri)["splits"]["train"]
    assert train["rows"] == len(rows)
    assert train["drops"] == {
        "corrupt_image": 2,
        "missing_image": 1,
        "boxes_on_dropped_images": 4,
        "missing_bbox": 2,
        "category_out_of_range": 2,
        "nan_bbox": 1,
        "outside_image": 1,
        "degenerate_box": 1,
        "missing_category": 1,
        "all_boxes_dropped": 6,  # images that show objects, none usable: not background images
    }
    assert train["images"] == 3  # the fine one, the partly outside one, the one without boxes
    assert train["annotations"] == 2
    assert train["boxes_clipped"] == 1
    assert train["images_without_boxes"] == 1  # only the one that had no boxes in the source
    ann = coco(result.dataset_uri, "train")
    assert [a["bbox"] for a in ann["annotations"]] == [[10.0, 10.0, 20.0, 20.0], [90.0, 70.0, 10.0, 10.0]]
    assert len(ann["images"]) == train["images"]
    assert result.splits["train"].model_dump() == {"images": train["images"], "annotations": 2}
    assert len(list(Path(result.dataset_uri, "images", "train").iterdir())) == 3
    # configurable: keep them as background images instead
    kept = run(
        source, tmp_path / "kept", schema={"preset": "top_level", "class_names": NAMES}, keep_emptied_images=True
    )
    assert kept.fingerprint != result.fingerprint
    train = report(kept.dataset_uri)["splits"]["train"]
    assert (train["images"], train["images_without_boxes"]) == (len(rows) - 3, 7)
    assert "all_boxes_dropped" not in train["drops"]
    assert report(kept.dataset_uri)["keep_emptied_images"] is True


def test_no_usable_training_data_is_an_error_and_leaves_no_manifest(tmp_path: Path) -> None:
    cols = objects_rows([b"junk", b"junk"], [[[1, 1, 5, 5]], [[1, 1, 5, 5]]], [[0], [1]])
    source = save_splits(tmp_path / "src", {"train": cols, "validation": cols}, objects_features())
    with pytest.raises(StageInputError, match=r"no usable training data.*corrupt_image"):
        run(source, tmp_path / "out")
    assert not list((tmp_path / "out").rglob("manifest.json"))


# -- bad input --------------------------------------------------------------------------------------


def test_bad_input_errors(tmp_path: Path, sample_dataset: Path) -> None:
    with pytest.raises(StageInputError, match="does not exist"):
        run(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(StageInputError, match="does not exist"):
        run(str(tmp_path / "nothing-*.parquet"), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageInputError, match="without a save_to_disk dataset"):
        run(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(StageInputError, match="validation_fraction"):
        run(sample_dataset, tmp_path / "out", validation_fraction=1.5)
    with pytest.raises(StageInputError, match="max_side"):
        run(sample_dataset, tmp_path / "out", max_side=4)
    with pytest.raises(StageInputError, match="known presets"):
        run(sample_dataset, tmp_path / "out", schema="coco-ish")


def test_unknown_layout_lists_columns_features_and_keys(tmp_path: Path) -> None:
    from datasets import Features, Image, Sequence, Value

    features = Features({"picture": Image(), "labels": Sequence(Value("int64")), "boxes": Sequence(Value("float32"))})
    cols = {"picture": [image_value(jpeg(10, 10))], "labels": [[1]], "boxes": [[1.0, 2.0, 3.0, 4.0]]}
    source = save_splits(tmp_path / "src", {"train": cols}, features)
    with pytest.raises(StageInputError) as error:
        run(source, tmp_path / "out")
    message = str(error.value)
    for expected in (
        "picture",
        "labels",
        "boxes",
        "List(int64)",
        "image_column",
        "objects_column",
        "bbox_key",
        "category_key",
        "bbox_format",
        "cppe5",
    ):
        assert expected in message
    with pytest.raises(StageInputError, match="objects column 'objects' is missing"):
        run(source, tmp_path / "out", schema={"image_column": "picture"})


# -- parquet / arrow files, hub code path ------------------------------------------------------------


def _parquet_dir(tmp_path: Path, source: Path) -> Path:
    from datasets import load_from_disk

    folder = tmp_path / "parquet" / "data"
    folder.mkdir(parents=True)
    for split, ds in load_from_disk(str(source)).items():
        ds.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return folder.parent


def _annotation_entries(result: Any, split: str) -> dict[str, Any]:
    data = coco(result.dataset_uri, split)
    data.pop("info")  # holds the fingerprint, which names the source kind
    return data


def test_parquet_folder_glob_and_single_file(tmp_path: Path, sample_dataset: Path) -> None:
    reference = run(sample_dataset, tmp_path / "ref")
    folder = _parquet_dir(tmp_path, sample_dataset)
    from_folder = run(folder, tmp_path / "out")
    assert set(from_folder.splits) == {"train", "validation"}
    for split in ("train", "validation"):
        assert _annotation_entries(from_folder, split) == _annotation_entries(reference, split)
    from_glob = run(str(folder / "data" / "*.parquet"), tmp_path / "out")
    assert from_glob.fingerprint == from_folder.fingerprint and from_glob.reused
    single = run(folder / "data" / "train-00000-of-00001.parquet", tmp_path / "out")
    assert single.splits["train"].images + single.splits["validation"].images == reference.splits["train"].images


def test_arrow_files_with_a_split_in_their_names(tmp_path: Path, sample_dataset: Path) -> None:
    reference = run(sample_dataset, tmp_path / "ref")
    folder = tmp_path / "arrow"
    for split in ("train", "validation"):
        target = folder / split
        target.mkdir(parents=True)
        (target / "shard-0.arrow").write_bytes((sample_dataset / split / "data-00000-of-00001.arrow").read_bytes())
    result = run(folder, tmp_path / "out")
    for split in ("train", "validation"):
        assert _annotation_entries(result, split) == _annotation_entries(reference, split)


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_code_path_on_a_local_repository_folder(
    tmp_path: Path, sample_dataset: Path, monkeypatch: pytest.MonkeyPatch, streaming: bool
) -> None:
    """``load_dataset`` on a folder laid out like a hub repo goes through the same code as a hub name."""
    import datasets.config

    folder = _parquet_dir(tmp_path, sample_dataset)
    reference = run(sample_dataset, tmp_path / "ref")  # before the patch below: the local reader
    reference_rows = materialize_sources._open_local(str(sample_dataset)).splits["train"].num_rows
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(materialize_module, "looks_local", lambda source: False)
    monkeypatch.setattr(materialize_sources, "looks_local", lambda source: False)
    result = run(str(folder), tmp_path / "out", streaming=streaming)
    assert read_manifest(result.dataset_uri).source.source == str(folder) == result.source
    for split in ("train", "validation"):
        assert _annotation_entries(result, split) == _annotation_entries(reference, split)
    assert reference_rows == result.splits["train"].images


def test_hub_offline_unknown_dataset_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    with pytest.raises(StageInputError, match="HF_HUB_OFFLINE is set"):
        run("nobody-here/no-such-dataset", tmp_path / "out")


# -- S3 output, idempotency after a crash ------------------------------------------------------------


def test_s3_output_matches_local_and_is_reused(moto_s3: Any, tmp_path: Path, sample_dataset: Path) -> None:
    bucket = moto_s3.new_bucket()
    storage = Storage(moto_s3.client)
    local = run(sample_dataset, tmp_path / "local")
    result = materialize(MaterializeRequest(str(sample_dataset), f"s3://{bucket}/exports", workers=0), storage=storage)
    assert result.dataset_uri == f"s3://{bucket}/exports/{local.fingerprint}"
    keys = storage.list_files(result.dataset_uri)
    manifest = read_manifest(result.dataset_uri, storage)
    assert len(keys) == manifest.files + 1
    for split in ("train", "validation"):
        remote = storage.read_bytes(f"{result.dataset_uri}/annotations/{split}.json")
        assert remote == Path(local.dataset_uri, "annotations", f"{split}.json").read_bytes()
    some_image = next(k for k in keys if k.startswith("images/train/"))
    assert storage.read_bytes(f"{result.dataset_uri}/{some_image}") == Path(local.dataset_uri, some_image).read_bytes()
    again = materialize(
        MaterializeRequest(str(sample_dataset), f"s3://{bucket}/exports"), storage=Storage(moto_s3.client)
    )
    assert again.reused and again.to_xcom() | {"reused": False} == result.to_xcom()


def test_default_workers_follow_the_cpus_this_process_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[int] = []

    class RecordingPool(materialize_pipeline.ConversionPool):
        def __init__(self, workers: int) -> None:
            started.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(materialize_pipeline, "available_cpus", lambda: 3)  # e.g. a 3-CPU pod on a 64-core node
    monkeypatch.setattr(materialize_pipeline, "ConversionPool", RecordingPool)
    images = list(_non_jpeg_images().values())
    cols = objects_rows(images, [[[1, 1, 20, 20]]] * len(images), [[0]] * len(images))
    source = save_splits(tmp_path / "src", {"train": cols, "validation": cols}, objects_features())
    materialize(MaterializeRequest(str(source), str(tmp_path / "out")), storage=Storage())
    assert started == [2]  # this process and two workers


def test_converted_images_reach_s3_from_the_worker_processes(moto_s3: Any, tmp_path: Path) -> None:
    images = list(_non_jpeg_images().values()) * 6  # enough chunks for this process and two workers
    cols = objects_rows(images, [[[1, 1, 20, 20]]] * len(images), [[0]] * len(images))
    source = save_splits(tmp_path / "src", {"train": cols, "validation": cols}, objects_features())
    local = run(source, tmp_path / "local", workers=0)
    storage = Storage(moto_s3.client)
    result = materialize(
        MaterializeRequest(str(source), f"s3://{moto_s3.new_bucket()}/exports", workers=3), storage=storage
    )
    assert result.fingerprint == local.fingerprint  # the worker count is not part of what is exported
    for path in Path(local.dataset_uri).rglob("*"):
        if path.is_file() and path.name != "report.json":  # the report holds timings
            relative = path.relative_to(local.dataset_uri).as_posix()
            assert storage.read_bytes(f"{result.dataset_uri}/{relative}") == path.read_bytes(), relative


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from yolonas_pipeline import materialize as stage, materialize_writer
    from yolonas_pipeline.storage import Storage

    written = 0
    write_file = materialize_writer.write_file

    def write_then_die(path, *args):
        global written
        write_file(path, *args)
        written += 1
        if written == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally: a killed worker

    materialize_writer.write_file = write_then_die
    stage.materialize(stage.MaterializeRequest(sys.argv[1], sys.argv[2], workers=0), storage=Storage())
    """
)


def test_killed_run_leaves_nothing_complete_and_rerun_is_byte_identical(tmp_path: Path, sample_dataset: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "include")}
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(sample_dataset), str(out), "10"], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert list(out.rglob("*.jpg")), "the run should have been killed after writing some images"
    assert not list(out.rglob("manifest.json"))
    with pytest.raises(StageInputError, match="incomplete"):
        read_manifest(str(next(out.iterdir())))
    (staging,) = out.iterdir()  # the killed run wrote beside the final folder, not in it
    assert staging.name.startswith(".incomplete-") and not Path(out, staging.name.split("-")[1]).exists()
    rerun = run(sample_dataset, out)
    assert not rerun.reused
    assert [p.name for p in out.iterdir()] == [rerun.fingerprint]  # the leftovers are gone
    clean = run(sample_dataset, tmp_path / "clean")
    assert rerun.fingerprint == clean.fingerprint
    for split in ("train", "validation"):
        name = Path("annotations", f"{split}.json")
        assert Path(rerun.dataset_uri, name).read_bytes() == Path(clean.dataset_uri, name).read_bytes()
    assert Path(rerun.manifest_uri).read_bytes() == Path(clean.manifest_uri).read_bytes()


def test_progress_is_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(materialize_pipeline, "PROGRESS_EVERY_S", 0.0)
    bigger = _train_only(tmp_path / "src", 130)
    caplog.set_level(logging.INFO, logger="yolonas_pipeline")
    materialize(MaterializeRequest(str(bigger), str(tmp_path / "out"), workers=0), storage=Storage())
    progress = [line for line in messages(caplog) if "rows/s, ETA" in line]
    assert progress and "/130 rows" in progress[0]


def test_unusable_validation_split_is_an_error(tmp_path: Path) -> None:
    good = objects_rows([jpeg(64, 48)] * 2, [[[1, 1, 10, 10]]] * 2, [[0], [1]])
    junk = objects_rows([b"junk"], [[[1, 1, 5, 5]]], [[0]])
    source = save_splits(tmp_path / "src", {"train": good, "validation": junk}, objects_features())
    with pytest.raises(StageInputError, match=r"validation split .* has no usable images"):
        run(source, tmp_path / "out")


def test_fast_jpeg_header_agrees_with_pil(monkeypatch: pytest.MonkeyPatch) -> None:
    import struct

    import pyarrow as pa

    from yolonas_pipeline import materialize_images
    from yolonas_pipeline.materialize_images import _pil_header, inspect_image, jpeg_header

    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 40, 3), dtype=np.uint8))
    variants = {
        "baseline": encoded(rgb, "JPEG"),
        "progressive": encoded(rgb, "JPEG", progressive=True),
        "cmyk": encoded(rgb.convert("CMYK"), "JPEG"),
        "grey": encoded(rgb.convert("L"), "JPEG"),
        "icc": encoded(rgb, "JPEG", icc_profile=b"x" * 5000),
    }
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x010F] = "camera"
        exif[0x0112] = orientation
        variants[f"exif{orientation}"] = encoded(rgb, "JPEG", exif=exif.tobytes())
    big_endian = b"MM" + struct.pack(">HIH", 42, 8, 1) + struct.pack(">HHIHHI", 0x0112, 3, 1, 6, 0, 0)
    variants["exif-big-endian"] = encoded(rgb, "JPEG", exif=b"Exif\x00\x00" + big_endian)
    for name, data in variants.items():
        width, height, _, mode, orientation = _pil_header(data)
        assert jpeg_header(data) == (width, height, mode, orientation), name
        # what the materializer really sees: a signed-char view into an Arrow buffer
        view = memoryview(pa.py_buffer(data))
        expected = inspect_image(data, None)
        with monkeypatch.context() as patched:  # the fast parser must handle it: PIL is not asked
            patched.setattr(materialize_images, "_pil_header", None)
            assert inspect_image(view, None) == expected, name
    assert jpeg_header(b"\xff\xd8\xff\xda\x00\x02") is None  # scan before frame header: left to PIL


def test_fast_png_header_agrees_with_pil(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    from PIL import PngImagePlugin

    from yolonas_pipeline import materialize_images
    from yolonas_pipeline.materialize_images import CONVERT, inspect_image, png_size

    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 255, (20, 40, 3), dtype=np.uint8))
    text = PngImagePlugin.PngInfo()
    text.add_text("Comment", "x" * 3000)
    variants = {
        "rgb": encoded(rgb, "PNG"),
        "rgba": encoded(rgb.convert("RGBA"), "PNG"),
        "grey": encoded(rgb.convert("L"), "PNG"),
        "16bit": encoded(Image.fromarray(np.full((20, 40), 900, dtype=np.uint16)), "PNG"),
        "palette": encoded(rgb.convert("P"), "PNG"),
        "text-chunks": encoded(rgb, "PNG", pnginfo=text),
    }
    for name, data in variants.items():
        assert png_size(data) == (40, 20), name
        with monkeypatch.context() as patched:  # PIL's answer, from the header PIL reads
            patched.setattr(materialize_images, "png_size", lambda data: None)
            expected = inspect_image(data, 16)
        assert expected.action == CONVERT and expected.output_size == (16, 8), name
        with monkeypatch.context() as patched:  # the fast parser must handle it: PIL is not asked
            patched.setattr(materialize_images, "_pil_header", None)
            assert inspect_image(memoryview(pa.py_buffer(data)), 16) == expected, name

    # an eXIf chunk may carry an orientation: left to PIL, which applies it
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encoded(rgb, "PNG", exif=exif.tobytes())
    assert png_size(rotated) is None
    plan = inspect_image(rotated, None)
    assert (plan.orientation, plan.source_size) == (6, (20, 40))
    assert png_size(variants["rgb"][:40]) is None  # cut before its image data: PIL decides (and refuses)
    assert inspect_image(variants["rgb"][:40], None).action == "corrupt"


def test_write_falls_back_when_sendfile_is_refused(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    reference = run(sample_dataset, tmp_path / "ref")
    calls: list[int] = []

    def refuse(out_fd: int, in_fd: int, offset: int, count: int) -> None:
        calls.append(count)
        raise OSError(errno.EINVAL, "no file-to-file sendfile here")

    monkeypatch.setattr(materialize_writer, "_send", refuse)
    result = run(sample_dataset, tmp_path / "out")
    assert calls, "passthrough images from a mapped file should try sendfile first"
    for path in Path(reference.dataset_uri, "images").rglob("*.jpg"):
        assert path.read_bytes() == Path(result.dataset_uri, path.relative_to(reference.dataset_uri)).read_bytes()


# -- paths never go to the hub ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["./nowhere", "nowhere/", "a/b/c", "/abs/nowhere", "../up", "data\\x", ".hidden"])
def test_a_path_like_source_is_never_sent_to_the_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    def no_hub(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"{name!r} was sent to the hub")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(materialize_sources, "_open_hub", no_hub)
    assert materialize_sources.looks_local(name)
    with pytest.raises(StageInputError, match="does not exist"):
        run(name, tmp_path / "out")


def test_an_existing_relative_name_is_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _train_only(tmp_path / "owner" / "name", 4)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(materialize_sources, "_open_hub", None)
    assert run("owner/name", tmp_path / "out").splits["train"].images >= 1
    assert not materialize_sources.looks_local("owner/other")  # a hub name when nothing is there


def test_offline_hub_name_not_in_the_cache_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import datasets
    import datasets.config
    import huggingface_hub.constants

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("load_dataset should not be tried offline for a dataset that is not cached")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(datasets, "load_dataset", no_load)
    started = time.monotonic()
    with pytest.raises(StageInputError, match=r"'someone/missing': HF_HUB_OFFLINE is set .* not in the local"):
        run("someone/missing", tmp_path / "out")
    assert time.monotonic() - started < 5


# -- the final location holds complete exports only ---------------------------------------------------


def _fail_after_some_writes(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    written = [0]
    write_file = materialize_writer.write_file

    def write_then_fail(path: str, *args: Any) -> None:
        write_file(path, *args)
        written[0] += 1
        if written[0] == count:
            raise OSError("disk full")

    monkeypatch.setattr(materialize_writer, "write_file", write_then_fail)


def test_a_failed_local_run_leaves_nothing_behind(
    tmp_path: Path, sample_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_after_some_writes(monkeypatch, 5)
    with pytest.raises(OSError, match="disk full"):
        run(sample_dataset, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
    # a failure after every image was written (here: an unusable validation split) leaves nothing either
    good = objects_rows([jpeg(64, 48)] * 2, [[[1, 1, 10, 10]]] * 2, [[0], [1]])
    junk = objects_rows([b"junk"], [[[1, 1, 5, 5]]], [[0]])
    source = save_splits(tmp_path / "src", {"train": good, "validation": junk}, objects_features())
    with pytest.raises(StageInputError, match="no usable images"):
        run(source, tmp_path / "out2")
    assert list((tmp_path / "out2").iterdir()) == []


def test_an_incomplete_folder_at_the_final_location_is_replaced(tmp_path: Path, sample_dataset: Path) -> None:
    """What an earlier version left when it was killed: images in place, no manifest."""
    fingerprint = run(sample_dataset, tmp_path / "probe").fingerprint
    stale = tmp_path / "out" / fingerprint / "images" / "train"
    stale.mkdir(parents=True)
    (stale / "99999999.jpg").write_bytes(b"half")
    result = run(sample_dataset, tmp_path / "out")
    assert not result.reused and not (stale / "99999999.jpg").exists()
    assert read_manifest(result.dataset_uri).fingerprint == fingerprint


def test_s3_failed_run_cleans_up_and_a_killed_runs_leftovers_go_first(
    moto_s3: Any, tmp_path: Path, sample_dataset: Path
) -> None:
    bucket = moto_s3.new_bucket()
    storage = Storage(moto_s3.client)
    good = objects_rows([jpeg(64, 48)] * 2, [[[1, 1, 10, 10]]] * 2, [[0], [1]])
    junk = objects_rows([b"junk"], [[[1, 1, 5, 5]]], [[0]])
    source = save_splits(tmp_path / "src", {"train": good, "validation": junk}, objects_features())
    with pytest.raises(StageInputError, match="no usable images"):
        materialize(MaterializeRequest(str(source), f"s3://{bucket}/exports", workers=0), storage=storage)
    assert storage.list_files(f"s3://{bucket}/exports") == []
    # a run killed outright leaves files but no manifest: not an export, and removed by the next run
    fingerprint = run(sample_dataset, tmp_path / "probe").fingerprint
    leftover = f"s3://{bucket}/exports/{fingerprint}/images/train/99999999.jpg"
    storage.write_bytes(leftover, b"half")
    with pytest.raises(StageInputError, match="incomplete"):
        read_manifest(f"s3://{bucket}/exports/{fingerprint}", storage)
    result = materialize(MaterializeRequest(str(sample_dataset), f"s3://{bucket}/exports", workers=0), storage=storage)
    assert not result.reused and not storage.exists(leftover)
    assert len(storage.list_files(result.dataset_uri)) == read_manifest(result.dataset_uri, storage).files + 1


# -- declared sizes and EXIF frames ----------------------------------------------------------------------


def _sized_features() -> Any:
    from datasets import Value

    features = objects_features()
    features["width"] = Value("int64")
    features["height"] = Value("int64")
    return features


def _rotated_stored_jpeg() -> bytes:
    """Stored 60x40 with a red 10x10 square at the stored top-left; EXIF 6 shows it 40x60, square top-right."""
    stored = Image.new("RGB", (60, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(stored, "JPEG", exif=exif.tobytes(), quality=95)


def _sized_dataset(path: Path, image: bytes, size: tuple[int, int], box: list[float]) -> Path:
    cols = objects_rows([image, jpeg(40, 60)], [[box], [[1, 1, 5, 5]]], [[0], [1]])
    cols["width"] = [size[0], 40]
    cols["height"] = [size[1], 60]
    return save_splits(path, {"train": cols, "validation": cols}, _sized_features())


def test_boxes_on_the_stored_frame_of_an_exif_rotated_image_turn_with_the_pixels(tmp_path: Path) -> None:
    source = _sized_dataset(tmp_path / "src", _rotated_stored_jpeg(), (60, 40), [0, 0, 10, 10])  # the square
    result = run(source, tmp_path / "out")
    ann = coco(result.dataset_uri, "train")
    assert (ann["images"][0]["width"], ann["images"][0]["height"]) == (40, 60)
    assert ann["annotations"][0]["bbox"] == [30.0, 0.0, 10.0, 10.0]  # where the square is once displayed
    written = np.asarray(
        Image.open(Path(result.dataset_uri, "images", "train", ann["images"][0]["file_name"])).convert("RGB")
    )
    assert written[5, 35, 0] > 200 and written[5, 35, 2] < 80  # red inside the turned box
    assert written[5, 5, 2] > 200  # blue outside it
    counted = report(result.dataset_uri)
    assert counted["splits"]["train"]["corrections"] == {"boxes_rotated_with_exif": 1}
    assert counted["corrections_total"] == {"boxes_rotated_with_exif": 2}
    # the same rows, their sizes declared in the displayed frame: the boxes are already there
    displayed = _sized_dataset(tmp_path / "src2", _rotated_stored_jpeg(), (40, 60), [30, 0, 10, 10])
    again = run(displayed, tmp_path / "out")
    assert coco(again.dataset_uri, "train")["annotations"][0]["bbox"] == [30.0, 0.0, 10.0, 10.0]
    assert report(again.dataset_uri)["corrections_total"] == {}


def test_stored_frame_rows_can_be_dropped_or_refused(tmp_path: Path) -> None:
    source = _sized_dataset(tmp_path / "src", _rotated_stored_jpeg(), (60, 40), [0, 0, 10, 10])
    dropped = run(source, tmp_path / "out", exif_stored_frame="drop")
    train = report(dropped.dataset_uri)["splits"]["train"]
    assert train["drops"] == {"boxes_in_stored_exif_frame": 1, "boxes_on_dropped_images": 1}
    assert train["images"] == 1
    with pytest.raises(StageInputError, match=r"row 0 of split 'train': its declared size width/height = 60x40"):
        run(source, tmp_path / "out2", exif_stored_frame="error")
    assert list((tmp_path / "out2").iterdir()) == []
    with pytest.raises(StageInputError, match="exif_stored_frame must be one of rotate, drop, error"):
        run(source, tmp_path / "out3", exif_stored_frame="ignore")


def test_a_declared_size_that_disagrees_with_the_image_is_counted(tmp_path: Path) -> None:
    source = _sized_dataset(tmp_path / "src", jpeg(60, 40), (100, 100), [1, 1, 10, 10])
    result = run(source, tmp_path / "out")
    ann = coco(result.dataset_uri, "train")
    assert (ann["images"][0]["width"], ann["images"][0]["height"]) == (60, 40)  # the decoded size wins
    assert report(result.dataset_uri)["splits"]["train"]["corrections"] == {"declared_size_mismatch": 1}
    # ignored when told to, and names that do not exist are refused
    quiet = run(source, tmp_path / "out2", schema={"width_column": None, "height_column": None})
    assert report(quiet.dataset_uri)["corrections_total"] == {}
    with pytest.raises(StageInputError, match=r"schema width_column='w'.*no such column"):
        run(source, tmp_path / "out3", schema={"width_column": "w", "height_column": "h"})


@pytest.mark.parametrize("orientation", range(1, 9))
def test_turn_box_moves_a_box_as_exif_transpose_moves_the_pixels(orientation: int) -> None:
    from PIL import ImageOps

    from yolonas_pipeline.materialize_schema import turn_box

    stored = Image.new("L", (60, 40), 0)
    stored.paste(255, (5, 10, 25, 30))  # x 5..25, y 10..30
    exif = Image.Exif()
    exif[0x0112] = orientation
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(encoded(stored, "PNG", exif=exif.tobytes()))))
    assert shown is not None
    left, top, right, bottom = shown.getbbox() or (0, 0, 0, 0)
    assert turn_box(5, 10, 25, 30, orientation, 60, 40) == (left, top, right, bottom)


# -- plausibility of the box reading ------------------------------------------------------------------


def _corner_boxes_dataset(path: Path) -> Path:
    """objects.categories (the xywh preset's layout) holding corner (xyxy) boxes on 100x80 images, one of them
    with a negative size, which read as xywh would become a valid box."""
    boxes = [
        [[50, 40, 90, 75]],
        [[60, 10, 95, 50]],
        [[10, 10, 30, 30], [40, 30, 80, 70]],
        [[40, 60, 10, 20]],  # negative size as xyxy
        [[55, 5, 85, 35]],
    ]
    images = [jpeg(100, 80, (i * 40, 90, 90)) for i in range(len(boxes))]
    cols = objects_rows(images, boxes, [[i % 3 for i in range(len(b))] for b in boxes], key="categories")
    return save_splits(path, {"train": cols, "validation": cols}, objects_features("categories"))


def test_corner_boxes_under_an_xywh_preset_are_refused_naming_both_readings(tmp_path: Path) -> None:
    source = _corner_boxes_dataset(tmp_path / "src")
    with pytest.raises(StageInputError) as error:
        run(source, tmp_path / "out")  # auto-detects objects_categories, an xywh preset
    message = str(error.value)
    for expected in (
        "bbox_format 'xywh'",
        "read as 'xyxy'",
        "schema 'objects_categories'",
        '{"preset": "objects_categories", "bbox_format": "xyxy"}',
        "row 0: [50, 40, 90, 75] on a 100x80 image",
        "6 boxes sampled from the first 5 rows of split 'train'",
    ):
        assert expected in message, expected
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    # the key it names: the export reads the boxes right, and the negative-size box is dropped with its image
    result = run(source, tmp_path / "out", schema={"preset": "objects_categories", "bbox_format": "xyxy"})
    ann = coco(result.dataset_uri, "train")
    assert ann["annotations"][0]["bbox"] == [50.0, 40.0, 40.0, 35.0]
    train = report(result.dataset_uri)["splits"]["train"]
    assert train["drops"] == {"degenerate_box": 1, "all_boxes_dropped": 1}
    checks = report(result.dataset_uri)["box_checks"]
    assert checks["bbox_format"] == "xyxy" and checks["sampled_boxes"] == 6
    assert checks["readings"]["xyxy"]["negative_size"] == 1 and checks["readings"]["xywh"]["outside_image"] == 4
    # and the check can be turned off, for a dataset the user knows better
    forced = run(source, tmp_path / "forced", check_boxes=False)
    assert report(forced.dataset_uri)["box_checks"] is None


def test_normalized_with_pixel_coordinates_is_refused(tmp_path: Path) -> None:
    source = _one_box_dataset(tmp_path / "src", "top_level", AS_FORMAT[("xywh", False)])
    with pytest.raises(StageInputError, match=r"normalized=true .* coordinates above 1, e\.g\. row 0: \[10, 20, 30"):
        run(source, tmp_path / "out", schema={"preset": "top_level", "normalized": True})
    with pytest.raises(StageInputError, match="Set the schema key normalized to false"):
        run(source, tmp_path / "out", schema={"preset": "top_level", "normalized": True})


def test_fractions_read_as_pixels_are_refused(tmp_path: Path) -> None:
    source = _one_box_dataset(tmp_path / "src", "top_level", AS_FORMAT[("xywh", True)])
    with pytest.raises(StageInputError, match=r"every coordinate .* lies in 0\.\.1.*normalized to true"):
        run(source, tmp_path / "out", schema="top_level")


def test_a_mapping_from_the_trigger_form_reads_a_layout_no_preset_matches(tmp_path: Path) -> None:
    """Plain-integer categories in top-level boxes/labels columns: only a mapping can describe them."""
    from datasets import Features, Sequence, Value
    from datasets import Image as ImageFeature

    from yolonas_pipeline.run_settings import TrainingSettings, form_params

    features = Features(
        {
            "image": ImageFeature(),
            "boxes": Sequence(Sequence(Value("float32"), length=4)),
            "labels": Sequence(Value("int64")),
        }
    )
    cols = {"image": [image_value(jpeg(100, 80))] * 2, "boxes": [[[10, 20, 30, 40]]] * 2, "labels": [[1], [0]]}
    source = save_splits(tmp_path / "src", {"train": cols, "validation": cols}, features)
    with pytest.raises(StageInputError, match="set the schema key class_names"):
        run(source, tmp_path / "out", schema={"objects_column": None, "bbox_key": "boxes", "category_key": "labels"})
    value = {"objects_column": None, "bbox_key": "boxes", "category_key": "labels", "class_names": ["cat", "dog"]}
    form = form_params(TrainingSettings, TrainingSettings.validated({}, origin="test"))
    settings = TrainingSettings.validated({"schema": form["schema"].resolve(value)}, origin="the form")
    result = run(source, tmp_path / "out", schema=settings.schema_)
    assert result.class_names == ["cat", "dog"] and result.class_histogram == {"cat": 2, "dog": 2}  # both splits
    assert [a["bbox"] for a in coco(result.dataset_uri, "train")["annotations"]] == [EXPECTED, EXPECTED]


def test_a_live_runs_staging_folder_is_left_alone(tmp_path: Path, sample_dataset: Path) -> None:
    import socket

    fingerprint = run(sample_dataset, tmp_path / "probe").fingerprint
    out = tmp_path / "out"
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        live, dead = out / f".incomplete-{fingerprint}-live-0", out / f".incomplete-{fingerprint}-dead-0"
        for folder, pid in ((live, sleeper.pid), (dead, 2**22 + 1)):
            folder.mkdir(parents=True)
            (folder / ".owner").write_text(f"{socket.gethostname()} {pid}\n")
        result = run(sample_dataset, out)
        assert live.exists() and not dead.exists()  # a concurrent run of the same export may still finish
        assert not Path(result.dataset_uri, ".owner").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
