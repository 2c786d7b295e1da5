"""The trainer pod as the operator would create it, rendered without a cluster and checked against the
Kubernetes schema, the deployment manifests and the local backend's command line."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import REPO

from yolonas_pipeline.contracts import TRAINER_MODULE, ClassPlan, DatasetExport
from yolonas_pipeline.local_runner import local_argv

#: Credentials of the Airflow connection in these tests: they must never reach the pod spec.
CONN_LOGIN = "AKIAPODSPECLEAKCHECK1"
CONN_SECRET = "pod-spec-leak-check/secret+value"
DATASET = DatasetExport(
    dataset_uri="s3://yolonas/datasets/0123456789abcdef",
    fingerprint="0123456789abcdef",
    class_names=["Coverall", "Gloves", "Mask"],
    splits={"train": {"images": 100, "annotations": 300}, "validation": {"images": 10, "annotations": 30}},
    class_histogram={"Coverall": 110, "Gloves": 110, "Mask": 110},
    reused=False,
    report_uri="s3://yolonas/datasets/0123456789abcdef/report.json",
    manifest_uri="s3://yolonas/datasets/0123456789abcdef/manifest.json",
)
CLASS_PLAN = ClassPlan(model_name="yolo_nas_s", num_classes=3, class_names=["Coverall", "Gloves", "Mask"])
RUN_ID = "manual__2026-11-26T10:00:00+00:00"


class FakeTaskInstance:
    """What a rendered task sees of its upstream preflight task: the XComs the plan pushed."""

    def __init__(self, xcoms: dict[str, Any]) -> None:
        self.xcoms = xcoms
        self.dag_id, self.task_id, self.map_index, self.try_number = "yolonas_training", "train", -1, 1

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", **kwargs: Any) -> Any:
        return self.xcoms[key]


def airflow_env() -> dict[str, str]:
    """``YOLONAS_*`` settings of config/airflow.env: the typical deployment."""
    settings = {}
    for line in (REPO / "config" / "airflow.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("YOLONAS_"):
            settings[key.strip()] = value.strip()
    return settings


@pytest.fixture
def typical(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    settings = {**airflow_env(), "YOLONAS_BACKEND": "kubernetes"}
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    connection = {
        "conn_type": "aws",
        "login": CONN_LOGIN,
        "password": CONN_SECRET,
        "extra": {"region_name": "eu-west-1"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    return settings


def render(gpus: int, **settings: Any) -> tuple[Any, dict[str, Any]]:
    """The DAG's ``train`` task on the kubernetes backend, rendered from a real run plan, and its pod as the
    API server gets it."""
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG, XComArg
    from kubernetes.client import ApiClient

    from yolonas_pipeline.operators.trainer import TrainerPodOperator, trainer_task
    from yolonas_pipeline.preflight import plan_run
    from yolonas_pipeline.run_settings import TrainingSettings

    run_settings = TrainingSettings.validated({"gpus": gpus, "epochs": 12, "batch_size": 32, **settings}, origin="test")
    plan = plan_run(
        run_settings, DATASET, CLASS_PLAN, run_id=RUN_ID, runs_uri="s3://yolonas/runs", backend="kubernetes"
    )
    xcoms = {f"train_{k}": v for k, v in plan.train.model_dump(mode="json").items()}
    with DAG("yolonas_training", schedule=None):
        preflight = EmptyOperator(task_id="preflight")
        operator = trainer_task(task_id="train", plan=XComArg(preflight), command="train")
    assert isinstance(operator, TrainerPodOperator)
    context: Any = {"run_id": RUN_ID, "params": {}, "ti": FakeTaskInstance(xcoms), "dag": SimpleNamespace()}
    operator.render_template_fields(context)
    pod = operator.build_pod_request_obj(context, dry_run=True)
    return operator, ApiClient().sanitize_for_serialization(pod)


def leaked(pod: dict[str, Any]) -> list[str]:
    """The connection's credentials found anywhere in the pod spec."""
    serialized = json.dumps(pod)
    return [value for value in (CONN_LOGIN, CONN_SECRET) if value in serialized]


