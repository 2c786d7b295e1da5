"""The promotion gate: the rule, the champion pointer's conditional writes (moto S3 and local), and where the
champion's numbers come from."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from conftest import MotoS3

from yolonas_pipeline import promote
from yolonas_pipeline.contracts import ChampionPointer, ChampionScore, Metrics, PromotionDecision
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage


def metrics(map_50_95: float, classes: dict[str, float], *, fingerprint: str = "fp1", split: str = "test") -> Metrics:
    per_class = {
        name: {"ap_50_95": ap, "ap_50": min(1.0, ap + 0.2), "boxes": 10, "images": 5, "predictions": 12}
        | {"precision": 0.5, "recall": 0.5, "f1": 0.5}
        for name, ap in classes.items()
    }
    return Metrics.parse(
        {
            "map_50": min(1.0, map_50_95 + 0.2),
            "map_50_95": map_50_95,
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
            "best_f1": {"f1": 0.5, "score_threshold": 0.3},
            "per_class": per_class,
            "confusion_matrix": {},
            "worst_images": [],
            "split": split,
            "images": 50,
            "class_names": sorted(classes),
            "dataset_uri": f"s3://b/datasets/{fingerprint}",
            "dataset_fingerprint": fingerprint,
            "checkpoint_uri": "s3://b/runs/r/train/run/ckpt_best.pth",
            "model_name": "yolo_nas_s",
            "input_size": 640,
            "thresholds": {},
            "predictions": "predictions.json",
            "plots": {},
            "device": "cpu",
            "gpus": 0,
            "seconds": 1.0,
        },
        source="test metrics",
    )


def rescored(bundle_uri: str, scores: Metrics) -> ChampionScore:
    """The evaluate stage's re-scoring of the champion on the candidate's split."""
    return ChampionScore(
        bundle_uri=bundle_uri,
        split=scores.split,
        map_50=scores.map_50,
        map_50_95=scores.map_50_95,
        per_class={name: c.model_dump(include={"ap_50", "ap_50_95", "boxes"}) for name, c in scores.per_class.items()},
    )


def pointer_for(run_id: str, bundle_uri: str) -> ChampionPointer:
    return promote.pointer_document(
        model_name="yolo_nas_s",
        run_id=run_id,
        bundle_uri=bundle_uri,
        manifest_uri=f"{bundle_uri}/manifest.json",
        metrics=CHAMPION,
        previous=None,
    )


CHAMPION = metrics(0.40, {"coverall": 0.40, "mask": 0.40})


# -- the rule --------------------------------------------------------------------------------------------------
def test_promotes_a_better_model() -> None:
    promote_it, reasons, deltas = promote.decide(
        metrics(0.45, {"coverall": 0.47, "mask": 0.43}), CHAMPION, margin=0.01, class_ap_tolerance=0.05
    )
    assert promote_it
    assert reasons[0] == "mAP@0.50:0.95 0.4500 reaches the floor min_map_50_95 0.0500"
    assert reasons[1] == "mAP@0.50:0.95 0.4500 vs champion 0.4000: +0.0500, more than the margin 0.0100"
    assert deltas == pytest.approx({"coverall": 0.07, "mask": 0.03})


def test_better_by_more_than_the_default_margin_promotes() -> None:
    assert promote.DEFAULT_MARGIN > 0
    gain = promote.DEFAULT_MARGIN + 0.001
    better = metrics(0.40 + gain, {"coverall": 0.40 + gain, "mask": 0.40 + gain})
    promote_it, reasons, _ = promote.decide(better, CHAMPION)
    assert promote_it, reasons
    assert f"+{gain:.4f}, more than the margin {promote.DEFAULT_MARGIN:.4f}" in reasons[1]


@pytest.mark.parametrize("margin", [0.0, 0.005])
def test_a_tie_never_promotes(margin: float) -> None:
    tie = metrics(0.40, {"coverall": 0.40, "mask": 0.40})
    promote_it, reasons, _ = promote.decide(tie, CHAMPION, margin=margin)
    assert not promote_it
    assert reasons[1] == (
        f"mAP@0.50:0.95 0.4000 vs champion 0.4000: +0.0000 does not beat it by more than the margin {margin:.4f} "
        "(a tie never promotes)"
    )


def test_refuses_a_better_model_with_a_regressed_class() -> None:
    promote_it, reasons, deltas = promote.decide(
        metrics(0.45, {"coverall": 0.60, "mask": 0.30}), CHAMPION, margin=0.01, class_ap_tolerance=0.05
    )
    assert not promote_it
    assert any("'mask'" in r and "drops 0.4000 -> 0.3000" in r for r in reasons)
    assert deltas["mask"] == pytest.approx(-0.10)


def test_a_drop_within_the_tolerance_is_accepted() -> None:
    better = metrics(0.45, {"coverall": 0.56, "mask": 0.36})
    assert promote.decide(better, CHAMPION, margin=0.0, class_ap_tolerance=0.05)[0]
    assert not promote.decide(better, CHAMPION, margin=0.0, class_ap_tolerance=0.03)[0]


def test_refuses_a_gain_below_the_margin() -> None:
    promote_it, reasons, _ = promote.decide(
        metrics(0.405, {"coverall": 0.41, "mask": 0.40}), CHAMPION, margin=0.01, class_ap_tolerance=0.05
    )
    assert not promote_it and "+0.0050 does not beat it by more than the margin 0.0100" in reasons[1]
    # Strictly more than the margin: a gain of exactly the margin is not enough.
    assert not promote.decide(metrics(0.41, {"coverall": 0.41, "mask": 0.41}), CHAMPION, margin=0.01)[0]
    assert promote.decide(metrics(0.411, {"coverall": 0.411, "mask": 0.411}), CHAMPION, margin=0.01)[0]


def test_without_a_champion_the_first_model_that_reaches_the_floor_wins() -> None:
    assert promote.decide(CHAMPION, None) == (
        True,
        [
            "mAP@0.50:0.95 0.4000 reaches the floor min_map_50_95 0.0500",
            "there is no champion yet: the first model that reaches the floor wins",
        ],
        {},
    )


def test_a_first_model_below_the_floor_is_refused() -> None:
    assert promote.DEFAULT_MIN_MAP_50_95 > 0
    detects_nothing = metrics(0.0, {"coverall": 0.0, "mask": 0.0})
    promote_it, reasons, _ = promote.decide(detects_nothing, None)
    assert not promote_it
    assert reasons == [
        "mAP@0.50:0.95 0.0000 is below the floor min_map_50_95 0.0500: no model under it becomes champion, the "
        "first one included",
        "there is no champion yet",
    ]
    assert not promote.decide(metrics(0.29, {"coverall": 0.29}), None, min_map_50_95=0.3)[0]
    # 0 switches the floor off (tests whose point is elsewhere train models that detect nothing).
    assert promote.decide(detects_nothing, None, min_map_50_95=0.0)[0]


def test_the_floor_applies_with_a_champion_too() -> None:
    weak_champion = metrics(0.01, {"coverall": 0.01, "mask": 0.01})
    better_but_weak = metrics(0.03, {"coverall": 0.03, "mask": 0.03})
    promote_it, reasons, _ = promote.decide(better_but_weak, weak_champion)
    assert not promote_it
    assert "below the floor min_map_50_95 0.0500" in reasons[0] and "more than the margin" in reasons[1]


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(StageInputError, match="must not be negative"):
        promote.decide(CHAMPION, CHAMPION, margin=-0.1)
    with pytest.raises(StageInputError, match="must not be negative"):
        promote.decide(CHAMPION, CHAMPION, min_map_50_95=-0.1)
    with pytest.raises(StageInputError, match=r"the candidate has no mAP@0\.50:0\.95 to compare"):
        promote.decide(ChampionScore(bundle_uri="b", split="test", reason="not scored"), CHAMPION)


# -- the gate against S3 ---------------------------------------------------------------------------------------
class Models:
    """A models prefix in the moto bucket, with helpers to publish fake bundles (metrics.json only)."""

    def __init__(self, storage: Storage, root: str) -> None:
        self.storage, self.root = storage, root
        self.pointer_uri = promote.champion_uri(root, "yolo_nas_s")

    def bundle(self, run_id: str, run_metrics: Metrics) -> str:
        uri = f"{self.root}/yolo_nas_s/{run_id}"
        run_metrics.write(f"{uri}/metrics.json", storage=self.storage)
        return uri

    def crown(self, run_id: str, run_metrics: Metrics) -> str:
        uri = self.bundle(run_id, run_metrics)
        _, version = promote.read_champion(self.pointer_uri, storage=self.storage)
        pointer = self.pointer(run_id, run_metrics, None)
        assert promote.write_champion(self.pointer_uri, pointer, expected_version=version, storage=self.storage)
        return uri

    def pointer(self, run_id: str, run_metrics: Metrics, decision: PromotionDecision | None) -> ChampionPointer:
        uri = f"{self.root}/yolo_nas_s/{run_id}"
        return promote.pointer_document(
            model_name="yolo_nas_s",
            run_id=run_id,
            bundle_uri=uri,
            manifest_uri=f"{uri}/manifest.json",
            metrics=run_metrics,
            previous=decision.champion if decision else None,
        )

    def champion(self) -> ChampionPointer | None:
        return promote.read_champion(self.pointer_uri, storage=self.storage)[0]

    def gate(self, run_id: str, run_metrics: Metrics, **thresholds: float) -> PromotionDecision:
        return promote.run_gate(
            run_metrics,
            candidate={"run_id": run_id, "bundle_uri": self.bundle(run_id, run_metrics)},
            champion_pointer_uri=self.pointer_uri,
            storage=self.storage,
            **thresholds,
        )

    def apply(self, run_id: str, run_metrics: Metrics, decision: PromotionDecision) -> str:
        return promote.apply_decision(
            decision,
            champion_pointer_uri=self.pointer_uri,
            pointer=self.pointer(run_id, run_metrics, decision),
            storage=self.storage,
        )


@pytest.fixture
def models(moto_s3: MotoS3) -> Models:
    return Models(Storage(moto_s3.client), f"s3://{moto_s3.bucket}/promote-{uuid.uuid4().hex[:8]}/models")


def test_gate_promotes_a_better_model_and_moves_the_pointer(models: Models) -> None:
    first = models.crown("run-1", CHAMPION)
    better = metrics(0.45, {"coverall": 0.47, "mask": 0.43})
    decision = models.gate("run-2", better, margin=0.01)

    assert decision.promote and decision.champion["run_id"] == "run-1"
    assert decision.champion["metrics_source"].startswith("champion's own metrics.json")
    assert models.apply("run-2", better, decision) == "updated"
    pointer = models.champion()
    assert pointer is not None
    assert pointer.run_id == "run-2" and pointer.previous == {"run_id": "run-1", "bundle_uri": first}
    assert pointer.metrics["map_50_95"] == 0.45 and pointer.format == ChampionPointer.FORMAT
    # Applying the same decision again (a retried task) changes nothing.
    assert models.apply("run-2", better, decision) == "already"


def test_gate_refuses_a_model_with_a_regressed_class(models: Models) -> None:
    models.crown("run-1", CHAMPION)
    regressed = metrics(0.45, {"coverall": 0.60, "mask": 0.30})
    decision = models.gate("run-2", regressed, margin=0.01, class_ap_tolerance=0.05)

    assert not decision.promote
    assert any("'mask'" in reason for reason in decision.reasons)
    assert models.apply("run-2", regressed, decision) == "unchanged"
    assert models.champion().run_id  # type: ignore[union-attr] == "run-1"


def test_the_first_model_becomes_the_champion(models: Models) -> None:
    decision = models.gate("run-1", CHAMPION)
    assert decision.promote and decision.champion is None and decision.champion_version is None
    assert decision.min_map_50_95 == promote.DEFAULT_MIN_MAP_50_95
    assert models.apply("run-1", CHAMPION, decision) == "updated"
    assert models.champion().run_id  # type: ignore[union-attr] == "run-1"


def test_a_first_model_below_the_floor_is_not_crowned(models: Models) -> None:
    weak = metrics(0.02, {"coverall": 0.02, "mask": 0.02})
    decision = models.gate("run-1", weak, min_map_50_95=0.05)
    assert not decision.promote and decision.champion is None
    assert "0.0200 is below the floor min_map_50_95 0.0500" in decision.summary()
    assert decision.summary().startswith("promotion gate: KEEP CHAMPION")
    assert models.apply("run-1", weak, decision) == "unchanged"
    assert models.champion() is None


def test_a_tie_with_the_champion_leaves_the_pointer(models: Models) -> None:
    models.crown("run-1", CHAMPION)
    tie = metrics(0.40, {"coverall": 0.40, "mask": 0.40})
    decision = models.gate("run-2", tie)
    assert not decision.promote and "(a tie never promotes)" in decision.reasons[1]
    assert models.apply("run-2", tie, decision) == "unchanged"
    assert models.champion().run_id  # type: ignore[union-attr] == "run-1"


def test_a_champion_scored_on_another_split_is_not_compared(models: Models) -> None:
    models.crown("run-1", metrics(0.40, {"coverall": 0.4, "mask": 0.4}, fingerprint="old-export"))
    decision = models.gate("run-2", metrics(0.9, {"coverall": 0.9, "mask": 0.9}))
    assert not decision.promote
    assert "not the same split" in decision.reasons[0]


def test_the_evaluate_stages_rescoring_of_the_champion_is_used(models: Models) -> None:
    champion_bundle = models.crown("run-1", metrics(0.40, {"coverall": 0.4, "mask": 0.4}, fingerprint="old-export"))
    candidate = metrics(0.45, {"coverall": 0.46, "mask": 0.44})
    candidate = candidate.model_copy(
        update={"champion": rescored(champion_bundle, metrics(0.30, {"coverall": 0.3, "mask": 0.3}))}
    )
    decision = models.gate("run-2", candidate, margin=0.1)
    assert decision.promote, decision.reasons
    assert decision.champion["metrics_source"].startswith("champion re-evaluated on this split")
    assert decision.champion["map_50_95"] == 0.30


def test_two_runs_cannot_both_win(models: Models) -> None:
    models.crown("run-1", CHAMPION)
    second, third = metrics(0.45, {"coverall": 0.45, "mask": 0.45}), metrics(0.50, {"coverall": 0.5, "mask": 0.5})
    # Both decide against run-1 before either writes.
    decision_2, decision_3 = models.gate("run-2", second), models.gate("run-3", third)
    assert decision_2.promote and decision_3.promote
    assert decision_2.champion_version == decision_3.champion_version

    assert models.apply("run-2", second, decision_2) == "updated"
    assert models.apply("run-3", third, decision_3) == "conflict"
    # A stale version is refused by S3 itself (If-Match), not only by the read-compare in apply_decision.
    stale = models.pointer("run-3", third, None)
    version = decision_3.champion_version
    assert not promote.write_champion(models.pointer_uri, stale, expected_version=version, storage=models.storage)
    assert not promote.write_champion(models.pointer_uri, stale, expected_version=None, storage=models.storage)
    assert models.champion().run_id  # type: ignore[union-attr] == "run-2"

    # The loser decides again, against the new champion, and records each decision it makes.
    recorded: list[PromotionDecision] = []
    final, outcome = promote.gate_and_apply(
        third,
        candidate={"run_id": "run-3", "bundle_uri": f"{models.root}/yolo_nas_s/run-3"},
        make_pointer=lambda d: models.pointer("run-3", third, d),
        champion_pointer_uri=models.pointer_uri,
        storage=models.storage,
        margin=0.0,
        class_ap_tolerance=0.05,
        record=recorded.append,
        decision=decision_3,
    )
    assert outcome == "updated" and final.champion["run_id"] == "run-2"
    assert [d.champion["run_id"] for d in recorded] == ["run-2"]
    assert models.champion().previous["run_id"] == "run-2"  # type: ignore[union-attr,index]


def test_the_local_pointer_is_conditional_too(tmp_path: Path) -> None:
    storage = Storage()
    uri = str(tmp_path / "models" / "yolo_nas_s" / "champion.json")
    a, b, c = pointer_for("a", "x"), pointer_for("b", "y"), pointer_for("c", "z")
    assert promote.read_champion(uri, storage=storage) == (None, None)
    assert promote.write_champion(uri, a, expected_version=None, storage=storage)
    pointer, version = promote.read_champion(uri, storage=storage)
    assert pointer == a and version
    assert not promote.write_champion(uri, b, expected_version=None, storage=storage)
    assert promote.write_champion(uri, b, expected_version=version, storage=storage)
    assert not promote.write_champion(uri, c, expected_version=version, storage=storage)
    assert promote.read_champion(uri, storage=storage)[0] == b


def test_a_recorded_decision_round_trips() -> None:
    decision = PromotionDecision(
        promote=True,
        reasons=["x"],
        margin=0.0,
        class_ap_tolerance=0.05,
        candidate={"run_id": "r"},
        champion=None,
        champion_version='"e"',
        decided_at="2026-12-01T00:00:00+00:00",
    )
    assert PromotionDecision.parse(json.loads(decision.model_dump_json()), source="manifest") == decision
    assert decision.summary() == "promotion gate: PROMOTE: x"
