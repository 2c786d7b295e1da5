"""Datasets and loaders over a materialized COCO export, with the seed document's transforms.

Training uses a faster, pixel-identical form of the seed's augmentation (:func:`train_transforms`);
validation and evaluation use the seed's deterministic transforms, which define the model's preprocessing.

**Channel order.** super-gradients' datasets decode with OpenCV (BGR), but the COCO weights YOLO-NAS starts
from were trained and validated on RGB: its own recipe (``coco_detection_yolo_nas_dataset_params.yaml``)
ends the validation transforms with ``DetectionRGB2BGR(prob=1)``. Both transform lists here do the same
(:func:`to_model_channels`), so fine-tuning starts from weights that see the colours they learnt, and the
model's preprocessing (``processing_params``, hence ``predict`` and the ONNX graph) records the swap.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from super_gradients.training.datasets.detection_datasets.coco_format_detection import COCOFormatDetectionDataset
from super_gradients.training.samples import DetectionSample
from super_gradients.training.transforms.transforms import (
    DetectionHorizontalFlip,
    DetectionHSV,
    DetectionPaddedRescale,
    DetectionRandomAffine,
    DetectionRGB2BGR,
    DetectionStandardize,
    DetectionTargetsFormatTransform,
    _flip_horizontal_boxes_xyxy,
)
from super_gradients.training.transforms.utils import (
    _get_bottom_right_padding_coordinates,
    _pad_image,
    _rescale_image,
    _rescale_xyxy_bboxes,
)
from super_gradients.training.utils.collate_fn import DetectionCollateFN
from torch.utils.data import DataLoader

from yolonas_pipeline.contracts import DatasetManifest
from yolonas_pipeline.storage import Storage
from yolonas_pipeline.trainer import sg, speed

#: The channel order the model sees (see the module's docstring); the files on disk decode as BGR.
MODEL_CHANNELS = sg.MODEL_CHANNELS
#: Batches each loader worker prepares ahead (torch's default is 2): absorbs slow images (large JPEGs).
PREFETCH_BATCHES = 4


def read_manifest(dataset_dir: Path) -> DatasetManifest:
    """The downloaded export's manifest, validated by its contract (format, fields, completeness)."""
    return DatasetManifest.read_export(str(dataset_dir), storage=Storage())


def eval_split(manifest: DatasetManifest, requested: str = "auto") -> str:
    """The split to evaluate on: the requested one, else test when the export has it, else validation."""
    if requested != "auto":
        manifest.split(requested)  # names the splits there are when it is not one of them
        return requested
    return "test" if "test" in manifest.splits else "validation"


def seed_train_transforms(input_size: int) -> list[Any]:
    """The seed document's training augmentation, at ``input_size`` instead of its fixed 640 (float CHW out)."""
    dim = (input_size, input_size)
    return [
        *_augmentations(dim, DetectionHSV(prob=1.0, hgain=5, vgain=30, sgain=30), DetectionHorizontalFlip(prob=0.5)),
        to_model_channels(),
        DetectionPaddedRescale(input_dim=dim),
        DetectionStandardize(max_value=sg.MAX_PIXEL),
        DetectionTargetsFormatTransform(input_dim=dim, output_format="LABEL_CXCYWH"),
    ]


def train_transforms(input_size: int) -> list[Any]:
    """The seed's augmentation with the same random draws and the same pixels, computed faster.

    The HSV jitter runs as a table lookup (:class:`LookupHSV`), the flip writes a contiguous image
    (:class:`CopyingHorizontalFlip`), and the images stay uint8 HWC: the division
    by 255 (the seed's ``DetectionStandardize``) runs on the device
    (:class:`yolonas_pipeline.trainer.speed.DevicePrep`), so a worker collates, pins and copies a quarter
    of the bytes; :class:`Collate` turns the HWC stack into an NCHW batch in channels_last layout for free.
    """
    dim = (input_size, input_size)
    return [
        *_augmentations(dim, LookupHSV(prob=1.0, hgain=5, vgain=30, sgain=30), CopyingHorizontalFlip(prob=0.5)),
        to_model_channels(),
        PaddedRescaleUint8(input_dim=dim),
        DetectionTargetsFormatTransform(input_dim=dim, output_format="LABEL_CXCYWH"),
    ]


