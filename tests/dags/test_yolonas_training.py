"""The DAGs: they parse, they are wired as documented, the trigger form validates, preflight stops before
training, schedules come from the environment, and one real run succeeds end to end."""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, SMALL_RUN, MotoS3

DAG_ID = "yolonas_training"
DRIFT_DAG_ID = "yolonas_drift"
PREFLIGHT_DAG_ID = "yolonas_preflight"
TASKS = ["settings", "materialize", "inspect_checkpoint", "preflight", "train", "evaluate", "publish"]
DRIFT_TASKS = ["settings", "materialize", "detect_drift", "drift_gate", "emit_drift_event"]
SCHEDULE_VARIABLES = (
    "YOLONAS_TRAINING_SCHEDULE",
    "YOLONAS_TRAINING_DEFAULTS",
    "YOLONAS_DRIFT_SCHEDULE",
    "YOLONAS_DRIFT_CONFIG",
    "YOLONAS_DRIFT_RETRAIN_CONF",
)


def parse(monkeypatch: pytest.MonkeyPatch | None = None, **env: str) -> Any:
    """A fresh DagBag: DAG files read their schedule and defaults from the environment at parse time."""
    from airflow.models import DagBag

    if monkeypatch is not None:
        for name in SCHEDULE_VARIABLES:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    # include_examples= raises TypeError in 3.3; examples are off through AIRFLOW__CORE__LOAD_EXAMPLES.
    return DagBag(dag_folder=str(REPO / "dags"))


@pytest.fixture(scope="module")
def dagbag(airflow_db: Path):
    return parse()


@pytest.fixture
def fresh_dag(airflow_db: Path):
    """The training DAG parsed anew: dag.test(run_conf=...) stores the conf's values in the DAG's Params, so a
    DAG object shared between runs would carry one test's values into the next."""
    return parse().get_dag(DAG_ID)


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {DAG_ID, DRIFT_DAG_ID, PREFLIGHT_DAG_ID} <= set(dagbag.dag_ids)


def test_training_dag_is_a_chain_of_the_stages_with_the_preflight_gate(dagbag) -> None:
    dag = dagbag.get_dag(DAG_ID)
    assert [t.task_id for t in dag.topological_sort()] == TASKS
    for upstream, downstream in itertools.pairwise(TASKS):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert dag.max_active_runs == 1 and dag.catchup is False
    assert dag.get_task("train").retries >= 1


def test_drift_dag_is_a_chain_ending_in_the_drift_asset(dagbag) -> None:
    dag = dagbag.get_dag(DRIFT_DAG_ID)
    assert [t.task_id for t in dag.topological_sort()] == DRIFT_TASKS
    assert [o.name for o in dag.get_task("emit_drift_event").outlets] == ["yolonas_drift"]
    assert dag.max_active_runs == 1 and dag.catchup is False


def test_the_preflight_dag_is_the_training_dags_first_four_tasks_and_runs_beside_it(dagbag) -> None:
    dag, training = dagbag.get_dag(PREFLIGHT_DAG_ID), dagbag.get_dag(DAG_ID)
    assert [t.task_id for t in dag.topological_sort()] == TASKS[:4]
    for task_id in TASKS[:3]:
        assert type(dag.get_task(task_id)) is type(training.get_task(task_id)), task_id
    assert dag.max_active_runs > 1 and training.max_active_runs == 1
    assert type(dag.timetable).__name__ == "NullTimetable"  # triggered only
    # the same form, less its Preflight only toggle (always on here)
    assert set(dag.params) == set(training.params) - {"preflight"}


def test_publish_emits_on_the_model_asset_and_materialize_on_the_dataset_asset(dagbag) -> None:
    dag = dagbag.get_dag(DAG_ID)
    assert [o.name for o in dag.get_task("publish").outlets] == ["yolonas_model"]
    assert [o.name for o in dag.get_task("materialize").outlets] == ["yolonas_dataset"]
    assert dagbag.get_dag(PREFLIGHT_DAG_ID).get_task("materialize").outlets == []


