"""Small helpers shared by the trainer commands: log lines that reach the Airflow task log, JSON values."""

from __future__ import annotations

import math
import sys
from typing import Any


def log(message: str) -> None:
    """One line on the real stdout (super-gradients tees sys.stdout; the task log reads the process's)."""
    stream = getattr(sys, "__stdout__", None) or sys.stdout
    stream.write(f"[yolonas] {message}\n")
    stream.flush()


def to_jsonable(value: Any) -> Any:
    """numpy / torch scalars (super-gradients returns np.float32) to plain floats; NaN to None."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
