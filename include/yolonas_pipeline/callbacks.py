"""Failure callbacks: one line per failure that says what failed and where the run's artifacts are.

Plain Python over the callback's context mapping (no Airflow import), so it is testable without a scheduler.
Task-level callbacks run in the task's process and land in the task log; DAG-level ones run in the DAG
processor and land in its log. Both log the same line through the ``yolonas_pipeline.failures`` logger, so
one grep (or one log-based alert) finds every failed run and its S3 location.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from yolonas_pipeline.contracts import safe_segment
from yolonas_pipeline.storage import join_uri

LOGGER_NAME = "yolonas_pipeline.failures"
_MAX_ERROR_CHARS = 300


def run_location(artifacts_root: str, run_id: str | None) -> str:
    """Where a run writes its artifacts: ``<artifacts_root>/<run id, made S3-safe>/``."""
    return join_uri(artifacts_root, safe_segment(run_id or "unknown-run")) + "/"


def failure_summary(context: Mapping[str, Any], artifacts_root: str) -> str:
    """``FAILED <dag> run <run id>: task <task> (try n of m): <error>; artifacts <uri>`` on one line."""
    dag_run = context.get("dag_run")
    ti = context.get("task_instance") or context.get("ti")
    dag_id = _attr(dag_run, "dag_id") or _attr(ti, "dag_id") or _attr(context.get("dag"), "dag_id") or "?"
    run_id = _attr(dag_run, "run_id") or context.get("run_id") or _attr(ti, "run_id")
    parts = [f"FAILED {dag_id} run {run_id}"]
    task_id = _attr(ti, "task_id")
    if task_id:
        try_number = _attr(ti, "try_number")
        max_tries = _attr(ti, "max_tries")
        tries = f" (try {try_number} of {int(max_tries) + 1})" if try_number and max_tries is not None else ""
        parts.append(f": task {task_id}{tries}")
    error = context.get("exception") or context.get("reason")
    if error:
        text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
        text = " ".join(text.split())  # one line, whatever the exception's message looks like
        if len(text) > _MAX_ERROR_CHARS:
            text = text[: _MAX_ERROR_CHARS - 3] + "..."
        parts.append(f": {text}")
    parts.append(f"; artifacts {run_location(artifacts_root, str(run_id) if run_id else None)}")
    return "".join(parts)


def log_failure(artifacts_root: str) -> Callable[[Mapping[str, Any]], None]:
    """An ``on_failure_callback`` that logs :func:`failure_summary` at ERROR level."""

    def callback(context: Mapping[str, Any]) -> None:
        try:
            line = failure_summary(context, artifacts_root)
        except Exception as exc:  # a callback must never hide the failure it reports
            line = f"FAILED (could not summarise the failure: {exc!r}); artifacts under {artifacts_root}"
        logging.getLogger(LOGGER_NAME).error("%s", line)

    callback.__name__ = "log_failure"
    callback.__qualname__ = "log_failure"
    return callback


def _attr(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def default_args(on_failure: Callable[[Mapping[str, Any]], None]) -> dict[str, Any]:
    """The pipeline DAGs' ``default_args``: no retries unless a task asks, exponential back-off when it does, and
    ``on_failure`` on every failed attempt, the retried ones too."""
    return {
        "owner": "ml-platform",
        "retries": 0,
        # Tasks that retry wait retry_delay, then twice as long each time (True would mean a constant delay).
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": on_failure,
        "on_retry_callback": on_failure,
    }
