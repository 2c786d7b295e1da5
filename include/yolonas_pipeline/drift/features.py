"""The six features a dataset profile holds, each a histogram on fixed bins.

``class_balance``     share of boxes per class name (the union of both exports' classes)
``boxes_per_image``   objects per image, 0 included
``box_area``          box area relative to its image (log10 bins: a shift to small objects shows)
``aspect_ratio``      box width / height (log2 bins)
``image_size``        sqrt(width * height) of each image, in pixels
``brightness``        mean luma (0-255) of a seeded sample of images, decoded at reduced size

Fixed bins make a profile independent of what it is compared with, so the profile of an export is computed
once and reused.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal, get_args

#: The feature names, in report order (also the keys of :data:`FEATURES`).
FeatureName = Literal["class_balance", "boxes_per_image", "box_area", "aspect_ratio", "image_size", "brightness"]
FEATURE_NAMES: tuple[FeatureName, ...] = get_args(FeatureName)


def _geometric(start: float, stop: float, ratio: float) -> list[float]:
    edges = [start]
    while edges[-1] * ratio <= stop * (1 + 1e-9):
        edges.append(edges[-1] * ratio)
    return edges


def _short(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


def _integer(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class FeatureSpec:
    """A histogram with fixed bin edges; values below the first edge or at/above the last go to end bins."""

    name: FeatureName
    title: str
    unit: str
    edges: tuple[float, ...] = ()  # empty: categorical (class names)
    integer: bool = False

    @property
    def categorical(self) -> bool:
        return not self.edges

    def labels(self) -> list[str]:
        if not self.edges:
            return []
        if self.integer:
            inner = [
                _integer(lo) if hi - lo == 1 else f"{_integer(lo)}-{_integer(hi - 1)}"
                for lo, hi in zip(self.edges, self.edges[1:], strict=False)
            ]
            return [*inner, f">={_integer(self.edges[-1])}"]
        inner = [f"{_short(lo)}-{_short(hi)}" for lo, hi in zip(self.edges, self.edges[1:], strict=False)]
        return [f"<{_short(self.edges[0])}", *inner, f">={_short(self.edges[-1])}"]

    def bin_of(self, value: float) -> int:
        """Index of ``value``'s bin in :meth:`labels` order."""
        index = bisect.bisect_right(self.edges, value)
        return index - 1 if self.integer else index

    @property
    def bins(self) -> int:
        return len(self.edges) if self.integer else len(self.edges) + 1


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
if tuple(FEATURES) != FEATURE_NAMES:  # pragma: no cover - a programming error, caught at import
    raise RuntimeError(f"FeatureName {FEATURE_NAMES} and FEATURES {tuple(FEATURES)} disagree")