def _bound_texts(value: float) -> set[str]:
    return {f"{value:g}", str(value), f"{int(value)}" if float(value).is_integer() else f"{value:g}"}


@pytest.mark.parametrize("dag_id", [DAG_ID, DRIFT_DAG_ID, PREFLIGHT_DAG_ID])
def test_every_field_describes_itself_and_its_bounds(dagbag, dag_id: str) -> None:
    """The form's description is the only place a person reads a field's range and rule before triggering."""
    params = dagbag.get_dag(dag_id).params
    for key in params:
        param = params.get_param(key)
        description = param.description or ""
        assert description, f"{dag_id}.{key} has no description"
        schema = param.schema
        for bound in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxLength", "multipleOf"):
            if bound in schema:
                where = f"{dag_id}.{key}: {bound} {schema[bound]} in {description!r}"
                assert any(text in description for text in _bound_texts(schema[bound])), where


@pytest.mark.parametrize("dag_id", [DAG_ID, DRIFT_DAG_ID, PREFLIGHT_DAG_ID])
def test_every_dag_has_docs_tags_owner_retries_and_failure_callbacks(dagbag, dag_id: str) -> None:
    dag = dagbag.get_dag(dag_id)
    assert dag.doc_md and dag.tags and dag.description
    assert dag.owner == "ml-platform"
    assert dag.on_failure_callback
    for task in dag.tasks:
        # every failed attempt logs its FAILED line, the ones that will be retried too
        assert task.on_failure_callback and task.on_retry_callback, task.task_id
    # stages that read or write S3 or run the trainer retry with backoff
    retried = [t for t in dag.tasks if t.retries >= 1]
    assert "materialize" in {t.task_id for t in retried}
    assert all(t.retry_exponential_backoff >= 2 and t.max_retry_delay for t in retried)


