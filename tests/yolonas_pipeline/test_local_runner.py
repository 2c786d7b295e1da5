"""The local backend: the pod's argv, run as a subprocess of the trainer environment's interpreter."""

from __future__ import annotations

import logging
import sys

import pytest

from yolonas_pipeline.local_runner import (
    TRAINER_PYTHON_ENV,
    LocalTrainerProcess,
    TrainerCommandError,
    line_level,
    local_argv,
)


@pytest.fixture(autouse=True)
def trainer_is_this_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRAINER_PYTHON_ENV, sys.executable)


def test_pod_argv_maps_to_the_trainer_interpreter() -> None:
    assert local_argv(["python", "-m", "yolonas_pipeline.trainer", "train", "--epochs", "2"]) == [
        sys.executable,
        "-m",
        "yolonas_pipeline.trainer",
        "train",
        "--epochs",
        "2",
    ]
    assert local_argv(["torchrun", "--standalone", "--nproc_per_node=2", "-m", "m"]) == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "m",
    ]


def test_output_is_streamed_and_only_the_given_credentials_reach_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", "aws://leaked:secret@")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    script = (
        "import os, yolonas_pipeline;"
        "print('conn', os.environ.get('AIRFLOW_CONN_AWS_DEFAULT'));"
        "print('secret', os.environ['AWS_SECRET_ACCESS_KEY'])"
    )
    lines: list[str] = []
    LocalTrainerProcess().run(["python", "-c", script], env={"AWS_SECRET_ACCESS_KEY": "given"}, log=lines.append)
    assert lines == ["conn None", "secret given"]


def test_a_failing_command_raises_with_its_last_lines() -> None:
    script = "import sys; print('step 1'); print('bad input: epochs', file=sys.stderr); sys.exit(3)"
    with pytest.raises(TrainerCommandError, match=r"status 3(.|\n)*bad input: epochs"):
        LocalTrainerProcess().run(["python", "-c", script], env={}, log=lambda line: None)


@pytest.mark.parametrize(
    ("line", "level"),
    [
        ("[yolonas] epoch 2/10  loss 3.09", logging.INFO),
        ("[yolonas] WARNING: torch.cuda.amp.GradScaler is deprecated", logging.WARNING),
        ("[yolonas rank 1] ERROR: the loader died", logging.ERROR),
        ("WARNING: a line the trainer did not format", logging.INFO),
    ],
)
def test_a_trainer_line_keeps_the_level_it_was_printed_at(line: str, level: int) -> None:
    assert line_level(line) == level
