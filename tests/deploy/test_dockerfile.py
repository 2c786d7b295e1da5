"""The Dockerfile: hadolint passes, the images are built as documented, and the build context holds what they need.

No Docker engine here: the file is linted with hadolint (its PyPI wheel) and read; the install steps themselves
are checked against the lock files in test_locks.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it comes with requirements/dev.lock (run `make setup`)")
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def instructions() -> list[tuple[str, str]]:
    """(stage, instruction) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found, stage = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        stage = match.group(1) if match else stage
        found.append((stage, line))
    return found


def stage(name: str) -> list[str]:
    return [line for stage_name, line in instructions() if stage_name == name]


def args() -> dict[str, str]:
    return dict(re.findall(r"^ARG\s+(\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))


def env(name: str) -> dict[str, str]:
    """The ENV values a stage sets (``KEY=VALUE`` form)."""
    values = {}
    for line in stage(name):
        if line.startswith("ENV "):
            values.update(dict(re.findall(r"(\w+)=(\S+)", line[4:])))
    return values


def locked(lock: str, name: str) -> str:
    for line in (REPO / "requirements" / lock).read_text().splitlines():
        if line.lower().startswith(name + "=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in {lock}")


def test_hadolint_passes() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_a_real_lint(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = hadolint(bad)
    assert result.returncode == 1
    assert "DL3007" in result.stdout and "DL3013" in result.stdout


def test_three_targets() -> None:
    targets = [m.group(1) for m in re.finditer(r"^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)]
    assert targets == ["airflow", "airflow-local", "trainer"]


def test_airflow_image_matches_the_lock() -> None:
    """The base image's Airflow and Python are the ones airflow.lock was resolved for."""
    image = args()["AIRFLOW_IMAGE"]
    assert image == f"apache/airflow:{locked('airflow.lock', 'apache-airflow')}-python3.11"
    assert stage("airflow")[0] == "FROM ${AIRFLOW_IMAGE} AS airflow"


def test_airflow_image_bakes_the_project() -> None:
    copies = {line.split()[-1] for line in stage("airflow") if line.startswith("COPY")}
    for folder in ("include", "dags", "plugins", "config"):
        assert f"/opt/airflow/{folder}/" in copies
    # The package is imported from include/ (so compose can mount a working copy over it), not pip-installed.
    assert env("airflow")["PYTHONPATH"] == "/opt/airflow/include"


def test_airflow_local_adds_the_trainer_interpreter_the_local_backend_uses() -> None:
    assert stage("airflow-local")[0] == "FROM airflow AS airflow-local"
    assert env("airflow-local")["YOLONAS_TRAINER_PYTHON"] == "/opt/trainer/bin/python"
    users = [line.split()[1] for line in stage("airflow-local") if line.startswith("USER ")]
    assert users[-1] == "50000"  # back to the base image's airflow user


def test_trainer_image() -> None:
    lines = stage("trainer")
    assert lines[0] == "FROM ${TRAINER_BASE_IMAGE} AS trainer"
    assert args()["TRAINER_BASE_IMAGE"].startswith("python:3.11-")
    assert lines[-2:] == ['ENTRYPOINT ["python", "-m", "yolonas_pipeline.trainer"]', 'CMD ["--help"]']
    # Non-root, numeric (Kubernetes can only verify runAsNonRoot for a numeric user), and set before the entrypoint.
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users == ["1000"]
    values = env("trainer")
    assert values["PATH"].startswith("/opt/trainer/bin:")  # `python` and `torchrun` are the locked venv's
    home = values["HOME"]
    for name in ("TORCH_HOME", "SUPER_GRADIENTS_LOG_DIR"):
        assert values[name].startswith(home + "/"), name
    setup = next(line for line in lines if "useradd" in line)
    assert "--uid 1000" in setup and "chown -R 1000:0 /home/trainer" in setup
    assert all(f"${{{name}}}" in setup for name in ("TORCH_HOME", "SUPER_GRADIENTS_LOG_DIR"))


# -- the build context ---------------------------------------------------------------------------------------------


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = pattern_regex(pattern.lstrip("!").strip("/"))
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def pattern_regex(pattern: str) -> str:
    """A .dockerignore pattern (Go filepath.Match syntax plus ``**``) as a regular expression."""
    regex, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            regex, i = regex + ".*", i + 2
        elif pattern[i] == "*":
            regex, i = regex + "[^/]*", i + 1
        elif pattern[i] == "?":
            regex, i = regex + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            regex, i = regex + "[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]", end + 1
        else:
            regex, i = regex + re.escape(pattern[i]), i + 1
    return regex


def dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_build_context_holds_every_copied_file() -> None:
    patterns = dockerignore()
    for stage_name, line in instructions():
        if not line.startswith("COPY") or "--from" in line:
            continue
        for source in line.split()[1:-1]:
            if source.startswith("--") or "[" in source:
                continue  # options; plugin[s]/ is optional (a wildcard BuildKit lets match nothing)
            path = REPO / source
            assert path.exists(), f"{stage_name}: COPY {source}: not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if "__pycache__" in relative or relative.endswith(".pyc") or ".egg-info" in relative:
                    continue
                assert not dockerignore_excludes(relative, patterns), f"{stage_name}: {relative} is in .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".venvs/airflow/bin/python",
        ".git/HEAD",
        ".data/x.jpg",
        ".airflow/airflow.cfg",
        "tests/conftest.py",
        "config/airflow.cfg",
        "include/yolonas_pipeline/__pycache__/storage.cpython-311.pyc",
        "requirements/dev.in",
    ],
)
def test_build_context_leaves_out_secrets_and_local_state(path: str) -> None:
    assert dockerignore_excludes(path, dockerignore())


def test_dockerignore_matcher_follows_docker_rules() -> None:
    patterns = ["*", "!include/", "**/__pycache__", "!requirements/*.lock"]
    assert dockerignore_excludes("README.md", patterns)
    assert not dockerignore_excludes("include/a/b.py", patterns)
    assert dockerignore_excludes("include/a/__pycache__/b.pyc", patterns)
    assert not dockerignore_excludes("requirements/airflow.lock", patterns)
    assert dockerignore_excludes("requirements/airflow.in", patterns)
