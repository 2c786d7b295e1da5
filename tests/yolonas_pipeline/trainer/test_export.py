"""ONNX export: the exported graphs, run in onnxruntime, give PyTorch's boxes (with and without NMS).

The comparison logic is tested here on hand-made arrays; the real export runs in the trainer environment
on the session's trained checkpoint (tests/yolonas_pipeline/trainer/trained_model.py).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
from trained_model import TrainedModel, trained_model, trainer_env

from yolonas_pipeline.trainer.export import compare_nms, compare_raw


# -- the comparison, on hand-made outputs --------------------------------------------------------------------
def raw_candidates() -> np.ndarray:
    """Three anchors, two classes: ``[x1, y1, x2, y2, score_class0, score_class1]``."""
    return np.array(
        [
            [10, 10, 50, 50, 0.90, 0.10],
            [12, 11, 51, 50, 0.90, 0.05],  # nearly the same box, same score: NMS may keep either
            [70, 70, 90, 90, 0.20, 0.60],
        ],
        dtype=np.float32,
    )


def torch_rows(*indices_and_classes: tuple[int, int]) -> np.ndarray:
    raw = raw_candidates()
    return np.array([[*raw[i, :4], raw[i, 4 + c], c] for i, c in indices_and_classes], dtype=np.float32)


def onnx_rows(*indices_and_classes: tuple[int, int]) -> np.ndarray:
    return np.array([[0, *row] for row in torch_rows(*indices_and_classes)], dtype=np.float32).reshape(-1, 7)


def test_identical_detections_match() -> None:
    check = compare_nms(onnx_rows((0, 0), (2, 1)), torch_rows((0, 0), (2, 1)), raw_candidates(), iou_threshold=0.7)
    assert check["problem"] is None
    assert check["matched"] == check["torch_detections"] == check["onnx_detections"] == 2
    assert check["tie_differences"] == 0


def test_a_different_pick_among_tied_boxes_is_explained() -> None:
    check = compare_nms(onnx_rows((1, 0), (2, 1)), torch_rows((0, 0), (2, 1)), raw_candidates(), iou_threshold=0.7)
    assert check["problem"] is None
    assert check["matched"] == 1 and check["tie_differences"] == 2


def test_shifted_boxes_are_caught() -> None:
    shifted = onnx_rows((0, 0), (2, 1))
    shifted[:, 1:5] += 3.0  # a box decoding bug: still overlapping, but not one of the model's boxes
    check = compare_nms(shifted, torch_rows((0, 0), (2, 1)), raw_candidates(), iou_threshold=0.7)
    assert "not among the model's raw candidates" in check["problem"]


def test_a_missing_detection_is_caught() -> None:
    check = compare_nms(onnx_rows((0, 0)), torch_rows((0, 0), (2, 1)), raw_candidates(), iou_threshold=0.7)
    assert "beyond ties in NMS" in check["problem"]


def test_a_pair_overlapping_by_the_nms_threshold_may_be_suppressed_on_one_side_only() -> None:
    raw = raw_candidates()
    iou = float(compare_iou(raw[0, :4], raw[1, :4]))
    # PyTorch kept both boxes (their IoU is at most its threshold); onnxruntime's float32 IoU came out a hair above.
    check = compare_nms(onnx_rows((0, 0)), torch_rows((0, 0), (1, 0)), raw, iou_threshold=iou + 5e-4)
    assert check["problem"] is None
    assert (
        "beyond ties"
        in compare_nms(onnx_rows((0, 0)), torch_rows((0, 0), (1, 0)), raw, iou_threshold=iou + 0.05)["problem"]
    )


def test_a_detection_on_the_score_threshold_may_be_kept_on_one_side_only() -> None:
    raw = raw_candidates()  # box 2, class 0 scores 0.20
    rows = onnx_rows((0, 0))
    kept_by_torch = torch_rows((0, 0), (2, 0))
    assert compare_nms(rows, kept_by_torch, raw, iou_threshold=0.7, score_threshold=0.2005)["problem"] is None
    assert (
        "beyond ties"
        in compare_nms(rows, torch_rows((0, 0), (2, 0)), raw, iou_threshold=0.7, score_threshold=0.1)["problem"]
    )


def test_the_last_detection_at_the_max_predictions_cut_may_differ() -> None:
    raw = raw_candidates()
    check = compare_nms(onnx_rows((0, 0)), torch_rows((0, 0), (2, 0)), raw, iou_threshold=0.7, max_predictions=1)
    assert check["problem"] is None


def compare_iou(a: np.ndarray, b: np.ndarray) -> float:
    from yolonas_pipeline.trainer.export import box_iou

    return float(box_iou(a[None].astype(np.float64), b[None].astype(np.float64))[0, 0])


def test_raw_outputs_are_compared_element_wise() -> None:
    raw = raw_candidates()
    assert compare_raw([raw[None, :, :4], raw[None, :, 4:]], raw)["problem"] is None
    scores = raw[None, :, 4:].copy()
    scores[0, 1, 0] += 0.01
    assert "max score diff" in compare_raw([raw[None, :, :4], scores], raw)["problem"]


# -- the real export ------------------------------------------------------------------------------------------
EXPORT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from yolonas_pipeline.trainer import compat
    compat.apply()
    import torch
    from yolonas_pipeline.trainer import export, sg

    checkpoint, image, out_dir, input_size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    model = sg.load_trained("yolo_nas_s", 5, Path(checkpoint), device="cpu")
    # One epoch from scratch scores every box about alike; random class heads give distinct scores, so the
    # two NMS implementations have no ties to break differently and must agree box for box.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "cls_pred" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * (2.0 if "weight" in name else 0))
    report = export.export_onnx(
        model, out_dir=out_dir, sample_image=Path(image), input_size=input_size,
        # 300 > the 189 anchors at 96 px: the cap never binds, so every detection must match exactly (at a binding
        # cap, near-equal scores at the cut make the two sides keep different boxes, which the check allows)
        score_threshold=0.05, iou_threshold=0.7, max_predictions=300,
    )
    print("REPORT " + json.dumps(report))
    """
)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, sample_dataset: Path, trainer_python: Path) -> TrainedModel:
    return trained_model(tmp_path_factory.getbasetemp(), sample_dataset, trainer_python)


