"""Detection-aware drift between two materialized COCO exports.

Tabular drift tools compare columns; a detection dataset drifts in what a detector cares about. Each export
is summarised as a :class:`DatasetProfile` of six histograms on fixed bins:

``class_balance``     share of boxes per class name (the union of both exports' classes)
``boxes_per_image``   objects per image, 0 included
``box_area``          box area relative to its image (log10 bins: a shift to small objects shows)
``aspect_ratio``      box width / height (log2 bins)
``image_size``        sqrt(width * height) of each image, in pixels
``brightness``        mean luma (0-255) of a seeded sample of images, decoded at reduced size

Each feature is scored with the population stability index (PSI, additively smoothed so that empty bins of
small datasets do not explode) and the Jensen-Shannon divergence (base 2, in [0, 1]). A feature drifts when
the configured metric exceeds its threshold; the dataset drifts when any feature does. Fixed bins make a
profile independent of what it is compared with, so the profile of an export (keyed by its fingerprint) is
computed once and reused.

Plain Python: no Airflow, no torch. Images are read through :class:`~yolonas_pipeline.storage.Storage`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.materialize import read_manifest
from yolonas_pipeline.storage import Storage, join_uri

PROFILE_FORMAT = "yolonas-pipeline/drift-profile@1"
REPORT_FORMAT = "yolonas-pipeline/drift-report@1"
#: Bump when a profile's content for the same export changes; it is part of the profile cache key.
PROFILE_VERSION = 1
METRICS = ("psi", "js")
#: PSI above 0.2 is the usual "significant shift"; a JS divergence of 0.1 is of the same order.
DEFAULT_THRESHOLDS = {"psi": 0.2, "js": 0.1}
BUNDLE_MANIFEST = "manifest.json"
REPORT_JSON = "drift_report.json"
REPORT_PNG = "drift_report.png"


def _geometric(start: float, stop: float, ratio: float) -> list[float]:
    edges = [start]
    while edges[-1] * ratio <= stop * (1 + 1e-9):
        edges.append(edges[-1] * ratio)
    return edges


@dataclass(frozen=True)
class FeatureSpec:
    """A histogram with fixed bin edges; values below the first edge or at/above the last go to end bins."""

    name: str
    title: str
    unit: str
    edges: tuple[float, ...] = ()  # empty: categorical (class names)
    integer: bool = False

    def labels(self) -> list[str]:
        if not self.edges:
            return []
        fmt = (lambda v: f"{v:g}") if self.integer else _short
        if self.integer:
            inner = [
                fmt(lo) if hi - lo == 1 else f"{fmt(lo)}-{fmt(hi - 1)}"
                for lo, hi in zip(self.edges, self.edges[1:], strict=False)
            ]
            return [*inner, f">={fmt(self.edges[-1])}"]
        inner = [f"{fmt(lo)}-{fmt(hi)}" for lo, hi in zip(self.edges, self.edges[1:], strict=False)]
        return [f"<{fmt(self.edges[0])}", *inner, f">={fmt(self.edges[-1])}"]

    def bin_of(self, value: float) -> int:
        """Index of ``value``'s bin in :meth:`labels` order."""
        import bisect

        index = bisect.bisect_right(self.edges, value)
        return index - 1 if self.integer else index

    @property
    def bins(self) -> int:
        return len(self.edges) if self.integer else len(self.edges) + 1


def _short(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


FEATURES: dict[str, FeatureSpec] = {
    spec.name: spec
    for spec in (
        FeatureSpec("class_balance", "Class balance", "share of boxes"),
        FeatureSpec(
            "boxes_per_image",
            "Boxes per image",
            "boxes",
            edges=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 21, 31, 51, 101),
            integer=True,
        ),
        # relative area 1e-4 (a 1% x 1% box) .. 1 (the whole image), quarter decades
        FeatureSpec("box_area", "Box area / image area", "fraction", edges=tuple(10 ** (k / 4) for k in range(-16, 1))),
        # width / height 1/8 .. 8, half octaves
        FeatureSpec("aspect_ratio", "Box aspect ratio (w/h)", "ratio", edges=tuple(2 ** (k / 2) for k in range(-6, 7))),
        FeatureSpec("image_size", "Image size sqrt(w*h)", "px", edges=tuple(_geometric(32, 8192, 2**0.5))),
        FeatureSpec("brightness", "Mean brightness", "luma", edges=tuple(float(v) for v in range(16, 256, 16))),
    )
}


