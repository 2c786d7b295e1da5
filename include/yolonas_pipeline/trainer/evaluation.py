"""``evaluate``: score the trained model on the test split (validation when there is none).

The model (architecture, classes, input size, best checkpoint) is the one the train stage's ``result.json``
(:class:`~yolonas_pipeline.contracts.TrainResult`) describes. Writes under ``output_uri``::

    predictions.json     the model's detections in COCO results format (original image pixels)
    plots/*.png          per-class precision-recall curves, confusion matrix, sample predictions
    onnx/*.onnx          only with ``export_onnx``: the model with and without NMS, checked in onnxruntime
    metrics.json         written last (:class:`~yolonas_pipeline.contracts.Metrics`): mAP@0.50, mAP@0.50:0.95,
                         precision, recall, F1, per-class AP and counts, the confusion matrix, the thresholds
                         used, the champion's scores on the same split and the names of the files above

The scores come from :mod:`yolonas_pipeline.trainer.scoring`. A retry after ``metrics.json`` exists does nothing.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from super_gradients.training.utils.distributed_training_utils import setup_device

from yolonas_pipeline.contracts import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    EvaluateRequest,
    Metrics,
    TrainResult,
)
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage, join_uri
from yolonas_pipeline.trainer import data, export, plots, sg
from yolonas_pipeline.trainer.champion import rescore_champion
from yolonas_pipeline.trainer.inference import ScoringOptions, predict_and_score
from yolonas_pipeline.trainer.scoring import (
    IOU_THRESHOLDS,
    MATCH_IOU,
    WORST_IMAGES,
    coco_results,
    metrics_document,
    read_truths,
)

log = logging.getLogger(__name__)

#: Sample images drawn in the predictions grid: the worst ones by error first, then the first others.
SAMPLE_IMAGES = 12


def run_evaluate(request: EvaluateRequest, *, work_dir: Path, storage: Storage) -> Metrics:
    """Run the ``evaluate`` command; returns the metrics document it wrote (or found)."""
    metrics_uri = join_uri(request.output_uri, METRICS_FILE)
    if storage.exists(metrics_uri):
        log.info("evaluation already complete: %s exists; nothing to do", metrics_uri)
        return Metrics.read(metrics_uri, storage=storage)

    started = time.monotonic()
    trained = TrainResult.read(request.train_result_uri, storage=storage)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup_device(device=device)
    dataset_dir = work_dir / "dataset"
    storage.download_tree(request.dataset_uri, dataset_dir)
    manifest = data.read_manifest(dataset_dir)
    class_names = [str(name) for name in manifest.class_names]
    if class_names != list(trained.class_names):
        raise StageInputError(
            f"the model at {request.train_result_uri} was trained on the classes {trained.class_names}, but the "
            f"dataset at {request.dataset_uri} has {class_names}"
        )
    split = data.eval_split(manifest, request.split)
    files = manifest.split(split)
    coco = json.loads((dataset_dir / files.annotation_file).read_text())
    truths, category_of = read_truths(coco, class_names)
    if not truths:
        raise StageInputError(f"split {split!r} of {request.dataset_uri} has no images to evaluate on")
    images_dir = dataset_dir / files.images_dir
    options = ScoringOptions(
        score_threshold=request.score_threshold,
        iou_threshold=request.iou_threshold,
        max_predictions=request.max_predictions,
        batch_size=request.batch_size,
        workers=request.workers,
    )

    checkpoint_path = work_dir / "evaluated.pth"
    storage.download_file(trained.best_checkpoint_uri, checkpoint_path)
    model = sg.load_trained(trained.model_name, trained.num_classes, checkpoint_path, device=device)
    log.info("evaluating %s on %s (%d images) on %s", trained.best_checkpoint_uri, split, len(truths), device)
    predictions, result = predict_and_score(
        model,
        truths,
        images_dir=images_dir,
        class_names=class_names,
        input_size=trained.input_size,
        options=options,
        device=device,
    )

    out_dir = work_dir / "evaluate_out"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PREDICTIONS_FILE).write_text(json.dumps(coco_results(truths, predictions, category_of)))
    uploads = [PREDICTIONS_FILE]
    plot_files = plots.write_plots(
        result,
        truths,
        predictions,
        images_dir=images_dir,
        out_dir=out_dir / "plots",
        worst=WORST_IMAGES,
        samples=SAMPLE_IMAGES,
    )
    uploads += [f"plots/{name}" for name in plot_files.values()]
    onnx_report = None
    if request.export_onnx:
        onnx_report = export.export_onnx(
            model,
            out_dir=out_dir / "onnx",
            # The image with the most boxes: the comparison then covers the most detections.
            sample_image=images_dir / max(truths, key=lambda t: len(t.labels)).file_name,
            input_size=trained.input_size,
            score_threshold=sg.SCORE_THRESHOLD,
            iou_threshold=request.iou_threshold,
            max_predictions=request.max_predictions,
        )
        uploads += [f"onnx/{name}" for name in onnx_report["files"].values()]
        log.info("%s", export.summary_line(onnx_report))
    storage.upload_tree(out_dir, request.output_uri, files=uploads)

    champion = None
    if request.champion_uri:
        champion = rescore_champion(
            request.champion_uri,
            truths=truths,
            images_dir=images_dir,
            class_names=class_names,
            split=split,
            fingerprint=manifest.fingerprint,
            options=options,
            work_dir=work_dir,
            storage=storage,
            device=device,
        )
    metrics = Metrics.parse(
        {
            **metrics_document(result),
            "split": split,
            "images": len(truths),
            "class_names": class_names,
            "dataset_uri": request.dataset_uri,
            "dataset_fingerprint": manifest.fingerprint,
            "checkpoint_uri": trained.best_checkpoint_uri,
            "model_name": trained.model_name,
            "input_size": trained.input_size,
            "thresholds": {
                "score_threshold": request.score_threshold,
                "match_iou": MATCH_IOU,
                "map_iou_thresholds": [round(float(t), 2) for t in IOU_THRESHOLDS],
                "nms_iou_threshold": request.iou_threshold,
                "nms_score_threshold": sg.SCORE_THRESHOLD,
                "max_predictions": request.max_predictions,
            },
            "predictions": PREDICTIONS_FILE,
            "plots": {key: f"plots/{name}" for key, name in plot_files.items()},
            "onnx": onnx_report,
            "champion": champion,
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "gpus": 1 if device == "cuda" else 0,
            "seconds": round(time.monotonic() - started, 1),
        },
        source="the evaluation's metrics",
    )
    metrics.write(metrics_uri, storage=storage)
    log.info(
        "evaluation on %s (%d images, score >= %s)", metrics.summary_line(), metrics.images, request.score_threshold
    )
    for name, entry in metrics.per_class.items():
        if entry.ap_50_95 is not None:
            log.info("  %s: AP@0.50=%.4f AP@0.50:0.95=%.4f boxes=%d", name, entry.ap_50, entry.ap_50_95, entry.boxes)
    log.info("metrics, predictions and plots at %s", request.output_uri)
    return metrics