def test_onnx_with_and_without_nms_matches_pytorch(trained: TrainedModel, trainer_python: Path, tmp_path: Path) -> None:
    from yolonas_pipeline.storage import sha256_file

    image = sorted((trained.dataset_dir / "images" / "validation").glob("*.jpg"))[0]
    out_dir = tmp_path / "onnx"
    run = subprocess.run(
        [str(trainer_python), "-c", EXPORT_SCRIPT, str(trained.checkpoint), str(image), str(out_dir), "96"],
        env=trainer_env(tmp_path / "work"),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("REPORT "))[7:])

    raw, nms = report["check"]["raw"], report["check"]["nms"]
    assert raw["problem"] is None and raw["anchors"] == 12 * 12 + 6 * 6 + 3 * 3  # strides 8, 16, 32 at 96 px
    assert raw["max_box_diff"] < 0.01 and raw["max_score_diff"] < 1e-4
    assert nms["problem"] is None
    assert nms["torch_detections"] > 5
    assert nms["matched"] == nms["torch_detections"] == nms["onnx_detections"]
    assert nms["tie_differences"] == 0 and nms["max_box_diff"] < 0.01
    assert report["input"] == {
        "name": "input",
        "shape": [1, 3, 96, 96],
        "dtype": "uint8",
        "channels": "RGB",
        "model_channels": "RGB",  # the graph's input order is the model's: no swap inside
        "layout": "letterboxed: longer side scaled to input size, padded bottom/right with 114",
    }
    for name, digest in report["sha256"].items():
        assert sha256_file(out_dir / name) == digest
