"""COCO-exact scoring of detections, in plain numpy: ground truth from COCO JSON, COCOeval's matching and AP,
precision/recall/F1 at a score threshold, the confusion matrix, per-image errors and the metrics document.

:func:`evaluate_detections` follows ``pycocotools``' COCOeval (101-point interpolated AP, IoU 0.50:0.05:0.95, at
most ``max_detections`` detections per image and class, greedy matching by score); the tests check the two agree
on the same ``predictions.json``. Nothing here needs torch, so the Airflow-side tests import it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from yolonas_pipeline.errors import StageInputError

#: COCOeval's IoU thresholds (0.50:0.05:0.95) and recall points (0:0.01:1).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: IoU at which a detection counts as correct for precision, recall, F1, the confusion matrix and errors.
MATCH_IOU = 0.5
#: Images listed in the metrics document's worst images (most false positives + missed boxes first).
WORST_IMAGES = 6


# -- scoring (numpy only) ----------------------------------------------------------------------------------
@dataclass
class ImageTruth:
    """Ground truth of one image; boxes are ``x1, y1, x2, y2`` pixels, labels index ``class_names``."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        crowd = np.asarray(self.crowd, dtype=bool).reshape(-1)
        self.crowd = crowd if len(crowd) == len(self.labels) else np.zeros(len(self.labels), dtype=bool)


