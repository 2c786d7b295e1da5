"""A trained model's detections on a split's images, scored: what the evaluate command and champion re-scoring
both run, so the two are measured the same way."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from super_gradients.training.models.detection_models.customizable_detector import CustomizableDetector
from super_gradients.training.models.detection_models.pp_yolo_e import PPYoloEPostPredictionCallback

from yolonas_pipeline.trainer import sg
from yolonas_pipeline.trainer.scoring import (
    DetectionEvaluation,
    ImagePrediction,
    ImageTruth,
    evaluate_detections,
    rounded,
)


@dataclass(frozen=True)
class ScoringOptions:
    """How detections are made and counted (the evaluate request's thresholds)."""

    score_threshold: float
    iou_threshold: float = sg.IOU_THRESHOLD
    max_predictions: int = 100
    batch_size: int = 16
    workers: int = 0


def predict(
    model: CustomizableDetector,
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
    (same letterbox, same channel order, same standardisation, same NMS). ``workers``: image-reading threads
    (0: auto)."""
    callback = sg.post_prediction_callback(iou_threshold=iou_threshold, max_predictions=max_predictions)
    # The order the model's own preprocessing records: a champion trained before the RGB swap still gets BGR.
    channels = sg.channel_order(model)

    def prepare(path: Path) -> tuple[np.ndarray, float, tuple[int, int]]:
        image = sg.read_image(path)
        padded, scale = sg.letterbox(image, input_size)
        return sg.normalise(padded, channels), scale, (image.shape[0], image.shape[1])

    out: list[ImagePrediction] = []
    # JPEG decoding and resizing (OpenCV releases the GIL) in threads, so a GPU is not left waiting.
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for start in range(0, len(paths), batch_size):
            prepared = list(pool.map(prepare, paths[start : start + batch_size]))
            out.extend(
                _detect(
                    model,
                    callback,
                    [p[0] for p in prepared],
                    [p[1] for p in prepared],
                    [p[2] for p in prepared],
                    device,
                )
            )
    return out


def _detect(
    model: CustomizableDetector,
    callback: PPYoloEPostPredictionCallback,
    batch: list[np.ndarray],
    scales: list[float],
    sizes: list[tuple[int, int]],
    device: str,
) -> list[ImagePrediction]:
    with torch.no_grad():
        detections = callback(model(sg.input_batch(batch, device)))
    out: list[ImagePrediction] = []
    for det, scale, (height, width) in zip(detections, scales, sizes, strict=True):
        rows = det.detach().cpu().numpy().astype(np.float64)
        boxes = rows[:, :4] / scale
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
        out.append(ImagePrediction(boxes, rows[:, 4], rows[:, 5].astype(np.int64)))
    return out


def predict_and_score(
    model: CustomizableDetector,
    truths: Sequence[ImageTruth],
    *,
    images_dir: Path,
    class_names: Sequence[str],
    input_size: int,
    options: ScoringOptions,
    device: str,
) -> tuple[list[ImagePrediction], DetectionEvaluation]:
    """Detections on every image of ``truths`` (rounded as predictions.json stores them) and their scores."""
    predictions = [
        rounded(p)
        for p in predict(
            model,
            [images_dir / t.file_name for t in truths],
            input_size=input_size,
            batch_size=options.batch_size,
            iou_threshold=options.iou_threshold,
            max_predictions=options.max_predictions,
            device=device,
            workers=options.workers,
        )
    ]
    result = evaluate_detections(
        truths,
        predictions,
        class_names,
        score_threshold=options.score_threshold,
        max_detections=options.max_predictions,
        min_score=sg.SCORE_THRESHOLD,
    )
    return predictions, result
