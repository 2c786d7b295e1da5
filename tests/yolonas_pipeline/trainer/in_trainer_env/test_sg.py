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


# -- channel order: the model sees RGB, as the COCO weights were trained ------------------------------------------
#: The sample data's class colours (RGB), by class index: red, green, blue, yellow, magenta.
RED, BLUE = 0, 2


def box_colour(image_chw: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean of each channel of ``image_chw`` (in the order it has) over the middle of the box ``target``
    (``label, cx, cy, w, h`` input pixels)."""
    _, cx, cy, w, h = (float(v) for v in target)
    x1, x2 = int(cx - w / 4), int(cx + w / 4) + 1
    y1, y2 = int(cy - h / 4), int(cy + h / 4) + 1
    return np.asarray(image_chw[:, y1:y2, x1:x2].reshape(3, -1).mean(axis=1), dtype=np.float64)


@pytest.mark.parametrize("train", [False, True], ids=["validation", "training"])
def test_the_model_sees_red_boxes_in_the_first_channel(export_dir: Path, train: bool) -> None:
    """The sample's ``Coverall`` boxes are red: in what the loaders hand the model, channel 0 is the bright one
    (RGB), not channel 2 (BGR, as OpenCV decodes them). The training samples are uint8 HWC (see data)."""
    manifest: DatasetManifest = data.read_manifest(export_dir)
    split = "train" if train else "validation"
    dataset = data.build_dataset(export_dir, manifest, split, input_size=INPUT_SIZE, train=train)
    colours = []
    for index in range(len(dataset)):
        image, targets = dataset[index]
        image_chw = image.transpose(2, 0, 1) / 255.0 if train else image
        colours += [box_colour(image_chw, t) for t in targets if int(t[0]) == manifest.class_names.index("Coverall")]
    assert colours, "no Coverall box in the split"
    assert all(c[RED] > 0.6 and c[BLUE] < 0.4 for c in colours), colours


def test_predict_and_export_follow_the_channel_order_the_model_recorded(export_dir: Path) -> None:
    """A model trained here records RGB in its preprocessing (``processing_params``), as super-gradients' own
    ``predict`` sees it; one trained before the swap (no ``DetectionRGB2BGR`` in its validation transforms)
    records BGR, and evaluation keeps feeding it BGR."""
    from super_gradients.training.transforms.transforms import DetectionRGB2BGR

    manifest: DatasetManifest = data.read_manifest(export_dir)
    dataset = data.build_dataset(export_dir, manifest, "validation", input_size=INPUT_SIZE, train=False)
    model = sg.build_model("yolo_nas_s", num_classes=len(manifest.class_names))
    assert sg.channel_order(model) == "RGB"  # no preprocessing yet: the COCO weights' order
    model.set_dataset_processing_params(**dataset.get_dataset_preprocessing_params())
    assert sg.channel_order(model) == sg.MODEL_CHANNELS == "RGB"

    dataset.transforms = [t for t in dataset.transforms if not isinstance(t, DetectionRGB2BGR)]
    model.set_dataset_processing_params(**dataset.get_dataset_preprocessing_params())
    assert sg.channel_order(model) == "BGR"

    padded, _ = sg.letterbox(np.dstack([np.full((8, 8), v, np.uint8) for v in (10, 20, 30)]), INPUT_SIZE)
    assert sg.normalise(padded, "RGB")[:, 0, 0].tolist() == pytest.approx([30 / 255, 20 / 255, 10 / 255])
    assert sg.normalise(padded, "BGR")[:, 0, 0].tolist() == pytest.approx([10 / 255, 20 / 255, 30 / 255])
