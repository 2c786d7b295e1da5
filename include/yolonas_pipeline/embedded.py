"""The embedded default: real Airflow on SQLite, moto's S3 server on loopback, the trainer on the CPU.

``python -m yolonas_pipeline.embedded demo`` starts everything (idempotently), generates the sample
dataset, triggers ``yolonas_training`` through Airflow's REST API, follows the run and prints a
summary. ``up``, ``down`` and ``status`` manage the services alone. Services run in their own process
sessions and are stopped by signalling their process groups, so nothing is left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "yolonas_training"
#: Small enough for a CPU: two epochs at 160 px take about a minute on two cores.
DEMO_CONF = {"epochs": 2, "batch_size": 8, "input_size": 160, "workers": 0, "mixed_precision": False}
# moto accepts any key pair; these only reach the loopback demo server, never a real S3.
S3_ACCESS_KEY = "embedded-access-key"
S3_SECRET_KEY = "embedded-secret-key"


@dataclass(frozen=True)
class Embedded:
    """Where the embedded stack lives and which loopback ports it uses."""

    home: Path = REPO / ".airflow"
    run_dir: Path = REPO / ".run"
    data_dir: Path = REPO / ".data"
    api_port: int = 8080
    s3_port: int = 5055
    bucket: str = "yolonas"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def sample_dataset(self) -> Path:
        return self.data_dir / "sample_cppe5"

    def environment(self) -> dict[str, str]:
        """The environment of every Airflow process: config/airflow.env plus this machine's paths."""
        # config/airflow.env gives the defaults; anything exported in the calling shell wins.
        env = read_env_file(REPO / "config" / "airflow.env")
        env.update(os.environ)
        venv_bin = str(Path(sys.executable).parent)
        env.update(
            {
                "PATH": os.pathsep.join([venv_bin, env.get("PATH", "")]),
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "include"), env.get("PYTHONPATH")])),
                "YOLONAS_BUCKET": self.bucket,
                "YOLONAS_TRAINER_PYTHON": str(REPO / ".venvs" / "trainer" / "bin" / "python"),
                "YOLONAS_SAMPLE_DATASET": str(self.sample_dataset),
                "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
                    {
                        "conn_type": "aws",
                        "login": S3_ACCESS_KEY,
                        "password": S3_SECRET_KEY,
                        "extra": {"region_name": "us-east-1", "endpoint_url": self.s3_url},
                    }
                ),
                "NO_PROXY": "127.0.0.1,localhost",
            }
        )
        return env

    # -- services ---------------------------------------------------------------------------
    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def running(self, name: str) -> int | None:
        try:
            pid = int(self.pid_file(name).read_text())
            os.killpg(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None
        return pid

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                argv,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO,
            )
        self.pid_file(name).write_text(str(process.pid))

    def up(self) -> None:
        if not self.running("s3"):
            moto_server = str(Path(sys.executable).parent / "moto_server")
            self._spawn("s3", [moto_server, "-H", "127.0.0.1", "-p", str(self.s3_port)])
        wait_for(f"{self.s3_url}/", "the S3 server", timeout=60)
        self.ensure_bucket()
        if not self.running("airflow"):
            self.home.mkdir(parents=True, exist_ok=True)
            self._spawn("airflow", ["airflow", "standalone"])
        wait_for(f"{self.api_url}/api/v2/version", "the Airflow API server", timeout=300)

    def down(self) -> None:
        for name in ("airflow", "s3"):
            pid = self.running(name)
            if pid is None:
                continue
            os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.running(name):
                time.sleep(0.5)
            if self.running(name):
                os.killpg(pid, signal.SIGKILL)
            self.pid_file(name).unlink(missing_ok=True)

    def ensure_bucket(self) -> None:
        client = self.s3_client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            client.create_bucket(Bucket=self.bucket)

    def s3_client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name="us-east-1",
        )

    def password(self) -> str:
        generated = self.home / "simple_auth_manager_passwords.json.generated"
        deadline = time.monotonic() + 120
        while not generated.exists() and time.monotonic() < deadline:
            time.sleep(1)
        return json.loads(generated.read_text())["admin"]

    def api(self) -> AirflowApi:
        return AirflowApi(self.api_url, "admin", self.password())


