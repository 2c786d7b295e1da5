"""Run the trainer command as a local subprocess: the embedded default's backend.

The command line is the one a Kubernetes pod runs (see :mod:`yolonas_pipeline.preflight`), with
``python`` replaced by the trainer environment's interpreter. Output is streamed line by line to the
caller's log; a non-zero exit raises with the last lines, so the task log shows why.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import yolonas_pipeline

#: Interpreter of the trainer environment; the embedded default points it at .venvs/trainer/bin/python.
TRAINER_PYTHON_ENV = "YOLONAS_TRAINER_PYTHON"
TAIL_LINES = 40
#: The trainer prints records above INFO as ``[yolonas] WARNING: ...`` (``[yolonas rank N] ERROR: ...``).
_LEVEL_OF_LINE = re.compile(r"^\[yolonas(?: rank \d+)?\] (WARNING|ERROR|CRITICAL): ")


def line_level(line: str) -> int:
    """The logging level a trainer output line was printed at, so Airflow's level filter applies to it."""
    found = _LEVEL_OF_LINE.match(line)
    return int(getattr(logging, found.group(1))) if found else logging.INFO


class TrainerCommandError(RuntimeError):
    """The trainer command exited with a non-zero status."""


def trainer_python() -> str:
    return os.environ.get(TRAINER_PYTHON_ENV) or "python"


def local_argv(argv: Sequence[str]) -> list[str]:
    """The pod's argv with its ``python``/``torchrun`` resolved to the trainer environment."""
    argv = list(argv)
    python = trainer_python()
    if argv[0] == "python":
        argv[0] = python
    elif argv[0] == "torchrun":
        argv[0:1] = [python, "-m", "torch.distributed.run"]
    return argv


class LocalTrainerProcess:
    """One trainer subprocess in its own process group, so a killed task kills all of it."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[str] | None = None

    def run(self, argv: Sequence[str], *, env: Mapping[str, str], log: Callable[[str], None]) -> None:
        package_root = str(Path(yolonas_pipeline.__file__).resolve().parent.parent)
        full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "AWS_"))}
        full_env.update(env)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, full_env.get("PYTHONPATH")]))
        full_env["PYTHONUNBUFFERED"] = "1"
        command = local_argv(argv)
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.process = subprocess.Popen(
            command,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log(line)
        returncode = self.process.wait()
        if returncode != 0:
            raise TrainerCommandError(
                f"trainer command exited with status {returncode}: {' '.join(argv[:5])} ...\nlast lines:\n"
                + "\n".join(tail)
            )

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
