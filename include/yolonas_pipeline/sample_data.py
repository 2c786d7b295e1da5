"""A small cppe-5-shaped Hugging Face detection dataset that a detector can learn in a couple of CPU epochs.

Each image is a plain, slightly noisy grey background with one to three solid rectangles; every class has
its own distinct colour, so a model separates the classes by colour alone. The layout matches the hub's
``cppe-5`` dataset (``objects.bbox`` COCO xywh pixels, ``objects.category`` ClassLabel), so the default
pipeline exercises the same code path as a real hub dataset. Generation is deterministic for a seed.

Usage: ``python -m yolonas_pipeline.sample_data OUT_DIR [--num-images N] [--seed S]``
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLASS_NAMES: tuple[str, ...] = ("Coverall", "Face_Shield", "Gloves", "Goggles", "Mask")
#: One saturated colour per class, far apart in RGB so that JPEG artefacts cannot blur them together.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),  # Coverall: red
    (40, 200, 60),  # Face_Shield: green
    (40, 80, 230),  # Gloves: blue
    (240, 220, 30),  # Goggles: yellow
    (200, 40, 220),  # Mask: magenta
)
VALIDATION_FRACTION = 0.2
JPEG_QUALITY = 92


def sample_features() -> Any:
    """The cppe-5 feature layout (``datasets.Features``)."""
    from datasets import ClassLabel, Features, Image, Sequence, Value

    return Features(
        {
            "image_id": Value("int64"),
            "image": Image(),
            "width": Value("int32"),
            "height": Value("int32"),
            "objects": Sequence(
                {
                    "id": Value("int64"),
                    "area": Value("int64"),
                    "bbox": Sequence(Value("float32"), length=4),
                    "category": ClassLabel(names=list(CLASS_NAMES)),
                }
            ),
        }
    )


def _place_boxes(rng: Any, width: int, height: int, count: int) -> list[tuple[int, int, int, int]]:
    """Up to ``count`` non-overlapping boxes (x, y, w, h), each 15-40% of the image side."""
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(count * 20):  # rejection sampling; a few tries per box is plenty at this density
        if len(boxes) == count:
            break
        w = int(rng.integers(int(width * 0.15), int(width * 0.4) + 1))
        h = int(rng.integers(int(height * 0.15), int(height * 0.4) + 1))
        x = int(rng.integers(0, width - w + 1))
        y = int(rng.integers(0, height - h + 1))
        # keep a 4-pixel gap so that neighbouring boxes stay separable
        if all(x + w + 4 <= bx or bx + bw + 4 <= x or y + h + 4 <= by or by + bh + 4 <= y for bx, by, bw, bh in boxes):
            boxes.append((x, y, w, h))
    return boxes


def _draw_objects(rng: Any, index: int, width: int, height: int) -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """One image's boxes (x, y, w, h) and their classes: one to three, the first cycling through the classes."""
    count = int(rng.integers(1, 4))
    boxes = _place_boxes(rng, width, height, count)
    # the first object cycles through the classes so that every class appears in small datasets
    categories = [index % len(CLASS_NAMES)] + [int(c) for c in rng.integers(0, len(CLASS_NAMES), len(boxes) - 1)]
    return boxes, categories


def luma(colour: tuple[float, float, float]) -> float:
    """ITU-R 601 luma of an RGB colour, as PIL's ``convert("L")`` computes it."""
    red, green, blue = colour
    return 0.299 * red + 0.587 * green + 0.114 * blue


@dataclass(frozen=True)
class ImageLayout:
    """What one sample image holds, without its pixels: background level, boxes (x, y, w, h) and classes."""

    width: int
    height: int
    background: int
    boxes: tuple[tuple[int, int, int, int], ...]
    categories: tuple[int, ...]

    @property
    def mean_luma(self) -> float:
        """The image's expected mean luma: the grey background, with each box's area in its class colour.

        The generator's pixel noise (mean 0, sd 8 per pixel) moves an image's mean by about 8 / sqrt(pixels),
        under 0.02 levels at 320x240, and is left out.
        """
        total = float(self.width * self.height)
        level = float(self.background)
        for (_, _, w, h), category in zip(self.boxes, self.categories, strict=True):
            level += (w * h / total) * (luma(CLASS_COLOURS[category]) - self.background)
        return level


