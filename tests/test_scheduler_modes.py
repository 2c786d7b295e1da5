"""The three ways to run training, through a real scheduler: the embedded default's stack (PostgreSQL, SeaweedFS,
Airflow's api-server, scheduler, dag-processor and triggerer) on free loopback ports, in a temporary folder.

One stack for the module. Its training form defaults to a tiny *preflight* run (``YOLONAS_TRAINING_DEFAULTS``)
on a two-minute cron (``YOLONAS_TRAINING_SCHEDULE``), so the scheduled runs cost seconds; the one run that
trains is the one drift starts, whose form values come from the drift run's ``retrain_conf``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import crown_champion, shift_class_balance

from yolonas_pipeline.embedded import AirflowApi, Embedded, Ports
from yolonas_pipeline.materialize import MaterializeRequest, materialize
from yolonas_pipeline.storage import Storage

TRAINING = "yolonas_training"
DRIFT = "yolonas_drift"
PREFLIGHT = "yolonas_preflight"
TINY = {"epochs": 1, "batch_size": 8, "input_size": 96, "workers": 0, "mixed_precision": False}
T = TypeVar("T")
STAGES = ["settings", "materialize", "inspect_checkpoint", "preflight", "train", "evaluate", "publish"]
#: The drift runs compare with (and the retraining they start publishes to) a prefix other than the default.
PREFIX = "team-a/models"


@pytest.fixture(scope="module")
def stack() -> Iterator[Embedded]:
    from yolonas_pipeline.sample_data import make_sample_dataset

    # Not under pytest's owner-only tmp folder: as root, PostgreSQL runs as the user `embedded_postgres`.
    root = Path(tempfile.mkdtemp(prefix="yolonas-modes-"))
    embedded = Embedded.at(root, ports=Ports.free(), bucket="yolonas-modes")
    make_sample_dataset(embedded.sample_dataset, num_images=24)
    shift_class_balance(embedded.sample_dataset, embedded.data_dir / "shifted")
    # Read by the DAG files at parse time: environment() copies os.environ into every Airflow process.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("YOLONAS_TRAINING_SCHEDULE", "*/2 * * * *")
        env.setenv("YOLONAS_TRAINING_DEFAULTS", json.dumps({"preflight": True, **TINY}))
        env.setenv("YOLONAS_DRIFT_SCHEDULE", "")
        try:
            embedded.up()
            yield embedded
        finally:
            embedded.down()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def api(stack: Embedded) -> AirflowApi:
    client = patient(stack.api)
    patient(lambda: client.wait_for_dag(TRAINING))
    patient(lambda: client.wait_for_dag(DRIFT))
    patient(lambda: client.wait_for_dag(PREFLIGHT))
    return client


def patient(call: Callable[[], T], attempts: int = 5) -> T:
    """Retry a REST call that timed out: on two busy cores the API server sometimes answers after 30 s."""
    for attempt in range(attempts):
        try:
            return call()
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


# AirflowApi covers the demo's calls; these few reads and the asset event go through its request method.
def get(api: AirflowApi, path: str, **query: Any) -> Any:
    url = path + ("?" + urllib.parse.urlencode(query, doseq=True) if query else "")
    return patient(lambda: api._request("GET", url))


def runs(api: AirflowApi, dag_id: str, run_type: str) -> list[dict[str, Any]]:
    return get(api, f"/api/v2/dags/{dag_id}/dagRuns", run_type=run_type, order_by="-run_after")["dag_runs"]


def wait_for_run(api: AirflowApi, dag_id: str, run_type: str, *, after: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [r["dag_run_id"] for r in runs(api, dag_id, run_type) if r["dag_run_id"] not in after]
        if fresh:
            return fresh[0]
        time.sleep(3)
    raise TimeoutError(f"no new {run_type} run of {dag_id} within {timeout:.0f}s")


def task_states(api: AirflowApi, dag_id: str, run_id: str) -> dict[str, str | None]:
    return {ti["task_id"]: ti["state"] for ti in patient(lambda: api.task_instances(dag_id, run_id))}


def follow(stack: Embedded, api: AirflowApi, dag_id: str, run_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = patient(lambda: api.run(dag_id, run_id))["state"]
        if state in ("success", "failed"):
            break
        time.sleep(3)
    states = task_states(api, dag_id, run_id)
    assert state == "success", (state, states, stack.log_tail("scheduler", 60))
    return states


def xcom(api: AirflowApi, dag_id: str, run_id: str, task_id: str) -> Any:
    return patient(lambda: api.xcom(dag_id, run_id, task_id))


def test_the_form_refuses_bad_values_over_rest_and_a_preflight_run_stops_before_training(
    stack: Embedded, api: AirflowApi
) -> None:
    patient(lambda: api.unpause(TRAINING))
    for conf, message in (({"epochs": 0}, "minimum of 1"), ({"model_name": "yolo_nas_xl"}, "is not one of")):
        with pytest.raises(RuntimeError, match="400") as refused:
            api.trigger(TRAINING, conf)
        assert message in str(refused.value)

    # A key the form does not have passes the trigger, and the settings task refuses it before any work.
    run_id = patient(lambda: api.trigger(TRAINING, {"architecture": "yolo_nas_l"}))
    deadline = time.monotonic() + 300
    while patient(lambda: api.run(TRAINING, run_id))["state"] not in ("success", "failed"):
        assert time.monotonic() < deadline, "the run with an unknown key did not finish"
        time.sleep(3)
    states = task_states(api, TRAINING, run_id)
    assert states["settings"] == "failed" and states["materialize"] == "upstream_failed", states

    run_id = patient(lambda: api.trigger(TRAINING, {}))  # a bare trigger: the defaults, a preflight run here
    states = follow(stack, api, TRAINING, run_id)
    assert states == {
        **dict.fromkeys(STAGES[:4], "success"),
        **dict.fromkeys(STAGES[4:], "skipped"),
    }
    plan = xcom(api, TRAINING, run_id, "preflight")
    assert plan["preflight"] is True and plan["training"]["epochs"] == 1
    assert plan["dataset"]["source"] == str(stack.sample_dataset)
    assert plan["outputs"]["run_uri"].startswith(f"s3://{stack.bucket}/runs/")
    # the scheduler's listener (plugins/yolonas_listeners.py) noted how the run ended
    assert patient(lambda: api.run(TRAINING, run_id))["note"] == "PREFLIGHT"


def test_a_scheduled_run_goes_through_the_scheduler(stack: Embedded, api: AirflowApi) -> None:
    patient(lambda: api.unpause(TRAINING))
    run_id = wait_for_run(api, TRAINING, "scheduled", after=set(), timeout=300)
    assert run_id.startswith("scheduled__")
    states = follow(stack, api, TRAINING, run_id)
    assert states["preflight"] == "success" and states["train"] == "skipped"
    plan = xcom(api, TRAINING, run_id, "preflight")
    assert plan["trigger"]["run_type"].endswith("scheduled")
    assert safe(run_id) in plan["outputs"]["run_uri"]  # artifacts keyed on the run id


def test_identical_data_does_not_retrain_and_a_shifted_class_balance_does(stack: Embedded, api: AirflowApi) -> None:
    storage = Storage(stack.s3_client())
    reference = crown_sample_as_champion(stack, storage)
    patient(lambda: api.unpause(TRAINING))
    patient(lambda: api.unpause(DRIFT))
    retrains_before = {r["dag_run_id"] for r in runs(api, TRAINING, "asset_triggered")}

    # An identical revision lands: an upstream pipeline says so with an event on the source Asset.
    seen = {r["dag_run_id"] for r in runs(api, DRIFT, "asset_triggered")}
    source_conf = {"dataset_source": str(stack.sample_dataset), "publish_prefix": PREFIX}
    post_asset_event(api, "yolonas_dataset_source", {"conf": source_conf})
    run_id = wait_for_run(api, DRIFT, "asset_triggered", after=seen, timeout=120)
    states = follow(stack, api, DRIFT, run_id)
    assert states == {"settings": "success", "materialize": "success", "detect_drift": "success",
                      "drift_gate": "success", "emit_drift_event": "skipped"}  # fmt: skip
    result = xcom(api, DRIFT, run_id, "detect_drift")
    assert not result["drifted"] and result["current"]["fingerprint"] == reference["fingerprint"]
    report = json.loads(storage.read_text(result["report_uri"]))
    assert report["reason"].startswith("no feature over its threshold") and report["retrain"] is False

    # A revision with a shifted class balance, checked by hand with the drift form.
    shifted = str(stack.data_dir / "shifted")
    conf = {"dataset_source": shifted, "publish_prefix": PREFIX, "retrain_conf": {"preflight": False, **TINY}}
    run_id = patient(lambda: api.trigger(DRIFT, conf))
    states = follow(stack, api, DRIFT, run_id)
    assert set(states.values()) == {"success"}, states
    result = xcom(api, DRIFT, run_id, "detect_drift")
    assert result["drifted"] and "class_balance" in result["drifted_features"]
    assert storage.exists(result["png_uri"])

    # ... which starts exactly one training run, on the drifted data, that trains.
    retrain = wait_for_run(api, TRAINING, "asset_triggered", after=retrains_before, timeout=180)
    preflight_beside_a_training_run(stack, api, retrain)
    states = follow(stack, api, TRAINING, retrain, timeout=900)
    assert states == dict.fromkeys(STAGES, "success")
    published = xcom(api, TRAINING, retrain, "publish")
    note = patient(lambda: api.run(TRAINING, retrain))["note"]
    if published["promoted"]:
        assert note.startswith(f"mAP@.5:.95 {published['map_50_95']:.3f} PROMOTED ("), note
    else:
        assert note == "not promoted: " + "; ".join(published["promotion_reasons"]), note
    # the publish task's event on the yolonas_model Asset: the model's line in the Assets view
    events = get(api, "/api/v2/assets/events", source_dag_id=TRAINING, source_run_id=retrain)["asset_events"]
    [extra] = [e["extra"] for e in events if e["name"] == "yolonas_model"]
    assert {k: extra[k] for k in ("run_id", "bundle_uri", "promoted", "reasons")} == {
        "run_id": retrain,
        "bundle_uri": published["bundle_uri"],
        "promoted": published["promoted"],
        "reasons": published["promotion_reasons"],
    }
    assert extra["model_name"] == "yolo_nas_s" and extra["map_50_95"] == published["map_50_95"] and "map_50" in extra
    assert xcom(api, TRAINING, retrain, "materialize")["fingerprint"] == result["current"]["fingerprint"]
    plan = xcom(api, TRAINING, retrain, "preflight")
    assert plan["trigger"]["asset"] == "yolonas_drift" and plan["preflight"] is False
    assert plan["trigger"]["event"]["scores"]["class_balance"] == result["scores"]["class_balance"]
    # the drift run's prefix reaches the retraining: it is gated against, and publishes to, what drift compared with
    assert plan["outputs"]["champion_uri"] == f"s3://{stack.bucket}/{PREFIX}/yolo_nas_s/champion.json"
    assert xcom(api, TRAINING, retrain, "publish")["bundle_uri"].startswith(f"s3://{stack.bucket}/{PREFIX}/yolo_nas_s/")
    assert {r["dag_run_id"] for r in runs(api, TRAINING, "asset_triggered")} - retrains_before == {retrain}


def preflight_beside_a_training_run(stack: Embedded, api: AirflowApi, training_run: str) -> None:
    """A preflight triggered while ``training_run`` is running finishes before it: yolonas_training takes one run at
    a time, yolonas_preflight has runs of its own."""
    patient(lambda: api.unpause(PREFLIGHT))
    assert patient(lambda: api.run(TRAINING, training_run))["state"] in ("queued", "running")
    run_id = patient(lambda: api.trigger(PREFLIGHT, {"dataset_source": str(stack.sample_dataset), **TINY}))
    states = follow(stack, api, PREFLIGHT, run_id, timeout=600)
    assert states == dict.fromkeys(STAGES[:4], "success")
    training = patient(lambda: api.run(TRAINING, training_run))
    assert training["state"] == "running", ("the training run finished first", task_states(api, TRAINING, training_run))
    preflight = patient(lambda: api.run(PREFLIGHT, run_id))
    assert preflight["note"] == "PREFLIGHT"
    assert xcom(api, PREFLIGHT, run_id, "preflight")["preflight"] is True


def safe(run_id: str) -> str:
    from yolonas_pipeline.contracts import safe_segment

    return safe_segment(run_id)


def crown_sample_as_champion(stack: Embedded, storage: Storage) -> dict[str, Any]:
    """A champion trained on the sample export, under ``PREFIX``: a bundle manifest recording it, and champion.json."""
    request = MaterializeRequest(source=str(stack.sample_dataset), output_uri=f"s3://{stack.bucket}/datasets")
    dataset = materialize(request, storage=storage).to_xcom()
    crown_champion(
        storage,
        f"s3://{stack.bucket}/{PREFIX}",
        dataset_uri=dataset["dataset_uri"],
        fingerprint=dataset["fingerprint"],
        run_id="manual__champion",
    )
    return dataset


def post_asset_event(api: AirflowApi, name: str, extra: dict[str, Any]) -> None:
    assets = get(api, "/api/v2/assets", name_pattern=name)["assets"]
    (asset,) = [a for a in assets if a["name"] == name]
    patient(lambda: api._request("POST", "/api/v2/assets/events", {"asset_id": asset["id"], "extra": extra}))
