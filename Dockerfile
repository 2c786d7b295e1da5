# syntax=docker/dockerfile:1
#
# Images of the YOLO-NAS training pipeline, built from the SAME lock files CI installs (requirements/*.lock),
# so what the tests check is what ships (tests/deploy/test_locks.py checks this file against the locks).
#
#   docker build --target airflow       -t yolonas-airflow:0.1.0 .   # Airflow; training runs in pods (kubernetes backend)
#   docker build --target airflow-local -t yolonas-airflow-local:0.1.0 .  # + trainer env, for the local backend (compose)
#   docker build --target trainer       -t ghcr.io/yolonas-pipeline/trainer:0.1.0 .  # the pod's image (linux/amd64)
#
# BuildKit (the default builder of Docker >= 23) is assumed.

ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
# The trainer base: plain Python 3.11 instead of an nvidia/cuda image, because the locked torch 2.14.1 wheel is a
# CUDA 13 build whose runtime libraries (cuBLAS, cuDNN, NCCL, ...) come as the nvidia-* wheels pinned in
# requirements/trainer.lock: the image then carries exactly the CUDA libraries CI installs, once (an nvidia/cuda
# base would add a second, unused copy of several GiB, and its Ubuntu bases ship Python 3.10 or 3.12). The only
# GPU piece not in a wheel is the driver (libcuda), which the NVIDIA container toolkit mounts from the host at run
# time (Kubernetes device plugin, or `docker run --gpus`); CUDA 13 needs driver >= 580.
ARG TRAINER_BASE_IMAGE=python:3.11-slim-bookworm


# ---------------------------------------------------------------------------------------------------------------
# airflow: api-server, scheduler, dag-processor, triggerer, worker. The training and evaluation tasks start
# trainer pods (YOLONAS_BACKEND=kubernetes); the other stages run here.
# ---------------------------------------------------------------------------------------------------------------
FROM ${AIRFLOW_IMAGE} AS airflow

# The base image already holds Airflow plus the providers the compose stack needs besides ours (fab for the
# login, postgres, celery + redis for the celery profile); the lock then pins everything the project itself uses.
# --no-deps: the lock is the complete resolved set; naming apache-airflow==${AIRFLOW_VERSION} (set by the base
# image) makes pip stop the build if the base image and the lock disagree on the Airflow version.
COPY --chown=airflow:0 requirements/airflow.lock /opt/airflow/requirements/airflow.lock
COPY --chown=airflow:0 scripts/check_locks.sh /opt/airflow/requirements/check_locks.sh
RUN pip install --no-cache-dir --no-deps "apache-airflow==${AIRFLOW_VERSION}" -r /opt/airflow/requirements/airflow.lock \
    && bash /opt/airflow/requirements/check_locks.sh --python python /opt/airflow/requirements/airflow.lock

# Import what the compose stack and the DAG use, so a broken image fails here rather than at the first task.
# A throwaway AIRFLOW_HOME keeps the airflow.cfg (with its generated secrets) that importing airflow writes out
# of the image.
RUN AIRFLOW_HOME="$(mktemp -d)" && export AIRFLOW_HOME \
    && python -c "import airflow.providers.amazon.aws.hooks.s3, airflow.providers.cncf.kubernetes.operators.pod, \
airflow.providers.fab.auth_manager.fab_auth_manager, airflow.providers.postgres.hooks.postgres, datasets, PIL" \
    && rm -rf "${AIRFLOW_HOME}"

# The project: the package on PYTHONPATH (not pip-installed), so that docker-compose.yaml can mount a working copy
# of include/ over it; DAGs, plugins and the shared settings (config/airflow.env) baked in for clusters.
COPY --chown=airflow:0 include/ /opt/airflow/include/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
# plugins/ may be empty, and git keeps no empty folder: BuildKit accepts a wildcard that matches nothing.
COPY --chown=airflow:0 plugin[s]/ /opt/airflow/plugins/
COPY --chown=airflow:0 config/ /opt/airflow/config/
ENV PYTHONPATH=/opt/airflow/include


# ---------------------------------------------------------------------------------------------------------------
# airflow-local: the airflow image plus the locked trainer environment in /opt/trainer, so the compose stack can
# run the trainer command as a local subprocess (YOLONAS_BACKEND=local, the default of config/airflow.env).
# CPU training works without a GPU; large (the CUDA wheels), hence a separate target.
# ---------------------------------------------------------------------------------------------------------------
FROM airflow AS airflow-local

