"""deploy/kubernetes: every manifest validates against the Kubernetes schema (strict, latest version), and the
objects are the ones the pod operator is configured to use (config/airflow.env).

No cluster here: kubernetes-validate checks the documents offline; `kubectl kustomize` (client-side only) renders
the kustomization when kubectl is installed.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
KUSTOMIZATION = MANIFESTS / "kustomization.yaml"
SECRET_TEMPLATE = MANIFESTS / "s3-secret.template.yaml"
SETTINGS = {key: value or "" for key, value in dotenv_values(REPO / "config" / "airflow.env").items()}
#: What KubernetesPodOperator does in the namespace: create the pod, watch it, stream its logs, read its events
#: on failure, label it when done and delete it (on_finish_action).
POD_LAUNCHER_NEEDS = {
    "pods": {"create", "get", "list", "watch", "patch", "delete"},
    "pods/log": {"get"},
    "events": {"list"},
}


def manifest_files() -> list[Path]:
    return sorted(path for path in MANIFESTS.glob("*.yaml") if path != KUSTOMIZATION)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_objects() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in documents(path)]


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in all_objects() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path.name} holds no document"
    for doc in docs:
        validate(doc)


def test_validation_is_strict() -> None:
    namespace = copy.deepcopy(find("Namespace", SETTINGS["YOLONAS_NAMESPACE"]))
    namespace["metadata"]["lables"] = {"typo": "x"}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(namespace)


def test_objects_the_pod_operator_uses_exist() -> None:
    namespace = SETTINGS["YOLONAS_NAMESPACE"]
    find("Namespace", namespace)
    trainer = find("ServiceAccount", SETTINGS["YOLONAS_TRAINER_SERVICE_ACCOUNT"])
    assert trainer["metadata"]["namespace"] == namespace
    assert trainer["automountServiceAccountToken"] is False  # the trainer never calls the Kubernetes API
    secret = find("Secret", SETTINGS["YOLONAS_TRAINER_SECRET"])
    assert secret["metadata"]["namespace"] == namespace
    for doc in all_objects():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def test_s3_secret_is_a_template_with_placeholders_only() -> None:
    [secret] = documents(SECRET_TEMPLATE)
    assert secret["kind"] == "Secret" and "data" not in secret
    values = secret["stringData"]
    # The variables boto3 and the trainer read (AWS_ENDPOINT_URL_S3 only for a non-AWS endpoint).
    assert set(values) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"}
    assert values["AWS_ACCESS_KEY_ID"].startswith("REPLACE_")
    assert values["AWS_SECRET_ACCESS_KEY"].startswith("REPLACE_")
    assert "REPLACE_" in values["AWS_ENDPOINT_URL_S3"]
    # Only the template holds a Secret, and kustomize never applies it.
    secrets = [doc for doc in all_objects() if doc["kind"] == "Secret"]
    assert secrets == [secret]


def test_airflow_may_launch_pods_in_the_namespace() -> None:
    namespace = SETTINGS["YOLONAS_NAMESPACE"]
    role = find("Role", "yolonas-pod-launcher")
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        if "" in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault(resource, set()).update(rule["verbs"])
    for resource, verbs in POD_LAUNCHER_NEEDS.items():
        assert verbs <= granted.get(resource, set()), resource
    assert "pods/exec" not in granted  # results come back through S3, not the XCom sidecar
    binding = find("RoleBinding", "yolonas-pod-launcher")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "yolonas-pod-launcher",
    }
    for subject in binding["subjects"]:
        if subject["kind"] == "ServiceAccount" and subject["namespace"] == namespace:
            find("ServiceAccount", subject["name"])


def test_kustomization_applies_everything_but_the_secret_template() -> None:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["kind"] == "Kustomization"
    expected = sorted(path.name for path in manifest_files() if path != SECRET_TEMPLATE)
    assert sorted(kustomization["resources"]) == expected


def test_kustomization_renders_valid_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (the kustomization's file list is checked above)")
    result = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert len(rendered) == sum(
        len(documents(MANIFESTS / name)) for name in yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    )
    for doc in rendered:
        validate(doc)
