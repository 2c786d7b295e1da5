"""A real (tiny) trained checkpoint for the evaluation and export tests, made once per test session.

One epoch at 96 px on the 24-image sample dataset: ~30 s on two idle cores. Its mAP is ~0, which is fine
for what these tests check (agreement with pycocotools and with onnxruntime, files and formats). Both test
modules call :func:`trained_model`; the second finds the first's result under pytest's session temp dir.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
INPUT_SIZE = 96
CLASS_NAMES = ["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]


@dataclass(frozen=True)
class TrainedModel:
    dataset_dir: Path  # a materialized export (manifest.json, annotations/, images/)
    checkpoint: Path  # ckpt_best.pth written by the trainer command
    result: Path  # the command's result.json (a TrainResult)
    input_size: int
    class_names: list[str]


def trainer_env(work_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the trainer command runs with in these tests (its own work and matplotlib dirs)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "include"),
        "PYTHONUNBUFFERED": "1",
        "YOLONAS_WORK_DIR": str(work_dir),
        "MPLCONFIGDIR": str(work_dir / "matplotlib"),
    }
    env.update(extra or {})
    return env


def trained_model(base_temp: Path, sample_dataset: Path, trainer_python: Path) -> TrainedModel:
    from yolonas_pipeline.materialize import MaterializeRequest, materialize
    from yolonas_pipeline.storage import Storage

    root = base_temp / "yolonas-trained-model"
    done = root / "done.json"
    if done.is_file():
        info = json.loads(done.read_text())
        return TrainedModel(
            Path(info["dataset_dir"]), Path(info["checkpoint"]), Path(info["result"]), INPUT_SIZE, CLASS_NAMES
        )
    result = materialize(
        MaterializeRequest(source=str(sample_dataset), output_uri=str(root / "datasets"), workers=1),
        storage=Storage(),
    )
    output = root / "train"
    argv = [
        str(trainer_python), "-m", "yolonas_pipeline.trainer", "train",
        "--dataset-uri", result.dataset_uri, "--output-uri", str(output), "--num-classes", str(len(CLASS_NAMES)),
        "--epochs", "1", "--input-size", str(INPUT_SIZE), "--batch-size", "8", "--no-mixed-precision",
    ]  # fmt: skip
    run = subprocess.run(argv, env=trainer_env(root / "work"), capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    checkpoint = output / "run" / "ckpt_best.pth"
    assert checkpoint.is_file(), sorted(p.name for p in (output / "run").iterdir())
    info = {"dataset_dir": result.dataset_uri, "checkpoint": str(checkpoint), "result": str(output / "result.json")}
    done.write_text(json.dumps(info))
    return TrainedModel(Path(result.dataset_uri), checkpoint, output / "result.json", INPUT_SIZE, CLASS_NAMES)
