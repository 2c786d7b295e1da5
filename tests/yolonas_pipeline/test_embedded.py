"""The embedded default for real: PostgreSQL, SeaweedFS and Airflow's four components as supervised processes on
loopback. A run triggered over the REST API goes to success; the data survives a stop and a start; a killed
scheduler is reported, stalls a run for less than a minute, and comes back with the next start; two triggers at
once both create runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from conftest import REPO, SeaweedS3

from yolonas_pipeline.embedded import (
    AIRFLOW_COMPONENTS,
    COMPONENTS,
    DAG_ID,
    DEMO_CONF,
    AirflowApi,
    Embedded,
    Ports,
    StackError,
    check_ports_free,
    per_class_table,
)

STAGES = ["settings", "materialize", "inspect_checkpoint", "preflight", "train", "evaluate", "publish"]


# -- the S3 server the embedded default runs: what the pipeline relies on ---------------------------------------


def test_seaweedfs_enforces_signatures(s3_server: SeaweedS3) -> None:
    import boto3

    forged = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="not-the-secret",
        region_name="us-east-1",
    )
    with pytest.raises(ClientError) as refused:
        forged.list_objects_v2(Bucket=s3_server.bucket)
    assert refused.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_seaweedfs_conditional_writes_and_ranges(s3_server: SeaweedS3) -> None:
    """champion.json moves by conditional writes; the checkpoint inspector reads byte ranges."""
    client, bucket = s3_server.client, s3_server.new_bucket()
    etag = client.put_object(Bucket=bucket, Key="champion.json", Body=b"first", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as exists:
        client.put_object(Bucket=bucket, Key="champion.json", Body=b"again", IfNoneMatch="*")
    assert exists.value.response["Error"]["Code"] == "PreconditionFailed"
    with pytest.raises(ClientError) as moved:
        client.put_object(Bucket=bucket, Key="champion.json", Body=b"x", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert moved.value.response["Error"]["Code"] == "PreconditionFailed"
    client.put_object(Bucket=bucket, Key="champion.json", Body=b"second", IfMatch=etag)
    assert client.get_object(Bucket=bucket, Key="champion.json")["Body"].read() == b"second"

    client.put_object(Bucket=bucket, Key="blob", Body=bytes(range(256)) * 4096)
    ranged = client.get_object(Bucket=bucket, Key="blob", Range="bytes=1000-1009")
    assert ranged["ContentLength"] == 10 and ranged["Body"].read() == (bytes(range(256)) * 4096)[1000:1010]


def test_ports_default_to_the_components_own_and_can_be_moved() -> None:
    assert (Ports().api, Ports().s3) == (8080, 8333)
    moved = Ports.from_env({"YOLONAS_PORT_API": "18080", "YOLONAS_S3_PORT": "18333", "YOLONAS_PORT_FILER": "18888"})
    assert (moved.api, moved.s3, moved.filer, moved.master) == (18080, 18333, 18888, 9333)
    free = Ports.free()
    assert len(set(vars(free).values())) == len(vars(free))
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(10000 <= port < low for port in vars(free).values())  # never an ephemeral (outgoing) port


def test_a_taken_port_is_named() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match=f"port {port} .* the S3 server"):
            check_ports_free([port], "the S3 server", wait=0.5)


def test_the_demo_trains_a_model_that_can_pass_the_gate_and_prints_per_class_ap() -> None:
    from yolonas_pipeline.run_settings import TrainingSettings

    settings = TrainingSettings.validated(DEMO_CONF, origin="DEMO_CONF")
    assert settings.force and settings.min_map_50_95 > 0  # the demo's model meets the default floor, not a lower one
    table = per_class_table(
        {"Coverall": {"ap_50": 0.8125, "ap_50_95": 0.5, "boxes": 7}, "Mask": {"ap_50": None, "ap_50_95": None}}
    )
    assert table.splitlines()[1].split() == ["Coverall", "0.8125", "0.5000", "7"]
    assert table.splitlines()[2].split() == ["Mask", "-", "-", "0"]


# -- the whole stack ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(embedded_stack: Embedded) -> Embedded:
    return embedded_stack  # the session's stack (conftest), shared with the UI tests


@pytest.fixture(scope="module")
def trained_run(embedded_trained_run: str) -> str:
    return embedded_trained_run


def make_status(stack: Embedded) -> subprocess.CompletedProcess[str]:
    """`make status` on the test stack (STACK_ROOT points the Makefile at it)."""
    root = stack.run_dir.parent
    return subprocess.run(
        ["make", "-s", "status", f"STACK_ROOT={root}"], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def objects(stack: Embedded) -> dict[str, tuple[str, int]]:
    found = {}
    for page in stack.s3_client().get_paginator("list_objects_v2").paginate(Bucket=stack.bucket):
        for obj in page.get("Contents", []):
            found[obj["Key"]] = (obj["ETag"], obj["Size"])
    return found


def test_run_triggered_over_rest_succeeds_through_the_scheduler(stack: Embedded, trained_run: str) -> None:
    api = stack.api()
    tasks = {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG_ID, trained_run)}
    assert tasks == dict.fromkeys(STAGES, "success")
    report_uri = api.xcom(DAG_ID, trained_run, "materialize")["report_uri"]
    report_key = report_uri.split(f"s3://{stack.bucket}/", 1)[1]
    report = json.loads(stack.s3_client().get_object(Bucket=stack.bucket, Key=report_key)["Body"].read())
    for split in report["splits"].values():
        assert split["converted"] == split["images"] > 0 and split["passthrough_jpeg"] == 0, split
    bundle = api.xcom(DAG_ID, trained_run, "publish")
    assert bundle["manifest_uri"].split(f"s3://{stack.bucket}/", 1)[1] in objects(stack)
    # No credential leaks into what the UI shows: the XCom of every stage.
    secret = stack.credentials()[1]
    for task_id in tasks:
        assert secret not in str(api.xcom(DAG_ID, trained_run, task_id))


def test_up_is_idempotent_and_status_reports_every_component(stack: Embedded) -> None:
    pids = {name: stack.running(name) for name in COMPONENTS}
    started = time.monotonic()
    stack.up()
    print(f"\nwarm start (everything reused): {time.monotonic() - started:.1f} s")
    assert {name: stack.running(name) for name in COMPONENTS} == pids
    status = make_status(stack)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == list(COMPONENTS)
    assert all(" healthy (pid " in line for line in lines), lines


def test_two_simultaneous_triggers_both_create_runs(stack: Embedded, sample_dataset: Path) -> None:
    api = stack.api()
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    barrier, results = threading.Barrier(2), {}

    def trigger(index: int) -> None:
        client = AirflowApi(stack.api_url, "admin", stack.password())
        barrier.wait()
        try:
            results[index] = client.trigger(DAG_ID, {"preflight": True, "dataset_source": str(sample_dataset)})
        except Exception as exc:  # reported below, with the HTTP status
            results[index] = exc

    threads = [threading.Thread(target=trigger, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(isinstance(run_id, str) for run_id in results.values()) and len(results) == 2, results
    assert results[0] != results[1]
    for run_id in results.values():
        assert api.follow(DAG_ID, run_id, timeout=600, echo=False, stalled=stack.scheduler_problem) == "success"


def test_a_published_bundle_and_the_champion_survive_stop_and_start(stack: Embedded, trained_run: str) -> None:
    from yolonas_pipeline.publish import verify_bundle
    from yolonas_pipeline.storage import Storage

    api = stack.api()
    bundle_uri = api.xcom(DAG_ID, trained_run, "publish")["bundle_uri"]
    before = objects(stack)
    champion_key = next(key for key in before if key.endswith("champion.json"))
    champion = stack.s3_client().get_object(Bucket=stack.bucket, Key=champion_key)["Body"].read()
    assert json.loads(champion)["bundle_uri"] == bundle_uri

    assert stack.compact_s3()  # SeaweedFS's vacuum (down() runs it too) keeps every live object
    assert objects(stack) == before
    stack.down()
    assert all(h.state == "stopped" for h in stack.health())
    started = time.monotonic()
    stack.up()
    print(f"\nstart after a stop (data kept): {time.monotonic() - started:.1f} s; {len(before)} objects in the bucket")

    assert objects(stack) == before
    assert stack.s3_client().get_object(Bucket=stack.bucket, Key=champion_key)["Body"].read() == champion
    manifest = verify_bundle(bundle_uri, storage=Storage(stack.s3_client()))
    assert "model.pth" in manifest.files
    # ... and Airflow still knows the run, whose XComs point at objects that are still there.
    api = stack.api()
    assert api.run(DAG_ID, trained_run)["state"] == "success"
    assert api.xcom(DAG_ID, trained_run, "publish")["bundle_uri"] == bundle_uri


def test_a_killed_scheduler_is_reported_stalls_a_run_briefly_and_comes_back(
    stack: Embedded, sample_dataset: Path
) -> None:
    stack.up()  # reuses what is healthy: this test does not depend on the state the one before left
    old = stack.running("scheduler")
    assert old is not None
    os.killpg(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.running("scheduler") and time.monotonic() < deadline:
        time.sleep(0.5)

    status = make_status(stack)
    assert status.returncode != 0 and "status] Error 1" in status.stderr  # the module's 1, through make
    lines = {line.split(":")[0]: line for line in status.stdout.splitlines()}
    assert lines["scheduler"].split()[1] == "dead", lines
    assert all(" healthy " in lines[name] for name in COMPONENTS if name != "scheduler"), lines

    # A run triggered now cannot start: the follower says so at once instead of waiting out its timeout.
    api = stack.api()
    run_id = api.trigger(DAG_ID, {"preflight": True, "dataset_source": str(sample_dataset)})
    started = time.monotonic()
    with pytest.raises(StackError, match=r"scheduler: +dead"):
        api.follow(DAG_ID, run_id, timeout=600, echo=False, stalled=stack.scheduler_problem)
    assert time.monotonic() - started < 30  # a dead process is reported at its first check, not after the grace

    stack.up()
    assert stack.running("scheduler") not in (None, old)
    assert all(h.ok for h in stack.health())
    # The run that waited is picked up by the new scheduler.
    assert api.follow(DAG_ID, run_id, timeout=600, echo=False, stalled=stack.scheduler_problem) == "success"


def test_a_killed_s3_server_is_reported_and_restarted_with_its_objects(stack: Embedded) -> None:
    before = objects(stack)
    old = stack.running("s3")
    assert old is not None and before
    os.killpg(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while stack.running("s3") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stack.s3_health().state == "dead"

    stack.up()
    assert stack.running("s3") not in (None, old)
    assert objects(stack) == before


def test_status_of_a_stack_that_never_started(tmp_path: Path) -> None:
    stack = Embedded.at(tmp_path, ports=Ports.free())
    assert {h.name: h.state for h in stack.health()} == dict.fromkeys(COMPONENTS, "stopped")
    assert stack.compact_s3() is False
    assert set(AIRFLOW_COMPONENTS) < set(COMPONENTS)


def test_clean_data_deletes_the_stacks_data_and_keeps_the_inputs(tmp_path: Path) -> None:
    stack = Embedded.at(tmp_path, ports=Ports.free())
    stack.ensure_identities()
    for folder in (stack.pgdata, stack.s3_dir, stack.home / "logs", stack.run_dir, stack.sample_dataset):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "file").write_text("x")
    (stack.data_dir / "bench").mkdir()

    removed = stack.purge()

    assert set(removed) == {stack.pgdata, stack.s3_dir, stack.identities_file, stack.home, stack.run_dir}
    assert sorted(p.name for p in stack.data_dir.iterdir()) == ["bench", "sample_cppe5"]
    assert stack.credentials() is None and stack.ensure_identities() != ("", "")
    assert oct(stack.identities_file.stat().st_mode & 0o777) == "0o600"


def test_follow_stops_at_once_for_a_dead_scheduler_and_after_the_grace_for_an_unhealthy_one() -> None:
    api = AirflowApi.__new__(AirflowApi)  # no server: the run stays queued
    api.run = lambda dag_id, run_id: {"state": "queued"}  # type: ignore[method-assign]
    api.task_instances = lambda dag_id, run_id: []  # type: ignore[method-assign]
    started = time.monotonic()
    with pytest.raises(StackError, match=r"is queued and cannot progress: scheduler: +dead"):
        api.follow(DAG_ID, "r", echo=False, stalled=lambda: "scheduler:     dead")
    with pytest.raises(StackError, match="unhealthy"):
        api.follow(DAG_ID, "r", echo=False, stalled=lambda: "scheduler:     unhealthy (pid 1)", grace=0)
    assert time.monotonic() - started < 2

    states = iter(["queued", "running", "success"])
    problems = iter(["scheduler:     unhealthy (pid 1)", None])
    api.run = lambda dag_id, run_id: {"state": next(states)}  # type: ignore[method-assign]
    assert api.follow(DAG_ID, "r", echo=False, stalled=lambda: next(problems), grace=30) == "success"
