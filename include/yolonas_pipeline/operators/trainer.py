"""Operators for stages 3 and 4: the trainer command, in a Kubernetes pod or a local subprocess.

Both run the command line the run plan decided (``python -m yolonas_pipeline.trainer train|evaluate ...``,
see :mod:`yolonas_pipeline.preflight`): :class:`TrainerPodOperator` is a KubernetesPodOperator configured
through its public parameters, :class:`TrainerProcessOperator` a plain operator running a subprocess in
the trainer environment. Which one a DAG gets is the deployment's ``YOLONAS_BACKEND``, read when the DAG
is parsed (:func:`trainer_task`). Results come back through the JSON file the command writes in S3 (a
:class:`~yolonas_pipeline.contracts.TrainResult` or :class:`~yolonas_pipeline.contracts.Metrics`), not the
pod's XCom sidecar.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import BaseOperator, Context
from kubernetes.client import models as k8s

from yolonas_pipeline import evaluate, settings, train
from yolonas_pipeline.contracts import Metrics, TrainResult
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.local_runner import LocalTrainerProcess, line_level
from yolonas_pipeline.operators._aws import storage_for, trainer_environment
from yolonas_pipeline.operators._errors import input_errors_fail_without_retry
from yolonas_pipeline.operators.links import TRAINER_LINKS

#: The documents the two commands write, by command name.
RESULTS: dict[str, type[TrainResult] | type[Metrics]] = {"train": TrainResult, "evaluate": Metrics}
#: Writable paths for a read-only, non-root container: super-gradients and torch write under these.
SCRATCH_ENV = {
    "HOME": "/scratch/home",
    "TORCH_HOME": "/scratch/torch",
    "SUPER_GRADIENTS_LOG_DIR": "/scratch/sg_logs",
    "YOLONAS_WORK_DIR": "/scratch/work",
    "MPLCONFIGDIR": "/scratch/matplotlib",
}


def read_result(command: str, result_uri: str, *, aws_conn_id: str) -> dict[str, Any]:
    """The command's result document (validated) for XCom."""
    storage = storage_for(aws_conn_id)
    output_uri = result_uri.rsplit("/", 1)[0]
    if command == "train":
        return train.read_train_result(output_uri, storage=storage).to_xcom()
    return evaluate.read_metrics(output_uri, storage=storage).to_xcom()


def _command_of(cmds: Sequence[str], arguments: Sequence[str]) -> str:
    command = next((a for a in arguments if a in RESULTS), None)
    if command is None:
        raise StageInputError(f"not a trainer command line: {shlex.join([*cmds, *arguments])}")
    return command


