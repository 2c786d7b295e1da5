"""The evaluation's pictures, as PNG files: per-class precision-recall curves, the confusion matrix with a
background row and column, and a grid of sample predictions drawn over images (the worst images first); and
the training's: losses, mAP and learning rate per epoch (:func:`training_curves`, like Ultralytics'
``results.png``).

matplotlib runs headless (Agg canvas, no pyplot state), so this works in a pod without a display.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from yolonas_pipeline.trainer.scoring import RECALL_POINTS, DetectionEvaluation, ImagePrediction, ImageTruth

PR_CURVES = "pr_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
SAMPLE_PREDICTIONS = "sample_predictions.png"
TRAINING_CURVES = "training_curves.png"
DPI = 110
#: Above this many classes a legend is unreadable; the curves are still drawn.
MAX_LEGEND = 20


def write_plots(
    result: DetectionEvaluation,
    truths: Sequence[ImageTruth],
    predictions: Sequence[ImagePrediction],
    *,
    images_dir: Path,
    out_dir: Path,
    worst: int = 6,
    samples: int = 12,
) -> dict[str, str]:
    """Write the three plots into ``out_dir``; returns ``{"pr_curves": file name, ...}``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_figure(pr_curves(result), out_dir / PR_CURVES)
    save_figure(confusion_matrix(result), out_dir / CONFUSION_MATRIX)
    chosen = sample_indices(result, len(truths), worst=worst, samples=samples)
    save_figure(
        sample_grid(result, truths, predictions, chosen, images_dir=images_dir, worst=worst),
        out_dir / SAMPLE_PREDICTIONS,
    )
    return {"pr_curves": PR_CURVES, "confusion_matrix": CONFUSION_MATRIX, "sample_predictions": SAMPLE_PREDICTIONS}


def save_figure(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")


#: The training curves' panels: title and the (split, history key) pairs drawn in it.
_CURVE_PANELS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("loss", (("train", "PPYoloELoss/loss"), ("valid", "PPYoloELoss/loss"))),
    ("classification loss", (("train", "PPYoloELoss/loss_cls"), ("valid", "PPYoloELoss/loss_cls"))),
    ("IoU loss", (("train", "PPYoloELoss/loss_iou"), ("valid", "PPYoloELoss/loss_iou"))),
    ("DFL loss", (("train", "PPYoloELoss/loss_dfl"), ("valid", "PPYoloELoss/loss_dfl"))),
    ("mAP@0.50", (("valid", "mAP@0.50"),)),
    ("mAP@0.50:0.95", (("valid", "mAP@0.50:0.95"),)),
    ("precision / recall @0.50", (("valid", "Precision@0.50"), ("valid", "Recall@0.50"))),
    ("learning rate", (("", "lr"),)),
)


