"""Tests that run inside the trainer environment (torch + super-gradients), by that environment's pytest.

The Airflow environment has no torch, so there these modules are not collected; ``test_training.py`` (one
level up) runs them as ``.venvs/trainer/bin/python -m pytest`` and fails with their report. It hands over a
materialized sample export in ``YOLONAS_TEST_EXPORT``.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest

#: The variable that names the local export (manifest.json, annotations/, images/) the tests read.
EXPORT_VARIABLE = "YOLONAS_TEST_EXPORT"

if importlib.util.find_spec("super_gradients") is None:
    collect_ignore_glob = ["test_*.py"]
else:
    from yolonas_pipeline.trainer import compat

    # As the trainer command does, before super-gradients is first imported.
    compat.apply(log_dir=tempfile.mkdtemp(prefix="yolonas-sg-logs-"))


@pytest.fixture(scope="session")
def export_dir() -> Path:
    value = os.environ.get(EXPORT_VARIABLE)
    if not value:
        pytest.fail(f"{EXPORT_VARIABLE} is not set: these tests run through ../test_training.py")
    path = Path(value)
    assert (path / "manifest.json").is_file(), f"{path} is not a materialized export"
    return path