# -- configuration ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftConfig:
    """What counts as drift. Built from a mapping (DAG param, ``YOLONAS_DRIFT_CONFIG``) by :meth:`from_mapping`.

    :param metric: ``psi`` or ``js``; the score compared with the thresholds (both are always reported).
    :param thresholds: feature name -> threshold; features not named use ``default_threshold``.
    :param default_threshold: threshold for features not in ``thresholds``; None = the metric's default.
    :param min_count: features with fewer observations than this on either side are reported, not judged.
    :param brightness_sample: images decoded per export for the brightness histogram (seeded choice).
    :param splits: splits profiled; None = every split of the export.
    :param smoothing: pseudo-count added to every bin before PSI (Jeffreys: 0.5), so that an empty bin in a
        small dataset does not dominate the score.
    :param features: features judged; the rest are still reported. None = all.
    """

    metric: str = "psi"
    thresholds: Mapping[str, float] = field(default_factory=dict)
    default_threshold: float | None = None
    min_count: int = 10
    brightness_sample: int = 256
    splits: tuple[str, ...] | None = None
    smoothing: float = 0.5
    features: tuple[str, ...] | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> DriftConfig:
        values = dict(values or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise StageInputError(f"unknown drift setting(s) {unknown}; accepted: {', '.join(sorted(known))}")
        metric = str(values.get("metric", "psi"))
        if metric not in METRICS:
            raise StageInputError(f"drift metric={metric!r} is not one of {', '.join(METRICS)}")
        thresholds = values.get("thresholds") or {}
        if not isinstance(thresholds, Mapping):
            raise StageInputError(f"drift thresholds must be a mapping of feature -> number, got {thresholds!r}")
        bad = sorted(set(thresholds) - set(FEATURES))
        if bad:
            raise StageInputError(f"drift thresholds name unknown feature(s) {bad}; features: {', '.join(FEATURES)}")
        clean: dict[str, float] = {}
        for name, value in thresholds.items():
            clean[name] = _positive(f"thresholds.{name}", value)
        default = values.get("default_threshold")
        features = values.get("features")
        if features is not None:
            features = tuple(str(f) for f in features)
            bad = sorted(set(features) - set(FEATURES))
            if bad:
                raise StageInputError(f"drift features {bad} are unknown; features: {', '.join(FEATURES)}")
        splits = values.get("splits")
        config = cls(
            metric=metric,
            thresholds=clean,
            default_threshold=_positive("default_threshold", default) if default is not None else None,
            min_count=_non_negative_int("min_count", values.get("min_count", 10)),
            brightness_sample=_non_negative_int("brightness_sample", values.get("brightness_sample", 256)),
            splits=tuple(str(s) for s in splits) if splits else None,
            smoothing=_non_negative_float("smoothing", values.get("smoothing", 0.5)),
            features=features,
        )
        return config

    def threshold(self, feature: str) -> float:
        if feature in self.thresholds:
            return float(self.thresholds[feature])
        if self.default_threshold is not None:
            return float(self.default_threshold)
        return DEFAULT_THRESHOLDS[self.metric]

    def judged(self, feature: str) -> bool:
        return self.features is None or feature in self.features

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["thresholds"] = {name: self.threshold(name) for name in FEATURES}
        return out


def _positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StageInputError(f"drift {name} must be a number > 0, got {value!r}") from None
    if not number > 0 or math.isinf(number):
        raise StageInputError(f"drift {name} must be a finite number > 0, got {value!r}")
    return number


def _non_negative_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not 0 <= number < math.inf:
        raise StageInputError(f"drift {name} must be a number >= 0, got {value!r}")
    return number


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StageInputError(f"drift {name} must be an integer >= 0, got {value!r}")
    return value


# -- profiles --------------------------------------------------------------------------------------------


@dataclass
class FeatureHistogram:
    labels: list[str]
    counts: list[int]
    summary: dict[str, float | None]

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass
class DatasetProfile:
    """Histograms of one export; small JSON, cached by fingerprint."""

    dataset_uri: str
    fingerprint: str
    class_names: list[str]
    splits: list[str]
    images: int
    boxes: int
    source: dict[str, Any]
    features: dict[str, FeatureHistogram]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": PROFILE_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetProfile:
        if data.get("format") != PROFILE_FORMAT:
            raise StageInputError(f"not a drift profile (format {data.get('format')!r}, expected {PROFILE_FORMAT!r})")
        values = {k: v for k, v in data.items() if k != "format"}
        values["features"] = {k: FeatureHistogram(**v) for k, v in data["features"].items()}
        return cls(**values)


def profile_settings(config: DriftConfig) -> dict[str, Any]:
    """What changes a profile's content besides the export itself (the cache key's other half)."""
    return {"version": PROFILE_VERSION, "splits": list(config.splits) if config.splits else None,
            "brightness_sample": config.brightness_sample}  # fmt: skip


def profile_cache_uri(cache_root: str, fingerprint: str, config: DriftConfig) -> str:
    digest = hashlib.sha256(json.dumps(profile_settings(config), sort_keys=True).encode()).hexdigest()[:12]
    return join_uri(cache_root, f"{fingerprint}-{digest}.json")


def profile_dataset(
    dataset_uri: str,
    *,
    storage: Storage,
    config: DriftConfig | None = None,
    cache_root: str | None = None,
    log: Callable[[str], None] = print,
) -> DatasetProfile:
    """Profile the export at ``dataset_uri`` (or load its cached profile from ``cache_root``)."""
    config = config or DriftConfig()
    manifest = read_manifest(dataset_uri, storage=storage)
    fingerprint = str(manifest["fingerprint"])
    cached_uri = profile_cache_uri(cache_root, fingerprint, config) if cache_root else None
    if cached_uri and storage.exists(cached_uri):
        profile = DatasetProfile.from_dict(json.loads(storage.read_text(cached_uri)))
        profile.dataset_uri = dataset_uri
        log(f"drift: profile of {fingerprint} reused from {cached_uri}")
        return profile

    available = list(manifest["splits"])
    splits = list(config.splits) if config.splits else available
    missing = sorted(set(splits) - set(available))
    if missing:
        raise StageInputError(f"drift splits {missing} are not in the export at {dataset_uri}; it has {available}")
    class_names = [str(n) for n in manifest["class_names"]]
    class_counts = dict.fromkeys(class_names, 0)
    hist = {name: [0] * spec.bins for name, spec in FEATURES.items() if spec.edges}
    values: dict[str, list[float]] = {name: [] for name in hist}
    image_files: list[str] = []
    for split in splits:
        entry = manifest["splits"][split]
        coco = json.loads(storage.read_text(join_uri(dataset_uri, entry["annotation_file"])))
        names = {c["id"]: str(c["name"]) for c in coco.get("categories", [])}
        sizes: dict[Any, tuple[float, float]] = {}
        per_image: dict[Any, int] = {}
        for image in coco.get("images", []):
            width, height = float(image["width"]), float(image["height"])
            sizes[image["id"]] = (width, height)
            per_image[image["id"]] = 0
            _add(hist, values, "image_size", math.sqrt(width * height))
            image_files.append(join_uri(dataset_uri, entry["images_dir"], image["file_name"]))
        for annotation in coco.get("annotations", []):
            name = names.get(annotation["category_id"], str(annotation["category_id"]))
            class_counts[name] = class_counts.get(name, 0) + 1
            if annotation["image_id"] in per_image:
                per_image[annotation["image_id"]] += 1
            width, height = sizes.get(annotation["image_id"], (0.0, 0.0))
            _, _, box_w, box_h = (float(v) for v in annotation["bbox"])
            if width > 0 and height > 0 and box_w > 0 and box_h > 0:
                _add(hist, values, "box_area", (box_w * box_h) / (width * height))
                _add(hist, values, "aspect_ratio", box_w / box_h)
        for count in per_image.values():
            _add(hist, values, "boxes_per_image", count)

    for brightness in _brightness(image_files, config.brightness_sample, fingerprint, storage):
        _add(hist, values, "brightness", brightness)

    features: dict[str, FeatureHistogram] = {
        "class_balance": FeatureHistogram(
            labels=list(class_counts),
            counts=list(class_counts.values()),
            summary={"classes": float(len(class_counts))},
        )
    }
    for name, spec in FEATURES.items():
        if spec.edges:
            features[name] = FeatureHistogram(labels=spec.labels(), counts=hist[name], summary=_summary(values[name]))
    profile = DatasetProfile(
        dataset_uri=dataset_uri,
        fingerprint=fingerprint,
        class_names=class_names,
        splits=splits,
        images=features["boxes_per_image"].total,
        boxes=sum(class_counts.values()),
        source=dict(manifest.get("source") or {}),
        features=features,
        settings=profile_settings(config),
    )
    log(
        f"drift: profiled {dataset_uri}: {profile.images} images, {profile.boxes} boxes, "
        f"{features['brightness'].total} images decoded for brightness"
    )
    if cached_uri:
        storage.write_text(cached_uri, json.dumps(profile.to_dict(), sort_keys=True))
    return profile


def _add(hist: dict[str, list[int]], values: dict[str, list[float]], name: str, value: float) -> None:
    hist[name][FEATURES[name].bin_of(value)] += 1
    values[name].append(value)


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


def _brightness(files: list[str], sample: int, seed_text: str, storage: Storage) -> list[float]:
    """Mean luma of up to ``sample`` images, chosen by a seed derived from the export's fingerprint."""
    if sample <= 0 or not files:
        return []
    import random

    chosen = files if len(files) <= sample else random.Random(seed_text).sample(files, sample)

    def luma(uri: str) -> float:
        from PIL import Image, ImageStat

        with Image.open(io.BytesIO(storage.read_bytes(uri))) as image:
            image.draft("L", (64, 64))  # JPEG: decode at 1/2..1/8 scale, much faster than full size
            return float(ImageStat.Stat(image.convert("L")).mean[0])

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(luma, chosen))