def sample_layouts(num_images: int, seed: int, *, image_size: tuple[int, int] = (320, 240)) -> list[ImageLayout]:
    """``num_images`` image layouts drawn as :func:`make_sample_dataset` draws them, without pixels or JPEGs.

    The same distribution (background level, box count, sizes, positions and classes), from one generator
    seeded with ``seed`` and no pixel noise drawn, so not the very images ``make_sample_dataset`` writes for
    that seed: for drawing many datasets quickly (the drift benchmark).
    """
    import numpy as np

    width, height = int(image_size[0]), int(image_size[1])
    rng = np.random.default_rng([seed, num_images, 17])
    layouts: list[ImageLayout] = []
    for index in range(num_images):
        background = int(rng.integers(100, 150))
        boxes, categories = _draw_objects(rng, index, width, height)
        layouts.append(ImageLayout(width, height, background, tuple(boxes), tuple(categories)))
    return layouts


def _rows(indices: list[int], num_images: int, seed: int, width: int, height: int) -> Iterator[dict[str, Any]]:
    import numpy as np
    from PIL import Image as PILImage

    for index in indices:
        # one generator per image: any subset of rows renders identically, whatever the split
        rng = np.random.default_rng([seed, index])
        background = rng.integers(100, 150)
        noise = rng.normal(0.0, 8.0, size=(height, width, 3))
        pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
        boxes, categories = _draw_objects(rng, index, width, height)
        for (x, y, w, h), category in zip(boxes, categories, strict=True):
            pixels[y : y + h, x : x + w] = CLASS_COLOURS[category]
        buffer = io.BytesIO()
        PILImage.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        yield {
            "image_id": index,
            "image": {"bytes": buffer.getvalue(), "path": None},
            "width": width,
            "height": height,
            "objects": {
                "id": [index * 10 + k for k in range(len(boxes))],
                "area": [w * h for _, _, w, h in boxes],
                "bbox": [[float(x), float(y), float(w), float(h)] for x, y, w, h in boxes],
                "category": categories,
            },
        }
    del num_images  # part of the generator's cache key only


def split_indices(num_images: int, seed: int) -> dict[str, list[int]]:
    """A seeded 80/20 train/validation partition of ``range(num_images)`` (sorted within each split)."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(num_images).tolist()
    n_val = max(1, round(num_images * VALIDATION_FRACTION)) if num_images >= 2 else 0
    return {"train": sorted(order[n_val:]), "validation": sorted(order[:n_val])}


def make_sample_dataset(
    out_dir: str | Path,
    *,
    num_images: int = 48,
    seed: int = 0,
    image_size: tuple[int, int] = (320, 240),
) -> Path:
    """Write a cppe-5-shaped ``DatasetDict`` (train/validation) with ``save_to_disk`` and return its folder.

    :param image_size: (width, height) of every image.
    """
    from datasets import Dataset, DatasetDict

    if num_images < 2:
        raise ValueError(f"num_images must be at least 2 (one train and one validation image), got {num_images}")
    width, height = int(image_size[0]), int(image_size[1])
    if width < 32 or height < 32:
        raise ValueError(f"image_size must be at least 32x32 pixels, got {image_size!r}")
    out = Path(out_dir)
    features = sample_features()
    # from_generator writes its Arrow cache somewhere; keep it out of the user's HF cache
    with tempfile.TemporaryDirectory(prefix="yolonas-sample-") as cache_dir:
        splits = {
            name: Dataset.from_generator(
                _rows,
                features=features,
                cache_dir=cache_dir,
                gen_kwargs={"indices": idx, "num_images": num_images, "seed": seed, "width": width, "height": height},
            )
            for name, idx in split_indices(num_images, seed).items()
        }
        if out.exists():
            shutil.rmtree(out)
        DatasetDict(splits).save_to_disk(str(out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write the dataset to (replaced if it exists)")
    parser.add_argument("--num-images", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    args = parser.parse_args(argv)
    path = make_sample_dataset(
        args.out_dir, num_images=args.num_images, seed=args.seed, image_size=(args.width, args.height)
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
