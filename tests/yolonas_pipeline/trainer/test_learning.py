"""Training learns: a short training from scratch on the sample reaches a floor of mAP@0.50 on its validation images.

The other trainer tests train a model that detects nothing (one epoch) and check files, formats and agreement
with pycocotools, which a model that learns nothing passes just as well. This one fails when a change silently
breaks learning: transforms, labels, box format, channel order, class mapping. It runs the real trainer command
(train, then evaluate) in the trainer environment, as the local backend runs it, with the demo's settings on the
demo's sample (48 images, 38 for training): 30 epochs of 4 steps, about 3 s each on two idle cores. From scratch the
model finds nothing for about 18 epochs (validation mAP@0.50 0), then learns quickly (0.36 after 23 epochs, 0.55
after 26), so fewer epochs would test nothing; a pipeline that feeds it wrong labels or pixels stays at 0.
Evaluated again with red and blue swapped, the same model must score clearly lower: the channel order is pinned.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from trained_model import CLASS_NAMES, trainer_env

from yolonas_pipeline.contracts import EvaluateRequest, Metrics, TrainRequest, TrainResult, trainer_argv
from yolonas_pipeline.embedded import DEMO_CONF
from yolonas_pipeline.storage import Storage

#: The demo's dataset (sample_data's defaults) and training settings: this is the demo's model.
NUM_IMAGES = 48
EPOCHS = int(DEMO_CONF["epochs"])
#: A broken pipeline scores 0; these settings reach about 0.7, and the floor leaves room for CPU arithmetic.
MIN_MAP_50 = 0.3


@pytest.mark.slow
@pytest.mark.trainer
def test_a_short_training_on_the_sample_learns_to_detect(tmp_path: Path, trainer_python: Path) -> None:
    from yolonas_pipeline.materialize import MaterializeRequest, materialize
    from yolonas_pipeline.sample_data import make_sample_dataset, split_indices

    source = make_sample_dataset(tmp_path / "sample", num_images=NUM_IMAGES)
    export = materialize(
        MaterializeRequest(source=str(source), output_uri=str(tmp_path / "datasets"), workers=1), storage=Storage()
    )
    assert export.class_names == CLASS_NAMES
    train = TrainRequest(
        dataset_uri=export.dataset_uri,
        output_uri=str(tmp_path / "train"),
        num_classes=len(CLASS_NAMES),
        epochs=EPOCHS,
        batch_size=int(DEMO_CONF["batch_size"]),
        input_size=int(DEMO_CONF["input_size"]),
        learning_rate=float(DEMO_CONF["learning_rate"]),
        mixed_precision=False,
        seed=0,
    )
    evaluate = EvaluateRequest(
        dataset_uri=export.dataset_uri,
        train_result_uri=str(tmp_path / "train" / "result.json"),
        output_uri=str(tmp_path / "evaluate"),
        split="validation",
        batch_size=8,
    )
    env = trainer_env(tmp_path / "work")
    started = time.monotonic()
    for request in (train, evaluate):
        argv = [str(trainer_python), *trainer_argv(request, gpus=0)[1:]]
        run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    seconds = time.monotonic() - started

    metrics = Metrics.read(str(tmp_path / "evaluate" / "metrics.json"), storage=Storage())
    history = TrainResult.read(str(tmp_path / "train" / "result.json"), storage=Storage()).history
    learnt = [round(float((entry.get("valid") or {}).get("mAP@0.50") or 0), 3) for entry in history]
    per_class = {name: entry.ap_50 for name, entry in metrics.per_class.items()}
    report = (
        f"mAP@0.50 {metrics.map_50:.3f} on {metrics.images} validation images after {EPOCHS} epochs "
        f"({seconds:.0f} s); per-class AP@0.50 {json.dumps(per_class)}; validation mAP@0.50 by epoch {learnt}"
    )
    print(f"\n{report}")
    assert metrics.split == "validation" and metrics.images == len(split_indices(NUM_IMAGES, 0)["validation"])
    assert metrics.map_50 is not None and metrics.map_50 >= MIN_MAP_50, f"training did not learn: {report}"

    # The channel order is part of what the model learnt: the same validation images with red and blue swapped
    # turn the sample's red Coverall boxes into its blue Gloves colour (and back), so the score must drop. A
    # pipeline that fed the model one order in training and another in evaluation would score like this.
    swapped = swap_red_and_blue(Path(export.dataset_uri), tmp_path / "swapped-dataset")
    swapped_request = evaluate.model_copy(update={"dataset_uri": str(swapped), "output_uri": str(tmp_path / "ev-bgr")})
    run = subprocess.run(
        [str(trainer_python), *trainer_argv(swapped_request, gpus=0)[1:]],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    swapped_metrics = Metrics.read(str(tmp_path / "ev-bgr" / "metrics.json"), storage=Storage())
    print(f"channels swapped: mAP@0.50 {swapped_metrics.map_50:.3f} (in order: {metrics.map_50:.3f})")
    assert swapped_metrics.map_50 is not None and swapped_metrics.map_50 < metrics.map_50 - 0.1, report


def swap_red_and_blue(dataset: Path, destination: Path) -> Path:
    """A copy of a materialized dataset whose JPEGs have their red and blue channels exchanged."""
    import shutil

    from PIL import Image

    shutil.copytree(dataset, destination)
    for path in destination.rglob("*.jpg"):
        with Image.open(path) as image:
            red, green, blue = image.convert("RGB").split()
            Image.merge("RGB", (blue, green, red)).save(path, quality=95)
    return destination