# -- scores ----------------------------------------------------------------------------------------------


def psi(reference: Sequence[float], current: Sequence[float], smoothing: float = 0.5) -> float:
    """Population stability index of two histograms over the same bins: sum (c - r) * ln(c / r).

    ``smoothing`` pseudo-counts are added to every bin of both, so empty bins stay finite.
    """
    _check_bins(reference, current)
    r, c = _proportions(reference, smoothing), _proportions(current, smoothing)
    total = 0.0
    for ri, ci in zip(r, c, strict=True):
        if ri > 0 and ci > 0:
            total += (ci - ri) * math.log(ci / ri)
        elif ri != ci:
            return math.inf
    return total


def js_divergence(reference: Sequence[float], current: Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2, between 0 and 1) of two histograms over the same bins."""
    _check_bins(reference, current)
    r, c = _proportions(reference, 0.0), _proportions(current, 0.0)
    total = 0.0
    for ri, ci in zip(r, c, strict=True):
        mi = (ri + ci) / 2
        if ri > 0:
            total += 0.5 * ri * math.log2(ri / mi)
        if ci > 0:
            total += 0.5 * ci * math.log2(ci / mi)
    return min(1.0, max(0.0, total))


def _check_bins(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"histograms must have the same, non-zero number of bins ({len(a)} vs {len(b)})")


def _proportions(counts: Sequence[float], smoothing: float) -> list[float]:
    total = sum(counts) + smoothing * len(counts)
    if total <= 0:
        return [1.0 / len(counts)] * len(counts)
    return [(c + smoothing) / total for c in counts]


# -- the report ------------------------------------------------------------------------------------------


@dataclass
class FeatureDrift:
    feature: str
    title: str
    status: str  # drifted | stable | insufficient_data | not_judged
    score: float | None  # the configured metric
    threshold: float
    psi: float | None
    js: float | None
    labels: list[str]
    reference: list[int]
    current: list[int]
    reference_summary: dict[str, float | None]
    current_summary: dict[str, float | None]

    @property
    def drifted(self) -> bool:
        return self.status == "drifted"


@dataclass
class DriftReport:
    drifted: bool
    reason: str
    metric: str
    reference: dict[str, Any] | None  # None when there is no champion to compare with
    current: dict[str, Any]
    features: dict[str, FeatureDrift]
    config: dict[str, Any]
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    champion: dict[str, Any] | None = None

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]

    @property
    def scores(self) -> dict[str, float | None]:
        return {name: _round(f.score) for name, f in self.features.items()}

    def to_dict(self) -> dict[str, Any]:
        out = {"format": REPORT_FORMAT, **asdict(self), "drifted_features": self.drifted_features}
        return _finite({**out, "scores": self.scores})


def _round(value: float | None) -> float | None:
    if value is None or math.isinf(value):
        return value
    return round(value, 6)


def _finite(value: Any) -> Any:
    """JSON has no infinity: an unsmoothed PSI over an empty bin is written as the string "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _profile_summary(profile: DatasetProfile) -> dict[str, Any]:
    return {
        "dataset_uri": profile.dataset_uri,
        "fingerprint": profile.fingerprint,
        "source": profile.source,
        "splits": profile.splits,
        "images": profile.images,
        "boxes": profile.boxes,
        "class_names": profile.class_names,
    }


