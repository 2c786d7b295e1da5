"""The one door into super-gradients: evaluation and export preprocess images exactly as the validation loop does,
and every NMS uses the same limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from yolonas_pipeline.contracts import DatasetManifest
from yolonas_pipeline.trainer import data, sg

INPUT_SIZE = 96


def test_explicit_nms_limits_override_only_what_they_name() -> None:
    callback = sg.post_prediction_callback(iou_threshold=0.5, max_predictions=7)
    assert (callback.score_threshold, callback.nms_threshold, callback.nms_top_k, callback.max_predictions) == (
        sg.SCORE_THRESHOLD,
        0.5,
        sg.TOP_K,
        7,
    )


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (97, 33)])
def test_letterbox_scales_the_longer_side_and_pads_bottom_right(size: tuple[int, int]) -> None:
    image = np.full((*size, 3), 7, dtype=np.uint8)
    padded, scale = sg.letterbox(image, INPUT_SIZE)
    height, width = int(size[0] * scale), int(size[1] * scale)
    assert (padded.shape, padded.dtype, max(height, width)) == ((INPUT_SIZE, INPUT_SIZE, 3), np.uint8, INPUT_SIZE)
    assert (padded[:height, :width] == 7).all()
    assert (padded[height:] == sg.PAD_VALUE).all() and (padded[:, width:] == sg.PAD_VALUE).all()


def test_preprocessing_equals_the_validation_loops(export_dir: Path) -> None:
    """What evaluation and export feed the model is what the validation loop (the trained model's metrics) fed it."""
    manifest: DatasetManifest = data.read_manifest(export_dir)
    dataset = data.build_dataset(export_dir, manifest, "validation", input_size=INPUT_SIZE, train=False)
    differing = {}
    for index in range(len(dataset)):
        path = Path(dataset._get_sample_annotations(index=index, ignore_empty_annotations=False)["img_path"])
        ours = sg.normalise(sg.letterbox(sg.read_image(path), INPUT_SIZE)[0])
        theirs = dataset[index][0]
        if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
            differing[path.name] = float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else "shape"
    assert len(dataset) == 5
    assert differing == {}, "max difference per image"


def test_input_batch_is_nchw_float_on_the_device() -> None:
    padded, _ = sg.letterbox(np.zeros((50, 80, 3), dtype=np.uint8), INPUT_SIZE)
    batch = sg.input_batch([sg.normalise(padded)] * 2, "cpu")
    assert (tuple(batch.shape), batch.dtype) == ((2, 3, INPUT_SIZE, INPUT_SIZE), torch.float32)
    assert float(batch.max()) == pytest.approx(sg.PAD_VALUE / sg.MAX_PIXEL)