# Numeric users throughout: 50000 is the base image's airflow user, and Kubernetes can only verify runAsNonRoot
# for a numeric USER.
USER 0
COPY requirements/trainer.lock /opt/trainer/requirements/trainer.lock
COPY scripts/check_locks.sh /opt/trainer/requirements/check_locks.sh
RUN python3.11 -m venv /opt/trainer \
    && /opt/trainer/bin/pip install --no-cache-dir --no-deps -r /opt/trainer/requirements/trainer.lock \
    && bash /opt/trainer/requirements/check_locks.sh --python /opt/trainer/bin/python \
        --allow-broken super-gradients --allow-broken data-gradients /opt/trainer/requirements/trainer.lock
USER 50000
# The interpreter the local backend runs the trainer command with (the package comes from PYTHONPATH).
ENV YOLONAS_TRAINER_PYTHON=/opt/trainer/bin/python
RUN SUPER_GRADIENTS_LOG_DIR="$(mktemp -d)" && export SUPER_GRADIENTS_LOG_DIR \
    && /opt/trainer/bin/python -c "from yolonas_pipeline.trainer import compat; compat.apply(); \
compat.check_environment(); import super_gradients" \
    && rm -rf "${SUPER_GRADIENTS_LOG_DIR}"


# ---------------------------------------------------------------------------------------------------------------
# trainer: the image of the training and evaluation pods. Entrypoint: python -m yolonas_pipeline.trainer
# ---------------------------------------------------------------------------------------------------------------
FROM ${TRAINER_BASE_IMAGE} AS trainer

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/trainer/bin:${PATH} \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# The trainer environment, in a venv so that nothing of the base image's Python leaks into it.
COPY requirements/trainer.lock /opt/trainer/requirements/trainer.lock
COPY scripts/check_locks.sh /opt/trainer/requirements/check_locks.sh
RUN python3.11 -m venv /opt/trainer \
    && /opt/trainer/bin/pip install --no-cache-dir --no-deps -r /opt/trainer/requirements/trainer.lock \
    && bash /opt/trainer/requirements/check_locks.sh --python /opt/trainer/bin/python \
        --allow-broken super-gradients --allow-broken data-gradients /opt/trainer/requirements/trainer.lock

# The project package; --no-build-isolation builds it with the locked setuptools (the lock pins setuptools<82,
# which pyproject.toml's build-system accepts), so this step needs no extra download.
COPY pyproject.toml /opt/trainer/src/pyproject.toml
COPY include/ /opt/trainer/src/include/
RUN /opt/trainer/bin/pip install --no-cache-dir --no-deps --no-build-isolation /opt/trainer/src \
    && rm -rf /opt/trainer/src

# Non-root user 1000, numeric so that Kubernetes can verify runAsNonRoot. Group 0 owns and may write its home,
# so the image also runs under an arbitrary UID (OpenShift-style). Everything the trainer writes goes under
# HOME: downloaded data and checkpoints (work dir), TORCH_HOME, super-gradients' log dir, matplotlib's cache.
ENV HOME=/home/trainer \
    TORCH_HOME=/home/trainer/.cache/torch \
    SUPER_GRADIENTS_LOG_DIR=/home/trainer/sg_logs \
    MPLCONFIGDIR=/home/trainer/.cache/matplotlib
RUN useradd --uid 1000 --gid 0 --home-dir /home/trainer --create-home --shell /usr/sbin/nologin trainer \
    && mkdir -p "${TORCH_HOME}" "${SUPER_GRADIENTS_LOG_DIR}" "${MPLCONFIGDIR}" /home/trainer/work \
    && chown -R 1000:0 /home/trainer \
    && chmod -R g=u /home/trainer
USER 1000
WORKDIR /home/trainer/work

# Fail the build, not the first pod, if the environment cannot import the trainer's stack.
RUN python -c "from yolonas_pipeline.trainer import compat; compat.apply(); compat.check_environment(); \
import torch, torchvision, super_gradients; print('torch', torch.__version__, 'super-gradients', super_gradients.__version__)" \
    && rm -rf "${SUPER_GRADIENTS_LOG_DIR:?}"/* /home/trainer/work/*

ENTRYPOINT ["python", "-m", "yolonas_pipeline.trainer"]
CMD ["--help"]
