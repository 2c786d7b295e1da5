"""Operators for stages 3 and 4: the trainer command, in a Kubernetes pod or a local subprocess.

Both backends run the same argv (``python -m yolonas_pipeline.trainer train|evaluate ...``). Which
one runs is the ``backend`` argument (default: ``YOLONAS_BACKEND``), never a DAG edit. Results come
back through a JSON file the command writes under its output URI, read here from S3, not through
the pod's XCom sidecar.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import Context
from kubernetes.client import models as k8s

from yolonas_pipeline import settings
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.evaluate import build_evaluate_request, read_metrics, summary_line
from yolonas_pipeline.local_runner import LocalTrainerProcess
from yolonas_pipeline.operators._aws import storage_for, trainer_environment
from yolonas_pipeline.publish import safe_segment
from yolonas_pipeline.storage import Storage, join_uri
from yolonas_pipeline.train import build_train_request, read_train_result
from yolonas_pipeline.trainer_command import trainer_argv

_GPU_FIELDS = ("container_resources", "volumes", "node_selector", "tolerations")
#: Writable paths for a read-only, non-root container: super-gradients and torch write under these.
_SCRATCH_ENV = {
    "HOME": "/scratch/home",
    "TORCH_HOME": "/scratch/torch",
    "SUPER_GRADIENTS_LOG_DIR": "/scratch/sg_logs",
    "YOLONAS_WORK_DIR": "/scratch/work",
    "MPLCONFIGDIR": "/scratch/matplotlib",
}


class TrainerCommandOperator(KubernetesPodOperator):
    """Run one trainer command; the base of :class:`TrainModelOperator` and :class:`EvaluateModelOperator`.

    :param runs_uri: root under which each DAG run gets ``<run id>/<stage>/``. (templated)
    :param backend: ``local`` (subprocess with ``YOLONAS_TRAINER_PYTHON``) or ``kubernetes``. (templated)
    :param gpus: GPUs for the pod (``nvidia.com/gpu`` limit); above 1 the command runs under torchrun.
    :param cpu_request: CPUs requested for the pod; default 8 per GPU (the data loader needs them). No CPU
        limit is set: a quota would throttle the loader, and the trainer sizes its workers from what it may use.
    :param memory_request: default 16Gi per GPU; ``memory_limit`` default 32Gi per GPU.
    :param shm_size: memory-backed ``/dev/shm`` (loader workers pass batches through it); default 8Gi per GPU.
    :param aws_conn_id: Airflow connection for S3, read by this task; the pod gets its credentials from
        the Kubernetes Secret ``trainer_secret`` or from IRSA, never from the pod spec.
    :param trainer_secret: Kubernetes Secret with ``AWS_*`` keys, mounted as environment variables.
    """

    command: str = ""
    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, "runs_uri", "backend", "gpus")

    def __init__(
        self,
        *,
        runs_uri: str | None = None,
        backend: str | None = None,
        gpus: int | str = 1,
        cpu_request: str | None = None,
        memory_request: str | None = None,
        memory_limit: str | None = None,
        shm_size: str | None = None,
        aws_conn_id: str | None = None,
        trainer_secret: str | None = None,
        **kwargs: Any,
    ) -> None:
        config = settings.load()
        secret = trainer_secret if trainer_secret is not None else config.trainer_secret
        self._resources = {"cpu": cpu_request, "memory": memory_request, "memory_limit": memory_limit, "shm": shm_size}
        pod_defaults: dict[str, Any] = {
            "name": f"yolonas-{self.command}",
            "namespace": config.namespace,
            "image": config.trainer_image,
            "kubernetes_conn_id": config.kubernetes_conn_id,
            "service_account_name": config.trainer_service_account,
            # The trainer never talks to the Kubernetes API.
            "automount_service_account_token": False,
            "env_vars": [k8s.V1EnvVar(name=k, value=v) for k, v in _SCRATCH_ENV.items()],
            "env_from": [k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=secret))] if secret else None,
            "volume_mounts": [
                k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
                k8s.V1VolumeMount(name="scratch", mount_path="/scratch"),
            ],
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
            # The task's return value (read from S3) goes to XCom; the pod itself never gets a sidecar.
            "do_xcom_push": True,
        }
        # A templated ``gpus`` is only known at run time; the GPU-dependent fields are then rebuilt in
        # prepare(), except those the caller set explicitly.
        self._explicit = {key for key in _GPU_FIELDS if key in kwargs}
        pod_defaults.update(self._gpu_fields(gpus if isinstance(gpus, int) else 1))
        pod_defaults.update(kwargs)
        super().__init__(**pod_defaults)
        self.runs_uri = runs_uri or config.runs_uri
        self.backend = backend or config.backend
        self.gpus = gpus
        self.aws_conn_id = aws_conn_id or config.aws_conn_id
        self._local: LocalTrainerProcess | None = None

    # -- to be provided by subclasses -------------------------------------------------------
    def build_request(self, context: Context) -> Any:
        raise NotImplementedError

    def read_result(self, request: Any, storage: Storage) -> dict[str, Any]:
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------
    def stage_uri(self, context: Context, stage: str) -> str:
        return join_uri(self.runs_uri, safe_segment(context["run_id"]), stage)

    def _gpu_fields(self, gpus: int) -> dict[str, Any]:
        """Resources, /dev/shm, node selector and tolerations for ``gpus`` GPUs (0: a CPU pod)."""
        per_gpu = max(gpus, 1)
        limits = {"memory": self._resources["memory_limit"] or f"{32 * per_gpu}Gi"}
        if gpus:
            limits["nvidia.com/gpu"] = str(gpus)
        requests = {
            "cpu": self._resources["cpu"] or str(8 * per_gpu),
            "memory": self._resources["memory"] or f"{16 * per_gpu}Gi",
        }
        shm = self._resources["shm"] or f"{8 * per_gpu}Gi"
        return {
            "container_resources": k8s.V1ResourceRequirements(requests=requests, limits=limits),
            "volumes": [
                k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=shm)),
                k8s.V1Volume(name="scratch", empty_dir=k8s.V1EmptyDirVolumeSource()),
            ],
            "node_selector": {"nvidia.com/gpu.present": "true"} if gpus else None,
            "tolerations": [k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
            if gpus
            else None,
        }

    def _resolve_gpus(self) -> int:
        try:
            gpus = int(self.gpus)
        except (TypeError, ValueError):
            raise StageInputError(f"gpus={self.gpus!r} is not a whole number of GPUs") from None
        if gpus < 0:
            raise StageInputError(f"gpus={gpus} must be 0 (CPU pod) or more")
        self.gpus = gpus
        for key, value in self._gpu_fields(gpus).items():
            if key not in self._explicit:
                setattr(self, key, value or ([] if key in ("volumes", "tolerations") else {}))
        return gpus

    def prepare(self, context: Context) -> Any:
        """Build the request and set ``cmds``/``arguments``; the rendered pod then runs exactly this."""
        self._resolve_gpus()
        request = self.build_request(context)
        argv = trainer_argv(self.command, request, gpus=self.gpus)
        split = argv.index(self.command)
        self.cmds, self.arguments = argv[:split], argv[split:]
        return request

    def execute(self, context: Context) -> dict[str, Any]:
        if self.backend not in settings.BACKENDS:
            raise StageInputError(f"backend={self.backend!r} is not one of {', '.join(settings.BACKENDS)}")
        request = self.prepare(context)
        argv = [*self.cmds, *self.arguments]
        self.log.info("trainer command (%s backend): %s", self.backend, shlex.join(argv))
        if self.backend == "local":
            self._local = LocalTrainerProcess()
            self._local.run(argv, env=trainer_environment(self.aws_conn_id), log=self.log.info)
        else:
            with self._without_xcom_sidecar():
                super().execute(context)
        return self.read_result(request, storage_for(self.aws_conn_id))

    def build_pod_request_obj(self, context: Context | None = None, *, dry_run: bool = False) -> k8s.V1Pod:
        with self._without_xcom_sidecar():
            return super().build_pod_request_obj(context, dry_run=dry_run)

    @contextlib.contextmanager
    def _without_xcom_sidecar(self) -> Iterator[None]:
        """Results come back through S3, so the pod never gets the XCom sidecar (brittle, and rejected by
        restricted Pod Security); ``do_xcom_push`` stays on so the task's return value reaches XCom."""
        push, self.do_xcom_push = self.do_xcom_push, False
        try:
            yield
        finally:
            self.do_xcom_push = push

    def on_kill(self) -> None:
        if self._local is not None:
            self._local.terminate()
        else:
            super().on_kill()


