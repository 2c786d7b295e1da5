"""The reference snapshot: the export the production model (the champion) was trained on.

``<models>/<model>/champion.json`` (a :class:`~yolonas_pipeline.contracts.ChampionPointer`) names the published
bundle, whose :class:`~yolonas_pipeline.contracts.BundleManifest` records the dataset export it was trained on.
"""

from __future__ import annotations

import logging
from typing import Any

from yolonas_pipeline.contracts import BundleManifest, ChampionPointer, DatasetManifest, Part
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage

logger = logging.getLogger(__name__)


class ChampionReference(Part):
    """The production model and the snapshot it was trained on (or a reference export given by hand)."""

    champion_uri: str
    bundle_uri: str
    run_id: str | None
    dataset_uri: str
    fingerprint: str | None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def for_export(cls, dataset_uri: str, *, storage: Storage) -> ChampionReference:
        """A reference that is an export named by hand (no champion): its manifest must be complete."""
        manifest = DatasetManifest.read_export(dataset_uri, storage=storage)
        fingerprint = manifest.fingerprint
        return cls(champion_uri="", bundle_uri="", run_id=None, dataset_uri=dataset_uri, fingerprint=fingerprint)


def read_champion(pointer_uri: str, *, storage: Storage) -> ChampionReference | None:
    """Follow ``champion.json`` to its bundle's manifest and the dataset it records; None if no champion.

    A pointer or manifest that is not a valid document, or a manifest without ``dataset.uri``, is a
    :class:`StageInputError` that names the file.
    """
    try:
        pointer = ChampionPointer.read(pointer_uri, storage=storage)
    except FileNotFoundError:
        return None
    try:
        manifest = BundleManifest.read_bundle(pointer.bundle_uri, storage=storage)
    except StageInputError as exc:
        raise StageInputError(f"the champion {pointer_uri} points at {pointer.bundle_uri}: {exc}") from None
    dataset_uri = manifest.dataset_uri
    if not dataset_uri:
        raise StageInputError(
            f"the manifest of {pointer.bundle_uri} (the champion {pointer_uri}) records no dataset.uri: cannot "
            "tell what the champion was trained on"
        )
    fingerprint = manifest.dataset.get("fingerprint")
    reference = ChampionReference(
        champion_uri=pointer_uri,
        bundle_uri=pointer.bundle_uri,
        run_id=pointer.run_id,
        dataset_uri=dataset_uri,
        fingerprint=str(fingerprint) if fingerprint else None,
    )
    logger.info("drift: champion %s (run %s) trained on %s", reference.bundle_uri, reference.run_id, dataset_uri)
    return reference