def _aligned(reference: FeatureHistogram, current: FeatureHistogram) -> tuple[list[str], list[int], list[int]]:
    """Both histograms over the union of their labels (class names can differ between revisions)."""
    if reference.labels == current.labels:
        return list(reference.labels), list(reference.counts), list(current.counts)
    labels = list(reference.labels) + [label for label in current.labels if label not in reference.labels]
    ref = dict(zip(reference.labels, reference.counts, strict=True))
    cur = dict(zip(current.labels, current.counts, strict=True))
    return labels, [ref.get(label, 0) for label in labels], [cur.get(label, 0) for label in labels]


def compare_profiles(
    reference: DatasetProfile | None,
    current: DatasetProfile,
    config: DriftConfig | None = None,
    *,
    no_reference_is_drift: bool = True,
    no_reference_reason: str = "there is no reference snapshot to compare with",
    champion: Mapping[str, Any] | None = None,
) -> DriftReport:
    """Score every feature of ``current`` against ``reference`` and decide whether the dataset drifted.

    Without a reference (no champion yet) nothing is scored; ``no_reference_is_drift`` decides the outcome
    and the reason says so.
    """
    config = config or DriftConfig()
    features: dict[str, FeatureDrift] = {}
    for name, spec in FEATURES.items():
        cur = current.features[name]
        if reference is None:
            labels, ref_counts, cur_counts = list(cur.labels), [0] * len(cur.counts), list(cur.counts)
            ref_summary: dict[str, float | None] = {}
        else:
            labels, ref_counts, cur_counts = _aligned(reference.features[name], cur)
            ref_summary = reference.features[name].summary
        threshold = config.threshold(name)
        score_psi = score_js = score = None
        if reference is None:
            status = "not_judged"
        elif min(sum(ref_counts), sum(cur_counts)) < max(1, config.min_count):
            status = "insufficient_data"
        else:
            score_psi = psi(ref_counts, cur_counts, config.smoothing)
            score_js = js_divergence(ref_counts, cur_counts)
            score = score_psi if config.metric == "psi" else score_js
            judged = config.judged(name)
            status = ("drifted" if score > threshold else "stable") if judged else "not_judged"
        features[name] = FeatureDrift(
            feature=name,
            title=spec.title,
            status=status,
            score=score,
            threshold=threshold,
            psi=_round(score_psi),
            js=_round(score_js),
            labels=labels,
            reference=ref_counts,
            current=cur_counts,
            reference_summary=ref_summary,
            current_summary=cur.summary,
        )

    metric = config.metric.upper()
    if reference is None:
        drifted = no_reference_is_drift
        verdict = "treated as drift, so that a first model gets trained" if drifted else "not treated as drift"
        reason = f"{no_reference_reason}; {verdict}"
    else:
        over = [f for f in features.values() if f.drifted]
        drifted = bool(over)
        same = reference.fingerprint == current.fingerprint
        if drifted:
            reason = "drift in " + ", ".join(f"{f.feature} ({metric} {f.score:.3f} > {f.threshold:g})" for f in over)
        else:
            scored = [f for f in features.values() if f.score is not None and f.status != "not_judged"]
            if scored:
                top = max(scored, key=lambda f: f.score or 0.0)
                reason = (
                    f"no feature over its threshold; largest {metric} {top.score:.3f} ({top.feature}, "
                    f"threshold {top.threshold:g})"
                )
            else:
                reason = f"no feature had at least {config.min_count} observations on both sides to judge"
            skipped = [f.feature for f in features.values() if f.status == "insufficient_data"]
            if skipped:
                reason += f"; too little data to judge {', '.join(skipped)}"
        if same:
            reason += f" (the current export is the reference snapshot itself, fingerprint {current.fingerprint})"
    return DriftReport(
        drifted=drifted,
        reason=reason,
        metric=config.metric,
        reference=_profile_summary(reference) if reference else None,
        current=_profile_summary(current),
        features=features,
        config=config.to_dict(),
        champion=dict(champion) if champion else None,
    )


