"""The lock files are complete and consistent, and they are what the images install.

Both environments are installed with ``pip install --no-deps -r <lock>``, so pip never checks that a lock holds
what its packages need. ``scripts/check_locks.sh`` does, against the metadata of the distributions CI installed
in ``.venvs/*`` (the same check runs at image build time, see the Dockerfile). The only requirements allowed to go
unmet are super-gradients' and data-gradients' own pins, which cannot resolve on Python 3.11.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK_LOCKS = REPO / "scripts" / "check_locks.sh"
REQUIREMENTS = REPO / "requirements"
VENVS = REPO / ".venvs"
#: super-gradients 3.7.1 pins numpy<=1.23, onnx==1.15.0, ... which do not resolve on Python 3.11.
TRAINER_ALLOWED_BROKEN = ("super-gradients", "data-gradients")


@dataclass(frozen=True)
class LockCheck:
    returncode: int
    output: str


def venv_python(name: str) -> Path:
    python = VENVS / name / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{python} is missing: run `make setup` to install the environments from the lock files")
    return python


def check_locks(
    python: Path, *locks: Path, roots: tuple[Path, ...] = (), allow_broken: tuple[str, ...] = ()
) -> LockCheck:
    argv = ["bash", str(CHECK_LOCKS), "--python", str(python)]
    for root in roots:
        argv += ["--roots", str(root)]
    for name in allow_broken:
        argv += ["--allow-broken", name]
    argv += [str(lock) for lock in locks]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    return LockCheck(result.returncode, result.stdout + result.stderr)


def pins(lock: Path) -> dict[str, str]:
    found = {}
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def test_airflow_lock_alone_is_complete() -> None:
    """What the Airflow image installs: airflow.lock on its own, covering requirements/airflow.in."""
    result = check_locks(venv_python("airflow"), REQUIREMENTS / "airflow.lock", roots=(REQUIREMENTS / "airflow.in",))
    assert result.returncode == 0, result.output


def test_airflow_and_dev_locks_are_complete() -> None:
    """What CI installs into .venvs/airflow: airflow.lock, then dev.lock on top."""
    result = check_locks(
        venv_python("airflow"),
        REQUIREMENTS / "airflow.lock",
        REQUIREMENTS / "dev.lock",
        roots=(REQUIREMENTS / "airflow.in", REQUIREMENTS / "dev.in"),
    )
    assert result.returncode == 0, result.output


def test_trainer_lock_is_complete_except_super_gradients_pins() -> None:
    result = check_locks(
        venv_python("trainer"),
        REQUIREMENTS / "trainer.lock",
        roots=(REQUIREMENTS / "trainer.in",),
        allow_broken=TRAINER_ALLOWED_BROKEN,
    )
    assert result.returncode == 0, result.output
    trainer = pins(REQUIREMENTS / "trainer.lock")
    assert trainer["super-gradients"] == "3.7.1"
    assert trainer["torch"] == "2.14.1"
    # The documented exception is real (these pins are what --no-deps works around), and nothing else is excused.
    ignored = [line for line in result.output.splitlines() if "ignored (--allow-broken)" in line]
    assert any("super-gradients requires numpy<=1.23" in line for line in ignored), result.output
    assert all(line.split(":", 1)[1].split()[0] in TRAINER_ALLOWED_BROKEN for line in ignored), ignored


def test_shared_pins_agree_between_airflow_and_dev_locks() -> None:
    airflow, dev = pins(REQUIREMENTS / "airflow.lock"), pins(REQUIREMENTS / "dev.lock")
    disagree = {name: (airflow[name], dev[name]) for name in airflow.keys() & dev.keys() if airflow[name] != dev[name]}
    assert disagree == {}


def test_check_locks_catches_a_broken_lock(tmp_path: Path) -> None:
    """The checker is not a rubber stamp: a wrong pin and a missing dependency both fail it."""
    lock = (REQUIREMENTS / "airflow.lock").read_text()
    lock = re.sub(r"(?im)^sqlalchemy==.*$", "sqlalchemy==1.4.0", lock)
    lock = re.sub(r"(?im)^pendulum==.*\n", "", lock)
    broken = tmp_path / "broken.lock"
    broken.write_text(lock)

    result = check_locks(venv_python("airflow"), broken)

    assert result.returncode == 1
    assert "sqlalchemy is locked at 1.4.0 but" in result.output
    assert "requires sqlalchemy[asyncio]" in result.output  # apache-airflow-core's pin, with its extra
    assert "pendulum is not in the lock" in result.output


def test_check_locks_follows_extras(tmp_path: Path) -> None:
    """moto[server] needs flask: dropping flask from dev.lock is caught through the extra."""
    dev = tmp_path / "dev.lock"
    dev.write_text(
        "".join(
            line + "\n"
            for line in (REQUIREMENTS / "dev.lock").read_text().splitlines()
            if not line.lower().startswith("flask==")
        )
    )
    result = check_locks(venv_python("airflow"), REQUIREMENTS / "airflow.lock", dev, roots=(REQUIREMENTS / "dev.in",))
    assert result.returncode == 1
    assert re.search(
        r"moto\[server\] requires flask\S*; extra == \"server\", but flask is not in the lock", result.output
    )


# -- the Dockerfile installs exactly these locks -----------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions of each build stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    return stages


def pip_installs(instructions: list[str]) -> list[list[str]]:
    """The argument lists of every ``pip install`` in a stage's RUN instructions."""
    installs = []
    for instruction in instructions:
        if not instruction.startswith("RUN "):
            continue
        commands: list[list[str]] = [[]]
        for word in shlex.split(instruction[4:]):
            if word in ("&&", "||", ";"):
                commands.append([])
            else:
                commands[-1].append(word)
        for words in commands:
            if len(words) >= 2 and words[0].endswith("pip") and words[1] == "install":
                installs.append(words[2:])
    return installs


