"""The embedded default for real: moto's S3 server and `airflow standalone` (scheduler, dag-processor,
API server, triggerer) on loopback; a run triggered over the REST API goes to success."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from yolonas_pipeline.embedded import DAG_ID, Embedded

SMALL_RUN = {"epochs": 1, "batch_size": 8, "input_size": 128, "workers": 0, "mixed_precision": False}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    root = tmp_path_factory.mktemp("embedded")
    embedded = Embedded(
        home=root / "airflow",
        run_dir=root / "run",
        data_dir=root / "data",
        api_port=free_port(),
        s3_port=free_port(),
        bucket="yolonas-embedded",
    )
    try:
        embedded.up()
        yield embedded
    finally:
        embedded.down()
        assert embedded.running("airflow") is None and embedded.running("s3") is None


@pytest.fixture(scope="module")
def png_dataset(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample dataset with every image stored as PNG: the materializer must convert each one."""
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


def test_run_triggered_over_rest_succeeds_through_the_scheduler(stack: Embedded, png_dataset: Path) -> None:
    api = stack.api()
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    # PNG images: the materialize task starts its conversion workers inside Airflow's task process
    run_id = api.trigger(DAG_ID, {"dataset_source": str(png_dataset), **SMALL_RUN})

    state = api.follow(DAG_ID, run_id, timeout=900, echo=False)

    tasks = {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG_ID, run_id)}
    assert state == "success", (tasks, (stack.run_dir / "airflow.log").read_text()[-3000:])
    assert tasks == dict.fromkeys(
        ["materialize", "inspect_checkpoint", "preflight", "train", "evaluate", "publish"], "success"
    )
    report_uri = api.xcom(DAG_ID, run_id, "materialize")["report_uri"]
    report_key = report_uri.split(f"s3://{stack.bucket}/", 1)[1]
    report = json.loads(stack.s3_client().get_object(Bucket=stack.bucket, Key=report_key)["Body"].read())
    for split in report["splits"].values():
        assert split["converted"] == split["images"] > 0 and split["passthrough_jpeg"] == 0, split
    bundle = api.xcom(DAG_ID, run_id, "publish")
    keys = [o["Key"] for o in stack.s3_client().list_objects_v2(Bucket=stack.bucket)["Contents"]]
    assert bundle["manifest_uri"].split(f"s3://{stack.bucket}/", 1)[1] in keys
    # No credential leaks into what the UI shows: the XCom of every stage.
    for task_id in tasks:
        assert "embedded-secret-key" not in str(api.xcom(DAG_ID, run_id, task_id))


def test_up_is_idempotent(stack: Embedded) -> None:
    pids = (stack.running("airflow"), stack.running("s3"))
    stack.up()
    assert (stack.running("airflow"), stack.running("s3")) == pids