def to_model_channels() -> DetectionRGB2BGR:
    """BGR (as decoded) to RGB (as the COCO weights expect), on every image, in training as in validation.

    super-gradients' COCO recipe also swaps half of the *training* images back (``prob=0.5``), an augmentation
    that makes the model indifferent to channel order. That is not kept here: fine-tuning data often tells
    classes apart by colour (a red from a blue glove, a high-visibility vest), and a model taught to ignore
    the order of the channels cannot; the HSV jitter already varies the colours. With ``prob=1`` the swap also
    has a preprocessing equivalent (super-gradients refuses ``prob < 1`` there). It comes after the HSV jitter
    and the flip, which, like super-gradients', read the image as BGR."""
    return DetectionRGB2BGR(prob=1.0)


def _augmentations(dim: tuple[int, int], hsv: DetectionHSV, flip: DetectionHorizontalFlip) -> list[Any]:
    return [
        DetectionRandomAffine(
            degrees=0.0, scales=(0.5, 1.5), shear=0.0, target_size=dim, filter_box_candidates=False, border_value=128
        ),
        hsv,
        flip,
    ]


class CopyingHorizontalFlip(DetectionHorizontalFlip):  # type: ignore[misc]  # super-gradients is untyped
    """``DetectionHorizontalFlip`` (same draw, same boxes) that returns a contiguous image.

    super-gradients returns the ``image[:, ::-1]`` view, and whatever copies it next (a resize, the float
    conversion, the collate) walks memory backwards pixel by pixel: ~4 ms at 640x640, against ~0.2 ms for
    ``cv2.flip``.
    """

    def apply_to_sample(self, sample: DetectionSample) -> DetectionSample:
        if random.random() < self.prob:
            sample = DetectionSample(
                image=cv2.flip(np.ascontiguousarray(sample.image), 1),
                bboxes_xyxy=_flip_horizontal_boxes_xyxy(sample.bboxes_xyxy, sample.image.shape[1]),
                labels=sample.labels,
                is_crowd=sample.is_crowd,
                additional_samples=None,
            )
        return sample


class LookupHSV(DetectionHSV):  # type: ignore[misc]
    """``DetectionHSV`` with the same random draws and output, 4-6x faster.

    super-gradients shifts hue (mod 180) and clips saturation and value on an int16 copy of the HSV image,
    channel by strided channel: the most expensive step of the seed's augmentation. Each of those is a
    function of one uint8 value, so one 256-entry table per channel, applied by ``cv2.LUT``, gives the
    identical image.
    """

    def apply_to_image(self, image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or tuple(self.bgr_channels) != (0, 1, 2):
            theirs: np.ndarray = super().apply_to_image(image)
            return theirs
        # The draws of super-gradients' augment_hsv, in its order.
        gains = np.random.uniform(-1, 1, 3) * [self.hgain, self.sgain, self.vgain]
        gains *= np.random.randint(0, 2, 3)
        gains = gains.astype(np.int16)
        values = np.arange(256, dtype=np.int16)
        table = np.stack(
            [(values + gains[0]) % 180, np.clip(values + gains[1], 0, 255), np.clip(values + gains[2], 0, 255)],
            axis=-1,
        ).astype(np.uint8)
        hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2HSV)
        return cv2.cvtColor(cv2.LUT(hsv, table.reshape(1, 256, 3)), cv2.COLOR_HSV2BGR)


class PaddedRescaleUint8(DetectionPaddedRescale):  # type: ignore[misc]
    """``DetectionPaddedRescale`` (same resize, bottom-right padding and boxes) that keeps the uint8 HWC image:
    no transpose and no float copy. For the training loader only; validation keeps the seed's transforms,
    which define the model's preprocessing for ``predict``."""

    def apply_to_sample(self, sample: DetectionSample) -> DetectionSample:
        image = sample.image
        r = min(self.input_dim[0] / image.shape[0], self.input_dim[1] / image.shape[1])
        shape = (int(image.shape[0] * r), int(image.shape[1] * r))
        if shape != image.shape[:2]:  # after RandomAffine the image already has the target size
            image = _rescale_image(image=image, target_shape=shape)
        padding = _get_bottom_right_padding_coordinates(input_shape=shape, output_shape=self.input_dim)
        if padding.bottom or padding.right:
            image = _pad_image(image=image, padding_coordinates=padding, pad_value=self.pad_value)
        sample.image = np.ascontiguousarray(image, dtype=np.uint8)
        sample.bboxes_xyxy = _rescale_xyxy_bboxes(sample.bboxes_xyxy, r)
        return sample


