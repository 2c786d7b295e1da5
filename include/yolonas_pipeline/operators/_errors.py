"""Input errors fail their task at once: a retry cannot fix a wrong path, field or value."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException

from yolonas_pipeline.errors import StageInputError


@contextlib.contextmanager
def input_errors_fail_without_retry() -> Iterator[None]:
    """Turn a :class:`StageInputError` into :class:`AirflowFailException`, which Airflow never retries."""
    try:
        yield
    except StageInputError as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
