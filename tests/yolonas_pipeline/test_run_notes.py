"""The note a finished run gets, from its preflight plan and publish result (no Airflow)."""

from __future__ import annotations

from typing import Any

import pytest

from yolonas_pipeline.run_notes import MAX_NOTE_CHARS, run_note

CHAMPION = "s3://b/models/yolo_nas_s/champion.json"


def published(**changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "bundle_uri": "s3://b/models/yolo_nas_s/manual__1",
        "champion_uri": CHAMPION,
        "promoted": True,
        "promotion_reasons": ["mAP@0.50:0.95 0.4120 vs champion 0.3980: +0.0140 >= margin 0.0000"],
        "map_50": 0.61,
        "map_50_95": 0.4123,
        "champion_map_50_95": 0.398,
    }
    return {**result, **changes}


def test_a_preflight_run_is_noted_preflight() -> None:
    assert run_note(succeeded=True, plan={"preflight": True, "reused_bundle_uri": None}) == "PREFLIGHT"


def test_a_promoted_model_is_noted_with_its_score_and_the_champions() -> None:
    assert run_note(succeeded=True, plan={"preflight": False}, published=published()) == (
        "mAP@.5:.95 0.412 PROMOTED (champion was 0.398)"
    )
    first = published(champion_map_50_95=None, promotion_reasons=["there is no champion yet"])
    assert run_note(succeeded=True, published=first) == "mAP@.5:.95 0.412 PROMOTED (no champion yet)"


def test_a_model_that_is_not_promoted_is_noted_with_the_gates_reasons() -> None:
    reasons = [
        "mAP@0.50:0.95 0.3900 vs champion 0.3980: -0.0080 is below the margin 0.0000",
        "class 'Mask' AP@0.50:0.95 drops 0.5000 -> 0.4000 (-0.1000), more than the tolerance 0.0500",
    ]
    note = run_note(succeeded=True, published=published(promoted=False, promotion_reasons=reasons))
    assert note == "not promoted: " + "; ".join(reasons)


def test_without_a_gate_the_note_says_published() -> None:
    note = run_note(succeeded=True, published=published(champion_uri=None, promotion_reasons=[]))
    assert note == "mAP@.5:.95 0.412 published (no promotion gate)"


def test_a_reused_bundle_and_a_failure_are_noted() -> None:
    plan = {"preflight": False, "reused_bundle_uri": "s3://b/models/yolo_nas_s/old"}
    assert run_note(succeeded=True, plan=plan) == "reused s3://b/models/yolo_nas_s/old (trained from the same inputs)"
    assert run_note(succeeded=False, failed_tasks=["materialize"]) == "failed at materialize"
    assert run_note(succeeded=False) is None
    assert run_note(succeeded=True) is None  # e.g. the settings task's plan is missing: no note rather than a guess


@pytest.mark.parametrize("reasons", [["x" * 5000], ["y" * 400] * 10])
def test_a_note_fits_airflows_column(reasons: list[str]) -> None:
    note = run_note(succeeded=True, published=published(promoted=False, promotion_reasons=reasons))
    assert note is not None and len(note) <= MAX_NOTE_CHARS and note.endswith("...")
