"""The embedded default for real: moto's S3 server and `airflow standalone` (scheduler, dag-processor,
API server, triggerer) on loopback; a run triggered over the REST API goes to success."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


def test_run_triggered_over_rest_succeeds_through_the_scheduler(stack: Embedded, sample_dataset: Path) -> None:
    api = stack.api()
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    run_id = api.trigger(DAG_ID, {"dataset_source": str(sample_dataset), **SMALL_RUN})

    state = api.follow(DAG_ID, run_id, timeout=900, echo=False)

    tasks = {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG_ID, run_id)}
    assert state == "success", (tasks, (stack.run_dir / "airflow.log").read_text()[-3000:])
    assert tasks == dict.fromkeys(
        ["materialize", "inspect_checkpoint", "preflight", "train", "evaluate", "publish"], "success"
    )
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