def test_default_schedule_is_the_drift_asset_and_a_cron_comes_from_the_environment(
    airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk import AssetOrTimeSchedule
    from airflow.sdk.definitions.timetables.assets import AssetTriggeredTimetable

    dag = parse(monkeypatch).get_dag(DAG_ID)
    assert type(dag.timetable) is AssetTriggeredTimetable
    assert "yolonas_drift" in repr(dag.timetable)

    bag = parse(monkeypatch, YOLONAS_TRAINING_SCHEDULE="30 2 * * 1", YOLONAS_DRIFT_SCHEDULE="")
    dag, drift = bag.get_dag(DAG_ID), bag.get_dag(DRIFT_DAG_ID)
    assert isinstance(dag.timetable, AssetOrTimeSchedule)
    assert dag.timetable.timetable.expression == "30 2 * * 1"
    assert "yolonas_drift" in repr(dag.timetable.asset_condition)
    assert type(drift.timetable) is AssetTriggeredTimetable  # empty: the source Asset only
    assert "yolonas_dataset_source" in repr(drift.timetable)


def test_a_bad_cron_or_defaults_is_an_import_error_naming_the_variable(
    airflow_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bag = parse(monkeypatch, YOLONAS_TRAINING_SCHEDULE="every monday")
    assert any("YOLONAS_TRAINING_SCHEDULE" in e for e in bag.import_errors.values()), bag.import_errors
    bag = parse(monkeypatch, YOLONAS_TRAINING_DEFAULTS='{"epochz": 3}')
    assert any("epochz" in e for e in bag.import_errors.values()), bag.import_errors
    bag = parse(monkeypatch, YOLONAS_TRAINING_DEFAULTS='{"epochs": 0}')
    assert bag.import_errors, "a default the form refuses must not parse"


def test_form_defaults_come_from_the_environment(airflow_db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = {"epochs": 3, "input_size": 96, "preflight": True}
    dag = parse(monkeypatch, YOLONAS_TRAINING_DEFAULTS=json.dumps(conf)).get_dag(DAG_ID)
    assert {k: dag.params[k] for k in conf} == conf


def test_the_form_has_the_documented_sections(dagbag) -> None:
    params = dagbag.get_dag(DAG_ID).params
    sections = {key: params.get_param(key).schema.get("section") for key in params}
    assert sections["dataset_source"] == sections["dataset_revision"] == sections["schema"] == "Dataset"
    assert sections["split_map"] == "Dataset"
    assert sections["model_name"] == sections["checkpoint_uri"] == sections["checkpoint_sha256"] == "Model"
    assert {sections[k] for k in ("epochs", "batch_size", "input_size", "learning_rate", "mixed_precision")} == {
        "Training"
    }
    assert sections["gpus"] == "Resources" and sections["preflight"] == "Run"
    assert "backend" not in params, "the backend is the deployment's (YOLONAS_BACKEND), chosen at parse time"
    for key in params:
        assert params.get_param(key).description or key == "model_name", f"{key} has no description"
    assert {sections[k] for k in ("publish_bucket", "publish_prefix", "promotion_margin", "class_ap_tolerance")} == {
        "Publishing"
    }


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"epochs": 0}, "minimum of 1"),
        ({"input_size": 100}, "multiple of 32"),
        ({"model_name": "yolo_nas_xl"}, "is not one of"),
        ({"checkpoint_sha256": "abc"}, "does not match"),
        ({"learning_rate": 0}, "less than or equal to the minimum"),
        ({"publish_bucket": "Not_A_Bucket"}, "does not match"),
        ({"split_map": {"training": "train"}}, "is not one of"),
        ({"gpus": 9}, "maximum of 8"),
        ({"dataset_revision": "x" * 300}, "is too long"),
        ({"checkpoint_sha256": 0}, "is not of type 'null', 'string'"),
        ({"preflight": "yes"}, "is not of type 'boolean'"),
    ],
)
def test_bad_trigger_values_are_refused(dagbag, conf: dict[str, Any], message: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.get_dag(DAG_ID)
    dag.params.validate()  # the defaults are valid
    with pytest.raises(ParamValidationError, match=message):
        dag.test(run_conf=conf)


def test_bad_drift_settings_are_refused(dagbag) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    dag = dagbag.get_dag(DRIFT_DAG_ID)
    dag.params.validate()
    with pytest.raises(ParamValidationError, match="is not one of"):
        dag.test(run_conf={"drift_config": {"thresholds": {"colour": 0.1}}})
    with pytest.raises(ParamValidationError, match="is not one of"):
        dag.test(run_conf={"when_no_champion": "panic"})


def test_preflight_run_stops_before_training_and_reports_the_plan(
    fresh_dag, moto_s3: MotoS3, sample_dataset: Path
) -> None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = fresh_dag
    dag_run = dag.test(run_conf={"dataset_source": str(sample_dataset), "preflight": True, **SMALL_RUN})
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "success", states
    assert states == {
        "settings": "success",
        "materialize": "success",
        "inspect_checkpoint": "success",
        "preflight": "success",
        "train": "skipped",
        "evaluate": "skipped",
        "publish": "skipped",
    }
    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=DAG_ID, run_id=dag_run.run_id, task_id="preflight", key="return_value")
            .one()
        )
        plan = row.value if isinstance(row.value, dict) else json.loads(row.value)
    assert plan["preflight"] is True
    assert plan["training"]["epochs"] == 1 and plan["training"]["train_images"] > 0
    # the trainer's loader drops a partial last batch (build_loader): so does the plan
    assert plan["training"]["steps_per_epoch"] == plan["training"]["train_images"] // 8
    assert plan["resources"] == {"backend": "local", "gpus": 0, "processes": 1}  # no GPU on this machine
    assert plan["train"]["cmds"] == ["python", "-m", "yolonas_pipeline.trainer"]
    assert plan["train"]["arguments"][0] == "train"
    assert "--train-result-uri" in plan["evaluate"]["arguments"]
    assert plan["model"]["num_classes"] == 5
    assert plan["outputs"]["bundle_uri"].startswith(f"s3://{moto_s3.bucket}/models/yolo_nas_s/")
    assert any(line.startswith("preflight: PREFLIGHT") for line in plan["summary"])
    keys = [o["Key"] for o in moto_s3.client.list_objects_v2(Bucket=moto_s3.bucket).get("Contents", [])]
    assert not any("/train/" in k and k.startswith("runs/") for k in keys), "preflight must not train"
    assert note_of(dag_run) == "PREFLIGHT"  # set by the listener (plugins/yolonas_listeners.py)


