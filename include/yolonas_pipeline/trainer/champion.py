"""Champion re-scoring: the current champion's model scored on the candidate's split, so the promotion gate
compares like with like (same images, same thresholds, same code)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from yolonas_pipeline.contracts import BundleManifest, ChampionPointer, ChampionScore, ClassScore
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage, join_uri, sha256_file
from yolonas_pipeline.trainer import sg
from yolonas_pipeline.trainer.inference import ScoringOptions, predict_and_score
from yolonas_pipeline.trainer.scoring import ImageTruth

log = logging.getLogger(__name__)

#: The bundle file that holds the champion's weights.
MODEL_FILE = "model.pth"


def read_pointer(uri: str, *, storage: Storage) -> ChampionPointer | None:
    """The champion pointer at ``uri``; ``None`` when there is no champion yet."""
    try:
        return ChampionPointer.read(uri, storage=storage)
    except FileNotFoundError:
        return None


def rescore_champion(
    champion_uri: str,
    *,
    truths: Sequence[ImageTruth],
    images_dir: Path,
    class_names: list[str],
    split: str,
    fingerprint: str | None,
    options: ScoringOptions,
    work_dir: Path,
    storage: Storage,
    device: str,
) -> ChampionScore | None:
    """Score the champion ``champion_uri`` points at on the same images, for the promotion gate.

    ``None`` without a champion; a score with a ``reason`` and no numbers when it cannot be compared
    (other classes, incomplete bundle, checksum mismatch)."""
    pointer = read_pointer(champion_uri, storage=storage)
    if pointer is None:
        log.info("no champion at %s: nothing to compare with", champion_uri)
        return None
    bundle_uri = pointer.bundle_uri

    def score(**fields: Any) -> ChampionScore:
        return ChampionScore(
            bundle_uri=bundle_uri, run_id=pointer.run_id, split=split, dataset_fingerprint=fingerprint, **fields
        )

    def not_comparable(reason: str) -> ChampionScore:
        log.info("champion %s: %s", bundle_uri, reason)
        return score(reason=reason)

    try:
        bundle = BundleManifest.read_bundle(bundle_uri, storage=storage)
    except StageInputError as exc:
        return not_comparable(f"the champion bundle cannot be used: {exc}")
    if list(bundle.class_names) != class_names:
        return not_comparable(f"the champion's classes {bundle.class_names} are not this dataset's {class_names}")
    entry = bundle.files.get(MODEL_FILE)
    if entry is None:
        return not_comparable(f"the champion bundle {bundle_uri} has no {MODEL_FILE} in its manifest")
    local = work_dir / "champion.pth"
    storage.download_file(join_uri(bundle_uri, MODEL_FILE), local)
    if sha256_file(local) != entry.sha256:
        return not_comparable(f"{bundle_uri}/{MODEL_FILE} does not match the SHA-256 in its manifest")

    model = sg.load_trained(bundle.model_name, len(class_names), local, device=device)
    log.info(
        "scoring the champion %s (%s, input %d) on %s for the promotion gate",
        bundle_uri,
        bundle.model_name,
        bundle.input_size,
        split,
    )
    _, scored = predict_and_score(
        model,
        truths,
        images_dir=images_dir,
        class_names=class_names,
        input_size=bundle.input_size,
        options=options,
        device=device,
    )
    log.info("champion on %s: mAP@0.50=%.4f mAP@0.50:0.95=%.4f", split, scored.map_50, scored.map_50_95)
    return score(
        model_name=bundle.model_name,
        input_size=bundle.input_size,
        model_sha256=entry.sha256,
        map_50=scored.map_50,
        map_50_95=scored.map_50_95,
        precision=scored.precision_at_threshold,
        recall=scored.recall_at_threshold,
        f1=scored.f1_at_threshold,
        per_class={
            name: ClassScore(ap_50=e["ap_50"], ap_50_95=e["ap_50_95"], boxes=e["boxes"])
            for name, e in scored.per_class.items()
        },
    )