# -- champion --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChampionReference:
    """The production model and the snapshot it was trained on."""

    champion_uri: str
    bundle_uri: str
    run_id: str | None
    dataset_uri: str
    fingerprint: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_champion(pointer_uri: str, *, storage: Storage) -> ChampionReference | None:
    """Follow ``champion.json`` to its bundle's manifest and the dataset it records; None if no champion."""
    try:
        pointer = json.loads(storage.read_text(pointer_uri))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise StageInputError(f"{pointer_uri} is not valid JSON: {exc}") from exc
    bundle = pointer.get("bundle_uri") if isinstance(pointer, dict) else None
    if not bundle:
        raise StageInputError(f"{pointer_uri} names no bundle_uri; expected {{'bundle_uri': ..., 'run_id': ...}}")
    manifest_uri = pointer.get("manifest_uri") or join_uri(bundle, BUNDLE_MANIFEST)
    try:
        manifest = json.loads(storage.read_text(manifest_uri))
    except FileNotFoundError as exc:
        raise StageInputError(
            f"the champion {pointer_uri} points at {bundle}, whose {manifest_uri} is missing"
        ) from exc
    dataset = manifest.get("dataset") or {}
    if not dataset.get("uri"):
        raise StageInputError(f"{manifest_uri} records no dataset.uri: cannot tell what the champion was trained on")
    return ChampionReference(
        champion_uri=pointer_uri,
        bundle_uri=bundle,
        run_id=pointer.get("run_id") or manifest.get("run_id"),
        dataset_uri=str(dataset["uri"]),
        fingerprint=dataset.get("fingerprint"),
    )


