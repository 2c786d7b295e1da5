"""The sample dataset: cppe-5 layout, seeded, learnable (one solid colour per class)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolonas_pipeline.sample_data import CLASS_COLOURS, CLASS_NAMES, main, make_sample_dataset, sample_features


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(tmp_path_factory.mktemp("sample") / "ds", num_images=20, seed=3)


def test_layout_and_features(made: Path) -> None:
    from datasets import ClassLabel, load_from_disk

    ds = load_from_disk(str(made))
    assert sorted(ds) == ["train", "validation"]
    assert (ds["train"].num_rows, ds["validation"].num_rows) == (16, 4)
    features = ds["train"].features
    assert features == sample_features()
    assert features["objects"]["category"].feature == ClassLabel(names=list(CLASS_NAMES))
    ids = list(ds["train"]["image_id"]) + list(ds["validation"]["image_id"])
    assert sorted(ids) == list(range(20))


def test_boxes_are_solid_class_colours(made: Path) -> None:
    from datasets import Image as ImageFeature
    from datasets import load_from_disk

    ds = load_from_disk(str(made))["train"].cast_column("image", ImageFeature(decode=False))
    for row in ds:
        data = row["image"]["bytes"]
        assert data[:3] == b"\xff\xd8\xff"  # JPEG bytes
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int32)
        assert pixels.shape[:2] == (row["height"], row["width"]) == (240, 320)
        assert 1 <= len(row["objects"]["bbox"]) <= 3
        for (x, y, w, h), category, area in zip(
            row["objects"]["bbox"], row["objects"]["category"], row["objects"]["area"], strict=True
        ):
            assert x >= 0 and x + w <= 320 and y >= 0 and y + h <= 240
            assert area == int(w * h)
            centre = pixels[int(y + h / 2), int(x + w / 2)]
            assert np.abs(centre - np.array(CLASS_COLOURS[category])).max() < 30


def test_deterministic_for_a_seed(tmp_path: Path, made: Path) -> None:
    again = make_sample_dataset(tmp_path / "again", num_images=20, seed=3)
    other = make_sample_dataset(tmp_path / "other", num_images=20, seed=4)
    name = "data-00000-of-00001.arrow"
    assert (again / "train" / name).read_bytes() == (made / "train" / name).read_bytes()
    assert (other / "train" / name).read_bytes() != (made / "train" / name).read_bytes()


def test_every_class_appears(made: Path) -> None:
    from datasets import load_from_disk

    ds = load_from_disk(str(made))
    seen = {c for split in ds.values() for row in split for c in row["objects"]["category"]}
    assert seen == set(range(len(CLASS_NAMES)))


def test_cli_and_bad_arguments(tmp_path: Path) -> None:
    assert main([str(tmp_path / "cli"), "--num-images", "4", "--width", "64", "--height", "48"]) == 0
    assert (tmp_path / "cli" / "dataset_dict.json").is_file()
    with pytest.raises(ValueError, match="num_images"):
        make_sample_dataset(tmp_path / "x", num_images=1)
    with pytest.raises(ValueError, match="image_size"):
        make_sample_dataset(tmp_path / "x", image_size=(8, 8))


def test_layouts_are_drawn_as_the_images_are() -> None:
    """``sample_layouts`` (the drift benchmark's draw): the generator's box counts, sizes and classes, and a
    mean luma within a level of what the written image decodes to."""
    from yolonas_pipeline.sample_data import ImageLayout, _rows, sample_layouts

    layouts = sample_layouts(400, seed=5)
    assert layouts == sample_layouts(400, seed=5) and layouts != sample_layouts(400, seed=6)
    assert {len(layout.boxes) for layout in layouts} == {1, 2, 3}
    assert all(48 <= w <= 128 and 36 <= h <= 96 for layout in layouts for _, _, w, h in layout.boxes)
    assert [layout.categories[0] for layout in layouts[:10]] == [i % len(CLASS_NAMES) for i in range(10)]
    assert all(100 <= layout.background < 150 for layout in layouts)
    for row in _rows(list(range(6)), 6, 3, 320, 240):
        background = int(np.random.default_rng([3, row["image_id"]]).integers(100, 150))
        boxes = tuple(tuple(int(v) for v in box) for box in row["objects"]["bbox"])
        layout = ImageLayout(320, 240, background, boxes, tuple(row["objects"]["category"]))  # type: ignore[arg-type]
        with Image.open(io.BytesIO(row["image"]["bytes"])) as image:
            decoded = float(np.asarray(image.convert("L"), dtype=np.float64).mean())
        assert layout.mean_luma == pytest.approx(decoded, abs=1.0)