def test_the_preflight_dag_always_stops_at_the_plan(airflow_db: Path, moto_s3: MotoS3, sample_dataset: Path) -> None:
    dag = parse().get_dag(PREFLIGHT_DAG_ID)
    dag_run = dag.test(run_conf={"dataset_source": str(sample_dataset), "preflight": False, **SMALL_RUN})
    assert dag_run.state == "success", task_states(dag_run)
    assert set(task_states(dag_run).values()) == {"success"}
    assert xcom(dag_run, "preflight")["preflight"] is True
    assert note_of(dag_run) == "PREFLIGHT"


def note_of(dag_run: Any) -> str | None:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(DagRun).filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id).one().note


def test_a_failed_run_logs_one_line_with_its_s3_location(
    fresh_dag, moto_s3: MotoS3, sample_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from yolonas_pipeline.contracts import safe_segment

    dag = fresh_dag
    missing = f"s3://{moto_s3.bucket}/no/such/checkpoint.pth"
    conf = {"dataset_source": str(sample_dataset), "preflight": True, "checkpoint_uri": missing}
    with caplog.at_level(logging.ERROR, logger="yolonas_pipeline.failures"):
        dag_run = dag.test(run_conf=conf)
    assert dag_run.state == "failed"
    lines = [r.getMessage() for r in caplog.records if r.name == "yolonas_pipeline.failures"]
    assert lines, "the failure callback logged nothing"
    # the task's own callback names the exception; the DAG-level one the reason the run failed
    (line,) = [line for line in lines if "FileNotFoundError" in line]
    assert "\n" not in line
    assert line.startswith(f"FAILED {DAG_ID} run {dag_run.run_id}: task inspect_checkpoint (try 1 of 1): ")
    assert line.endswith(f"; artifacts s3://{moto_s3.bucket}/runs/{safe_segment(dag_run.run_id)}/")


@pytest.fixture(scope="module")
def trained_run(airflow_db: Path, moto_s3: MotoS3, sample_dataset: Path) -> Any:
    """One real run end to end (real super-gradients training on the CPU), shared by the tests that need one."""
    conf = {"dataset_source": str(sample_dataset), **SMALL_RUN}
    return parse().get_dag(DAG_ID).test(run_conf=conf)


def test_end_to_end_run_trains_evaluates_and_publishes(trained_run: Any, moto_s3: MotoS3) -> None:
    from yolonas_pipeline.publish import verify_bundle
    from yolonas_pipeline.storage import Storage

    dag_run = trained_run
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert dag_run.state == "success", states
    assert set(states.values()) == {"success"}

    keys = [o["Key"] for o in moto_s3.client.list_objects_v2(Bucket=moto_s3.bucket)["Contents"]]
    assert any(k.startswith("datasets/") and k.endswith("/manifest.json") for k in keys)
    assert any(k.startswith("datasets/") and k.endswith("/annotations/train.json") for k in keys)
    assert any(k.startswith("runs/") and k.endswith("/train/run/ckpt_best.pth") for k in keys)
    metrics_key = next(k for k in keys if k.startswith("runs/") and k.endswith("/evaluate/metrics.json"))
    metrics = json.loads(moto_s3.client.get_object(Bucket=moto_s3.bucket, Key=metrics_key)["Body"].read())
    assert {"map_50", "map_50_95", "precision", "recall", "per_class"} <= set(metrics)
    assert set(metrics["per_class"]) == {"Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"}

    # what preflight planned is what the trainer did: steps per epoch and GPUs
    from yolonas_pipeline.contracts import RunPlan, TrainResult

    plan = RunPlan.parse(xcom(dag_run, "preflight"), source="the preflight XCom")
    trained = TrainResult.parse(xcom(dag_run, "train"), source="the train XCom")
    assert plan.training["steps_per_epoch"] == trained.steps_per_epoch
    assert plan.resources["gpus"] == trained.gpus == 0

    manifest_key = next(k for k in keys if k.startswith("models/yolo_nas_s/") and k.endswith("/manifest.json"))
    storage = Storage(moto_s3.client)
    manifest = verify_bundle(f"s3://{moto_s3.bucket}/{manifest_key.rsplit('/', 1)[0]}", storage=storage)
    assert set(manifest.files) >= {"model.pth", "metrics.json", "dataset_manifest.json"}
    assert manifest.base_weights["licence_note"] == "trained from scratch"

    # the drift DAG finds the snapshot the champion was trained on through what publish wrote
    from yolonas_pipeline.drift import read_champion

    champion = read_champion(f"s3://{moto_s3.bucket}/models/yolo_nas_s/champion.json", storage=storage)
    assert champion is not None, "the first published model becomes the champion"
    assert storage.exists(f"{champion.dataset_uri}/manifest.json")


def test_publish_emits_a_model_asset_event_and_notes_the_run(trained_run: Any) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    published = xcom(trained_run, "publish")
    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "yolonas_model", AssetEvent.source_run_id == trained_run.run_id)
            .all()
        )
        extras = [dict(event.extra) for event in events]
    [extra] = extras
    assert extra["run_id"] == trained_run.run_id and extra["model_name"] == "yolo_nas_s"
    assert extra["bundle_uri"] == published["bundle_uri"]
    assert extra["promoted"] is True and extra["reasons"] == published["promotion_reasons"]
    assert {"map_50", "map_50_95"} <= set(extra) and extra["map_50_95"] == published["map_50_95"]
    json.dumps(extra)  # JSON-safe
    assert not any(word in json.dumps(extra).lower() for word in ("secret", "password", "access_key"))
    # the first model has no champion to beat
    assert note_of(trained_run) == f"mAP@.5:.95 {published['map_50_95']:.3f} PROMOTED (no champion yet)"