class Collate(DetectionCollateFN):  # type: ignore[misc]
    """``DetectionCollateFN`` for both kinds of samples: uint8 HWC images (training) become one NCHW uint8
    batch whose memory is NHWC (channels_last, no copy beyond the stack); float CHW images (validation) go
    through super-gradients' own path."""

    def __call__(self, data: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
        images = [item[0] for item in data]
        if not (isinstance(images[0], np.ndarray) and images[0].dtype == np.uint8 and images[0].ndim == 3):
            collated: tuple[torch.Tensor, torch.Tensor] = super().__call__(data)
            return collated
        batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
        return batch, self._format_targets([item[1] for item in data])


def eval_transforms(input_size: int) -> list[Any]:
    """Only deterministic transforms: every one has a preprocessing equivalent, so the trained model
    carries its own image processor and ``model.predict`` works without manual preprocessing. They are the
    preprocessing :mod:`yolonas_pipeline.trainer.sg` applies for evaluation and export."""
    dim = (input_size, input_size)
    return [
        to_model_channels(),
        DetectionPaddedRescale(input_dim=dim, max_targets=300, pad_value=sg.PAD_VALUE),
        DetectionStandardize(max_value=sg.MAX_PIXEL),
        DetectionTargetsFormatTransform(input_dim=dim, output_format="LABEL_CXCYWH"),
    ]


def build_dataset(
    dataset_dir: Path, manifest: DatasetManifest, split: str, *, input_size: int, train: bool
) -> COCOFormatDetectionDataset:
    entry = manifest.split(split)
    return COCOFormatDetectionDataset(
        data_dir=str(dataset_dir),
        images_dir=entry.images_dir,
        json_annotation_file=entry.annotation_file,
        input_dim=(input_size, input_size),
        # Keep images without boxes: they teach the model (and score) background.
        ignore_empty_annotations=False,
        with_crowd=False,
        all_classes_list=list(manifest.class_names),
        transforms=train_transforms(input_size) if train else eval_transforms(input_size),
    )


def build_loader(
    dataset: COCOFormatDetectionDataset, *, batch_size: int, workers: int, train: bool, seed: int = 0
) -> DataLoader[Any]:
    """A loader that keeps a GPU fed: ``workers`` 0 sizes it from the pod's CPUs
    (:func:`yolonas_pipeline.trainer.speed.loader_workers`); workers persist across epochs and prefetch
    several batches each; batches land in pinned memory when there is a GPU to copy them to."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    sampler: torch.utils.data.DistributedSampler[Any] | None = (
        torch.utils.data.DistributedSampler(dataset, shuffle=train, seed=seed) if distributed else None
    )
    # Under DDP the sampler's shuffle (seed) is the same on every process, so each takes its own share;
    # the loader workers' augmentation draws differ per process.
    generator = torch.Generator()
    generator.manual_seed(seed + (torch.distributed.get_rank() if distributed else 0))
    num_workers = speed.loader_workers(workers)
    # This process's images: ceil(len / world) under DDP (the sampler pads the last share).
    images = len(sampler) if sampler is not None else len(dataset)
    # A small last batch makes noisy BatchNorm statistics; drop it, unless it is the only batch
    # (preflight.steps_per_epoch plans the same count).
    drop_last = train and images > batch_size
    batches = (images // batch_size) if drop_last else math.ceil(images / batch_size)
    # More workers than batches (tiny validation sets) only start idle processes.
    num_workers = min(num_workers, max(1, batches)) if num_workers else 0
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=Collate(),
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None,
        generator=generator,
    )


def images_per_epoch(loader: DataLoader[Any]) -> int:
    """Images one process trains on per epoch (what images/s figures count)."""
    if loader.drop_last and loader.batch_size:
        return len(loader) * loader.batch_size
    return len(loader.sampler)  # type: ignore[arg-type]
