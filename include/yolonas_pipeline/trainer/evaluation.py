"""``evaluate``: score a trained checkpoint on the test split (validation when there is none).

Writes under ``output_uri``::

    predictions.json     the model's detections in COCO results format (original image pixels)
    plots/*.png          per-class precision-recall curves, confusion matrix, sample predictions
    onnx/*.onnx          only with ``export_onnx``: the model with and without NMS, checked in onnxruntime
    metrics.json         written last: mAP@0.50, mAP@0.50:0.95, precision, recall, F1, per-class AP and
                         counts, the confusion matrix, the thresholds used and the names of the files above

The scores are computed here by :func:`evaluate_detections`, which follows ``pycocotools``' COCOeval
(101-point interpolated AP, IoU 0.50:0.05:0.95, at most ``max_predictions`` detections per image and
class, greedy matching by score); the tests check the two agree on the same ``predictions.json``. A retry
after ``metrics.json`` exists does nothing.

Only :func:`run_evaluate` needs torch and super-gradients (imported inside it); the scoring functions are
plain numpy, so the Airflow-side tests import them too.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.evaluate import METRICS_FILE, PREDICTIONS_FILE
from yolonas_pipeline.storage import Storage, join_uri

#: COCOeval's IoU thresholds (0.50:0.05:0.95) and recall points (0:0.01:1).
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: IoU at which a detection counts as correct for precision, recall, F1, the confusion matrix and errors.
MATCH_IOU = 0.5
#: Detections below this score never leave NMS: low enough that AP sees the whole ranking (as COCO's 0.001
#: would), high enough that an untrained model does not flood the results file.
NMS_SCORE_THRESHOLD = 0.01
NMS_TOP_K = 1000
#: Sample images drawn in the predictions grid: the worst ones by error first, then the first others.
WORST_IMAGES = 6
SAMPLE_IMAGES = 12


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
) -> DetectionEvaluation:
    """Score detections against ground truth: COCO mAP plus precision/recall/F1, confusion matrix, errors."""
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
        best_f1=_best_f1(np.concatenate(all_scores), np.concatenate(all_hits), total_positives),
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


def _best_f1(scores: np.ndarray, hits: np.ndarray, positives: int) -> dict[str, float]:
    """The score threshold that maximises F1 at IoU 0.50 over all classes, for choosing a deployment threshold."""
    if positives == 0 or len(scores) == 0:
        return {"score_threshold": NMS_SCORE_THRESHOLD, "f1": 0.0, "precision": 0.0, "recall": 0.0}
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
                labels=[index_of[int(a["category_id"])] for a in anns],
                crowd=[bool(a.get("iscrowd", 0)) for a in anns],
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


# -- the command ---------------------------------------------------------------------------------------------
def run_evaluate(request: Any, *, work_dir: Path, storage: Storage) -> dict[str, Any]:
    """Run the ``evaluate`` command for an :class:`~yolonas_pipeline.trainer_command.EvaluateRequest`."""
    from yolonas_pipeline.trainer.runtime import log

    metrics_uri = join_uri(request.output_uri, METRICS_FILE)
    if storage.exists(metrics_uri):
        log(f"evaluation already complete: {metrics_uri} exists; nothing to do")
        return json.loads(storage.read_text(metrics_uri))

    import torch
    from super_gradients.training.utils.distributed_training_utils import setup_device

    from yolonas_pipeline.trainer import data

    started = time.monotonic()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup_device(device=device)
    dataset_dir = work_dir / "dataset"
    storage.download_tree(request.dataset_uri, dataset_dir)
    manifest = data.read_manifest(dataset_dir)
    class_names = [str(name) for name in manifest["class_names"]]
    if len(class_names) != request.num_classes:
        raise StageInputError(
            f"num_classes={request.num_classes} but the dataset at {request.dataset_uri} has {len(class_names)} classes"
        )
    split = data.eval_split(manifest, request.split)
    entry = manifest["splits"][split]
    coco = json.loads((dataset_dir / entry["annotation_file"]).read_text())
    truths, category_of = read_truths(coco, class_names)
    if not truths:
        raise StageInputError(f"split {split!r} of {request.dataset_uri} has no images to evaluate on")
    images_dir = dataset_dir / entry["images_dir"]

    checkpoint_path = work_dir / "evaluated.pth"
    storage.download_file(request.checkpoint_uri, checkpoint_path)
    model = load_model(request.model_name, request.num_classes, checkpoint_path, device=device)
    log(f"evaluating {request.checkpoint_uri} on {split} ({len(truths)} images) on {device}")
    predictions = [
        rounded(p)
        for p in predict(
            model,
            [images_dir / t.file_name for t in truths],
            input_size=request.input_size,
            batch_size=request.batch_size,
            iou_threshold=request.iou_threshold,
            max_predictions=request.max_predictions,
            device=device,
            workers=request.workers,
        )
    ]
    result = evaluate_detections(
        truths,
        predictions,
        class_names,
        score_threshold=request.score_threshold,
        max_detections=request.max_predictions,
    )

    out_dir = work_dir / "evaluate_out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PREDICTIONS_FILE).write_text(json.dumps(coco_results(truths, predictions, category_of)))
    files = [PREDICTIONS_FILE]
    from yolonas_pipeline.trainer import plots

    plot_files = plots.write_plots(
        result,
        truths,
        predictions,
        images_dir=images_dir,
        out_dir=out_dir / "plots",
        worst=WORST_IMAGES,
        samples=SAMPLE_IMAGES,
    )
    files += [f"plots/{name}" for name in plot_files.values()]
    onnx_report = None
    if request.export_onnx:
        from yolonas_pipeline.trainer import export

        onnx_report = export.export_onnx(
            model,
            out_dir=out_dir / "onnx",
            # The image with the most boxes: the comparison then covers the most detections.
            sample_image=images_dir / max(truths, key=lambda t: len(t.labels)).file_name,
            input_size=request.input_size,
            score_threshold=NMS_SCORE_THRESHOLD,
            iou_threshold=request.iou_threshold,
            max_predictions=request.max_predictions,
        )
        files += [f"onnx/{name}" for name in onnx_report["files"].values()]
        log(export.summary_line(onnx_report))
    storage.upload_tree(out_dir, request.output_uri, files=files)

    metrics = metrics_document(result)
    champion = None
    if request.champion_uri:
        champion = rescore_champion(
            request,
            truths=truths,
            images_dir=images_dir,
            class_names=class_names,
            split=split,
            fingerprint=manifest.get("fingerprint"),
            work_dir=work_dir,
            storage=storage,
            device=device,
        )
    metrics.update(
        {
            "split": split,
            "images": len(truths),
            "class_names": class_names,
            "dataset_uri": request.dataset_uri,
            "dataset_fingerprint": manifest.get("fingerprint"),
            "checkpoint_uri": request.checkpoint_uri,
            "model_name": request.model_name,
            "input_size": request.input_size,
            "thresholds": {
                "score_threshold": request.score_threshold,
                "match_iou": MATCH_IOU,
                "map_iou_thresholds": [round(float(t), 2) for t in IOU_THRESHOLDS],
                "nms_iou_threshold": request.iou_threshold,
                "nms_score_threshold": NMS_SCORE_THRESHOLD,
                "max_predictions": request.max_predictions,
            },
            "predictions": PREDICTIONS_FILE,
            "plots": {key: f"plots/{name}" for key, name in plot_files.items()},
            "onnx": onnx_report,
            "champion": champion,
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "gpus": 1 if device == "cuda" else 0,
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    storage.write_text(metrics_uri, json.dumps(metrics, indent=2))
    log(
        f"evaluation on {split} ({len(truths)} images): mAP@0.50={metrics['map_50']:.4f} "
        f"mAP@0.50:0.95={metrics['map_50_95']:.4f} precision={metrics['precision']:.4f} "
        f"recall={metrics['recall']:.4f} f1={metrics['f1']:.4f} (score >= {request.score_threshold})"
    )
    for name, entry in result.per_class.items():
        if entry["ap_50_95"] is not None:
            log(f"  {name}: AP@0.50={entry['ap_50']:.4f} AP@0.50:0.95={entry['ap_50_95']:.4f} boxes={entry['boxes']}")
    log(f"metrics, predictions and plots at {request.output_uri}")
    return metrics


def rescore_champion(
    request: Any,
    *,
    truths: Sequence[ImageTruth],
    images_dir: Path,
    class_names: list[str],
    split: str,
    fingerprint: str | None,
    work_dir: Path,
    storage: Storage,
    device: str,
) -> dict[str, Any] | None:
    """Score the current champion (``request.champion_uri``) on the same images, for the promotion gate.

    ``None`` without a champion; ``{"bundle_uri", "reason"}`` when it cannot be compared (other classes,
    incomplete bundle, checksum mismatch)."""
    from yolonas_pipeline.promote import read_champion
    from yolonas_pipeline.storage import sha256_file
    from yolonas_pipeline.trainer.runtime import log

    pointer, _ = read_champion(request.champion_uri, storage=storage)
    if pointer is None:
        log(f"no champion at {request.champion_uri}: nothing to compare with")
        return None
    bundle = str(pointer.get("bundle_uri"))
    base: dict[str, Any] = {
        "bundle_uri": bundle,
        "run_id": pointer.get("run_id"),
        "split": split,
        "dataset_fingerprint": fingerprint,
    }
    if list(pointer.get("class_names") or []) != class_names:
        reason = f"the champion's classes {pointer.get('class_names')} are not this dataset's {class_names}"
        log(f"champion {bundle}: {reason}")
        return {**base, "reason": reason}
    try:
        bundle_manifest = json.loads(storage.read_text(join_uri(bundle, "manifest.json")))
        expected = bundle_manifest["files"]["model.pth"]["sha256"]
    except (FileNotFoundError, KeyError):
        return {**base, "reason": f"the champion bundle {bundle} has no complete manifest listing model.pth"}
    local = work_dir / "champion.pth"
    storage.download_file(join_uri(bundle, "model.pth"), local)
    if sha256_file(local) != expected:
        return {**base, "reason": f"{bundle}/model.pth does not match the SHA-256 in its manifest"}
    model_name = str(pointer.get("model_name") or bundle_manifest.get("model_name"))
    input_size = int(pointer.get("input_size") or bundle_manifest.get("input_size") or request.input_size)
    model = load_model(model_name, len(class_names), local, device=device)
    log(f"scoring the champion {bundle} ({model_name}, input {input_size}) on {split} for the promotion gate")
    predictions = [
        rounded(p)
        for p in predict(
            model,
            [images_dir / t.file_name for t in truths],
            input_size=input_size,
            batch_size=request.batch_size,
            iou_threshold=request.iou_threshold,
            max_predictions=request.max_predictions,
            device=device,
            workers=request.workers,
        )
    ]
    scored = evaluate_detections(
        truths,
        predictions,
        class_names,
        score_threshold=request.score_threshold,
        max_detections=request.max_predictions,
    )
    log(f"champion on {split}: mAP@0.50={scored.map_50:.4f} mAP@0.50:0.95={scored.map_50_95:.4f}")
    return {
        **base,
        "model_name": model_name,
        "input_size": input_size,
        "model_sha256": expected,
        "map_50": scored.map_50,
        "map_50_95": scored.map_50_95,
        "precision": scored.precision_at_threshold,
        "recall": scored.recall_at_threshold,
        "f1": scored.f1_at_threshold,
        "per_class": {
            name: {"ap_50": entry["ap_50"], "ap_50_95": entry["ap_50_95"], "boxes": entry["boxes"]}
            for name, entry in scored.per_class.items()
        },
    }


def load_model(model_name: str, num_classes: int, checkpoint_path: Path, *, device: str) -> Any:
    from super_gradients.common.object_names import Models
    from super_gradients.training import models

    model = models.get(
        getattr(Models, model_name.upper()), num_classes=num_classes, checkpoint_path=str(checkpoint_path)
    )
    return model.to(device).eval()


def letterbox(image_bgr: np.ndarray, input_size: int) -> tuple[np.ndarray, float]:
    """The evaluation transform (super-gradients' DetectionPaddedRescale): scale the longer side to
    ``input_size``, pad bottom and right with 114. Returns the uint8 HWC image and the scale."""
    import cv2

    height, width = image_bgr.shape[:2]
    scale = min(input_size / height, input_size / width)
    resized = cv2.resize(image_bgr, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_LINEAR)
    padded = np.full((input_size, input_size, 3), 114, dtype=np.uint8)
    padded[: resized.shape[0], : resized.shape[1]] = resized
    return padded, scale


def read_image(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path))  # BGR, as the training datasets load it
    if image is None:
        raise StageInputError(f"cannot read image {path}")
    return image


def postprocess(iou_threshold: float, max_predictions: int) -> Any:
    from super_gradients.training.models.detection_models.pp_yolo_e import PPYoloEPostPredictionCallback

    return PPYoloEPostPredictionCallback(
        score_threshold=NMS_SCORE_THRESHOLD,
        nms_top_k=NMS_TOP_K,
        max_predictions=max_predictions,
        nms_threshold=iou_threshold,
    )


def predict(
    model: Any,
    paths: Sequence[Path],
    *,
    input_size: int,
    batch_size: int,
    iou_threshold: float,
    max_predictions: int,
    device: str,
    workers: int = 0,
) -> list[ImagePrediction]:
    """The model's detections per image, in original image pixels, exactly as the validation loop scores them
    (same letterbox, same standardisation, same NMS). ``workers``: image-reading threads (0: auto)."""
    callback = postprocess(iou_threshold, max_predictions)

    def prepare(path: Path) -> tuple[np.ndarray, float, tuple[int, int]]:
        image = read_image(path)
        padded, scale = letterbox(image, input_size)
        return padded.transpose(2, 0, 1).astype(np.float32) / 255.0, scale, image.shape[:2]

    out: list[ImagePrediction] = []
    # JPEG decoding and resizing (OpenCV releases the GIL) in threads, so a GPU is not left waiting.
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), batch_size):
            prepared = list(pool.map(prepare, paths[start : start + batch_size]))
            batch = [p[0] for p in prepared]
            scales = [p[1] for p in prepared]
            sizes = [p[2] for p in prepared]
            out.extend(_detect(model, callback, batch, scales, sizes, device))
    return out


def _detect(
    model: Any,
    callback: Any,
    batch: list[np.ndarray],
    scales: list[float],
    sizes: list[tuple[int, int]],
    device: str,
) -> list[ImagePrediction]:
    import torch

    with torch.no_grad():
        raw = model(torch.from_numpy(np.stack(batch)).to(device))
        detections = callback(raw)
    out: list[ImagePrediction] = []
    for det, scale, (height, width) in zip(detections, scales, sizes, strict=True):
        det = det.detach().cpu().numpy().astype(np.float64)
        boxes = det[:, :4] / scale
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        out.append(ImagePrediction(boxes, det[:, 4], det[:, 5].astype(np.int64)))
    return out