def installed_locks(instructions: list[str]) -> list[str]:
    locks = []
    for args in pip_installs(instructions):
        assert "--no-deps" in args, f"pip install without --no-deps: {args}"
        for i, arg in enumerate(args):
            if arg in ("-r", "--requirement"):
                locks.append(Path(args[i + 1]).name)
    return locks


def test_dockerfile_installs_the_ci_lock_files() -> None:
    stages = dockerfile_stages()
    assert set(stages) >= {"airflow", "airflow-local", "trainer"}
    assert installed_locks(stages["airflow"]) == ["airflow.lock"]
    assert installed_locks(stages["airflow-local"]) == ["trainer.lock"]  # on top of the airflow stage
    assert installed_locks(stages["trainer"]) == ["trainer.lock"]
    # The lock files copied into the image are the repository's own.
    for stage in stages.values():
        for instruction in stage:
            if instruction.startswith("COPY") and ".lock" in instruction:
                source = instruction.split()[-2]
                assert (REPO / source).is_file() and source.startswith("requirements/"), instruction


def test_dockerfile_installs_nothing_but_the_locks_and_the_project() -> None:
    """No unpinned extra package sneaks into an image past the lock files."""
    for name, stage in dockerfile_stages().items():
        for args in pip_installs(stage):
            packages = [
                arg
                for prev, arg in zip(["", *args[:-1]], args, strict=True)
                if not arg.startswith("-") and prev not in ("-r", "--requirement")
            ]
            for package in packages:
                # The project itself (a path), or the Airflow pin tying the lock to the base image's version.
                assert package.startswith("/") or package == "apache-airflow==${AIRFLOW_VERSION}", (name, package)


def test_dockerfile_checks_each_lock_at_build_time() -> None:
    """The image build runs the same consistency check as these tests, on the installed image."""
    for name, stage in dockerfile_stages().items():
        runs = " ".join(i for i in stage if i.startswith("RUN "))
        for lock in installed_locks(stage):
            assert re.search(rf"check_locks\.sh .*{re.escape(lock)}", runs), f"stage {name} does not check {lock}"
