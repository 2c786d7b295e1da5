"""ONNX export of a trained YOLO-NAS model, with and without NMS, checked in onnxruntime against PyTorch.

Both files take one ``uint8`` RGB image, NCHW, already letterboxed to ``input_size`` (scale the longer side,
pad bottom and right with 114, as :func:`yolonas_pipeline.trainer.sg.letterbox`); the division by 255 and
any channel swap are inside the graph. The graph's preprocessing is the one the model's validation transforms
recorded (super-gradients' ``processing_params``: an RGB input, reversed for each ``DetectionRGB2BGR``), so
a model trained on RGB (:data:`yolonas_pipeline.trainer.sg.MODEL_CHANNELS`) gets no swap at all; the report
records both orders (``input.channels``, ``input.model_channels``).

- ``model.onnx``: raw decoded outputs ``boxes [1, anchors, 4]`` (x1, y1, x2, y2 input pixels) and
  ``scores [1, anchors, classes]``; NMS is the caller's.
- ``model_nms.onnx``: NMS included; one output ``detections [N, 7]``: image index, x1, y1, x2, y2, score,
  class, most confident first (see :func:`_confident_first_flat_nms` for the upstream bug this fixes).

Each export is run in onnxruntime on a sample image and compared with the PyTorch model on the same input:
raw outputs element-wise, NMS outputs box by box (see :func:`compare_nms`). The result is in the returned
report; a mismatch raises, so a model that does not survive export is never published.

super-gradients' exporter needs ``onnx_graphsurgeon`` and, when it is missing, pip-installs it from
NVIDIA's index at run time; this module refuses instead (it comes from the trainer lock file). The
``dynamo=False`` default for ``torch.onnx.export`` comes from :func:`yolonas_pipeline.trainer.compat.apply`.

The comparisons are plain numpy (the Airflow-side tests import them); torch and super-gradients are imported
inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import sha256_file
from yolonas_pipeline.trainer.scoring import box_iou

if TYPE_CHECKING:
    from super_gradients.training.models.detection_models.customizable_detector import CustomizableDetector

RAW_FILE = "model.onnx"
NMS_FILE = "model_nms.onnx"
OPSET = 17
#: Agreement required between onnxruntime and PyTorch.
MAX_BOX_DIFF_PX = 0.5
MAX_SCORE_DIFF = 1e-3
MIN_IOU = 0.99
#: float32 IoUs computed by onnxruntime and by PyTorch can fall on either side of the NMS threshold when a pair
#: of boxes overlaps by almost exactly that much; such a pair may be suppressed on one side only.
IOU_TOLERANCE = 1e-3


class ExportMismatchError(RuntimeError):
    """The exported model's outputs differ from PyTorch's beyond the tolerances."""


def export_onnx(
    model: CustomizableDetector,
    *,
    out_dir: Path,
    sample_image: Path | np.ndarray,
    input_size: int,
    score_threshold: float,
    iou_threshold: float,
    max_predictions: int,
    simplify: bool = True,
) -> dict[str, Any]:
    """Export ``model`` to ``out_dir/model.onnx`` and ``out_dir/model_nms.onnx`` and verify both.

    :param sample_image: BGR image (or its path) to compare outputs on.
    :return: ``{"files": {"raw": ..., "nms": ...}, "sha256": {...}, "input": {...}, "check": {...}, ...}``.
    """
    _require_graphsurgeon()
    from super_gradients.conversion import DetectionOutputFormatMode

    from yolonas_pipeline.trainer import sg

    out_dir.mkdir(parents=True, exist_ok=True)
    # Exported and compared on the CPU: a GPU's TF32 convolutions would blur the comparison with onnxruntime.
    model = copy.deepcopy(model).to("cpu").eval()
    image = sg.read_image(sample_image) if isinstance(sample_image, Path) else sample_image
    padded_bgr, _ = sg.letterbox(image, input_size)
    model_channels = sg.channel_order(model)
    reference = torch_reference(
        model, padded_bgr, score_threshold, iou_threshold, max_predictions, channels=model_channels
    )

    started = time.monotonic()
    common: dict[str, Any] = {
        "preprocessing": True,
        "input_image_shape": (input_size, input_size),
        "batch_size": 1,
        "onnx_simplify": simplify,
        "device": "cpu",
    }
    raw_path, nms_path = out_dir / RAW_FILE, out_dir / NMS_FILE
    model.export(
        str(raw_path),
        postprocessing=False,
        onnx_export_kwargs={"opset_version": OPSET, "output_names": ["boxes", "scores"]},
        **common,
    )
    with _confident_first_flat_nms():
        model.export(
            str(nms_path),
            postprocessing=True,
            confidence_threshold=score_threshold,
            nms_threshold=iou_threshold,
            max_predictions_per_image=max_predictions,
            num_pre_nms_predictions=sg.TOP_K,
            output_predictions_format=DetectionOutputFormatMode.FLAT_FORMAT,
            onnx_export_kwargs={"opset_version": OPSET},
            **common,
        )
    export_seconds = time.monotonic() - started

    rgb_nchw = padded_bgr[:, :, ::-1].transpose(2, 0, 1)[None].copy()
    raw_check = compare_raw(run_onnx(raw_path, rgb_nchw), reference["raw"])
    nms_check = compare_nms(
        run_onnx(nms_path, rgb_nchw)[0],
        reference["detections"],
        reference["raw"],
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        max_predictions=max_predictions,
    )
    checks: dict[str, dict[str, Any]] = {"raw": raw_check, "nms": nms_check}
    report: dict[str, Any] = {
        "files": {"raw": RAW_FILE, "nms": NMS_FILE},
        "sha256": {RAW_FILE: sha256_file(raw_path), NMS_FILE: sha256_file(nms_path)},
        "size": {RAW_FILE: raw_path.stat().st_size, NMS_FILE: nms_path.stat().st_size},
        "input": {
            "name": "input",
            "shape": [1, 3, input_size, input_size],
            "dtype": "uint8",
            "channels": "RGB",
            "model_channels": model_channels,
            "layout": "letterboxed: longer side scaled to input size, padded bottom/right with 114",
        },
        "outputs": {
            "raw": {"boxes": "[1, anchors, 4] x1 y1 x2 y2 input pixels", "scores": "[1, anchors, classes]"},
            "nms": {"detections": "[N, 7] image index, x1, y1, x2, y2, score, class"},
        },
        "nms": {
            "pre_nms_anchors": sg.TOP_K,
            "score_threshold": score_threshold,
            "iou_threshold": iou_threshold,
            "max_predictions": max_predictions,
        },
        "opset": OPSET,
        "check": checks,
        "export_seconds": round(export_seconds, 1),
    }
    problems = [f"{kind}: {check['problem']}" for kind, check in checks.items() if check.get("problem")]
    if problems:
        raise ExportMismatchError("ONNX export does not match PyTorch: " + "; ".join(problems))
    return report


def summary_line(report: dict[str, Any]) -> str:
    raw, nms = report["check"]["raw"], report["check"]["nms"]
    return (
        f"ONNX export checked in onnxruntime: raw max box diff {raw['max_box_diff']:.2e} px, max score diff "
        f"{raw['max_score_diff']:.2e}; NMS {nms['matched']}/{nms['torch_detections']} PyTorch detections matched "
        f"(onnxruntime {nms['onnx_detections']}, {nms['tie_differences']} differ only by NMS ties), max box diff "
        f"{nms['max_box_diff']:.2e} px"
    )


@contextlib.contextmanager
def _confident_first_flat_nms() -> Iterator[None]:
    """Fix super-gradients 3.7.1's flat NMS output, which keeps the *first* ``max_predictions`` rows of the
    ONNX NonMaxSuppression result assuming they are the most confident. onnxruntime returns them grouped by
    class, so with more detections than that the last classes were dropped whatever their scores (this
    module's PyTorch comparison found it). Sorting by score before the cut restores the PyTorch behaviour."""
    import torch
    from super_gradients.conversion.onnx.nms import PickNMSPredictionsAndReturnAsFlatResult as Pick

    original = Pick.forward

    def forward(self: Any, pred_boxes: Any, pred_scores: Any, selected_indexes: Any) -> Any:
        if self.batch_size != 1:
            return original(self, pred_boxes, pred_scores, selected_indexes)
        batch_indexes, label_indexes, boxes_indexes = (
            selected_indexes[:, 0],
            selected_indexes[:, 1],
            selected_indexes[:, 2],
        )
        scores = pred_scores[batch_indexes, boxes_indexes, label_indexes]
        rows = torch.cat(
            [
                batch_indexes.unsqueeze(-1).to(scores.dtype),
                pred_boxes[batch_indexes, boxes_indexes],
                scores.unsqueeze(-1),
                label_indexes.unsqueeze(-1).to(scores.dtype),
            ],
            dim=1,
        )
        order = torch.sort(scores, descending=True).indices
        return rows[order][: self.max_predictions_per_image]

    Pick.forward = forward
    try:
        yield
    finally:
        Pick.forward = original


def _require_graphsurgeon() -> None:
    try:
        import onnx_graphsurgeon  # noqa: F401
    except ImportError as exc:
        raise StageInputError(
            "ONNX export needs onnx-graphsurgeon, which the trainer environment installs from its lock file "
            "(requirements/trainer.lock); it is never installed at run time"
        ) from exc


def torch_reference(
    model: CustomizableDetector,
    padded_bgr: np.ndarray,
    score_threshold: float,
    iou_threshold: float,
    max_predictions: int,
    pre_nms: int | None = None,
    *,
    channels: Literal["RGB", "BGR"] = "RGB",
) -> dict[str, np.ndarray]:
    """PyTorch's decoded outputs for one letterboxed BGR image (fed in ``channels`` order, the model's), and its
    detections by the exported graph's
    algorithm: the ``pre_nms`` (default :data:`sg.TOP_K`) anchors with the best class score, every class
    above ``score_threshold``, NMS per class, the ``max_predictions`` most confident."""
    import torch
    import torchvision

    from yolonas_pipeline.trainer import sg

    device = next(model.parameters()).device
    with torch.no_grad():
        batch = sg.input_batch([sg.normalise(padded_bgr, channels)], device)
        boxes, scores = (t[0].float() for t in sg.decode(model, batch))
        top = torch.topk(scores.max(dim=1).values, k=min(pre_nms or sg.TOP_K, len(scores))).indices
        anchor, label = (scores[top] > score_threshold).nonzero(as_tuple=True)
        kept_boxes, kept_scores = boxes[top][anchor], scores[top][anchor, label]
        keep = torchvision.ops.batched_nms(kept_boxes, kept_scores, label, iou_threshold)[:max_predictions]
        detections = torch.cat([kept_boxes[keep], kept_scores[keep, None], label[keep, None].float()], dim=1)
    return {
        "raw": np.concatenate([boxes.cpu().numpy(), scores.cpu().numpy()], axis=1),
        "detections": detections.cpu().numpy(),
    }


def run_onnx(path: Path, image_nchw: np.ndarray) -> list[np.ndarray]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs: list[np.ndarray] = session.run(None, {session.get_inputs()[0].name: image_nchw})
    return outputs


def compare_raw(onnx_outputs: list[np.ndarray], reference: np.ndarray) -> dict[str, Any]:
    """Element-wise: decoded boxes (pixels) and class scores."""
    boxes, scores = onnx_outputs[0][0], onnx_outputs[1][0]
    ref_boxes, ref_scores = reference[:, :4], reference[:, 4:]
    if boxes.shape != ref_boxes.shape or scores.shape != ref_scores.shape:
        return {
            "problem": f"shapes {boxes.shape}/{scores.shape}; PyTorch's are {ref_boxes.shape}/{ref_scores.shape}",
            "max_box_diff": float("inf"),
            "max_score_diff": float("inf"),
        }
    box_diff = float(np.abs(boxes - ref_boxes).max()) if boxes.size else 0.0
    score_diff = float(np.abs(scores - ref_scores).max()) if scores.size else 0.0
    problem = None
    if box_diff > MAX_BOX_DIFF_PX or score_diff > MAX_SCORE_DIFF:
        problem = f"max box diff {box_diff:.3g} px (allowed {MAX_BOX_DIFF_PX}), max score diff {score_diff:.3g}"
    return {"anchors": len(boxes), "max_box_diff": box_diff, "max_score_diff": score_diff, "problem": problem}


def compare_nms(
    flat: np.ndarray,
    reference: np.ndarray,
    raw: np.ndarray,
    *,
    iou_threshold: float,
    score_threshold: float | None = None,
    max_predictions: int | None = None,
) -> dict[str, Any]:
    """Compare onnxruntime's NMS rows ``[image, x1, y1, x2, y2, score, class]`` with PyTorch's detections
    ``[x1, y1, x2, y2, score, class]``.

    - every onnxruntime detection must be one of the raw candidates (an anchor's box and class score), so
      the graph's gathering of boxes, scores and classes is right;
    - each PyTorch detection is matched to an onnxruntime one of the same class, IoU >= ``MIN_IOU`` and a
      score within ``MAX_SCORE_DIFF``;
    - a detection left over on either side must be explained by NMS picking differently among near-equal
      scores: the other side kept a box of the same class, at least as confident, that overlaps it by more
      than the NMS IoU (an untrained model scores every box alike, so this happens), within ``IOU_TOLERANCE``
      of it; or its score sits on the score threshold, or at the cut to ``max_predictions`` when the other side
      reached it, within ``MAX_SCORE_DIFF``.
    """
    onnx_boxes, onnx_scores = flat[:, 1:5].astype(np.float64), flat[:, 5].astype(np.float64)
    onnx_labels = flat[:, 6].astype(np.int64)
    ref = reference[np.argsort(-reference[:, 4], kind="mergesort")].astype(np.float64)
    ref_boxes, ref_scores, ref_labels = ref[:, :4], ref[:, 4], ref[:, 5].astype(np.int64)

    not_candidates = 0
    if len(flat):
        raw_boxes, raw_scores = raw[:, :4].astype(np.float64), raw[:, 4:].astype(np.float64)
        box_close = np.abs(onnx_boxes[:, None, :] - raw_boxes[None]).max(axis=2) <= MAX_BOX_DIFF_PX
        score_close = np.abs(raw_scores[:, onnx_labels].T - onnx_scores[:, None]) <= MAX_SCORE_DIFF
        not_candidates = int((~(box_close & score_close).any(axis=1)).sum())

    ious = box_iou(ref_boxes, onnx_boxes)
    same_class = ref_labels[:, None] == onnx_labels[None, :]
    used = np.zeros(len(flat), dtype=bool)
    ref_matched = np.zeros(len(ref), dtype=bool)
    box_diffs = [0.0]
    for i in range(len(ref)):
        ok = ~used & same_class[i] & (np.abs(onnx_scores - ref_scores[i]) <= MAX_SCORE_DIFF) & (ious[i] >= MIN_IOU)
        if ok.any():
            j = int(np.argmax(np.where(ok, ious[i], -1.0)))
            used[j] = ref_matched[i] = True
            box_diffs.append(float(np.abs(onnx_boxes[j] - ref_boxes[i]).max()))
    suppressing = ious > iou_threshold - IOU_TOLERANCE

    def on_a_boundary(score: float, other_side_scores: np.ndarray) -> bool:
        at_threshold = score_threshold is not None and abs(score - score_threshold) <= MAX_SCORE_DIFF
        other_full = max_predictions is not None and len(other_side_scores) >= max_predictions
        at_cut = other_full and score <= float(other_side_scores.min()) + MAX_SCORE_DIFF
        return bool(at_threshold or at_cut)

    unexplained = 0
    for i in map(int, np.flatnonzero(~ref_matched)):
        tie = (same_class[i] & suppressing[i] & (onnx_scores >= ref_scores[i] - MAX_SCORE_DIFF)).any()
        unexplained += int(not (tie or on_a_boundary(float(ref_scores[i]), onnx_scores)))
    for j in map(int, np.flatnonzero(~used)):
        tie = (same_class[:, j] & suppressing[:, j] & (ref_scores >= onnx_scores[j] - MAX_SCORE_DIFF)).any()
        unexplained += int(not (tie or on_a_boundary(float(onnx_scores[j]), ref_scores)))

    problem = None
    if not_candidates:
        problem = f"{not_candidates} onnxruntime detections are not among the model's raw candidates"
    elif unexplained:
        problem = (
            f"{unexplained} detections differ between onnxruntime ({len(flat)}) and PyTorch ({len(ref)}) "
            "beyond ties in NMS"
        )
    return {
        "torch_detections": len(ref),
        "onnx_detections": len(flat),
        "matched": int(ref_matched.sum()),
        "tie_differences": int((~ref_matched).sum() + (~used).sum()),
        "max_box_diff": max(box_diffs),
        "problem": problem,
    }