class AirflowApi:
    """The few calls of Airflow's REST API (v2) the demo and the tests need."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url
        response = self._request("POST", "/auth/token", {"username": username, "password": password}, auth=False)
        self._token = response["access_token"]

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        # A busy two-core machine can stall the API server for a while; reads are safe to retry.
        attempts = 5 if method == "GET" else 1
        for attempt in range(1, attempts + 1):
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    payload = response.read()
                break
            except urllib.error.HTTPError as exc:
                raise RuntimeError(f"{method} {path} -> {exc.code}: {exc.read().decode(errors='replace')}") from exc
            except (TimeoutError, urllib.error.URLError):
                if attempt == attempts:
                    raise
                time.sleep(2 * attempt)
        return json.loads(payload) if payload else None

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._request("GET", f"/api/v2/dags/{dag_id}")
            except RuntimeError:
                if time.monotonic() > deadline:
                    errors = self._request("GET", "/api/v2/importErrors")
                    raise RuntimeError(f"DAG {dag_id} not parsed after {timeout}s; import errors: {errors}") from None
                time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        run = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf)})
        return run["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.request.quote(run_id, safe="")
        return self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        quoted = urllib.request.quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/return_value"
        return self._request("GET", path)["value"]

    def follow(self, dag_id: str, run_id: str, *, timeout: float = 1800, echo: bool = True) -> str:
        deadline, seen = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            state = self.run(dag_id, run_id)["state"]
            for ti in self.task_instances(dag_id, run_id):
                if echo and ti["state"] and seen.get(ti["task_id"]) != ti["state"]:
                    seen[ti["task_id"]] = ti["state"]
                    print(f"  {ti['task_id']:<20} {ti['state']}", flush=True)
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        raise TimeoutError(f"run {run_id} still not finished after {timeout}s")


def wait_for(url: str, what: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # the server answered
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not come up at {url} within {timeout:.0f}s; see .run/*.log") from None
            time.sleep(1)


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def ensure_sample_dataset(stack: Embedded) -> Path:
    import datasets

    from yolonas_pipeline.sample_data import make_sample_dataset

    datasets.disable_progress_bars()
    if not (stack.sample_dataset / "dataset_dict.json").exists():
        make_sample_dataset(stack.sample_dataset)
    return stack.sample_dataset


def demo(stack: Embedded, conf: Mapping[str, Any]) -> int:
    ensure_sample_dataset(stack)
    print(f"starting the embedded stack (Airflow {stack.api_url}, S3 {stack.s3_url}) ...", flush=True)
    stack.up()
    api = stack.api()
    api.wait_for_dag(DAG_ID)
    api.unpause(DAG_ID)
    run_id = api.trigger(DAG_ID, conf)
    print(f"triggered {DAG_ID} run {run_id} with {json.dumps(dict(conf))}", flush=True)
    state = api.follow(DAG_ID, run_id)
    print_summary(stack, api, run_id, state)
    return 0 if state == "success" else 1


def print_summary(stack: Embedded, api: AirflowApi, run_id: str, state: str) -> None:
    print(f"\nrun {run_id}: {state}")
    for ti in api.task_instances(DAG_ID, run_id):
        duration = ti.get("duration")
        print(f"  {ti['task_id']:<20} {ti['state'] or '-':<10} {duration or 0:8.1f} s")
    if state == "success":
        metrics = api.xcom(DAG_ID, run_id, "evaluate")
        bundle = api.xcom(DAG_ID, run_id, "publish")
        print(
            f"\nevaluation on {metrics['split']}: mAP@0.50={metrics['map_50']:.4f}  mAP@0.50:0.95="
            f"{metrics['map_50_95']:.4f}  precision={metrics['precision']:.4f}  recall={metrics['recall']:.4f}"
        )
        client = stack.s3_client()
        prefix = bundle["bundle_uri"].split("/", 3)[3]
        print(f"\npublished bundle {bundle['bundle_uri']}:")
        for obj in client.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents", []):
            print(f"  s3://{stack.bucket}/{obj['Key']}  ({obj['Size']} bytes)")
    print(
        f"\nAirflow UI: {stack.api_url}  (user admin, password {stack.password()})\n"
        f"S3 server:  {stack.s3_url}  (bucket {stack.bucket})\n"
        "stop everything with: make stop"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolonas_pipeline.embedded", description=__doc__)
    parser.add_argument("command", choices=["demo", "up", "down", "status"])
    parser.add_argument("--conf", default=json.dumps(DEMO_CONF), help="DAG run conf (JSON) for demo")
    args = parser.parse_args(argv)
    stack = Embedded(
        api_port=int(os.environ.get("YOLONAS_API_PORT", "8080")), s3_port=int(os.environ.get("YOLONAS_S3_PORT", "5055"))
    )
    if args.command == "demo":
        return demo(stack, json.loads(args.conf))
    if args.command == "up":
        stack.up()
        print(f"Airflow UI: {stack.api_url} (user admin, password {stack.password()}); S3: {stack.s3_url}")
    elif args.command == "down":
        stack.down()
        print("stopped")
    else:
        for name in ("airflow", "s3"):
            pid = stack.running(name)
            print(f"{name}: {f'running, pid {pid}' if pid else 'stopped'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