def _series(history: Sequence[dict[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    epochs, values = [], []
    for entry in history:
        value = (entry.get(split) or {}).get(key) if split else entry.get(key)
        if isinstance(value, int | float):
            epochs.append(int(entry["epoch"]))
            values.append(float(value))
    return epochs, values


def training_curves(history: Sequence[dict[str, Any]]) -> Figure:
    """Losses (train solid, validation dashed), validation mAP, precision and recall, and the learning rate per
    epoch, from the train stage's history (``history.json``); a panel with no values says so."""
    figure = Figure(figsize=(16, 7))
    for slot, (title, series) in enumerate(_CURVE_PANELS):
        axes = figure.add_subplot(2, 4, slot + 1)
        drawn = 0
        for split, key in series:
            epochs, values = _series(history, split, key)
            if not values:
                continue
            label = f"{split} {key.split('/')[-1]}".strip() if len(series) > 1 else None
            style = "--" if split == "valid" and title.endswith("loss") else "-"
            axes.plot(epochs, values, style, marker="o" if len(values) < 30 else None, markersize=3, label=label)
            drawn += 1
        if not drawn:
            axes.text(0.5, 0.5, "no values", ha="center", va="center", transform=axes.transAxes, color="grey")
        elif len(series) > 1:
            axes.legend(fontsize=7)
        if title == "learning rate":
            axes.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        elif not title.endswith("loss"):  # scores: on their full scale, so that a flat 0 reads as 0
            axes.set_ylim(0, 1.02)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("epoch", fontsize=8)
        axes.grid(alpha=0.3)
    figure.suptitle(f"Training curves ({len(history)} epochs)", fontsize=11)
    figure.tight_layout()
    return figure


def class_colour(index: int) -> tuple[float, float, float]:
    """Ten dark, distinct colours (white label text stays readable); the class name tells repeats apart."""
    from matplotlib import colormaps

    return colormaps["tab10"](index % 10)[:3]


def pr_curves(result: DetectionEvaluation) -> Figure:
    """Precision against recall at IoU 0.50, one line per class (COCO's interpolated precision), and the mean."""
    figure = Figure(figsize=(7, 5.5))
    axes = figure.add_subplot()
    with_truth = [k for k in range(len(result.class_names)) if result.recall[0, k] >= 0]
    for k in with_truth:
        reached = result.recall[0, k] + 1e-9 >= RECALL_POINTS
        name = result.class_names[k]
        axes.plot(
            RECALL_POINTS[reached],
            result.precision[0, reached, k],
            linewidth=1.2,
            color=class_colour(k),
            label=f"{name}  AP50 {result.per_class[name]['ap_50']:.3f}",
        )
    if with_truth:
        axes.plot(
            RECALL_POINTS,
            result.precision[0][:, with_truth].mean(axis=1),
            linewidth=3,
            color="black",
            label=f"all classes  mAP50 {result.map_50:.3f}",
        )
    axes.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="Recall", ylabel="Precision")
    axes.set_title(f"Precision-recall at IoU 0.50  (mAP@0.50:0.95 {result.map_50_95:.3f})")
    axes.grid(alpha=0.3)
    if len(with_truth) <= MAX_LEGEND:
        axes.legend(loc="lower left", fontsize=8, framealpha=0.85)
    return figure


def confusion_matrix(result: DetectionEvaluation) -> Figure:
    """Counts per (true, predicted) class with background; colour is the share of the row."""
    matrix = result.confusion_matrix.astype(np.float64)
    labels = [*result.class_names, "background"]
    size = max(5.0, 0.55 * len(labels) + 2.5)
    figure = Figure(figsize=(size + 1, size))
    axes = figure.add_subplot()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    image = axes.imshow(share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class's boxes")
    if len(labels) <= 30:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                axes.text(
                    j,
                    i,
                    f"{int(count)}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.55 else "black",
                )
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlabel("Predicted (background: missed box)")
    axes.set_ylabel("True (background: false positive)")
    axes.set_title(f"Confusion matrix  (score >= {result.score_threshold:g}, IoU >= 0.50)")
    return figure


def sample_indices(result: DetectionEvaluation, count: int, *, worst: int, samples: int) -> list[int]:
    """The worst images by error first, then the first other images, ``samples`` in all."""
    chosen = result.worst_images(worst)
    for index in range(count):
        if len(chosen) >= samples:
            break
        if index not in chosen:
            chosen.append(index)
    return chosen


def sample_grid(
    result: DetectionEvaluation,
    truths: Sequence[ImageTruth],
    predictions: Sequence[ImagePrediction],
    chosen: Sequence[int],
    *,
    images_dir: Path,
    worst: int,
) -> Figure:
    """Images with ground truth (dashed white) and predictions at or above the score threshold (coloured,
    with class and score); titles give the image's true/false positives and missed boxes."""
    from PIL import Image

    worst_set = set(result.worst_images(worst))
    columns = min(4, max(1, len(chosen)))
    rows = max(1, -(-len(chosen) // columns))
    figure = Figure(figsize=(4 * columns, 3.4 * rows))
    for slot, index in enumerate(chosen):
        truth, pred, errors = truths[index], predictions[index], result.image_errors[index]
        axes = figure.add_subplot(rows, columns, slot + 1)
        with Image.open(images_dir / truth.file_name) as image:
            axes.imshow(np.asarray(image.convert("RGB")))
        for box in truth.boxes:
            axes.add_patch(_rect(box, "white", linestyle="--", linewidth=1.2))
        keep = pred.scores >= result.score_threshold
        for box, score, label in zip(pred.boxes[keep], pred.scores[keep], pred.labels[keep], strict=True):
            colour = class_colour(int(label))
            axes.add_patch(_rect(box, colour, linewidth=1.6))
            axes.text(
                box[0],
                box[1],
                f"{result.class_names[int(label)]} {score:.2f}",
                fontsize=6,
                color="white",
                va="bottom",
                bbox={"facecolor": colour, "edgecolor": "none", "pad": 0.8, "alpha": 0.85},
            )
        tag = "worst: " if index in worst_set else ""
        axes.set_title(
            f"{tag}{truth.file_name}\nTP {errors['tp']}  FP {errors['fp']}  missed {errors['fn']}",
            fontsize=8,
            color="firebrick" if tag else "black",
        )
        axes.axis("off")
    figure.suptitle(
        f"Sample predictions (score >= {result.score_threshold:g}); dashed white: ground truth", fontsize=10
    )
    return figure


def _rect(box: np.ndarray, colour: object, **style: Any) -> Rectangle:
    x1, y1, x2, y2 = (float(v) for v in box)
    return Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, **style)
