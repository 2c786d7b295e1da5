"""Input errors fail their task at once: a retry cannot fix a wrong path, field or value."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from airflow.sdk.exceptions import AirflowFailException

from yolonas_pipeline.errors import StageInputError


class StageInputFailure(AirflowFailException, StageInputError):
    """A :class:`StageInputError` raised as :class:`AirflowFailException`, which Airflow never retries."""


@contextlib.contextmanager
def input_errors_fail_without_retry() -> Iterator[None]:
    """Re-raise a :class:`StageInputError` as :class:`StageInputFailure`, with the same message."""
    try:
        yield
    except StageInputFailure:
        raise
    except StageInputError as exc:
        raise StageInputFailure(str(exc)) from exc
