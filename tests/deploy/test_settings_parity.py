"""The compose stack, the embedded default and the images run Airflow with the same settings.

config/airflow.env holds every setting the two launchers share: docker-compose.yaml reads it as an env_file and
the embedded default loads it into its processes' environment. A launcher may add only settings that differ by
nature (where the database is, how components find each other, how users log in, where the trainer interpreter
lives); anything else it sets must agree with config/airflow.env, so that a DAG that runs in one runs in the other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

REPO = Path(__file__).resolve().parents[2]
SHARED_FILE = REPO / "config" / "airflow.env"
COMPOSE_FILE = REPO / "docker-compose.yaml"
SETTING = re.compile(r"^(AIRFLOW__|YOLONAS_)")
#: Settings a launcher may set on its own, and why they differ between deployments.
LAUNCHER_SPECIFIC = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "PostgreSQL in both, reached over the network in compose, a socket embedded",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "the api-server's address on each launcher's network",
    "AIRFLOW__CORE__AUTH_MANAGER": "FAB users in compose (as upstream); SimpleAuthManager on the embedded default",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "the embedded default's login",
    "AIRFLOW__CELERY__RESULT_BACKEND": "celery profile plumbing",
    "AIRFLOW__CELERY__BROKER_URL": "celery profile plumbing",
    "AIRFLOW__CORE__DAGS_FOLDER": "a path",
    "AIRFLOW__CORE__PLUGINS_FOLDER": "a path",
    "AIRFLOW__API__HOST": "the embedded default listens on loopback only",
    "AIRFLOW__API__PORT": "a port",
    "AIRFLOW__API__BASE_URL": "an address",
    "YOLONAS_TRAINER_PYTHON": "a path to the trainer environment's interpreter",
    "YOLONAS_SAMPLE_DATASET": "a path to the embedded demo's generated dataset",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def shared() -> dict[str, str]:
    return {key: value or "" for key, value in dotenv_values(SHARED_FILE).items()}


def airflow_services(text: str | None = None) -> dict[str, dict[str, Any]]:
    services = yaml.safe_load(COMPOSE_FILE.read_text() if text is None else text)["services"]
    return {name: service for name, service in services.items() if name.startswith("airflow-")}


def compose_default(value: str) -> str:
    """The value with no .env: ``${VAR:-default}`` -> default. A bare ``${VAR}`` stays, and fails the comparison."""
    return _VARIABLE.sub(lambda m: m.group(2) if m.group(2) is not None else m.group(0), str(value))


def compose_settings(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return {key: str(value) for key, value in env.items() if SETTING.match(key)}


def test_shared_settings_file_is_well_formed() -> None:
    values = shared()
    assert values, f"{SHARED_FILE} holds no setting"
    assert all(SETTING.match(key) for key in values), sorted(k for k in values if not SETTING.match(k))
    # python-dotenv and the simple KEY=VALUE reading of both launchers agree: no quoting, no interpolation.
    for line in SHARED_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            assert values[key.strip()] == value.strip(), line
            assert not re.search(r"[\"'$]", value), f"keep {key} unquoted and literal: compose and the launcher differ"


def test_every_compose_airflow_service_reads_the_shared_settings() -> None:
    for name, service in airflow_services().items():
        files = service.get("env_file", [])
        paths = [item["path"] if isinstance(item, dict) else item for item in files]
        assert "config/airflow.env" in paths, name


def compose_disagreements(text: str) -> list[str]:
    """What compose sets on top of config/airflow.env must be the same value by default, or launcher-specific."""
    values, found = shared(), []
    for name, service in airflow_services(text).items():
        for key, value in compose_settings(service).items():
            if key in values and compose_default(value) != values[key]:
                found.append(f"{name}: {key}={value!r}, but {values[key]!r} in config/airflow.env")
            elif key not in values and key not in LAUNCHER_SPECIFIC:
                found.append(f"{name}: {key} is set in compose only; move it to config/airflow.env")
    return found


def test_compose_overrides_no_shared_setting() -> None:
    assert compose_disagreements(COMPOSE_FILE.read_text()) == []


@pytest.mark.parametrize(
    ("line", "replacement"),
    [
        ("YOLONAS_BACKEND: ${YOLONAS_BACKEND:-local}", "YOLONAS_BACKEND: ${YOLONAS_BACKEND:-kubernetes}"),
        ("YOLONAS_BACKEND: ${YOLONAS_BACKEND:-local}", "YOLONAS_BACKEND: ${YOLONAS_BACKEND}"),
        ("PYTHONPATH: /opt/airflow/include", "PYTHONPATH: /opt/airflow/include\n    AIRFLOW__CORE__PARALLELISM: '4'"),
    ],
    ids=["other-default", "no-default", "compose-only"],
)
def test_parity_check_catches_a_drift(line: str, replacement: str) -> None:
    text = COMPOSE_FILE.read_text()
    assert line in text
    assert compose_disagreements(text.replace(line, replacement))


def test_images_set_no_shared_setting() -> None:
    """The Dockerfile bakes no Airflow or pipeline setting that could disagree with config/airflow.env."""
    dockerfile = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    keys = {key for line in dockerfile.splitlines() if line.startswith("ENV ") for key in re.findall(r"(\w+)=", line)}
    assert {key for key in keys if SETTING.match(key)} <= set(LAUNCHER_SPECIFIC)


def test_embedded_launcher_reads_the_shared_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from yolonas_pipeline.embedded import Embedded

    values = shared()
    for key in values:  # what the calling shell exports wins over the file; test the file alone
        monkeypatch.delenv(key, raising=False)
    environment = Embedded().environment()
    differ = {key: (environment.get(key), value) for key, value in values.items() if environment.get(key) != value}
    assert differ == {}, f"the embedded default overrides config/airflow.env: {differ}"
    compose = compose_settings(airflow_services()["airflow-scheduler"])
    mismatched = {
        key: (compose_default(compose[key]), value)
        for key, value in environment.items()
        if SETTING.match(key) and key in compose and key not in LAUNCHER_SPECIFIC
        and compose_default(compose[key]) != value
    }  # fmt: skip
    assert mismatched == {}, "compose and the embedded default disagree"
