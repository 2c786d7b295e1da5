"""The drift report on storage: ``drift_report.json`` and its chart ``drift_report.png``.

The chart is one panel per feature, the reference's and the current export's share per bin side by side,
drawn with matplotlib headless (Agg canvas, no pyplot state), as the trainer's evaluation plots are.
matplotlib is imported when a chart is drawn, not with this module: DAG files import the drift package.
"""

from __future__ import annotations

import io
import json
import logging
import math
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from yolonas_pipeline.drift.divergence import DriftReport, FeatureDrift
from yolonas_pipeline.drift.features import FEATURES
from yolonas_pipeline.storage import Storage, join_uri

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

REPORT_JSON = "drift_report.json"
REPORT_PNG = "drift_report.png"
DPI = 100
COLUMNS = 2
#: Inches per panel (width, height) and for the title above them.
PANEL = (6.0, 3.3)
HEADER = 1.3
#: At most this many bin labels on an x axis; with more bins every k-th one is labelled.
MAX_TICKS = 24
#: Characters per line of a panel's reason.
WHY_WIDTH = 70

REFERENCE_COLOUR = "#5a78c8"
CURRENT_COLOUR = "#eb8232"
DRIFT_COLOUR = "#c81e1e"
OK_COLOUR = "#288c3c"
GREY = "#787878"


def write_report(
    report: DriftReport, destination_uri: str, *, storage: Storage, extra: Mapping[str, Any] | None = None
) -> tuple[str, str]:
    """Write ``drift_report.png`` then ``drift_report.json`` (plus ``extra`` keys) under ``destination_uri``.

    Returns ``(json_uri, png_uri)``; the JSON names the PNG in ``png_uri``, and is written last.
    """
    png_uri = join_uri(destination_uri, REPORT_PNG)
    json_uri = join_uri(destination_uri, REPORT_JSON)
    storage.write_bytes(png_uri, render_png(report))
    payload = {**report.to_dict(), **dict(extra or {}), "png_uri": png_uri}
    storage.write_text(json_uri, json.dumps(payload, indent=2) + "\n")
    logger.info("drift: report written to %s (chart %s)", json_uri, png_uri)
    return json_uri, png_uri


def render_png(report: DriftReport) -> bytes:
    """Reference vs current share per bin for every feature, one panel each, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = render_figure(report)
    FigureCanvasAgg(figure)
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def render_figure(report: DriftReport) -> Figure:
    """The chart as a matplotlib figure (not yet attached to a canvas)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    rows = max(1, math.ceil(len(report.features) / COLUMNS))
    figure = Figure(figsize=(PANEL[0] * COLUMNS, HEADER + PANEL[1] * rows), layout="constrained")
    verdict = "DRIFT" if report.drifted else "no drift"
    reference = report.reference["fingerprint"] if report.reference else "none (no champion)"
    if report.decision == "test":
        rule = (
            f"drift = {report.metric.upper()} over its threshold and p <= alpha {report.alpha:g} "
            f"({report.correction}-adjusted permutation test)"
        )
    else:
        rule = f"drift = {report.metric.upper()} over its threshold (no significance test)"
    figure.suptitle(
        f"Drift report: {verdict}\nreference {reference}   current {report.current['fingerprint']}\n{rule}",
        color=DRIFT_COLOUR if report.drifted else OK_COLOUR,
        fontsize=13,
    )
    handles = [Patch(color=CURRENT_COLOUR, label="current")]
    if report.reference is not None:
        handles.insert(0, Patch(color=REFERENCE_COLOUR, label="reference"))
    figure.legend(
        handles=handles,
        loc="upper right",
        ncols=2,
        frameon=False,
    )
    axes = figure.subplots(rows, COLUMNS, squeeze=False).ravel()
    for ax, feature in zip(axes, report.features.values(), strict=False):
        _panel(ax, feature, report.metric, has_reference=report.reference is not None)
    for ax in axes[len(report.features) :]:
        ax.set_axis_off()
    return figure


def _panel(ax: Axes, feature: FeatureDrift, metric: str, *, has_reference: bool) -> None:
    from matplotlib.ticker import PercentFormatter

    colour = {"drifted": DRIFT_COLOUR, "stable": OK_COLOUR}.get(feature.status, GREY)
    score = "-" if feature.score is None else f"{feature.score:.3f}"
    ax.set_title(feature.title, loc="left", fontsize=10)
    p_value = "" if feature.p_adjusted is None else f"  p {_p(feature.p_adjusted)}"
    ax.set_title(
        f"{metric.upper()} {score} / {feature.threshold:g}{p_value}  {feature.status.replace('_', ' ')}",
        loc="right",
        fontsize=9,
        color=colour,
    )
    if has_reference:
        # the counts behind both histograms and the verdict's reason, in the panel's top-left corner
        note = f"n {feature.reference_total} vs {feature.current_total}"
        if feature.why:
            note += "\n" + textwrap.fill(feature.why, WHY_WIDTH)
        ax.text(
            0.01,
            0.98,
            note,
            transform=ax.transAxes,
            fontsize=6.5,
            va="top",
            ha="left",
            color=colour,
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1.5},
        )
    bins = len(feature.labels)
    positions = list(range(bins))
    width = 0.4 if has_reference else 0.6
    offset = width / 2 if has_reference else 0.0  # side by side, or the current bars alone, centred
    if has_reference:
        ax.bar([x - offset for x in positions], _shares(feature.reference), width, color=REFERENCE_COLOUR)
    ax.bar([x + offset for x in positions], _shares(feature.current), width, color=CURRENT_COLOUR)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    step = max(1, math.ceil(bins / MAX_TICKS))
    labels = _ticks(feature)
    crowded = bins > 8
    ax.set_xticks(positions[::step], labels[::step], rotation=45 if crowded else 0, ha="right" if crowded else "center")
    ax.set_xlim(-0.6, max(bins, 1) - 0.4)


def _ticks(feature: FeatureDrift) -> list[str]:
    """Short axis labels: class names, integer bins as they are, continuous bins by their lower edge."""
    spec = FEATURES[feature.feature]
    if spec.categorical or spec.integer:
        return [label[:12] for label in feature.labels]
    return [f"<{_tick(spec.edges[0])}"] + [_tick(edge) for edge in spec.edges]


def _tick(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _p(value: float) -> str:
    return f"{value:.3g}" if value >= 0.001 else f"{value:.1e}"


def _shares(counts: Sequence[int]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]
