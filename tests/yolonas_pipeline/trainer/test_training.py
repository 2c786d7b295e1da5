"""The training command: it resumes a killed run where it stopped, and nothing it uploads holds a credential.

The command runs in the trainer environment as a subprocess, exactly as the local backend runs it, against a
real S3 API (moto). The trainer code's unit tests live in ``in_trainer_env/`` and run under that environment's
pytest (:func:`test_trainer_environment_tests_pass`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, TEST_ACCESS_KEY, TEST_SECRET_KEY, MotoS3

from yolonas_pipeline.contracts import TrainRequest, trainer_argv
from yolonas_pipeline.local_runner import TRAINER_PYTHON_ENV, local_argv
from yolonas_pipeline.storage import Storage

CLASS_NAMES = ["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]
EPOCHS = 2
IN_TRAINER_ENV = Path(__file__).parent / "in_trainer_env"
#: A session token, so that the check below covers the X-Amz-Security-Token header too (moto accepts any).
TEST_SESSION_TOKEN = "test-session-token-FwoGZXIvYXdzEJr"


@pytest.fixture(scope="module")
def local_export(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample dataset materialized to a local folder (COCO JSON + JPEGs + manifest)."""
    from yolonas_pipeline.materialize import MaterializeRequest, materialize

    out = tmp_path_factory.mktemp("export")
    result = materialize(MaterializeRequest(str(sample_dataset), str(out), workers=1), storage=Storage())
    assert result.class_names == CLASS_NAMES
    return Path(result.dataset_uri)


