"""The note a finished training or preflight run gets in the Airflow UI: what it ended with, in one line.

- ``PREFLIGHT``: a preflight run (it stopped before training);
- ``mAP@.5:.95 0.412 PROMOTED (champion was 0.398)``: published and promoted (``(no champion yet)`` for the
  first model);
- ``not promoted: <the gate's reasons>``: published, the champion stays;
- ``reused <bundle>``: a verified bundle trained from the same inputs was reused, nothing was trained;
- ``failed at <task>``: the run failed.

Plain Python over the preflight and publish tasks' XComs (a :class:`~yolonas_pipeline.contracts.RunPlan` and a
:class:`~yolonas_pipeline.contracts.PublishResult` as JSON); the listener that sets the note on the run
(:mod:`yolonas_pipeline.operators.listeners`, in the scheduler) is the only part that touches Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: The DAGs whose runs get a note from the pipeline.
NOTED_DAGS = frozenset({"yolonas_training", "yolonas_preflight"})
#: The tasks whose return values the note is made from.
PREFLIGHT_TASK = "preflight"
PUBLISH_TASK = "publish"
#: Airflow stores a run's note in 1000 characters.
MAX_NOTE_CHARS = 1000


def run_note(
    *,
    succeeded: bool,
    plan: Mapping[str, Any] | None = None,
    published: Mapping[str, Any] | None = None,
    failed_tasks: Sequence[str] = (),
) -> str | None:
    """The note for a finished run, from the preflight task's plan and the publish task's result (None: no note)."""
    if not succeeded:
        return _bounded(f"failed at {', '.join(failed_tasks)}") if failed_tasks else None
    if published:
        return _bounded(publish_note(published))
    if plan:
        if plan.get("preflight"):
            return "PREFLIGHT"
        if plan.get("reused_bundle_uri"):
            return _bounded(f"reused {plan['reused_bundle_uri']} (trained from the same inputs)")
    return None


def publish_note(published: Mapping[str, Any]) -> str:
    """``mAP@.5:.95 0.412 PROMOTED (champion was 0.398)`` or ``not promoted: <reasons>``."""
    reasons = [str(reason) for reason in published.get("promotion_reasons") or []]
    score = _score(published.get("map_50_95"))
    if not published.get("champion_uri"):
        return f"mAP@.5:.95 {score} published (no promotion gate)"
    if not published.get("promoted"):
        return "not promoted: " + ("; ".join(reasons) or "no reason recorded")
    champion = published.get("champion_map_50_95")
    if isinstance(champion, int | float):
        versus = f"champion was {champion:.3f}"
    elif any("no champion" in reason for reason in reasons):
        versus = "no champion yet"
    else:
        versus = "; ".join(reasons) or "no champion score"
    return f"mAP@.5:.95 {score} PROMOTED ({versus})"


def _score(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) and not isinstance(value, bool) else "n/a"


def _bounded(note: str) -> str:
    return note if len(note) <= MAX_NOTE_CHARS else note[: MAX_NOTE_CHARS - 3] + "..."
