"""Champion re-scoring's refusals: each case that cannot be compared gives a reason, and no score, before any
model is loaded. (The scored case, on a trained checkpoint, is in ../test_evaluation.py.)"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from yolonas_pipeline.contracts import BundleManifest, ChampionPointer, FileEntry
from yolonas_pipeline.storage import Storage
from yolonas_pipeline.trainer.champion import read_pointer, rescore_champion
from yolonas_pipeline.trainer.inference import ScoringOptions

CLASSES = ["cat", "dog"]
MODEL_BYTES = b"not really a checkpoint"


def publish(root: Path, *, class_names: list[str], files: dict[str, FileEntry] | None = None) -> str:
    """A champion pointer under ``root`` naming a bundle with a model.pth (``MODEL_BYTES``)."""
    storage = Storage()
    bundle = root / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "model.pth").write_bytes(MODEL_BYTES)
    entry = FileEntry(sha256=hashlib.sha256(MODEL_BYTES).hexdigest(), size=len(MODEL_BYTES))
    BundleManifest(
        published_at="2026-12-01T00:00:00+00:00",
        code_version={},
        run_id="champion-run",
        model_name="yolo_nas_s",
        class_names=class_names,
        input_size=96,
        dataset={},
        base_weights={},
        evaluation={},
        training={},
        compute={},
        files={"model.pth": entry} if files is None else files,
    ).write(str(bundle / "manifest.json"), storage=storage)
    pointer = root / "champion.json"
    ChampionPointer(
        model_name="yolo_nas_s",
        run_id="champion-run",
        bundle_uri=str(bundle),
        manifest_uri=str(bundle / "manifest.json"),
        metrics={},
        promoted_at="2026-12-01T00:00:00+00:00",
    ).write(str(pointer), storage=storage)
    return str(pointer)


def rescore(pointer_uri: str, tmp_path: Path) -> dict[str, object] | None:
    score = rescore_champion(
        pointer_uri,
        truths=[],
        images_dir=tmp_path,
        class_names=CLASSES,
        split="validation",
        fingerprint="f1",
        options=ScoringOptions(score_threshold=0.1),
        work_dir=tmp_path,
        storage=Storage(),
        device="cpu",
    )
    return None if score is None else score.model_dump()


def test_no_pointer_no_champion(tmp_path: Path) -> None:
    assert read_pointer(str(tmp_path / "champion.json"), storage=Storage()) is None
    assert rescore(str(tmp_path / "champion.json"), tmp_path) is None


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("other classes", "the champion's classes ['dog', 'cat'] are not this dataset's ['cat', 'dog']"),
        ("no model.pth", "has no model.pth in its manifest"),
        ("checksum", "model.pth does not match the SHA-256 in its manifest"),
        ("no manifest", "the champion bundle cannot be used"),
    ],
)
def test_a_champion_that_cannot_be_compared_gets_a_reason(tmp_path: Path, case: str, reason: str) -> None:
    pointer = publish(tmp_path, class_names=["dog", "cat"] if case == "other classes" else CLASSES)
    bundle = tmp_path / "bundle"
    storage = Storage()
    manifest = BundleManifest.read_bundle(str(bundle), storage=storage)
    if case == "no model.pth":
        BundleManifest.parse({**manifest.to_xcom(), "files": {}}, source="test").write(
            str(bundle / "manifest.json"), storage=storage
        )
    elif case == "checksum":
        (bundle / "model.pth").write_bytes(b"tampered")
    elif case == "no manifest":
        (bundle / "manifest.json").unlink()
    score = rescore(pointer, tmp_path)
    assert score is not None
    assert reason in str(score["reason"]), score
    numbers = {key: score[key] for key in ("map_50", "map_50_95", "precision", "recall", "f1", "model_sha256")}
    assert numbers == dict.fromkeys(numbers), "no numbers for a champion that was not scored"
    assert (score["run_id"], score["split"], score["dataset_fingerprint"]) == ("champion-run", "validation", "f1")
