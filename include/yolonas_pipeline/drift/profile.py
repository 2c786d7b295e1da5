"""A :class:`DatasetProfile`: the histograms of one materialized export, and their cache.

The export is read through its :class:`~yolonas_pipeline.contracts.DatasetManifest` (the COCO annotation files
it lists, and a seeded sample of images for brightness). A profile depends only on the export (its
fingerprint) and :func:`profile_settings`, so with a ``cache_root`` it is computed once and then read back
from ``<cache_root>/<fingerprint>-<settings digest>.json``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar

from pydantic import Field

from yolonas_pipeline.contracts import Contract, DatasetManifest, Part
from yolonas_pipeline.drift.config import DriftConfig
from yolonas_pipeline.drift.features import FEATURES
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage, join_uri

logger = logging.getLogger(__name__)

PROFILE_FORMAT = "yolonas-pipeline/drift-profile@1"
#: Bump when a profile's content for the same export changes; it is part of the profile cache key.
PROFILE_VERSION = 1
#: Images decoded at once for the brightness histogram (I/O bound on S3).
BRIGHTNESS_WORKERS = 8


class FeatureHistogram(Part):
    """Counts per bin (``labels`` in order) and a summary of the raw values (mean, median, p10, p90)."""

    labels: list[str]
    counts: list[int]
    summary: dict[str, float | None]

    @property
    def total(self) -> int:
        return sum(self.counts)


class DatasetProfile(Contract):
    """Histograms of one export; small JSON, cached by fingerprint."""

    FORMAT: ClassVar[str] = PROFILE_FORMAT
    format: str = PROFILE_FORMAT
    dataset_uri: str
    fingerprint: str
    class_names: list[str]
    splits: list[str]
    images: int = Field(ge=0)
    boxes: int = Field(ge=0)
    source: dict[str, Any]
    features: dict[str, FeatureHistogram]
    settings: dict[str, Any] = Field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return self.to_xcom()

    @classmethod
    def from_dict(cls, data: Any) -> DatasetProfile:
        """A profile from its JSON form; a :class:`StageInputError` says what is wrong with it."""
        return cls.parse(data, source="the drift profile")


def profile_settings(config: DriftConfig) -> dict[str, Any]:
    """What changes a profile's content besides the export itself (the cache key's other half)."""
    return {
        "version": PROFILE_VERSION,
        "splits": list(config.splits) if config.splits else None,
        "brightness_sample": config.brightness_sample,
    }


def profile_cache_uri(cache_root: str, fingerprint: str, config: DriftConfig) -> str:
    digest = hashlib.sha256(json.dumps(profile_settings(config), sort_keys=True).encode()).hexdigest()[:12]
    return join_uri(cache_root, f"{fingerprint}-{digest}.json")


def profile_dataset(
    dataset_uri: str,
    *,
    storage: Storage,
    config: DriftConfig | None = None,
    cache_root: str | None = None,
) -> DatasetProfile:
    """Profile the export at ``dataset_uri`` (or load its cached profile from ``cache_root``)."""
    config = config or DriftConfig()
    manifest = DatasetManifest.read_export(dataset_uri, storage=storage)
    cached_uri = profile_cache_uri(cache_root, manifest.fingerprint, config) if cache_root else None
    if cached_uri:
        cached = _read_cached(cached_uri, storage)
        if cached is not None:
            logger.info("drift: profile of %s reused from %s", manifest.fingerprint, cached_uri)
            return cached.model_copy(update={"dataset_uri": dataset_uri})

    profile = _profile(dataset_uri, manifest, config, storage)
    logger.info(
        "drift: profiled %s: %d images, %d boxes, %d images decoded for brightness",
        dataset_uri,
        profile.images,
        profile.boxes,
        profile.features["brightness"].total,
    )
    if cached_uri:
        storage.write_text(cached_uri, json.dumps(profile.to_dict(), sort_keys=True))
    return profile


def _read_cached(uri: str, storage: Storage) -> DatasetProfile | None:
    """The cached profile at ``uri``; None when there is none or it is unreadable (it is then recomputed)."""
    if not storage.exists(uri):
        return None
    try:
        return DatasetProfile.read(uri, storage=storage)
    except FileNotFoundError:
        return None
    except StageInputError as exc:
        logger.warning("drift: the cached profile %s is unusable, profiling again: %s", uri, exc)
        return None


class _Histograms:
    """The binned features of one export, filled value by value, and the raw values for the summaries."""

    def __init__(self) -> None:
        self.counts = {name: [0] * spec.bins for name, spec in FEATURES.items() if not spec.categorical}
        self.values: dict[str, list[float]] = {name: [] for name in self.counts}

    def add(self, name: str, value: float) -> None:
        self.counts[name][FEATURES[name].bin_of(value)] += 1
        self.values[name].append(value)

    def histogram(self, name: str) -> FeatureHistogram:
        return FeatureHistogram(
            labels=FEATURES[name].labels(), counts=self.counts[name], summary=_summary(self.values[name])
        )


def feature_histogram(name: str, values: Sequence[float]) -> FeatureHistogram:
    """The histogram of an ordered feature (not ``class_balance``) from raw values, as a profile bins them."""
    if FEATURES[name].categorical:
        raise ValueError(f"{name} is categorical: build its FeatureHistogram from class counts")
    hist = _Histograms()
    for value in values:
        hist.add(name, value)
    return hist.histogram(name)


def _profile(dataset_uri: str, manifest: DatasetManifest, config: DriftConfig, storage: Storage) -> DatasetProfile:
    available = list(manifest.splits)
    splits = list(config.splits) if config.splits else available
    missing = sorted(set(splits) - set(available))
    if missing:
        raise StageInputError(f"drift splits {missing} are not in the export at {dataset_uri}; it has {available}")
    class_counts = dict.fromkeys(manifest.class_names, 0)
    hist = _Histograms()
    image_files: list[str] = []
    for split in splits:
        entry = manifest.split(split)
        coco: dict[str, Any] = json.loads(storage.read_text(join_uri(dataset_uri, entry.annotation_file)))
        names = {c["id"]: str(c["name"]) for c in coco.get("categories", [])}
        sizes: dict[Any, tuple[float, float]] = {}
        per_image: dict[Any, int] = {}
        for image in coco.get("images", []):
            width, height = float(image["width"]), float(image["height"])
            sizes[image["id"]] = (width, height)
            per_image[image["id"]] = 0
            hist.add("image_size", math.sqrt(width * height))
            image_files.append(join_uri(dataset_uri, entry.images_dir, image["file_name"]))
        for annotation in coco.get("annotations", []):
            name = names.get(annotation["category_id"], str(annotation["category_id"]))
            class_counts[name] = class_counts.get(name, 0) + 1
            if annotation["image_id"] in per_image:
                per_image[annotation["image_id"]] += 1
            width, height = sizes.get(annotation["image_id"], (0.0, 0.0))
            _, _, box_w, box_h = (float(v) for v in annotation["bbox"])
            if width > 0 and height > 0 and box_w > 0 and box_h > 0:
                hist.add("box_area", (box_w * box_h) / (width * height))
                hist.add("aspect_ratio", box_w / box_h)
        for count in per_image.values():
            hist.add("boxes_per_image", count)

    for brightness in _brightness(image_files, config.brightness_sample, manifest.fingerprint, storage):
        hist.add("brightness", brightness)

    features: dict[str, FeatureHistogram] = {
        "class_balance": FeatureHistogram(
            labels=list(class_counts),
            counts=list(class_counts.values()),
            summary={"classes": float(len(class_counts))},
        )
    }
    for name, spec in FEATURES.items():
        if not spec.categorical:
            features[name] = hist.histogram(name)
    return DatasetProfile(
        dataset_uri=dataset_uri,
        fingerprint=manifest.fingerprint,
        class_names=list(manifest.class_names),
        splits=splits,
        images=features["boxes_per_image"].total,
        boxes=sum(class_counts.values()),
        source=manifest.source.model_dump(mode="json"),
        features=features,
        settings=profile_settings(config),
    )


def _summary(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "median": None, "p10": None, "p90": None}
    ordered = sorted(values)

    def quantile(q: float) -> float:
        return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])

    return {
        "mean": round(sum(ordered) / len(ordered), 6),
        "median": round(quantile(0.5), 6),
        "p10": round(quantile(0.1), 6),
        "p90": round(quantile(0.9), 6),
    }


def _luma(data: bytes) -> float:
    """Mean luma (0-255) of an encoded image, decoded at reduced size where the format allows."""
    from PIL import Image, ImageStat

    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (64, 64))  # JPEG: decode at 1/2..1/8 scale, much faster than full size
        return float(ImageStat.Stat(image.convert("L")).mean[0])


def _brightness(files: list[str], sample: int, seed_text: str, storage: Storage) -> list[float]:
    """Mean luma of up to ``sample`` images, chosen by a seed derived from the export's fingerprint."""
    if sample <= 0 or not files:
        return []
    chosen = files if len(files) <= sample else random.Random(seed_text).sample(files, sample)

    def luma(uri: str) -> float:
        return _luma(storage.read_bytes(uri))

    with ThreadPoolExecutor(max_workers=BRIGHTNESS_WORKERS) as pool:
        return list(pool.map(luma, chosen))