def xcom(dag_run: Any, task_id: str) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key="return_value")
            .one()
        )
        return row.value if isinstance(row.value, dict) else json.loads(row.value)


# -- input holes: each refused before any work, with a message naming the field ---------------------------------
def task_states(dag_run: Any) -> dict[str, str | None]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "yolonas_pipeline.failures"]


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ({"architecture": "yolo_nas_l"}, "'architecture' (did you mean 'model_name'?)"),
        ({"epoch": 3}, "'epoch' (did you mean 'epochs'?)"),
        ({"publish_prefix": "../../etc"}, "publish_prefix='../../etc' has a '.' or '..' segment"),
        ({"publish_prefix": "models/../../x"}, "has a '.' or '..' segment"),
    ],
)
def test_unknown_or_unsafe_settings_fail_the_run_before_any_work(
    fresh_dag, moto_s3: MotoS3, caplog: pytest.LogCaptureFixture, conf: dict[str, Any], expected: str
) -> None:
    with caplog.at_level(logging.ERROR, logger="yolonas_pipeline.failures"):
        dag_run = fresh_dag.test(run_conf={"preflight": True, **conf})
    states = task_states(dag_run)
    assert dag_run.state == "failed", states
    assert states["settings"] == "failed" and states["materialize"] == "upstream_failed", states
    line = next(line for line in failure_lines(caplog) if "task settings" in line)
    assert expected in line, line
    assert "(try 1 of 1)" in line


