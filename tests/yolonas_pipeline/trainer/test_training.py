"""The training command: it resumes a killed run where it stopped, and nothing it uploads holds a credential.

The command runs in the trainer environment as a subprocess, exactly as the local backend runs it, against a
real S3 API (moto). The trainer code's unit tests live in ``in_trainer_env/`` and run under that environment's
pytest (:func:`test_trainer_environment_tests_pass`).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
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
#: An epoch's summary line (not a progress line, ``epoch 1/2  step 3/10 ...``) from the first process.
EPOCH_LINE = re.compile(r"^\[yolonas\] epoch (\d+)/(\d+)  loss \d+\.\d{4} \(cls [\d.]+ iou [\d.]+ dfl [\d.]+\)  valid ")


def retrained_epochs(output: str) -> list[int]:
    """The epochs the first process reported finishing (its lines carry the plain prefix)."""
    return [int(match[1]) for line in output.splitlines() if (match := EPOCH_LINE.match(line))]


#: What super-gradients prints that a training log does not need (see trainer/logs.py).
NOISE = (
    "Failed to verify installed packages",
    "Crash tips is disabled",
    "The console stream is",
    "fontManager",
    "pkg_resources",
    "torch.cuda.amp",
    "it/s]",  # tqdm bars
)


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
    first_output: str
    second_output: str


def kill_and_resume(
    moto_s3: MotoS3,
    trainer_python: Path,
    sample_dataset: Path,
    tmp_path: Path,
    *,
    name: str,
    gpus: int = 1,
    versioned: bool = False,
    **request_fields: Any,
) -> ResumedRun:
    """Materialize the sample to a new bucket, run the train command the local backend would run for ``gpus``
    (``torchrun`` under ``gpus`` > 1), SIGKILL its whole process group once the first epoch is committed
    (``state.json``), and run the same command again to the end."""
    from yolonas_pipeline.materialize import MaterializeRequest, materialize

    bucket = moto_s3.new_bucket()
    if versioned:  # every write of every key stays visible: who wrote what, how often
        moto_s3.client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    storage = Storage(moto_s3.client)
    dataset = materialize(
        MaterializeRequest(str(sample_dataset), f"s3://{bucket}/datasets", workers=1), storage=storage
    )
    prefix = f"runs/{name}/train"
    request = TrainRequest(
        dataset_uri=dataset.dataset_uri,
        output_uri=f"s3://{bucket}/{prefix}",
        num_classes=len(dataset.class_names),
        epochs=EPOCHS,
        input_size=96,
        mixed_precision=False,
        **{"batch_size": 8, **request_fields},
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TRAINER_PYTHON_ENV, str(trainer_python))
        # What the local backend runs (the pod: with "python" or "torchrun").
        argv = local_argv(trainer_argv(request, gpus=gpus))
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

    def attempt(label: str) -> tuple[subprocess.Popen[str], Path]:
        log_path = tmp_path / f"{label}.log"
        # A fresh work dir per attempt, like a new pod: nothing survives but what is in S3.
        env = {**base_env, "YOLONAS_WORK_DIR": str(tmp_path / label), "MPLCONFIGDIR": str(tmp_path / "mpl")}
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
    return ResumedRun(
        bucket, prefix, request, state, first_files, first.returncode, first_log.read_text(), second_log.read_text()
    )


@pytest.fixture(scope="module")
def resumed_run(
    moto_s3: MotoS3, trainer_python: Path, sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> ResumedRun:
    return kill_and_resume(
        moto_s3, trainer_python, sample_dataset, tmp_path_factory.mktemp("resume"), name="resume", batch_size=8
    )


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
    retrained = retrained_epochs(output)
    assert sorted(set(retrained)) == list(range(killed_at + 1, EPOCHS + 1)), output[-3000:]
    assert f"[yolonas] results ({EPOCHS} epochs):" in output
    table = output.split(f"[yolonas] results ({EPOCHS} epochs):\n", 1)[1].splitlines()
    assert table[0].split()[:2] == ["[yolonas]", "epoch"] and len(table[1 : 1 + EPOCHS]) == EPOCHS
    # super-gradients' noise is not in the task log (its DEBUG files still have it).
    noise = [needle for needle in NOISE if needle in run.first_output + output]
    assert noise == [], output[-5000:]

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
    assert result["channel_order"] == "RGB"
    # The history as its own file, and the curves drawn from it, beside result.json.
    assert result["files"] == {"history": "history.json", "training_curves": "training_curves.png"}
    assert read_json(moto_s3, run.bucket, f"{run.prefix}/history.json") == result["history"]
    curves = moto_s3.client.get_object(Bucket=run.bucket, Key=f"{run.prefix}/training_curves.png")["Body"].read()
    assert curves[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(entry["valid"].get("mAP@0.50:0.95") is not None and entry.get("lr") for entry in result["history"])

    # The run directory in S3 mirrors the finished local one: same run, snapshots file gone.
    files = Storage(moto_s3.client).list_files(f"s3://{run.bucket}/{run.prefix}/run")
    assert {"ckpt_latest.pth", "ckpt_best.pth", "average_model.pth"} <= set(files)
    assert "averaging_snapshots.pkl" not in files
    assert not any(name.startswith("ckpt_epoch_") for name in files)
    # super-gradients kept logging into the same run directory: one experiment log per attempt.
    assert len([name for name in files if name.startswith("experiment_logs_")]) == 2, files


#: super-gradients' per-attempt files, named by when (and on which host, by which process) they were made.
_STAMPED = (
    (re.compile(r"^(.*/)?(console|experiment_logs|logs)_[^/]*\.txt$"), r"\1\2_<time>.txt"),
    (re.compile(r"^(.*/)?events\.out\.tfevents\.[^/]*$"), r"\1events.out.tfevents.<time>.<host>.<pid>"),
)


def shape(name: str) -> str:
    """A file's name with super-gradients' timestamps, host and process id taken out."""
    for pattern, replacement in _STAMPED:
        name = pattern.sub(replacement, name)
    return name


def file_shapes(moto_s3: MotoS3, run: ResumedRun) -> list[str]:
    """Everything under the run's output URI, by :func:`shape`."""
    return sorted(shape(name) for name in Storage(moto_s3.client).list_files(f"s3://{run.bucket}/{run.prefix}"))


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