class TrainModelOperator(TrainerCommandOperator):
    """Fine-tune YOLO-NAS on the materialized dataset with the class plan from the inspection stage.

    A retry resumes from the last epoch uploaded to ``<runs_uri>/<run id>/train/``.

    :param dataset: the materialize stage's result. (templated)
    :param class_plan: the inspection stage's result. (templated)
    :param training: TrainRequest options: epochs, batch_size, input_size, learning_rate, ... (templated)
    """

    command = "train"
    template_fields: Sequence[str] = (*TrainerCommandOperator.template_fields, "dataset", "class_plan", "training")

    def __init__(
        self,
        *,
        dataset: Mapping[str, Any],
        class_plan: Mapping[str, Any],
        training: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.class_plan = class_plan
        self.training = training or {}

    def build_request(self, context: Context) -> Any:
        return build_train_request(
            dataset=self.dataset,
            class_plan=self.class_plan,
            output_uri=self.stage_uri(context, "train"),
            gpus=self.gpus or 1,
            **self.training,
        )

    def read_result(self, request: Any, storage: Storage) -> dict[str, Any]:
        result = read_train_result(request.output_uri, storage=storage)
        self.log.info("trained %d epochs; best %s", result["epochs_completed"], result["best_checkpoint_uri"])
        return result


class EvaluateModelOperator(TrainerCommandOperator):
    """Evaluate the trained model on the test split (validation when there is none).

    :param dataset: the materialize stage's result. (templated)
    :param train_result: the training stage's result. (templated)
    :param evaluation: EvaluateRequest options: split, batch_size, score_threshold, ... (templated)
    """

    command = "evaluate"
    template_fields: Sequence[str] = (*TrainerCommandOperator.template_fields, "dataset", "train_result", "evaluation")

    def __init__(
        self,
        *,
        dataset: Mapping[str, Any],
        train_result: Mapping[str, Any],
        evaluation: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("gpus", 1)
        super().__init__(**kwargs)
        self.dataset = dataset
        self.train_result = train_result
        self.evaluation = evaluation or {}

    def build_request(self, context: Context) -> Any:
        return build_evaluate_request(
            dataset=self.dataset,
            train_result=self.train_result,
            output_uri=self.stage_uri(context, "evaluate"),
            **self.evaluation,
        )

    def read_result(self, request: Any, storage: Storage) -> dict[str, Any]:
        metrics = read_metrics(request.output_uri, storage=storage)
        self.log.info("evaluation %s", summary_line(metrics))
        return {**metrics, "metrics_uri": join_uri(request.output_uri, "metrics.json")}