# -- the trainer code's own tests, in the trainer environment ----------------------------------------------------
@pytest.mark.trainer
def test_trainer_environment_tests_pass(local_export: Path, trainer_python: Path, tmp_path: Path) -> None:
    """``in_trainer_env/`` under the trainer environment's pytest, on the sample export: its report is the failure."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "include"),
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        "YOLONAS_TEST_EXPORT": str(local_export),
    }
    argv = [
        str(trainer_python), "-m", "pytest", str(IN_TRAINER_ENV), "-q", "-p", "no:cacheprovider",
        f"--confcutdir={IN_TRAINER_ENV}", f"--basetemp={tmp_path / 'basetemp'}",
    ]  # fmt: skip
    run = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    report = run.stdout[-12000:] + run.stderr[-3000:]
    assert run.returncode == 0, report
    assert " passed" in run.stdout and " skipped" not in run.stdout, report


# -- a killed run resumes ----------------------------------------------------------------------------------------
def read_json(moto_s3: MotoS3, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = moto_s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except moto_s3.client.exceptions.NoSuchKey:
        return None
    return json.loads(body)


@dataclass
class ResumedRun:
    """A training killed after its first uploaded epoch, then run again to the end."""

    bucket: str
    prefix: str
    request: TrainRequest
    first_state: dict[str, Any]
    first_files: list[str]
    first_returncode: int | None
    second_output: str


@pytest.fixture(scope="module")
def resumed_run(
    moto_s3: MotoS3, trainer_python: Path, sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ResumedRun]:
    from yolonas_pipeline.materialize import MaterializeRequest, materialize

    tmp_path = tmp_path_factory.mktemp("resume")
    bucket = moto_s3.new_bucket()
    storage = Storage(moto_s3.client)
    dataset = materialize(
        MaterializeRequest(str(sample_dataset), f"s3://{bucket}/datasets", workers=1), storage=storage
    )
    request = TrainRequest(
        dataset_uri=dataset.dataset_uri,
        output_uri=f"s3://{bucket}/runs/resume/train",
        num_classes=len(dataset.class_names),
        epochs=EPOCHS,
        batch_size=8,
        input_size=96,
        mixed_precision=False,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TRAINER_PYTHON_ENV, str(trainer_python))
        argv = local_argv(trainer_argv(request))  # what the local backend runs (the pod: with "python")
    prefix = "runs/resume/train"
    base_env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO / "include"),
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_SESSION_TOKEN": TEST_SESSION_TOKEN,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": moto_s3.endpoint_url,
        "PYTHONUNBUFFERED": "1",
    }

    def attempt(name: str) -> tuple[subprocess.Popen[str], Path]:
        log_path = tmp_path / f"{name}.log"
        # A fresh work dir per attempt, like a new pod: nothing survives but what is in S3.
        env = {**base_env, "YOLONAS_WORK_DIR": str(tmp_path / name), "MPLCONFIGDIR": str(tmp_path / "mpl")}
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
            )
        return process, log_path

    # 1. Train until an epoch has been uploaded (state.json is the commit point), then kill everything.
    first, first_log = attempt("attempt1")
    deadline = time.monotonic() + 900
    try:
        while True:
            state = read_json(moto_s3, bucket, f"{prefix}/state.json")
            if state and state["epochs_completed"] >= 1:
                break
            assert first.poll() is None, "the trainer exited before its first upload:\n" + first_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no epoch uploaded in time:\n" + first_log.read_text()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    first_files = storage.list_files(f"s3://{bucket}/{prefix}/run")
    assert read_json(moto_s3, bucket, f"{prefix}/result.json") is None

    # 2. The same command again: it resumes the same run after the uploaded epoch.
    second, second_log = attempt("attempt2")
    assert second.wait(timeout=900) == 0, second_log.read_text()[-5000:]
    yield ResumedRun(bucket, prefix, request, state, first_files, first.returncode, second_log.read_text())


@pytest.mark.slow
@pytest.mark.trainer
def test_killed_training_resumes_at_the_next_epoch_in_the_same_run(resumed_run: ResumedRun, moto_s3: MotoS3) -> None:
    run = resumed_run
    state, request = run.first_state, run.request
    assert run.first_returncode == -signal.SIGKILL
    killed_at = state["epochs_completed"]
    run_id = state["run_id"]
    assert killed_at < EPOCHS, "the run finished before it could be killed; the test proves nothing"
    assert "ckpt_latest.pth" in run.first_files and "averaging_snapshots.pkl" in run.first_files

    output = run.second_output
    assert f"[yolonas] resuming run {run_id} after epoch {killed_at} from {request.output_uri}" in output
    retrained = [
        int(line.split()[2].rstrip(":"))
        for line in output.splitlines()
        if line.startswith("[yolonas] epoch ") and "batch" not in line
    ]
    assert sorted(set(retrained)) == list(range(killed_at + 1, EPOCHS + 1)), output[-3000:]

    result = read_json(moto_s3, run.bucket, f"{run.prefix}/result.json")
    final_state = read_json(moto_s3, run.bucket, f"{run.prefix}/state.json")
    assert result is not None and final_state is not None
    assert result["format"] == "yolonas-pipeline/train-result@1"
    assert result["run_id"] == final_state["run_id"] == run_id
    assert result["epochs_completed"] == final_state["epochs_completed"] == EPOCHS
    assert [entry["epoch"] for entry in result["history"]] == list(range(1, EPOCHS + 1))
    assert result["history"][:killed_at] == state["history"]  # the first attempt's epochs, kept as they were
    assert all(entry.get("images_per_second") for entry in result["history"])
    assert result["run_uri"] == f"{request.output_uri}/run"
    assert result["request"] == request.model_dump(mode="json")

    # The run directory in S3 mirrors the finished local one: same run, snapshots file gone.
    files = Storage(moto_s3.client).list_files(f"s3://{run.bucket}/{run.prefix}/run")
    assert {"ckpt_latest.pth", "ckpt_best.pth", "average_model.pth"} <= set(files)
    assert "averaging_snapshots.pkl" not in files
    assert not any(name.startswith("ckpt_epoch_") for name in files)
    # super-gradients kept logging into the same run directory: one experiment log per attempt.
    assert len([name for name in files if name.startswith("experiment_logs_")]) == 2, files


# -- no credentials in what is uploaded --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.trainer
def test_no_credential_material_in_any_uploaded_file(resumed_run: ResumedRun, moto_s3: MotoS3, tmp_path: Path) -> None:
    """super-gradients' log files are synced with the run; at DEBUG, botocore would put signed headers in them."""
    storage = Storage(moto_s3.client)
    root = f"s3://{resumed_run.bucket}/runs/resume"
    local = tmp_path / "uploaded"
    files = storage.download_tree(root, local)
    assert any(name.startswith("train/run/logs_") for name in files), files  # the log files are among them
    needles = [TEST_ACCESS_KEY, TEST_SECRET_KEY, TEST_SESSION_TOKEN, "Signature=", "AWS4-HMAC-SHA256 Credential"]
    found = []
    for name in sorted(files):
        for number, line in enumerate((local / name).read_bytes().splitlines(), start=1):
            for needle in needles:
                at = line.find(needle.encode())
                if at >= 0:
                    found.append(f"{name}:{number}: {needle!r} in ...{line[max(0, at - 80) : at + 60]!r}...")
    assert found == [], f"credential material in {len(found)} uploaded lines:\n" + "\n".join(found[:20])
