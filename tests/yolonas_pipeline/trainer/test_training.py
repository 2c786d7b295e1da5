"""The training command: it resumes a killed run where it stopped, and its speed-ups keep the seed's semantics.

The trainer code needs torch and super-gradients, so it runs in the trainer environment: the command as a
subprocess exactly as the local backend runs it, and the unit checks as one script whose findings come back
as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, MotoS3

from yolonas_pipeline.local_runner import TRAINER_PYTHON_ENV, local_argv
from yolonas_pipeline.storage import Storage
from yolonas_pipeline.trainer_command import TrainRequest, trainer_argv

CLASS_NAMES = ["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]
EPOCHS = 2


@pytest.fixture(scope="module")
def local_export(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample dataset materialized to a local folder (COCO JSON + JPEGs + manifest)."""
    from yolonas_pipeline.materialize import MaterializeRequest, materialize

    out = tmp_path_factory.mktemp("export")
    result = materialize(MaterializeRequest(str(sample_dataset), str(out), workers=1), storage=Storage(), log=print)
    assert result.class_names == CLASS_NAMES
    return Path(result.dataset_uri)


# -- unit checks inside the trainer environment ------------------------------------------------------------------
CHECKS = textwrap.dedent(
    """
    import json, os, random, sys, tempfile
    from pathlib import Path
    from yolonas_pipeline.trainer import compat
    compat.apply(log_dir=tempfile.mkdtemp())
    import numpy as np, torch
    from super_gradients.training.utils.collate_fn import DetectionCollateFN
    from yolonas_pipeline.trainer import data, speed
    from yolonas_pipeline.trainer.training import reconcile_history, epoch_line

    dataset_dir = Path(sys.argv[1])
    out = {}
    manifest = data.read_manifest(dataset_dir)

    # The fast training transforms draw the same random numbers as the seed's and give the same values.
    seed_ds = data.build_dataset(dataset_dir, manifest, "train", input_size=96, train=True)
    seed_ds.transforms = data.seed_train_transforms(96)
    fast_ds = data.build_dataset(dataset_dir, manifest, "train", input_size=96, train=True)
    same_images, same_targets, samples = [], [], []
    for index in range(len(fast_ds)):
        random.seed(index); np.random.seed(index)
        seed_image, seed_target = seed_ds[index]
        random.seed(index); np.random.seed(index)
        fast_image, fast_target = fast_ds[index]
        as_float = torch.from_numpy(fast_image).permute(2, 0, 1).float() / 255
        same_images.append(bool(torch.equal(as_float, torch.from_numpy(seed_image))))
        same_targets.append(bool(np.array_equal(seed_target, fast_target)))
        samples.append(((fast_image, fast_target), (seed_image, seed_target)))
    # The faster HSV and flip, alone, over many draws (including large gains: hue wrap-around, clipping).
    from super_gradients.training.transforms.transforms import DetectionHorizontalFlip, DetectionHSV
    image = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    same_hsv = []
    for gains in ((5, 30, 30), (90, 255, 255)):
        for k in range(100):
            np.random.seed(k)
            theirs = DetectionHSV(1.0, *gains).apply_to_image(image)
            np.random.seed(k)
            ours = data.LookupHSV(1.0, *gains).apply_to_image(image)
            same_hsv.append(bool(np.array_equal(theirs, ours)))
    out["same_hsv"] = all(same_hsv) and len(same_hsv) == 200
    boxes = np.array([[3.0, 4.0, 20.0, 30.0]], dtype=np.float32)
    flips = []
    for flip in (DetectionHorizontalFlip(prob=1.0), data.CopyingHorizontalFlip(prob=1.0)):
        flipped = flip({"image": image, "target": np.concatenate([boxes, [[1.0]]], axis=1)})
        flips.append((flipped["image"], flipped["target"]))
    out["same_flip"] = bool(np.array_equal(flips[0][0], flips[1][0]) and np.array_equal(flips[0][1], flips[1][1]))
    out["flip_contiguous"] = bool(flips[1][0].flags["C_CONTIGUOUS"])
    out["fast_dtype"] = str(fast_image.dtype)
    out["fast_shape"] = list(fast_image.shape)
    out["same_images"] = all(same_images)
    out["same_targets"] = all(same_targets)

    # Collate + DevicePrep give the batch the seed's collate gives, in the requested memory layout.
    fast_batch, fast_targets = data.Collate()([fast for fast, _ in samples[:4]])
    seed_batch, seed_targets = DetectionCollateFN()([seed for _, seed in samples[:4]])
    out["collate_dtype"] = str(fast_batch.dtype)
    out["collate_channels_last"] = fast_batch.is_contiguous(memory_format=torch.channels_last)
    for layout in (True, False):
        prepared, _ = speed.DevicePrep(channels_last=layout)(fast_batch, fast_targets, 0)
        out[f"prep_{layout}_equal"] = bool(torch.equal(prepared, seed_batch))
        out[f"prep_{layout}_channels_last"] = prepared.is_contiguous(memory_format=torch.channels_last)
        out[f"prep_{layout}_contiguous"] = prepared.is_contiguous()
    out["targets_equal"] = bool(torch.equal(fast_targets, seed_targets))
    valid_ds = data.build_dataset(dataset_dir, manifest, "validation", input_size=96, train=False)
    valid = [valid_ds[i] for i in range(3)]
    ours, theirs = data.Collate()(valid), DetectionCollateFN()(valid)
    out["valid_collate_equal"] = bool(torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1]))
    out["valid_passes_prep"] = bool(torch.equal(speed.DevicePrep(channels_last=False)(ours[0], None, 0)[0], ours[0]))

    # Loader sizing from the CPU budget.
    out["workers"] = {
        "explicit": speed.loader_workers(5, cpus=2),
        "16cpus": speed.loader_workers(0, cpus=16, processes=1),
        "16cpus_4gpus": speed.loader_workers(0, cpus=16, processes=4),
        "1cpu": speed.loader_workers(0, cpus=1, processes=1),
        "96cpus": speed.loader_workers(0, cpus=96, processes=1),
    }
    out["affinity"] = len(os.sched_getaffinity(0))
    loader = data.build_loader(fast_ds, batch_size=8, workers=0, train=True)
    out["loader"] = {"workers": loader.num_workers, "persistent": loader.persistent_workers,
                     "prefetch": loader.prefetch_factor, "drop_last": loader.drop_last,
                     "images": data.images_per_epoch(loader), "pin": loader.pin_memory}
    out["use_channels_last_on_cpu"] = speed.use_channels_last(True)

    # History reconciliation after a pod lost between the checkpoint upload and state.json.
    history = [{"epoch": 1, "valid": {"mAP@0.50": 0.1}}, {"epoch": 2, "valid": {"mAP@0.50": 0.2}}]
    metrics = {"valid": {"mAP@0.50": np.float32(0.25)}, "train": {}}
    out["reconcile_ahead"] = reconcile_history(history, 3, metrics)
    out["reconcile_same"] = reconcile_history(history, 2, metrics)
    out["reconcile_behind"] = reconcile_history(history, 1, metrics)
    out["epoch_line"] = epoch_line({"epoch": 3, "seconds": 12.0, "train_seconds": 10.0, "images_per_second": 51.2,
                                    "train": {"PPYoloELoss/loss": 2.5}, "valid": {"mAP@0.50": None}})
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def checks(local_export: Path, trainer_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    script = tmp_path_factory.mktemp("checks")
    (script / "checks.py").write_text(CHECKS)
    env = {**os.environ, "PYTHONPATH": str(REPO / "include"), "MPLCONFIGDIR": str(script / "mpl")}
    run = subprocess.run(
        [str(trainer_python), str(script / "checks.py"), str(local_export)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    line = next(line for line in run.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.trainer
def test_fast_training_transforms_equal_the_seeds(checks: dict[str, Any]) -> None:
    assert checks["fast_dtype"] == "uint8" and checks["fast_shape"] == [96, 96, 3]
    assert checks["same_images"] and checks["same_targets"]
    assert checks["same_hsv"] and checks["same_flip"] and checks["flip_contiguous"]


@pytest.mark.trainer
def test_uint8_batches_become_the_seeds_float_batches_on_the_device(checks: dict[str, Any]) -> None:
    assert checks["collate_dtype"] == "torch.uint8" and checks["collate_channels_last"]
    assert checks["prep_True_equal"] and checks["prep_True_channels_last"]
    assert checks["prep_False_equal"] and checks["prep_False_contiguous"]
    assert checks["targets_equal"]
    assert checks["valid_collate_equal"] and checks["valid_passes_prep"]
    # channels_last crashes torch's CPU backward: only ever on CUDA.
    assert checks["use_channels_last_on_cpu"] is False


@pytest.mark.trainer
def test_loader_workers_follow_the_cpus_the_pod_may_use(checks: dict[str, Any]) -> None:
    assert checks["workers"] == {"explicit": 5, "16cpus": 15, "16cpus_4gpus": 3, "1cpu": 0, "96cpus": 16}
    loader = checks["loader"]
    expected_workers = min(16, max(0, checks["affinity"] - 1))
    assert loader["workers"] == min(expected_workers, 2)  # 19 images in batches of 8: two batches
    assert loader["persistent"] == (loader["workers"] > 0) and loader["drop_last"]
    assert loader["prefetch"] == (4 if loader["workers"] else None)
    assert loader["images"] == 16 and loader["pin"] is False  # no GPU here


@pytest.mark.trainer
def test_history_matches_the_checkpoint_a_retry_resumes_from(checks: dict[str, Any]) -> None:
    ahead = checks["reconcile_ahead"]
    assert [entry["epoch"] for entry in ahead] == [1, 2, 3]
    assert ahead[-1]["recovered_from_checkpoint"] and ahead[-1]["valid"]["mAP@0.50"] == pytest.approx(0.25)
    assert [entry["epoch"] for entry in checks["reconcile_same"]] == [1, 2]
    assert [entry["epoch"] for entry in checks["reconcile_behind"]] == [1]
    assert checks["epoch_line"] == "epoch 3: 12.0s (train 10.0s, 51.2 images/s)  train loss 2.5000"


# -- a killed run resumes ----------------------------------------------------------------------------------------
def read_json(moto_s3: MotoS3, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        body = moto_s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
    except moto_s3.client.exceptions.NoSuchKey:
        return None
    return json.loads(body)


@pytest.mark.slow
@pytest.mark.trainer
def test_killed_training_resumes_at_the_next_epoch_in_the_same_run(
    moto_s3: MotoS3,
    trainer_env: dict[str, str],
    trainer_python: Path,
    sample_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from yolonas_pipeline.materialize import MaterializeRequest, materialize

    bucket = moto_s3.new_bucket()
    storage = Storage(moto_s3.client)
    dataset = materialize(
        MaterializeRequest(str(sample_dataset), f"s3://{bucket}/datasets", workers=1), storage=storage, log=print
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
    monkeypatch.setenv(TRAINER_PYTHON_ENV, str(trainer_python))
    argv = local_argv(trainer_argv("train", request))  # what the local backend runs (the pod: with "python")
    prefix = "runs/resume/train"

    def attempt(name: str) -> tuple[subprocess.Popen[str], Path]:
        log_path = tmp_path / f"{name}.log"
        # A fresh work dir per attempt, like a new pod: nothing survives but what is in S3.
        env = {**trainer_env, "YOLONAS_WORK_DIR": str(tmp_path / name), "MPLCONFIGDIR": str(tmp_path / "mpl")}
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
    assert first.returncode == -signal.SIGKILL
    killed_at = state["epochs_completed"]
    run_id = state["run_id"]
    assert killed_at < EPOCHS, "the run finished before it could be killed; the test proves nothing"
    assert read_json(moto_s3, bucket, f"{prefix}/result.json") is None
    uploaded = storage.list_files(f"s3://{bucket}/{prefix}/run")
    assert "ckpt_latest.pth" in uploaded and "averaging_snapshots.pkl" in uploaded

    # 2. The same command again: it resumes the same run after the uploaded epoch.
    second, second_log = attempt("attempt2")
    assert second.wait(timeout=900) == 0, second_log.read_text()[-5000:]
    output = second_log.read_text()
    assert f"[yolonas] resuming run {run_id} after epoch {killed_at} from {request.output_uri}" in output
    retrained = [
        int(line.split()[2].rstrip(":")) for line in output.splitlines() if line.startswith("[yolonas] epoch ")
    ]
    assert sorted(set(retrained)) == list(range(killed_at + 1, EPOCHS + 1)), output[-3000:]

    result = read_json(moto_s3, bucket, f"{prefix}/result.json")
    final_state = read_json(moto_s3, bucket, f"{prefix}/state.json")
    assert result is not None and final_state is not None
    assert result["run_id"] == final_state["run_id"] == run_id
    assert result["epochs_completed"] == final_state["epochs_completed"] == EPOCHS
    assert [entry["epoch"] for entry in result["history"]] == list(range(1, EPOCHS + 1))
    assert result["history"][:killed_at] == state["history"]  # the first attempt's epochs, kept as they were
    assert all(entry.get("images_per_second") for entry in result["history"])
    assert result["run_uri"] == f"{request.output_uri}/run"

    # The run directory in S3 mirrors the finished local one: same run, snapshots file gone.
    files = storage.list_files(f"s3://{bucket}/{prefix}/run")
    assert {"ckpt_latest.pth", "ckpt_best.pth", "average_model.pth"} <= set(files)
    assert "averaging_snapshots.pkl" not in files
    assert not any(name.startswith("ckpt_epoch_") for name in files)
    # super-gradients kept logging into the same run directory: one experiment log per attempt.
    assert len([name for name in files if name.startswith("experiment_logs_")]) == 2, files
