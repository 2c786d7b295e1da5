#!/usr/bin/env bash
# Install the two environments from the repository's lock files (idempotent: an environment whose
# lock files have not changed since it was installed is left alone).
#   .venvs/airflow  requirements/airflow.lock + requirements/dev.lock   (Airflow, providers, moto, test tools)
#   .venvs/trainer  requirements/trainer.lock, all --no-deps            (torch, super-gradients 3.7.1)
# Then the embedded default's S3 credentials: .data/s3-identities.json, generated once, owner-only, never committed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }

install_env() {
  local name=$1; shift
  local venv=".venvs/$name" stamp
  stamp=$(cat "$@" | sha256sum | cut -d' ' -f1)
  if [[ -f "$venv/.lock-stamp" && "$(cat "$venv/.lock-stamp")" == "$stamp" ]]; then
    echo "setup: $venv is up to date"
    return
  fi
  echo "setup: installing $venv from $*"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"
  local lock
  for lock in "$@"; do
    # --no-deps: the lock is the complete, tested set (super-gradients' own pins do not resolve).
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$lock"
  done
  echo "$stamp" > "$venv/.lock-stamp"
}

mkdir -p .venvs
install_env airflow requirements/airflow.lock requirements/dev.lock > .venvs/airflow-install.log 2>&1 &
airflow_pid=$!
install_env trainer requirements/trainer.lock > .venvs/trainer-install.log 2>&1 &
trainer_pid=$!
status=0
wait $airflow_pid || { echo "setup: airflow environment failed:"; tail -n 30 .venvs/airflow-install.log; status=1; }
wait $trainer_pid || { echo "setup: trainer environment failed:"; tail -n 30 .venvs/trainer-install.log; status=1; }
cat .venvs/airflow-install.log .venvs/trainer-install.log | grep '^setup:' || true
if [[ $status -eq 0 ]]; then
  .venvs/airflow/bin/python -m pip check --disable-pip-version-check >/dev/null \
    || { echo "setup: airflow environment is inconsistent:"; .venvs/airflow/bin/python -m pip check; status=1; }
fi
if [[ $status -eq 0 ]]; then
  PYTHONPATH=include .venvs/airflow/bin/python -m yolonas_pipeline.embedded init || status=1
fi
exit $status
