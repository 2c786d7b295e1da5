"""Operator for stage 1: Hugging Face dataset -> JPEG + COCO JSON."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from yolonas_pipeline import settings
from yolonas_pipeline.materialize import MaterializeRequest, materialize
from yolonas_pipeline.operators._aws import storage_for
from yolonas_pipeline.operators._errors import input_errors_fail_without_retry


class MaterializeDatasetOperator(BaseOperator):
    """Materialize a Hugging Face detection dataset into the COCO layout super-gradients reads.

    The export lands under ``<output_uri>/<fingerprint>/`` and is reused when already complete. Returns
    the stage's result (a :class:`~yolonas_pipeline.contracts.DatasetExport`) and, for every outlet Asset,
    attaches fingerprint, per-split counts and class histogram to the Asset event's extra.

    :param source: hub dataset name, local ``save_to_disk`` folder, or parquet/arrow files. (templated)
    :param output_uri: root of the exports, local path or ``s3://``. (templated)
    :param revision: hub revision (branch, tag or commit). (templated)
    :param schema: preset name or mapping of the dataset's layout; None detects it. (templated)
    :param split_map: output split name -> source split name. (templated)
    :param validation_fraction: share of train held out when the source has no validation split.
    :param max_side: downscale images so their longest side is at most this many pixels. (templated)
    :param keep_emptied_images: keep an image whose every box was dropped, as a background image.
    :param exif_stored_frame: boxes drawn on the stored pixels of an EXIF-rotated image (its declared size is
        the stored frame): ``rotate`` them with the pixels, ``drop`` the row, or ``error``.
    :param check_boxes: refuse a box reading that another bbox format or ``normalized`` explains better.
    :param aws_conn_id: Airflow connection for S3.
    """

    template_fields: Sequence[str] = ("source", "output_uri", "revision", "schema", "split_map", "max_side")

    def __init__(
        self,
        *,
        source: str,
        output_uri: str | None = None,
        revision: str | None = None,
        schema: str | Mapping[str, Any] | None = None,
        split_map: Mapping[str, str] | None = None,
        validation_fraction: float = 0.1,
        seed: int = 0,
        max_side: int | None = None,
        streaming: bool = False,
        keep_emptied_images: bool = False,
        exif_stored_frame: str = "rotate",
        check_boxes: bool = True,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        config = settings.load()
        self.source = source
        self.output_uri = output_uri or config.datasets_uri
        self.revision = revision
        self.schema = schema
        self.split_map = split_map
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.max_side = max_side
        self.streaming = streaming
        self.keep_emptied_images = keep_emptied_images
        self.exif_stored_frame = exif_stored_frame
        self.check_boxes = check_boxes
        self.aws_conn_id = aws_conn_id or config.aws_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        with input_errors_fail_without_retry():
            request = MaterializeRequest(
                source=self.source,
                output_uri=self.output_uri,
                revision=self.revision or None,
                schema=self.schema or None,
                split_map=self.split_map or None,
                validation_fraction=self.validation_fraction,
                seed=self.seed,
                max_side=self.max_side,
                streaming=self.streaming,
                keep_emptied_images=self.keep_emptied_images,
                exif_stored_frame=self.exif_stored_frame,
                check_boxes=self.check_boxes,
            )
            export = materialize(request, storage=storage_for(self.aws_conn_id))
        extra: dict[str, Any] = {
            "dataset_uri": export.dataset_uri,
            "fingerprint": export.fingerprint,
            "splits": {name: counts.model_dump() for name, counts in export.splits.items()},
            "class_histogram": export.class_histogram,
        }
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = extra
        return export.to_xcom()