# -- DDP: the same command under torchrun, two CPU processes (gloo) ----------------------------------------------
DDP_PROCESSES = 2
#: 19 training images: 10 per process (the sampler pads the odd one), 2 full batches of 4 each, the rest dropped.
DDP_BATCH = 4


@pytest.fixture(scope="module")
def ddp_resumed_run(
    moto_s3: MotoS3, trainer_python: Path, sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory
) -> ResumedRun:
    """What the local backend runs for 2 GPUs (``torchrun --nproc_per_node=2``), here on the CPU, killed after the
    first committed epoch and run again; in a versioned bucket, so that every write is counted."""
    return kill_and_resume(
        moto_s3,
        trainer_python,
        sample_dataset,
        tmp_path_factory.mktemp("ddp"),
        name="ddp",
        gpus=DDP_PROCESSES,
        versioned=True,
        batch_size=DDP_BATCH,
    )


def object_versions(moto_s3: MotoS3, bucket: str, key: str) -> int:
    """How many times ``key`` was written."""
    response = moto_s3.client.list_object_versions(Bucket=bucket, Prefix=key)
    return len([version for version in response.get("Versions", []) if version["Key"] == key])


@pytest.mark.slow
@pytest.mark.trainer
def test_ddp_training_on_two_processes_resumes_after_a_kill(ddp_resumed_run: ResumedRun, moto_s3: MotoS3) -> None:
    from yolonas_pipeline.contracts import DatasetManifest
    from yolonas_pipeline.preflight import steps_per_epoch

    run = ddp_resumed_run
    storage = Storage(moto_s3.client)
    train_images = DatasetManifest.read_export(run.request.dataset_uri, storage=storage).split("train").images
    steps = steps_per_epoch(train_images, DDP_BATCH, DDP_PROCESSES)
    assert steps == 2
    assert run.first_returncode == -signal.SIGKILL
    killed_at, run_id = run.first_state["epochs_completed"], run.first_state["run_id"]
    assert killed_at < EPOCHS, "the run finished before it could be killed; the test proves nothing"

    # Both processes joined one process group and trained their share, in both attempts.
    for output in (run.first_output, run.second_output):
        for rank, prefix in enumerate(("[yolonas] ", "[yolonas rank 1] ")):
            assert f"{prefix}process {rank} of {DDP_PROCESSES} (local {rank}), device cpu:{rank}" in output, output
            share = f"{prefix}{steps * DDP_BATCH} training images per epoch on this process ({DDP_PROCESSES} processes)"
            assert f"{share} in {steps} batches" in output, output[-3000:]
    assert f"[yolonas] resuming run {run_id} after epoch {killed_at} from {run.request.output_uri}" in run.second_output
    assert sorted(set(retrained_epochs(run.second_output))) == list(range(killed_at + 1, EPOCHS + 1))

    result = read_json(moto_s3, run.bucket, f"{run.prefix}/result.json")
    final_state = read_json(moto_s3, run.bucket, f"{run.prefix}/state.json")
    assert result is not None and final_state is not None
    assert result["run_id"] == final_state["run_id"] == run_id
    assert result["epochs_completed"] == final_state["epochs_completed"] == EPOCHS
    assert [entry["epoch"] for entry in result["history"]] == list(range(1, EPOCHS + 1))
    assert result["history"][:killed_at] == run.first_state["history"]
    # The plan's steps per epoch are what each process's loader took.
    assert result["steps_per_epoch"] == steps
    # images/s counts both processes' images
    assert all(entry.get("images_per_second") for entry in result["history"])

    # Only the first process writes: one result, one state commit and one latest checkpoint per epoch.
    assert object_versions(moto_s3, run.bucket, f"{run.prefix}/result.json") == 1
    assert object_versions(moto_s3, run.bucket, f"{run.prefix}/state.json") == EPOCHS
    assert object_versions(moto_s3, run.bucket, f"{run.prefix}/run/ckpt_latest.pth") == EPOCHS


@pytest.mark.slow
@pytest.mark.trainer
def test_ddp_run_folder_has_the_files_of_a_single_process_run(
    ddp_resumed_run: ResumedRun, resumed_run: ResumedRun, moto_s3: MotoS3
) -> None:
    """Killed after the first epoch and resumed alike, one process or two: the same files at the output URI, and the
    same in run/ at the kill (names up to super-gradients' timestamps). ``resumed_run`` is the single-process
    run the tests above check."""
    single, ddp = file_shapes(moto_s3, resumed_run), file_shapes(moto_s3, ddp_resumed_run)
    assert ddp == single, f"DDP: {ddp}\nsingle process: {single}"
    assert {"result.json", "state.json", "run/average_model.pth", "run/ckpt_best.pth"} <= set(ddp)
    single_first = sorted(shape(name) for name in resumed_run.first_files)
    ddp_first = sorted(shape(name) for name in ddp_resumed_run.first_files)
    assert ddp_first == single_first, f"DDP: {ddp_first}\nsingle process: {single_first}"