# -- output ----------------------------------------------------------------------------------------------


def write_report(
    report: DriftReport, destination_uri: str, *, storage: Storage, extra: Mapping[str, Any] | None = None
) -> tuple[str, str]:
    """Write ``drift_report.png`` then ``drift_report.json`` (plus ``extra`` keys) under ``destination_uri``."""
    png_uri = join_uri(destination_uri, REPORT_PNG)
    json_uri = join_uri(destination_uri, REPORT_JSON)
    storage.write_bytes(png_uri, render_png(report))
    payload = {**report.to_dict(), **dict(extra or {}), "png_uri": png_uri}
    storage.write_text(json_uri, json.dumps(payload, indent=2) + "\n")
    return json_uri, png_uri


_REFERENCE_COLOUR = (90, 120, 200)
_CURRENT_COLOUR = (235, 130, 50)
_DRIFT_COLOUR = (200, 30, 30)
_OK_COLOUR = (40, 140, 60)
_GREY = (120, 120, 120)


def render_png(report: DriftReport, *, panel: tuple[int, int] = (560, 300)) -> bytes:
    """Reference vs current share per bin for every feature, one panel each, as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    columns = 2
    rows = math.ceil(len(report.features) / columns)
    header = 56
    width, height = panel[0] * columns, header + panel[1] * rows
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    title_font = ImageFont.load_default(size=18)
    font = ImageFont.load_default(size=12)
    small = ImageFont.load_default(size=10)
    verdict = "DRIFT" if report.drifted else "no drift"
    draw.text(
        (12, 8), f"Drift report: {verdict}", fill=_DRIFT_COLOUR if report.drifted else _OK_COLOUR, font=title_font
    )
    ref = report.reference["fingerprint"] if report.reference else "none (no champion)"
    draw.text((12, 32), f"reference {ref}   current {report.current['fingerprint']}", fill=_GREY, font=font)
    legend_x = width - 230
    draw.rectangle((legend_x, 12, legend_x + 12, 24), fill=_REFERENCE_COLOUR)
    draw.text((legend_x + 16, 11), "reference", fill="black", font=font)
    draw.rectangle((legend_x + 100, 12, legend_x + 112, 24), fill=_CURRENT_COLOUR)
    draw.text((legend_x + 116, 11), "current", fill="black", font=font)
    for index, feature in enumerate(report.features.values()):
        x0 = (index % columns) * panel[0]
        y0 = header + (index // columns) * panel[1]
        _draw_panel(draw, feature, report.metric, (x0, y0, x0 + panel[0], y0 + panel[1]), font, small)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _draw_panel(
    draw: Any, feature: FeatureDrift, metric: str, box: tuple[int, int, int, int], font: Any, small: Any
) -> None:
    x0, y0, x1, y1 = box
    colour = {"drifted": _DRIFT_COLOUR, "stable": _OK_COLOUR}.get(feature.status, _GREY)
    score = "-" if feature.score is None else f"{feature.score:.3f}"
    draw.text((x0 + 12, y0 + 6), feature.title, fill="black", font=font)
    label = f"{metric.upper()} {score} / {feature.threshold:g}  {feature.status.replace('_', ' ')}"
    draw.text((x0 + 12, y0 + 22), label, fill=colour, font=font)
    left, right, top, bottom = x0 + 40, x1 - 12, y0 + 44, y1 - 46
    draw.line((left, bottom, right, bottom), fill=_GREY)
    draw.line((left, top, left, bottom), fill=_GREY)
    shares_ref = _shares(feature.reference)
    shares_cur = _shares(feature.current)
    peak = max([*shares_ref, *shares_cur, 1e-9])
    draw.text((x0 + 4, top - 6), f"{peak:.0%}", fill=_GREY, font=small)
    draw.text((x0 + 4, bottom - 6), "0%", fill=_GREY, font=small)
    bins = max(1, len(feature.labels))
    slot = (right - left) / bins
    bar = max(1.0, slot * 0.4)
    for i, (r, c) in enumerate(zip(shares_ref, shares_cur, strict=True)):
        sx = left + i * slot + slot * 0.1
        for offset, share, fill in ((0.0, r, _REFERENCE_COLOUR), (bar, c, _CURRENT_COLOUR)):
            if share > 0:
                top_y = bottom - (bottom - top) * share / peak
                draw.rectangle((sx + offset, top_y, sx + offset + bar - 1, bottom - 1), fill=fill)
    # label every bin when they fit, else every k-th
    step = max(1, math.ceil(bins * 46 / max(1, right - left)))
    ticks = _ticks(feature)
    for i in range(0, bins, step):
        text = ticks[i]
        draw.text((left + i * slot + 1, bottom + 4 + (i // step % 2) * 12), text, fill="black", font=small)


def _ticks(feature: FeatureDrift) -> list[str]:
    """Short axis labels: class names, integer bins as they are, continuous bins by their lower edge."""
    spec = FEATURES[feature.feature]
    if not spec.edges or spec.integer:
        return [label[:9] for label in feature.labels]
    return [f"<{_tick(spec.edges[0])}"] + [_tick(edge) for edge in spec.edges]


def _tick(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _shares(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]
