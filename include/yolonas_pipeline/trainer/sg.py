"""The one door into super-gradients' models: building a YOLO-NAS model, its NMS (post-prediction callback)
and the preprocessing its validation transforms define. Training, evaluation and export all go through here,
so the model the validation loop scores is the one evaluation and export see.

NMS runs with one set of limits (:data:`SCORE_THRESHOLD`, :data:`IOU_THRESHOLD`, :data:`TOP_K`,
:data:`MAX_PREDICTIONS`); a caller that needs other values (the evaluate request's IoU and maxDets) passes
them explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, cast

import cv2
import numpy as np
import torch
from super_gradients.training import models
from super_gradients.training.models.detection_models.customizable_detector import CustomizableDetector
from super_gradients.training.models.detection_models.pp_yolo_e import PPYoloEPostPredictionCallback
from super_gradients.training.processing.processing import ComposeProcessing, ReverseImageChannels

from yolonas_pipeline.contracts import ModelName
from yolonas_pipeline.errors import StageInputError

#: Detections below this score never leave NMS: low enough that AP sees the whole ranking (as COCO's 0.001
#: would), high enough that an untrained model does not flood the results file.
SCORE_THRESHOLD = 0.01
#: NMS IoU: boxes of one class overlapping a more confident one by more than this are dropped.
IOU_THRESHOLD = 0.7
#: Anchors (best class score first) that enter NMS.
TOP_K = 1000
#: Detections kept per image after NMS.
MAX_PREDICTIONS = 300
#: The letterbox's padding (bottom and right) and the value the pixels are divided by: super-gradients'
#: ``DetectionPaddedRescale`` and ``DetectionStandardize(max_value=255)``, as the validation transforms use them.
PAD_VALUE = 114
MAX_PIXEL = 255.0
ChannelOrder = Literal["RGB", "BGR"]
#: The channel order the model is trained and evaluated on: the COCO weights' (see
#: :func:`yolonas_pipeline.trainer.data.to_model_channels`). Images are decoded as BGR.
MODEL_CHANNELS: ChannelOrder = "RGB"


def build_model(
    model_name: ModelName,
    *,
    num_classes: int,
    checkpoint_path: Path | None = None,
    checkpoint_num_classes: int | None = None,
) -> CustomizableDetector:
    """A YOLO-NAS model with ``num_classes`` outputs: random weights, or a checkpoint's (its EMA weights when it
    has them); a checkpoint with another class count (``checkpoint_num_classes``) gets a new head."""
    model = models.get(
        model_name,
        num_classes=num_classes,
        checkpoint_path=str(checkpoint_path) if checkpoint_path else None,
        checkpoint_num_classes=checkpoint_num_classes,
    )
    return cast(CustomizableDetector, model)


def load_trained(
    model_name: ModelName, num_classes: int, checkpoint_path: Path, *, device: str
) -> CustomizableDetector:
    """A trained checkpoint on ``device``, in eval mode."""
    model = build_model(model_name, num_classes=num_classes, checkpoint_path=checkpoint_path)
    return cast(CustomizableDetector, model.to(device).eval())


def post_prediction_callback(
    *,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = IOU_THRESHOLD,
    top_k: int = TOP_K,
    max_predictions: int = MAX_PREDICTIONS,
) -> PPYoloEPostPredictionCallback:
    """YOLO-NAS's NMS: per image, ``[N, 6]`` rows ``x1, y1, x2, y2, score, class`` in input pixels."""
    return PPYoloEPostPredictionCallback(
        score_threshold=score_threshold, nms_threshold=iou_threshold, nms_top_k=top_k, max_predictions=max_predictions
    )


def decode(model: CustomizableDetector, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's decoded outputs before NMS: boxes ``[B, anchors, 4]`` (x1, y1, x2, y2 input pixels) and
    class scores ``[B, anchors, classes]``."""
    with torch.no_grad():
        boxes, scores = post_prediction_callback()._get_decoded_predictions_from_model_output(model.eval()(batch))
    return boxes, scores


def read_image(path: Path) -> np.ndarray:
    """A BGR uint8 image, as super-gradients' datasets load it."""
    image = cv2.imread(str(path))
    if image is None:
        raise StageInputError(f"cannot read image {path}")
    return image


def letterbox(image_bgr: np.ndarray, input_size: int) -> tuple[np.ndarray, float]:
    """The validation transform's geometry (``DetectionPaddedRescale``): scale the longer side to ``input_size``,
    pad bottom and right with :data:`PAD_VALUE`. Returns the uint8 HWC image and the scale."""
    height, width = image_bgr.shape[:2]
    scale = min(input_size / height, input_size / width)
    resized = cv2.resize(image_bgr, (int(width * scale), int(height * scale)), interpolation=cv2.INTER_LINEAR)
    padded = np.full((input_size, input_size, 3), PAD_VALUE, dtype=np.uint8)
    padded[: resized.shape[0], : resized.shape[1]] = resized
    return padded, scale


def channel_order(model: CustomizableDetector) -> ChannelOrder:
    """The channel order ``model`` was trained on, read from the preprocessing its validation transforms left
    in it (``processing_params``): that pipeline takes RGB images (PIL's order) and each
    ``ReverseImageChannels`` in it swaps them. Checkpoints trained before the pipeline swapped to RGB say BGR,
    so they are still fed what they learnt on. A model without preprocessing (fresh or COCO weights): RGB."""
    processor = model.get_processing_params()
    if processor is None:
        return "RGB"
    steps = processor.processings if isinstance(processor, ComposeProcessing) else [processor]
    swaps = sum(isinstance(step, ReverseImageChannels) for step in steps)
    return "BGR" if swaps % 2 else "RGB"


def normalise(padded_bgr: np.ndarray, channels: ChannelOrder = MODEL_CHANNELS) -> np.ndarray:
    """A letterboxed uint8 HWC BGR image as the model's input: in ``channels`` order (the validation transforms'
    ``DetectionRGB2BGR``), float32 CHW in [0, 1] (``DetectionStandardize``)."""
    ordered = padded_bgr[:, :, ::-1] if channels == "RGB" else padded_bgr
    return ordered.transpose(2, 0, 1).astype(np.float32) / MAX_PIXEL


def input_batch(images: Sequence[np.ndarray], device: str | torch.device) -> torch.Tensor:
    """:func:`normalise`'d images as one NCHW batch on ``device``."""
    return torch.from_numpy(np.stack(list(images))).to(device)
