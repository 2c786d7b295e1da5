"""The promotion gate: does a newly published model replace the current champion?

The champion is named by one small object, ``<models_uri>/<model>/champion.json``, that points at a
published bundle. A candidate becomes the champion only if

- its mAP@0.50:0.95 reaches the floor ``min_map_50_95`` (absolute; the first champion too: a model that
  detects nothing scores 0 and is never crowned), and, when there is a champion, **on the same evaluation split**,
- its mAP@0.50:0.95 beats the champion's by more than ``margin`` (absolute; a tie never promotes), and
- no class's AP@0.50:0.95 drops by more than ``class_ap_tolerance`` (absolute).

Every reason of a decision names the candidate's figure, the one it was compared with and the rule.

"The same split" is checked, not assumed: the champion's numbers come from the evaluate stage, which
re-scores the champion's checkpoint on the candidate's split (``metrics.json["champion"]``), or from the
champion's own metrics.json when that was computed on the same dataset fingerprint and split. Otherwise
the gate refuses and says why.

The pointer changes atomically: one PUT of the whole document, conditional on the version read when the
decision was made (S3 ``If-Match`` on the ETag, or ``If-None-Match: *`` when there is no champion yet; a
file lock and a content hash locally). Two runs that both beat the old champion cannot both win: the
second write fails, and the loser re-decides against the new champion.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from yolonas_pipeline.contracts import (
    METRICS_FILE,
    ChampionPointer,
    ChampionScore,
    Metrics,
    PromotionDecision,
    champion_uri,
)
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.run_settings import DEFAULT_CLASS_AP_TOLERANCE, DEFAULT_MARGIN, DEFAULT_MIN_MAP_50_95
from yolonas_pipeline.storage import Storage, is_s3_uri, join_uri, split_s3_uri

log = logging.getLogger(__name__)
METRIC = "map_50_95"
__all__ = [
    "DEFAULT_CLASS_AP_TOLERANCE",
    "DEFAULT_MARGIN",
    "DEFAULT_MIN_MAP_50_95",
    "PromotionDecision",
    "apply_decision",
    "champion_uri",
    "decide",
    "gate_and_apply",
    "pointer_document",
    "read_champion",
    "run_gate",
    "write_champion",
]
#: S3 error codes of a conditional write that lost: the object changed (412) or a concurrent write (409).
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
#: Two figures closer than this are equal (mAP is an average of a few hundred precisions; float noise is ~1e-16).
_EQUAL = 1e-9


class Scores(Protocol):
    """What the rule compares: :class:`Metrics` or :class:`ChampionScore` (same split)."""

    @property
    def map_50_95(self) -> float | None: ...

    @property
    def per_class(self) -> Mapping[str, Any]: ...


# -- the rule (pure) -----------------------------------------------------------------------------------------
def decide(
    candidate: Scores,
    champion: Scores | None,
    *,
    margin: float = DEFAULT_MARGIN,
    class_ap_tolerance: float = DEFAULT_CLASS_AP_TOLERANCE,
    min_map_50_95: float = DEFAULT_MIN_MAP_50_95,
) -> tuple[bool, list[str], dict[str, float | None]]:
    """Compare the candidate's scores with the floor and with the champion's on the same split (mAP@0.50:0.95
    and per-class AP).

    Returns ``(promote, reasons, per-class AP deltas)``; every rule adds a reason, passed or failed.
    """
    if margin < 0 or class_ap_tolerance < 0 or min_map_50_95 < 0:
        raise StageInputError(
            f"promotion_margin={margin}, class_ap_tolerance={class_ap_tolerance} and min_map_50_95={min_map_50_95} "
            "must not be negative"
        )
    new = _number(candidate, "the candidate")
    reasons: list[str] = []
    # The floor applies to every candidate: a champion crowned with a lower floor must not open the way for a
    # model that barely beats it.
    promote = new >= min_map_50_95 - _EQUAL
    if promote:
        reasons.append(f"mAP@0.50:0.95 {new:.4f} reaches the floor min_map_50_95 {min_map_50_95:.4f}")
    else:
        reasons.append(
            f"mAP@0.50:0.95 {new:.4f} is below the floor min_map_50_95 {min_map_50_95:.4f}: no model under it "
            "becomes champion, the first one included"
        )
    if champion is None:
        first = ": the first model that reaches the floor wins" if promote else ""
        reasons.append(f"there is no champion yet{first}")
        return promote, reasons, {}
    old = _number(champion, "the champion")
    gain = new - old
    if gain > margin + _EQUAL:
        reasons.append(f"mAP@0.50:0.95 {new:.4f} vs champion {old:.4f}: {gain:+.4f}, more than the margin {margin:.4f}")
    else:
        promote = False
        reasons.append(
            f"mAP@0.50:0.95 {new:.4f} vs champion {old:.4f}: {gain:+.4f} does not beat it by more than the margin "
            f"{margin:.4f} (a tie never promotes)"
        )
    deltas: dict[str, float | None] = {}
    regressed = False
    for name in sorted(set(candidate.per_class) | set(champion.per_class)):
        a = _class_ap(candidate, name)
        b = _class_ap(champion, name)
        if a is None or b is None:
            deltas[name] = None
            continue
        deltas[name] = a - b
        if a - b < -class_ap_tolerance - 1e-12:
            promote, regressed = False, True
            reasons.append(
                f"class {name!r} AP@0.50:0.95 drops {b:.4f} -> {a:.4f} ({a - b:+.4f}), more than the tolerance "
                f"{class_ap_tolerance:.4f}"
            )
    if not regressed:
        reasons.append(f"no class AP@0.50:0.95 drops by more than {class_ap_tolerance:.4f}")
    return promote, reasons, deltas


def _class_ap(scores: Scores, name: str) -> float | None:
    entry = scores.per_class.get(name)
    value = getattr(entry, "ap_50_95", None)
    return float(value) if value is not None else None


def _number(scores: Scores, who: str) -> float:
    value = scores.map_50_95
    if value is None:
        raise StageInputError(f"{who} has no mAP@0.50:0.95 to compare")
    return float(value)


# -- the pointer ---------------------------------------------------------------------------------------------
def read_champion(uri: str, *, storage: Storage) -> tuple[ChampionPointer | None, str | None]:
    """The champion pointer and its version (S3 ETag, or the SHA-256 of a local file); ``(None, None)`` if none."""
    if not is_s3_uri(uri):
        path = Path(uri)
        if not path.is_file():
            return None, None
        data = path.read_bytes()
        return ChampionPointer.parse(data, source=uri), hashlib.sha256(data).hexdigest()
    bucket, key = split_s3_uri(uri)
    try:
        response = storage._s3_call(uri, lambda: storage.s3.get_object(Bucket=bucket, Key=key))
    except FileNotFoundError:
        return None, None
    return ChampionPointer.parse(response["Body"].read(), source=uri), str(response["ETag"])


def write_champion(uri: str, pointer: ChampionPointer, *, expected_version: str | None, storage: Storage) -> bool:
    """Replace the pointer in one write, only if it is still at ``expected_version`` (``None``: absent).

    Returns False when another writer got there first.
    """
    body = pointer.to_json().encode("utf-8")
    if not is_s3_uri(uri):
        path = Path(uri)
        with _locked(path):
            current = path.read_bytes() if path.is_file() else None
            version = hashlib.sha256(current).hexdigest() if current is not None else None
            if version != expected_version:
                return False
            storage.write_bytes(uri, body)  # temporary file + rename: readers see old or new, never half
        return True

    from botocore.exceptions import ClientError

    bucket, key = split_s3_uri(uri)
    condition = {"IfMatch": expected_version} if expected_version else {"IfNoneMatch": "*"}
    try:
        storage._s3_call(
            uri,
            lambda: storage.s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=body,
                ContentType="application/json",
                ChecksumAlgorithm="SHA256",
                **condition,
            ),
        )
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) in _CONFLICT_CODES:
            return False
        raise
    return True


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def pointer_document(
    *,
    model_name: str,
    run_id: str,
    bundle_uri: str,
    manifest_uri: str,
    metrics: Metrics,
    previous: Mapping[str, Any] | None,
) -> ChampionPointer:
    """The champion.json document: where the bundle is and what it scored."""
    return ChampionPointer.parse(
        {
            "model_name": model_name,
            "run_id": run_id,
            "bundle_uri": bundle_uri,
            "manifest_uri": manifest_uri,
            "metrics": {
                "split": metrics.split,
                "dataset_fingerprint": metrics.dataset_fingerprint,
                "images": metrics.images,
                "map_50": metrics.map_50,
                "map_50_95": metrics.map_50_95,
                "precision": metrics.precision,
                "recall": metrics.recall,
                "f1": metrics.f1,
            },
            "input_size": metrics.input_size,
            "class_names": metrics.class_names,
            "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "previous": {"run_id": previous.get("run_id"), "bundle_uri": previous.get("bundle_uri")}
            if previous
            else None,
        },
        source="the new champion pointer",
    )


# -- the gate ------------------------------------------------------------------------------------------------
def same_split(a: Metrics, b: Metrics) -> bool:
    """Both metrics documents scored the same images: same dataset export (fingerprint) and split."""
    return bool(a.dataset_fingerprint) and (a.dataset_fingerprint, a.split) == (b.dataset_fingerprint, b.split)


def run_gate(
    candidate_metrics: Metrics,
    *,
    candidate: Mapping[str, Any],
    champion_pointer_uri: str,
    storage: Storage,
    margin: float = DEFAULT_MARGIN,
    class_ap_tolerance: float = DEFAULT_CLASS_AP_TOLERANCE,
    min_map_50_95: float = DEFAULT_MIN_MAP_50_95,
) -> PromotionDecision:
    """Read the current champion and decide. ``candidate``: ``{"run_id", "bundle_uri", ...}`` of the new model."""
    pointer, version = read_champion(champion_pointer_uri, storage=storage)
    summary: dict[str, Any] = {"run_id": candidate.get("run_id"), "bundle_uri": candidate.get("bundle_uri")}
    summary.update(
        {
            "split": candidate_metrics.split,
            "dataset_fingerprint": candidate_metrics.dataset_fingerprint,
            "map_50": candidate_metrics.map_50,
            METRIC: candidate_metrics.map_50_95,
        }
    )

    def decision(
        promote: bool,
        reasons: list[str],
        champion: dict[str, Any] | None,
        deltas: dict[str, float | None] | None = None,
    ) -> PromotionDecision:
        return PromotionDecision(
            promote=promote,
            reasons=reasons,
            margin=margin,
            class_ap_tolerance=class_ap_tolerance,
            min_map_50_95=min_map_50_95,
            candidate=summary,
            champion=champion,
            class_ap_deltas=deltas or {},
            champion_version=version,
            decided_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    thresholds = {"margin": margin, "class_ap_tolerance": class_ap_tolerance, "min_map_50_95": min_map_50_95}
    if pointer is None:
        promote, reasons, _ = decide(candidate_metrics, None, **thresholds)
        return decision(promote, reasons, None)
    champion_summary: dict[str, Any] = {"run_id": pointer.run_id, "bundle_uri": pointer.bundle_uri}
    if pointer.bundle_uri == candidate.get("bundle_uri"):
        return decision(True, ["this bundle is already the champion"], champion_summary)
    baseline, source = champion_metrics(candidate_metrics, pointer, storage=storage)
    if baseline is None:
        return decision(False, [source], champion_summary)
    champion_summary.update({"metrics_source": source, "map_50": baseline.map_50, METRIC: baseline.map_50_95})
    promote, reasons, deltas = decide(candidate_metrics, baseline, **thresholds)
    return decision(promote, reasons, champion_summary, deltas)


def champion_metrics(
    candidate_metrics: Metrics, pointer: ChampionPointer, *, storage: Storage
) -> tuple[Metrics | ChampionScore | None, str]:
    """The champion's numbers on the candidate's split and where they came from, or ``(None, why not)``."""
    rescored = candidate_metrics.champion
    if rescored is not None and rescored.bundle_uri == pointer.bundle_uri:
        if rescored.map_50_95 is not None:
            return rescored, "champion re-evaluated on this split by the evaluate stage"
        if rescored.reason:
            return None, f"the champion could not be compared: {rescored.reason}"
    bundle = pointer.bundle_uri
    try:
        own = Metrics.read(join_uri(bundle, METRICS_FILE), storage=storage)
    except FileNotFoundError:
        return None, f"the champion's metrics.json is missing from {bundle}; cannot compare"
    if same_split(own, candidate_metrics):
        return own, "champion's own metrics.json (same dataset fingerprint and split)"
    return None, (
        f"the champion was evaluated on {own.dataset_fingerprint}/{own.split} and the candidate on "
        f"{candidate_metrics.dataset_fingerprint}/{candidate_metrics.split}: not the same split, and "
        "the evaluate stage did not re-score the champion (champion_uri unset?); replace champion.json by hand "
        "to accept this model"
    )


def apply_decision(
    decision: PromotionDecision,
    *,
    champion_pointer_uri: str,
    pointer: ChampionPointer,
    storage: Storage,
) -> str:
    """Carry out a decision. Returns ``"unchanged"`` (not promoted), ``"updated"``, ``"already"`` (the
    pointer already names this bundle: a retried publish) or ``"conflict"`` (the champion changed since the
    decision; decide again)."""
    if not decision.promote:
        return "unchanged"
    current, version = read_champion(champion_pointer_uri, storage=storage)
    if current is not None and current.bundle_uri == pointer.bundle_uri:
        return "already"
    if version != decision.champion_version:
        return "conflict"
    ok = write_champion(champion_pointer_uri, pointer, expected_version=version, storage=storage)
    return "updated" if ok else "conflict"


def gate_and_apply(
    candidate_metrics: Metrics,
    *,
    candidate: Mapping[str, Any],
    make_pointer: Callable[[PromotionDecision], ChampionPointer],
    champion_pointer_uri: str,
    storage: Storage,
    margin: float,
    class_ap_tolerance: float,
    record: Callable[[PromotionDecision], None],
    min_map_50_95: float = DEFAULT_MIN_MAP_50_95,
    decision: PromotionDecision | None = None,
    attempts: int = 3,
) -> tuple[PromotionDecision, str]:
    """Decide (unless ``decision`` is given), ``record`` the decision (the caller writes the manifest), then
    move the pointer; when another run changed the champion meanwhile, decide again against it."""
    for attempt in range(attempts):
        if decision is None:
            decision = run_gate(
                candidate_metrics,
                candidate=candidate,
                champion_pointer_uri=champion_pointer_uri,
                storage=storage,
                margin=margin,
                class_ap_tolerance=class_ap_tolerance,
                min_map_50_95=min_map_50_95,
            )
            record(decision)
        log.info("%s", decision.summary())
        outcome = apply_decision(
            decision, champion_pointer_uri=champion_pointer_uri, pointer=make_pointer(decision), storage=storage
        )
        if outcome != "conflict":
            log.info("champion pointer %s: %s", champion_pointer_uri, outcome)
            return decision, outcome
        log.info(
            "champion pointer %s changed since the decision (attempt %d); re-deciding",
            champion_pointer_uri,
            attempt + 1,
        )
        decision = None
    raise RuntimeError(f"{champion_pointer_uri} kept changing during {attempts} attempts to promote; retry the task")