def validate_schema(pod: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_typical_gpu_pod_validates_and_has_what_training_needs(typical: dict[str, str]) -> None:
    operator, pod = render(gpus=1)
    validate_schema(pod)
    spec = pod["spec"]
    assert pod["metadata"]["namespace"] == "yolonas" == typical["YOLONAS_NAMESPACE"]
    assert spec["serviceAccountName"] == "yolonas-trainer" == typical["YOLONAS_TRAINER_SERVICE_ACCOUNT"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    # Labels find the pod again after a scheduler restart (the provider's reattach logic).
    assert pod["metadata"]["labels"]["dag_id"] == "yolonas_training" and pod["metadata"]["labels"]["try_number"] == "1"

    # One container: no XCom sidecar (results come back through S3) and nothing else.
    [container] = spec["containers"]
    assert container["name"] == "base" and not spec.get("initContainers")
    assert container["image"] == typical["YOLONAS_TRAINER_IMAGE"]
    assert not any("xcom" in volume["name"] for volume in spec.get("volumes", []))

    # GPU limit, node placement on GPU nodes, CPU/memory requests.
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert set(resources["requests"]) >= {"cpu", "memory"}
    assert "cpu" not in resources["limits"]  # a quota would throttle the loader workers
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"]

    # Memory-backed /dev/shm, and a writable scratch volume for HOME, TORCH_HOME, logs and the work dir.
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    env = {item["name"]: item.get("value") for item in container["env"]}
    for name in ("HOME", "TORCH_HOME", "SUPER_GRADIENTS_LOG_DIR", "YOLONAS_WORK_DIR"):
        assert any(env[name].startswith(path + "/") for path, volume in mounts.items() if volume != "dshm"), name

    # S3 credentials: only a reference to the Secret, never a value.
    assert container["envFrom"] == [{"secretRef": {"name": "yolonas-s3"}}]
    assert not any(name.startswith("AWS_") for name in env)
    assert leaked(pod) == []

    # Restricted Pod Security: non-root uid 1000 (the image's user), no privilege escalation, no capabilities.
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert not container["securityContext"].get("privileged")

    # Long enough for GPU node autoscaling; logs streamed; the pod goes away once it succeeded.
    assert operator.schedule_timeout_seconds >= 600 and operator.startup_timeout_seconds >= 600
    assert operator.get_logs and operator.on_finish_action.value == "delete_succeeded_pod"


def test_pod_runs_exactly_the_local_backends_command(typical: dict[str, str]) -> None:
    operator, pod = render(gpus=1)
    [container] = pod["spec"]["containers"]
    pod_argv = [*container["command"], *container["args"]]
    local = local_argv([*operator.cmds, *operator.arguments])
    assert pod_argv[0] == "python" and pod_argv[1:] == local[1:]
    assert pod_argv[1:4] == ["-m", TRAINER_MODULE, "train"]
    flags = dict(zip(pod_argv[4::2], pod_argv[5::2], strict=False))
    assert flags["--dataset-uri"] == DATASET.dataset_uri
    assert flags["--output-uri"].startswith("s3://yolonas/runs/") and flags["--output-uri"].endswith("/train")
    assert flags["--num-classes"] == "3" and flags["--epochs"] == "12" and flags["--batch-size"] == "32"


def test_multi_gpu_pod_runs_under_torchrun(typical: dict[str, str]) -> None:
    _, pod = render(gpus=4)
    validate_schema(pod)
    [container] = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["command"] == ["torchrun", "--standalone", "--nproc_per_node=4", "-m", TRAINER_MODULE]
    assert container["args"][0] == "train" and "--gpus" in container["args"]
    assert container["args"][container["args"].index("--gpus") + 1] == "4"
    # The local backend runs the same command through the trainer interpreter's torch.distributed.run.
    local = local_argv([*container["command"], *container["args"]])
    assert local[1:3] == ["-m", "torch.distributed.run"] and local[3:] == [
        *container["command"][1:],
        *container["args"],
    ]
    # Per-GPU defaults scale with the GPU count.
    assert container["resources"]["requests"]["cpu"] == "32"
    assert container["resources"]["limits"]["memory"] == "128Gi"


def test_schema_validation_rejects_malformed_resources(typical: dict[str, str]) -> None:
    """The validation above is not vacuous: it rejects a pod the API server would reject."""
    import kubernetes_validate

    _, pod = render(gpus=1)
    malformed = json.loads(json.dumps(pod))
    malformed["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = [1]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_schema(malformed)
    misspelled = json.loads(json.dumps(pod))  # strict: an unknown field is an error, not ignored
    misspelled["spec"]["containers"][0]["resources"]["limit"] = {"nvidia.com/gpu": "1"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_schema(misspelled)


def test_without_a_secret_the_pod_relies_on_irsa(typical: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLONAS_TRAINER_SECRET", "")
    _, pod = render(gpus=1)
    validate_schema(pod)
    [container] = pod["spec"]["containers"]
    assert not container.get("envFrom")
    assert CONN_SECRET not in json.dumps(pod)


def test_cpu_only_pod_has_no_gpu_scheduling(typical: dict[str, str]) -> None:
    _, pod = render(gpus=0)
    validate_schema(pod)
    [container] = pod["spec"]["containers"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert not pod["spec"].get("nodeSelector")  # the GPU toleration only permits GPU nodes; nothing requires one


def test_repository_manifests_name_what_the_pod_uses(typical: dict[str, str]) -> None:
    """The pod's namespace, service account and secret are the ones deploy/kubernetes creates or documents."""
    manifests = "\n".join(p.read_text() for p in (REPO / "deploy" / "kubernetes").glob("*.yaml"))
    for value in (
        typical["YOLONAS_NAMESPACE"],
        typical["YOLONAS_TRAINER_SERVICE_ACCOUNT"],
        typical["YOLONAS_TRAINER_SECRET"],
    ):
        assert f"name: {value}" in manifests
    assert Path(REPO / "Dockerfile").read_text().count("--uid 1000") == 1


def test_gpus_from_the_trigger_form_are_applied_at_run_time(typical: dict[str, str]) -> None:
    """The run's GPUs (a form field) decide the pod's GPU limit, resources and launcher through the plan."""
    _, pod = render(gpus=2)
    validate_schema(pod)
    [container] = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["cpu"] == "16"
    assert container["command"][:3] == ["torchrun", "--standalone", "--nproc_per_node=2"]
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_the_leak_check_finds_a_credential_in_the_pod(typical: dict[str, str]) -> None:
    """The credential checks above are not vacuous: a secret put into the pod spec is found."""
    from kubernetes.client import ApiClient
    from kubernetes.client import models as k8s

    operator, _ = render(gpus=1)
    operator.env_vars = [*operator.env_vars, k8s.V1EnvVar(name="AWS_SECRET_ACCESS_KEY", value=CONN_SECRET)]
    pod = ApiClient().sanitize_for_serialization(operator.build_pod_request_obj({}, dry_run=True))
    assert leaked(pod) == [CONN_SECRET]


def test_the_backend_is_chosen_when_the_dag_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG, XComArg

    from yolonas_pipeline.operators.trainer import TrainerPodOperator, TrainerProcessOperator, trainer_task

    with DAG("backends", schedule=None):
        plan = XComArg(EmptyOperator(task_id="preflight"))
        monkeypatch.setenv("YOLONAS_BACKEND", "local")
        local = trainer_task(task_id="train_local", plan=plan, command="train")
        monkeypatch.setenv("YOLONAS_BACKEND", "kubernetes")
        pod = trainer_task(task_id="train_pod", plan=plan, command="evaluate")
        monkeypatch.setenv("YOLONAS_BACKEND", "slurm")
        with pytest.raises(ValueError, match="YOLONAS_BACKEND='slurm' is not one of local, kubernetes"):
            trainer_task(task_id="train_slurm", plan=plan, command="train")
    assert type(local) is TrainerProcessOperator and type(pod) is TrainerPodOperator
    assert pod.do_xcom_push is False  # no sidecar; the task pushes the result it reads from S3
    assert local.upstream_task_ids == pod.upstream_task_ids == {"preflight"}