@dataclass
class ImagePrediction:
    """Detections of one image, sorted by score (highest first); same conventions as :class:`ImageTruth`."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        order = np.argsort(-self.scores, kind="mergesort")
        self.boxes, self.scores, self.labels = self.boxes[order], self.scores[order], self.labels[order]

    @classmethod
    def empty(cls) -> ImagePrediction:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))


@dataclass
class DetectionEvaluation:
    """Everything :func:`evaluate_detections` measures; ``None`` marks a class with no ground truth."""

    class_names: list[str]
    score_threshold: float
    max_detections: int
    #: [iou threshold, recall point, class]: interpolated precision, -1 where the class has no ground truth.
    precision: np.ndarray
    #: [iou threshold, class]: the recall reached with every detection, -1 without ground truth.
    recall: np.ndarray
    map_50: float
    map_50_95: float
    per_class: dict[str, dict[str, Any]]
    #: At ``score_threshold`` and IoU 0.50, over all boxes of all classes (micro average).
    precision_at_threshold: float
    recall_at_threshold: float
    f1_at_threshold: float
    best_f1: dict[str, float]
    #: Rows: ground truth classes then "background" (false positives); columns: predicted classes then
    #: "background" (missed boxes). At ``score_threshold``, IoU 0.50, class-agnostic matching.
    confusion_matrix: np.ndarray
    #: Per image, in input order: {"image_id", "file_name", "tp", "fp", "fn"} at the threshold.
    image_errors: list[dict[str, Any]]

    def worst_images(self, count: int) -> list[int]:
        """Indices of the ``count`` images with the most errors (false positives + missed boxes)."""
        ranked = sorted(
            (i for i, e in enumerate(self.image_errors) if e["fp"] + e["fn"] > 0),
            key=lambda i: (-(self.image_errors[i]["fp"] + self.image_errors[i]["fn"]), i),
        )
        return ranked[:count]


def box_iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of ``x1, y1, x2, y2`` boxes as COCO computes it (no +1 pixel); against a crowd region the union is
    the detection's own area."""
    if len(dets) == 0 or len(gts) == 0:
        return np.zeros((len(dets), len(gts)))
    x1 = np.maximum(dets[:, None, 0], gts[None, :, 0])
    y1 = np.maximum(dets[:, None, 1], gts[None, :, 1])
    x2 = np.minimum(dets[:, None, 2], gts[None, :, 2])
    y2 = np.minimum(dets[:, None, 3], gts[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_d = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    area_g = (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1])
    union = area_d[:, None] + area_g[None, :] - inter
    if crowd is not None and crowd.any():
        union = np.where(crowd[None, :], area_d[:, None], union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def _match(ious: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """COCOeval's greedy matching of score-sorted detections, per IoU threshold.

    Returns ``[T, D]``: the matched ground truth index, or -1. A detection prefers the unmatched regular box
    with the highest IoU; only without one may it fall on a crowd region (which can absorb many)."""
    num_dets, num_gts = ious.shape
    matched = np.full((len(IOU_THRESHOLDS), num_dets), -1, dtype=np.int64)
    if num_dets == 0 or num_gts == 0:
        return matched
    regular = ~crowd
    for t, threshold in enumerate(IOU_THRESHOLDS):
        threshold = min(threshold, 1 - 1e-10)
        taken = np.zeros(num_gts, dtype=bool)
        for d in range(num_dets):
            row = ious[d]
            candidates = regular & ~taken & (row >= threshold)
            if not candidates.any():
                candidates = crowd & (row >= threshold)
                if not candidates.any():
                    continue
            g = int(np.argmax(np.where(candidates, row, -1.0)))
            matched[t, d] = g
            if regular[g]:
                taken[g] = True
    return matched


def evaluate_detections(
    truths: Sequence[ImageTruth],
    predictions: Sequence[ImagePrediction],
    class_names: Sequence[str],
    *,
    score_threshold: float,
    max_detections: int = 100,
    min_score: float = 0.0,
) -> DetectionEvaluation:
    """Score detections against ground truth: COCO mAP plus precision/recall/F1, confusion matrix, errors.

    ``min_score`` is the lowest score the detector reports (its NMS score threshold): the best-F1 threshold
    when there is nothing to choose from."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} images of ground truth but {len(predictions)} of predictions")
    num_classes = len(class_names)
    num_t = len(IOU_THRESHOLDS)
    # Per class: the detections' scores, their match flags per IoU threshold, the ignore flags, and how many
    # regular (non-crowd) boxes there are.
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    hits: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    ignored: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    positives = np.zeros(num_classes, dtype=np.int64)
    images_with = np.zeros(num_classes, dtype=np.int64)
    confusion = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    image_errors: list[dict[str, Any]] = []

    for truth, pred in zip(truths, predictions, strict=True):
        tp = fp = fn = 0
        for k in range(num_classes):
            gt_mask = truth.labels == k
            gts, crowd = truth.boxes[gt_mask], truth.crowd[gt_mask]
            det_mask = pred.labels == k
            dets, det_scores = pred.boxes[det_mask][:max_detections], pred.scores[det_mask][:max_detections]
            regular = int((~crowd).sum())
            positives[k] += regular
            images_with[k] += int(regular > 0)
            if len(dets) == 0:
                fn += regular
                continue
            matched = _match(box_iou(dets, gts, crowd), crowd)
            on_crowd = np.where(matched >= 0, crowd[np.clip(matched, 0, None)] if len(gts) else False, False)
            scores[k].append(det_scores)
            hits[k].append((matched >= 0) & ~on_crowd)
            ignored[k].append(on_crowd)
            above = det_scores >= score_threshold
            true_pos = int((hits[k][-1][0] & above).sum())
            tp += true_pos
            fp += int((~hits[k][-1][0] & ~ignored[k][-1][0] & above).sum())
            fn += regular - true_pos
        _confuse(confusion, truth, pred, score_threshold, num_classes)
        image_errors.append({"image_id": truth.image_id, "file_name": truth.file_name, "tp": tp, "fp": fp, "fn": fn})

    precision = -np.ones((num_t, len(RECALL_POINTS), num_classes))
    recall = -np.ones((num_t, num_classes))
    per_class: dict[str, dict[str, Any]] = {}
    all_scores, all_hits = [], []
    total_tp = total_fp = 0
    for k, name in enumerate(class_names):
        s = np.concatenate(scores[k]) if scores[k] else np.zeros(0)
        h = np.concatenate(hits[k], axis=1) if hits[k] else np.zeros((num_t, 0), dtype=bool)
        ig = np.concatenate(ignored[k], axis=1) if ignored[k] else np.zeros((num_t, 0), dtype=bool)
        order = np.argsort(-s, kind="mergesort")
        s, h, ig = s[order], h[:, order], ig[:, order]
        above = s >= score_threshold
        class_tp = int((h[0] & above).sum())
        class_fp = int((~h[0] & ~ig[0] & above).sum())
        total_tp, total_fp = total_tp + class_tp, total_fp + class_fp
        keep = ~ig[0]
        all_scores.append(s[keep])
        all_hits.append(h[0][keep])
        entry: dict[str, Any] = {
            "boxes": int(positives[k]),
            "images": int(images_with[k]),
            "predictions": int(above.sum()),
            "ap_50": None,
            "ap_50_95": None,
            "precision": _ratio(class_tp, class_tp + class_fp),
            "recall": None,
            "f1": None,
        }
        if positives[k] > 0:
            for t in range(num_t):
                precision[t, :, k], recall[t, k] = _interpolated_precision(h[t], ig[t], positives[k])
            entry["ap_50"] = float(precision[0, :, k].mean())
            entry["ap_50_95"] = float(precision[:, :, k].mean())
            entry["recall"] = class_tp / positives[k]
            entry["f1"] = _f1(entry["precision"], entry["recall"])
        per_class[name] = entry

    valid = precision[:, :, positives > 0]
    total_positives = int(positives.sum())
    p_all = _ratio(total_tp, total_tp + total_fp)
    r_all = _ratio(total_tp, total_positives)
    return DetectionEvaluation(
        class_names=list(class_names),
        score_threshold=score_threshold,
        max_detections=max_detections,
        precision=precision,
        recall=recall,
        map_50=float(valid[0].mean()) if valid.size else 0.0,
        map_50_95=float(valid.mean()) if valid.size else 0.0,
        per_class=per_class,
        precision_at_threshold=p_all,
        recall_at_threshold=r_all,
        f1_at_threshold=_f1(p_all, r_all),
        best_f1=_best_f1(np.concatenate(all_scores), np.concatenate(all_hits), total_positives, min_score),
        confusion_matrix=confusion,
        image_errors=image_errors,
    )


def _interpolated_precision(hit: np.ndarray, ignore: np.ndarray, positives: int) -> tuple[np.ndarray, float]:
    """COCOeval.accumulate for one class and IoU threshold: precision at the 101 recall points."""
    tp = np.cumsum(hit & ~ignore).astype(np.float64)
    fp = np.cumsum(~hit & ~ignore).astype(np.float64)
    sampled = np.zeros(len(RECALL_POINTS))
    if len(tp) == 0:
        return sampled, 0.0
    rc = tp / positives
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope: best precision at any higher recall
    idx = np.searchsorted(rc, RECALL_POINTS, side="left")
    reachable = idx < len(pr)
    sampled[reachable] = pr[idx[reachable]]
    return sampled, float(rc[-1])


def _confuse(
    matrix: np.ndarray, truth: ImageTruth, pred: ImagePrediction, score_threshold: float, num_classes: int
) -> None:
    """Add one image to the confusion matrix: greedy class-agnostic matching by IoU (>= 0.50)."""
    regular = ~truth.crowd
    gts, gt_labels = truth.boxes[regular], truth.labels[regular]
    keep = pred.scores >= score_threshold
    dets, det_labels = pred.boxes[keep], pred.labels[keep]
    ious = box_iou(dets, gts)
    used_d = np.zeros(len(dets), dtype=bool)
    used_g = np.zeros(len(gts), dtype=bool)
    if ious.size:
        pairs = np.argwhere(ious >= MATCH_IOU)
        for d, g in pairs[np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="mergesort")]:
            if not used_d[d] and not used_g[g]:
                used_d[d] = used_g[g] = True
                matrix[gt_labels[g], det_labels[d]] += 1
    for g in np.flatnonzero(~used_g):
        matrix[gt_labels[g], num_classes] += 1
    for d in np.flatnonzero(~used_d):
        matrix[num_classes, det_labels[d]] += 1


def _best_f1(scores: np.ndarray, hits: np.ndarray, positives: int, min_score: float) -> dict[str, float]:
    """The score threshold that maximises F1 at IoU 0.50 over all classes, for choosing a deployment threshold."""
    if positives == 0 or len(scores) == 0:
        return {"score_threshold": min_score, "f1": 0.0, "precision": 0.0, "recall": 0.0}
    order = np.argsort(-scores, kind="mergesort")
    scores, hits = scores[order], hits[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(~hits)
    precision = tp / (tp + fp)
    recall = tp / positives
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    # Only cut where the score changes: equal scores cannot be separated by a threshold.
    last_of_score = np.r_[scores[1:] != scores[:-1], True]
    best = int(np.argmax(np.where(last_of_score, f1, -1.0)))
    return {
        "score_threshold": float(scores[best]),
        "f1": float(f1[best]),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
    }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


# -- COCO files ----------------------------------------------------------------------------------------------
def read_truths(coco: dict[str, Any], class_names: Sequence[str]) -> tuple[list[ImageTruth], dict[int, int]]:
    """Ground truth per image (sorted by image id, like COCOeval) and the class index -> category id map."""
    category_ids = {c["name"]: int(c["id"]) for c in coco["categories"]}
    missing = [n for n in class_names if n not in category_ids]
    if missing:
        raise StageInputError(f"classes {missing} are not categories of the annotation file ({sorted(category_ids)})")
    index_of = {category_ids[name]: k for k, name in enumerate(class_names)}
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in coco["annotations"]:
        if int(ann["category_id"]) in index_of:
            by_image.setdefault(int(ann["image_id"]), []).append(ann)
    truths = []
    for image in sorted(coco["images"], key=lambda i: int(i["id"])):
        anns = by_image.get(int(image["id"]), [])
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        truths.append(
            ImageTruth(
                image_id=int(image["id"]),
                file_name=str(image["file_name"]),
                width=int(image["width"]),
                height=int(image["height"]),
                boxes=np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]],
                labels=np.array([index_of[int(a["category_id"])] for a in anns], dtype=np.int64),
                crowd=np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            )
        )
    return truths, {k: category_ids[name] for k, name in enumerate(class_names)}


def coco_results(
    truths: Sequence[ImageTruth], predictions: Sequence[ImagePrediction], category_of: dict[int, int]
) -> list[dict[str, Any]]:
    """Detections in COCO results format (``loadRes``): image_id, category_id, bbox ``[x, y, w, h]``, score."""
    results = []
    for truth, pred in zip(truths, predictions, strict=True):
        for box, score, label in zip(pred.boxes, pred.scores, pred.labels, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append(
                {
                    "image_id": truth.image_id,
                    "category_id": category_of[int(label)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return results


def rounded(pred: ImagePrediction) -> ImagePrediction:
    """Predictions as written to predictions.json (boxes to 1/100 pixel, scores to 6 digits), so that the
    metrics are computed on exactly the numbers a user can re-score."""
    xywh = np.c_[pred.boxes[:, :2], pred.boxes[:, 2:] - pred.boxes[:, :2]].round(2)
    return ImagePrediction(np.c_[xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], pred.scores.round(6), pred.labels)


def metrics_document(result: DetectionEvaluation) -> dict[str, Any]:
    """The scores part of metrics.json (the caller adds split, thresholds, files)."""
    names = [*result.class_names, "background"]
    return {
        "map_50": result.map_50,
        "map_50_95": result.map_50_95,
        "precision": result.precision_at_threshold,
        "recall": result.recall_at_threshold,
        "f1": result.f1_at_threshold,
        "best_f1": result.best_f1,
        "per_class": result.per_class,
        "confusion_matrix": {
            "rows": "ground truth (background: false positives)",
            "columns": "prediction (background: missed boxes)",
            "labels": names,
            "matrix": result.confusion_matrix.tolist(),
        },
        "worst_images": [result.image_errors[i] for i in result.worst_images(WORST_IMAGES)],
    }
