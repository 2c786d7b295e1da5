"""The trainer imports only the contracts and the shared helpers, never the orchestration side's modules.

The trainer image and a local trainer subprocess carry the whole package, but the trainer must not depend on
what the Airflow side does: it reads and writes the documents of :mod:`yolonas_pipeline.contracts`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

#: Modules of the orchestration side (a trailing ``*``: every module whose name starts so).
ORCHESTRATION = (
    "materialize*",
    "evaluate",
    "promote",
    "publish",
    "settings",
    "run_settings",
    "train",
    "drift*",
    "checkpoint",
    "operators",
    "embedded",
    "callbacks",
    "local_runner",
    "trainer_command",
)

IMPORT_ALL = """
import json, pkgutil, sys, tempfile
from yolonas_pipeline.trainer import compat
compat.apply(log_dir=tempfile.mkdtemp())
import importlib, yolonas_pipeline.trainer as trainer
names = [m.name for m in pkgutil.walk_packages(trainer.__path__, "yolonas_pipeline.trainer.")]
for name in names:
    importlib.import_module(name)
print("IMPORTED " + json.dumps({"submodules": names, "modules": sorted(sys.modules)}))
"""


def is_orchestration(module: str) -> bool:
    for pattern in ORCHESTRATION:
        name = "yolonas_pipeline." + pattern.rstrip("*")
        if module == name or module.startswith(name + ".") or (pattern.endswith("*") and module.startswith(name)):
            return True
    return False


def test_the_pattern_matches_what_it_should() -> None:
    assert is_orchestration("yolonas_pipeline.materialize_pool") and is_orchestration("yolonas_pipeline.drift")
    assert is_orchestration("yolonas_pipeline.operators.trainer") and is_orchestration("yolonas_pipeline.train")
    assert not is_orchestration("yolonas_pipeline.trainer.training")
    assert not is_orchestration("yolonas_pipeline.trainer")
    assert not is_orchestration("yolonas_pipeline.contracts")


@pytest.mark.trainer
def test_the_trainer_imports_no_orchestration_module(trainer_python: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "include"), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    run = subprocess.run(
        [str(trainer_python), "-c", IMPORT_ALL], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("IMPORTED "))[9:])
    # Every module of the package was imported (the check covers them all).
    assert {"yolonas_pipeline.trainer.cli", "yolonas_pipeline.trainer.training"} <= set(found["submodules"])
    offending = [name for name in found["modules"] if is_orchestration(name)]
    assert offending == [], f"the trainer imports orchestration modules: {', '.join(offending)}"
