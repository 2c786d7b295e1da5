"""The training data path: the fast transforms give the seed's values, batches reach the model as the seed's
would, and loaders are sized from the CPUs the pod may use."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from super_gradients.training.datasets.detection_datasets.coco_format_detection import COCOFormatDetectionDataset
from super_gradients.training.transforms.transforms import DetectionHorizontalFlip, DetectionHSV
from super_gradients.training.utils.collate_fn import DetectionCollateFN

from yolonas_pipeline.contracts import DatasetManifest
from yolonas_pipeline.trainer import data, speed

INPUT_SIZE = 96
Sample = tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def manifest(export_dir: Path) -> DatasetManifest:
    return data.read_manifest(export_dir)


@pytest.fixture(scope="module")
def fast_dataset(export_dir: Path, manifest: DatasetManifest) -> COCOFormatDetectionDataset:
    return data.build_dataset(export_dir, manifest, "train", input_size=INPUT_SIZE, train=True)


@pytest.fixture(scope="module")
def pairs(
    export_dir: Path, manifest: DatasetManifest, fast_dataset: COCOFormatDetectionDataset
) -> list[tuple[Sample, Sample]]:
    """(fast sample, seed sample) for every training image, each pair drawn with the same random seed."""
    seed_dataset = data.build_dataset(export_dir, manifest, "train", input_size=INPUT_SIZE, train=True)
    seed_dataset.transforms = data.seed_train_transforms(INPUT_SIZE)
    out = []
    for index in range(len(fast_dataset)):
        random.seed(index)
        np.random.seed(index)
        seed_sample = seed_dataset[index]
        random.seed(index)
        np.random.seed(index)
        out.append((fast_dataset[index], seed_sample))
    return out


def test_fast_training_samples_are_uint8_hwc(pairs: list[tuple[Sample, Sample]]) -> None:
    image = pairs[0][0][0]
    assert (image.dtype, image.shape) == (np.uint8, (INPUT_SIZE, INPUT_SIZE, 3))


def test_fast_training_transforms_give_the_seeds_pixels_and_boxes(pairs: list[tuple[Sample, Sample]]) -> None:
    image_diffs, target_diffs = {}, {}
    for index, ((fast_image, fast_target), (seed_image, seed_target)) in enumerate(pairs):
        as_float = torch.from_numpy(fast_image).permute(2, 0, 1).float() / 255
        if not torch.equal(as_float, torch.from_numpy(seed_image)):
            image_diffs[index] = float((as_float - torch.from_numpy(seed_image)).abs().max())
        if not np.array_equal(fast_target, seed_target):
            target_diffs[index] = (fast_target.tolist(), seed_target.tolist())
    assert len(pairs) == 19
    assert image_diffs == {}, "max pixel difference per image index"
    assert target_diffs == {}, "(fast, seed) targets per image index"


@pytest.mark.parametrize("gains", [(5, 30, 30), (90, 255, 255)], ids=["seed-gains", "wrap-and-clip"])
def test_lookup_hsv_equals_super_gradients_hsv(gains: tuple[int, int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    differing = []
    for draw in range(100):
        np.random.seed(draw)
        theirs = DetectionHSV(1.0, *gains).apply_to_image(image)
        np.random.seed(draw)
        ours = data.LookupHSV(1.0, *gains).apply_to_image(image)
        if not np.array_equal(theirs, ours):
            differing.append(draw)
    assert differing == [], "random draws whose images differ"


def test_copying_flip_equals_super_gradients_flip_and_is_contiguous() -> None:
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    target = np.array([[3.0, 4.0, 20.0, 30.0, 1.0]], dtype=np.float32)
    theirs = DetectionHorizontalFlip(prob=1.0)({"image": image, "target": target})
    ours = data.CopyingHorizontalFlip(prob=1.0)({"image": image, "target": target})
    np.testing.assert_array_equal(ours["image"], theirs["image"])
    np.testing.assert_array_equal(ours["target"], theirs["target"])
    assert ours["image"].flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("channels_last", [True, False])
def test_uint8_batches_become_the_seeds_float_batches_on_the_device(
    pairs: list[tuple[Sample, Sample]], channels_last: bool
) -> None:
    fast_batch, fast_targets = data.Collate()([fast for fast, _ in pairs[:4]])
    seed_batch, seed_targets = DetectionCollateFN()([seed for _, seed in pairs[:4]])
    assert fast_batch.dtype == torch.uint8
    assert fast_batch.is_contiguous(memory_format=torch.channels_last)

    prepared, _ = speed.DevicePrep(channels_last=channels_last)(fast_batch, fast_targets, 0)
    torch.testing.assert_close(prepared, seed_batch, rtol=0, atol=0)
    torch.testing.assert_close(fast_targets, seed_targets, rtol=0, atol=0)
    if channels_last:
        assert prepared.is_contiguous(memory_format=torch.channels_last)
    else:
        assert prepared.is_contiguous()


def test_validation_batches_pass_collate_and_prep_unchanged(export_dir: Path, manifest: DatasetManifest) -> None:
    valid_dataset = data.build_dataset(export_dir, manifest, "validation", input_size=INPUT_SIZE, train=False)
    samples = [valid_dataset[i] for i in range(3)]
    ours, theirs = data.Collate()(samples), DetectionCollateFN()(samples)
    torch.testing.assert_close(ours[0], theirs[0], rtol=0, atol=0)
    torch.testing.assert_close(ours[1], theirs[1], rtol=0, atol=0)
    prepared, _ = speed.DevicePrep(channels_last=False)(ours[0], None, 0)
    torch.testing.assert_close(prepared, ours[0], rtol=0, atol=0)


def test_channels_last_only_on_cuda() -> None:
    # channels_last crashes torch's CPU backward pass (see speed.use_channels_last).
    assert speed.use_channels_last(True) is torch.cuda.is_available()


@pytest.mark.parametrize(
    ("requested", "cpus", "processes", "expected"),
    [(5, 2, 1, 5), (0, 16, 1, 15), (0, 16, 4, 3), (0, 1, 1, 0), (0, 96, 1, speed.MAX_AUTO_WORKERS)],
)
def test_loader_workers_follow_the_cpus_the_pod_may_use(
    requested: int, cpus: int, processes: int, expected: int
) -> None:
    assert speed.loader_workers(requested, cpus=cpus, processes=processes) == expected


@pytest.mark.parametrize(
    ("world", "batch", "steps", "images"),
    # 19 images: 10 per process with 2 (the sampler pads), 5 with 4. A process with more than one batch drops its
    # partial last one; one with a batch or less keeps it (what preflight.steps_per_epoch plans).
    [(1, 8, 2, 16), (2, 8, 1, 8), (2, 4, 2, 8), (2, 16, 1, 10), (4, 4, 1, 4), (4, 8, 1, 5)],
)
def test_each_ddp_process_takes_the_planned_steps(
    fast_dataset: COCOFormatDetectionDataset,
    monkeypatch: pytest.MonkeyPatch,
    world: int,
    batch: int,
    steps: int,
    images: int,
) -> None:
    if world > 1:  # the loader as one process of a DDP run of `world` processes sees it
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: world)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 1)
    loader = data.build_loader(fast_dataset, batch_size=batch, workers=0, train=True)
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler) == (world > 1)
    assert (len(loader), data.images_per_epoch(loader)) == (steps, images)
    assert len(list(loader)) == steps


def test_training_loader_settings(fast_dataset: COCOFormatDetectionDataset) -> None:
    loader = data.build_loader(fast_dataset, batch_size=8, workers=0, train=True)
    auto_workers = min(speed.MAX_AUTO_WORKERS, max(0, len(os.sched_getaffinity(0)) - 1))
    workers = min(auto_workers, 2)  # 19 images in batches of 8, the last dropped: two batches
    settings = {
        "workers": loader.num_workers,
        "persistent": loader.persistent_workers,
        "prefetch": loader.prefetch_factor,
        "drop_last": loader.drop_last,
        "images": data.images_per_epoch(loader),
        "pin": loader.pin_memory,
    }
    assert settings == {
        "workers": workers,
        "persistent": workers > 0,
        "prefetch": data.PREFETCH_BATCHES if workers else None,
        "drop_last": True,
        "images": 16,
        "pin": torch.cuda.is_available(),
    }