def test_a_digit_only_checkpoint_sha256_is_checked(
    fresh_dag, moto_s3: MotoS3, sample_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A digest of digits only used to render as the integer 0 and be taken as "not given"."""
    weights = tmp_path / "base.pth"
    weights.write_bytes(b"not the weights the digest describes")
    conf = {
        "dataset_source": str(sample_dataset),
        "preflight": True,
        "checkpoint_uri": str(weights),
        "checkpoint_sha256": "0" * 64,
    }
    with caplog.at_level(logging.ERROR, logger="yolonas_pipeline.failures"):
        dag_run = fresh_dag.test(run_conf=conf)
    assert task_states(dag_run)["inspect_checkpoint"] == "failed"
    line = next(line for line in failure_lines(caplog) if "task inspect_checkpoint" in line)
    assert "0" * 64 in line and "sha" in line.lower(), line


def test_a_permanent_input_error_fails_its_task_without_retrying(
    fresh_dag, moto_s3: MotoS3, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no-such-dataset"
    with caplog.at_level(logging.ERROR, logger="yolonas_pipeline.failures"):
        dag_run = fresh_dag.test(run_conf={"dataset_source": str(missing), "preflight": True})
    [materialize] = [ti for ti in dag_run.get_task_instances() if ti.task_id == "materialize"]
    assert materialize.state == "failed" and materialize.try_number == 1, (materialize.state, materialize.try_number)
    line = next(line for line in failure_lines(caplog) if "task materialize" in line)
    assert "(try 1 of 3)" in line and str(missing) in line, line


# -- never train the same model twice ---------------------------------------------------------------------------
def bundle_of(dag_run: Any) -> str:
    return str(xcom(dag_run, "publish")["bundle_uri"])


def test_a_run_with_the_same_inputs_reuses_the_bundle_and_trains_nothing(
    trained_run: Any, moto_s3: MotoS3, sample_dataset: Path
) -> None:
    from yolonas_pipeline.contracts import RunPlan, safe_segment

    dag_run = parse().get_dag(DAG_ID).test(run_conf={"dataset_source": str(sample_dataset), **SMALL_RUN})
    states = task_states(dag_run)
    assert dag_run.state == "success", states
    assert states["preflight"] == "success"
    assert states["train"] == states["evaluate"] == states["publish"] == "skipped", states
    plan = RunPlan.parse(xcom(dag_run, "preflight"), source="preflight XCom")
    assert plan.reused_bundle_uri == bundle_of(trained_run)
    assert any(line.startswith(f"preflight: REUSE {plan.reused_bundle_uri}") for line in plan.summary)
    keys = [o["Key"] for o in moto_s3.client.list_objects_v2(Bucket=moto_s3.bucket)["Contents"]]
    assert not any(k.startswith(f"runs/{safe_segment(dag_run.run_id)}/train/") for k in keys), "no trainer ran"


@pytest.mark.parametrize("change", [{"epochs": 2}, {"learning_rate": 1e-3}, {"input_size": 96}, {"batch_size": 4}])
def test_any_changed_input_trains(trained_run: Any, sample_dataset: Path, change: dict[str, Any]) -> None:
    from yolonas_pipeline.contracts import RunPlan

    conf = {"dataset_source": str(sample_dataset), **SMALL_RUN, **change, "preflight": True}
    plan = RunPlan.parse(xcom(parse().get_dag(DAG_ID).test(run_conf=conf), "preflight"), source="preflight XCom")
    assert plan.reused_bundle_uri is None


def test_force_trains_anyway(trained_run: Any, sample_dataset: Path) -> None:
    from yolonas_pipeline.contracts import RunPlan

    conf = {"dataset_source": str(sample_dataset), **SMALL_RUN, "preflight": True, "force": True}
    plan = RunPlan.parse(xcom(parse().get_dag(DAG_ID).test(run_conf=conf), "preflight"), source="preflight XCom")
    assert plan.reused_bundle_uri is None and "force is set" in plan.reuse_notes[0]


def test_a_tampered_bundle_is_never_reused_and_the_plan_says_why(
    trained_run: Any, moto_s3: MotoS3, sample_dataset: Path
) -> None:
    from yolonas_pipeline.contracts import RunPlan
    from yolonas_pipeline.storage import Storage

    storage = Storage(moto_s3.client)
    bundle = bundle_of(trained_run)
    original = storage.read_bytes(f"{bundle}/metrics.json")
    storage.write_bytes(f"{bundle}/metrics.json", original + b" ")
    try:
        conf = {"dataset_source": str(sample_dataset), **SMALL_RUN, "preflight": True}
        plan = RunPlan.parse(xcom(parse().get_dag(DAG_ID).test(run_conf=conf), "preflight"), source="preflight")
    finally:
        storage.write_bytes(f"{bundle}/metrics.json", original)
    assert plan.reused_bundle_uri is None
    [note] = plan.reuse_notes
    assert note.startswith(f"{bundle} was trained with the same inputs but fails verification") and "sha256" in note