class TrainerProcessOperator(BaseOperator):
    """Run a trainer command as a subprocess of this task, in the trainer environment (the embedded default).

    ``python`` in ``cmds`` becomes ``YOLONAS_TRAINER_PYTHON`` and ``torchrun`` that interpreter's
    ``torch.distributed.run``; S3 credentials reach the subprocess only through its environment.

    :param cmds: the launcher, e.g. ``["python"]`` or ``["torchrun", "--standalone", ...]``. (templated)
    :param arguments: ``["-m", "yolonas_pipeline.trainer", "train", "--flag", ...]``. (templated)
    :param result_uri: the JSON document the command writes when it succeeds. (templated)
    :param gpus: GPUs the command may use; 0 hides every GPU from it. (templated)
    :param aws_conn_id: Airflow connection for S3.
    """

    template_fields: Sequence[str] = ("cmds", "arguments", "result_uri", "gpus")
    operator_extra_links = TRAINER_LINKS

    def __init__(
        self,
        *,
        cmds: Sequence[str],
        arguments: Sequence[str],
        result_uri: str,
        gpus: int = 0,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cmds = cmds
        self.arguments = arguments
        self.result_uri = result_uri
        self.gpus = gpus
        self.aws_conn_id = aws_conn_id or settings.load().aws_conn_id
        self._process: LocalTrainerProcess | None = None

    def execute(self, context: Context) -> dict[str, Any]:
        with input_errors_fail_without_retry():
            argv = [*self.cmds, *self.arguments]
            command = _command_of(self.cmds, self.arguments)
            self.log.info("trainer command (local subprocess): %s", shlex.join(argv))
            env = trainer_environment(self.aws_conn_id)
            if not self.gpus:
                env["CUDA_VISIBLE_DEVICES"] = ""  # the plan said CPU: keep it so, as a CPU pod would be
            self._process = LocalTrainerProcess()
            self._process.run(argv, env=env, log=lambda line: self.log.log(line_level(line), "%s", line))
            return read_result(command, self.result_uri, aws_conn_id=self.aws_conn_id)

    def on_kill(self) -> None:
        if self._process is not None:
            self._process.terminate()


class TrainerPodOperator(KubernetesPodOperator):
    """Run a trainer command in a pod built from the trainer image (the production backend).

    Defaults make a pod that Restricted Pod Security admits: non-root uid 1000, no privilege escalation, no
    capabilities, RuntimeDefault seccomp, no service account token; S3 credentials come from the Secret
    ``trainer_secret`` (or IRSA), never from the pod spec; ``/dev/shm`` is memory-backed for the loader
    workers; GPU pods tolerate GPU taints. Pass ``container_resources`` and ``node_selector`` from the run plan
    (they depend on the run's GPUs). Any KubernetesPodOperator parameter may override a default.

    :param result_uri: the JSON document the command writes when it succeeds. (templated)
    :param shm_size: size of the memory-backed ``/dev/shm``.
    :param trainer_secret: Kubernetes Secret with ``AWS_*`` keys, mounted as environment variables.
    :param aws_conn_id: Airflow connection this task reads the result with.
    """

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "result_uri")
    operator_extra_links = (*KubernetesPodOperator.operator_extra_links, *TRAINER_LINKS)

    def __init__(
        self,
        *,
        result_uri: str,
        shm_size: str = "8Gi",
        trainer_secret: str | None = None,
        aws_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        config = settings.load()
        secret = trainer_secret if trainer_secret is not None else config.trainer_secret
        defaults: dict[str, Any] = {
            "namespace": config.namespace,
            "image": config.trainer_image,
            "kubernetes_conn_id": config.kubernetes_conn_id,
            "service_account_name": config.trainer_service_account,
            # The trainer never talks to the Kubernetes API.
            "automount_service_account_token": False,
            "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in SCRATCH_ENV.items()],
            "env_from": [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=secret))] if secret else None,
            "volumes": [
                k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=shm_size)),
                k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource()),
            ],
            "volume_mounts": [
                k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
                k8s.V1VolumeMount(name="scratch", mount_path="/scratch"),
            ],
            # A toleration only permits GPU nodes; the node selector (GPU runs only) requires them.
            "tolerations": [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
            "security_context": k8s.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=1000,
                run_as_group=1000,
                fs_group=1000,
                seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
            ),
            "container_security_context": k8s.V1SecurityContext(
                allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"])
            ),
            # GPU node autoscaling routinely takes longer than the provider's 120 s default.
            "startup_timeout_seconds": 900,
            "schedule_timeout_seconds": 1800,
            "on_finish_action": "delete_succeeded_pod",
            "log_events_on_failure": True,
            "get_logs": True,
            # Results come back through S3: no XCom sidecar (brittle, and rejected by restricted Pod Security).
            "do_xcom_push": False,
        }
        super().__init__(**{**defaults, **kwargs})
        self.result_uri = result_uri
        self.aws_conn_id = aws_conn_id or config.aws_conn_id

    def execute(self, context: Context) -> None:
        with input_errors_fail_without_retry():
            command = _command_of(self.cmds or [], self.arguments or [])
            self.log.info("trainer command (pod): %s", shlex.join([*(self.cmds or []), *(self.arguments or [])]))
            super().execute(context)
            result = read_result(command, self.result_uri, aws_conn_id=self.aws_conn_id)
        # The pod has no sidecar, so the task pushes the result itself.
        context["ti"].xcom_push(key="return_value", value=result)


def trainer_task(*, task_id: str, plan: Any, command: str, backend: str | None = None, **kwargs: Any) -> BaseOperator:
    """The ``train`` or ``evaluate`` task for the deployment's backend, running the command ``plan`` decided.

    ``plan`` is the preflight task's XComArg; it pushes ``<command>_cmds``, ``<command>_arguments``,
    ``<command>_result_uri``, ``<command>_gpus``, ``<command>_requests``, ``<command>_limits`` and
    ``<command>_node_selector``.
    """
    backend = backend or settings.load().backend
    if backend not in settings.BACKENDS:
        raise ValueError(f"YOLONAS_BACKEND={backend!r} is not one of {', '.join(settings.BACKENDS)}")
    if command not in RESULTS:
        raise ValueError(f"command={command!r} is not one of {', '.join(RESULTS)}")
    common = {
        "task_id": task_id,
        "cmds": plan[f"{command}_cmds"],
        "arguments": plan[f"{command}_arguments"],
        "result_uri": plan[f"{command}_result_uri"],
    }
    if backend == "local":
        return TrainerProcessOperator(**common, gpus=plan[f"{command}_gpus"], **kwargs)
    return TrainerPodOperator(
        **common,
        name=f"yolonas-{command}",
        container_resources=k8s.V1ResourceRequirements(
            requests=plan[f"{command}_requests"], limits=plan[f"{command}_limits"]
        ),
        node_selector=plan[f"{command}_node_selector"],
        **kwargs,
    )
