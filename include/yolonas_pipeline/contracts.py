"""The typed contracts between the stages: every document one stage hands another, in one module.

Each contract is a frozen pydantic model with a versioned ``format`` string. It owns its JSON form
(:meth:`Contract.to_json`, :meth:`Contract.to_xcom`) and its validation (:meth:`Contract.parse`,
:meth:`Contract.read`): every reader goes through here, so a document that is missing a field, has one of
the wrong type, or is of another format fails with one :class:`StageInputError` that names the document,
the field and what was expected, instead of a ``KeyError`` three modules later.

| contract | written by | read by |
|---|---|---|
| :class:`DatasetManifest` (``<export>/manifest.json``) | materialize | trainer, drift, publish |
| :class:`DatasetExport` (XCom) | materialize | inspect, train, evaluate, publish, drift |
| :class:`ClassPlan` (XCom) | inspect_checkpoint | train, publish |
| :class:`TrainRequest`, :class:`EvaluateRequest` (argv) | train/evaluate operators | the trainer command |
| :class:`TrainResult` (``<run>/train/result.json``) | the trainer command | evaluate, publish |
| :class:`Metrics` (``<run>/evaluate/metrics.json``) | the trainer command | publish, the gate |
| :class:`BundleManifest` (``<bundle>/manifest.json``) | publish | the gate, drift, evaluation (champion) |
| :class:`ChampionPointer` (``<models>/<model>/champion.json``) | publish | the gate, drift, evaluation |

This module imports neither Airflow nor torch: the trainer imports it too.
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.storage import Storage, join_uri

MODEL_NAMES = ("yolo_nas_s", "yolo_nas_m", "yolo_nas_l")
ModelName = Literal["yolo_nas_s", "yolo_nas_m", "yolo_nas_l"]
OUTPUT_SPLITS = ("train", "validation", "test")

DATASET_MANIFEST_FILE = "manifest.json"
DATASET_REPORT_FILE = "report.json"
TRAIN_RESULT_FILE = "result.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.json"
BUNDLE_MANIFEST_FILE = "manifest.json"
CHAMPION_FILE = "champion.json"
TRAINER_MODULE = "yolonas_pipeline.trainer"


def describe_errors(error: ValidationError) -> str:
    """``field.path: message (got value)`` for each problem pydantic found, on one line."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "(document)"
        value = item.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        parts.append(f"{where}: {item['msg']} (got {shown})")
    return "; ".join(parts)


class Part(BaseModel):
    """A nested part of a contract: frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    @classmethod
    def parse(cls, data: Any, *, source: str) -> Self:
        """Validate ``data`` (a mapping, an instance, or JSON text); the error names ``source``."""
        if isinstance(data, cls):
            return data
        try:
            if isinstance(data, str | bytes):
                return cls.model_validate_json(data)
            if isinstance(data, BaseModel):
                data = data.model_dump(mode="json")
            return cls.model_validate(data)
        except ValidationError as exc:
            raise StageInputError(f"{source} is not a valid {cls.__name__}: {describe_errors(exc)}") from None


class Contract(Part):
    """A frozen, versioned document with its own JSON form and validation."""

    FORMAT: ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _check_format(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and cls.FORMAT and "format" in cls.model_fields:
            found = data.get("format", cls.FORMAT)
            if found != cls.FORMAT:
                raise ValueError(f"format is {found!r}; this reader understands {cls.FORMAT!r}")
        return data

    @classmethod
    def read(cls, uri: str, *, storage: Storage) -> Self:
        """Read and validate the document at ``uri``; a missing document is a :class:`FileNotFoundError`."""
        text = storage.read_text(uri)
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise StageInputError(f"{uri} is not valid JSON: {exc}") from None
        return cls.parse(text, source=uri)

    def to_xcom(self) -> dict[str, Any]:
        """The JSON-able form that travels through XCom."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_xcom(), indent=2, sort_keys=True) + "\n"

    def write(self, uri: str, *, storage: Storage) -> None:
        storage.write_text(uri, self.to_json())


# -- materialize ---------------------------------------------------------------------------------------------
class SplitCounts(Part):
    images: int = Field(ge=0)
    annotations: int = Field(ge=0)


class SplitFiles(SplitCounts):
    images_dir: str
    annotation_file: str


class DatasetSource(Part):
    source: str
    revision: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, serialize_by_alias=True, protected_namespaces=()
    )


class DatasetManifest(Contract):
    """``manifest.json`` of a complete dataset export (written last, so its presence means complete)."""

    FORMAT: ClassVar[str] = "yolonas-pipeline/coco-detection@1"
    format: str = FORMAT
    fingerprint: str = Field(min_length=1)
    class_names: list[str] = Field(min_length=1)
    splits: dict[str, SplitFiles]
    class_histogram: dict[str, int]
    source: DatasetSource
    report_file: str = DATASET_REPORT_FILE
    files: int = Field(ge=0)

    @classmethod
    def read_export(cls, dataset_uri: str, *, storage: Storage) -> DatasetManifest:
        """The manifest of the export at ``dataset_uri``, or an error that says the export is incomplete."""
        uri = join_uri(dataset_uri, DATASET_MANIFEST_FILE)
        try:
            return cls.read(uri, storage=storage)
        except FileNotFoundError:
            raise StageInputError(
                f"no {DATASET_MANIFEST_FILE} at {uri}: the export at {dataset_uri} is incomplete or the URI is "
                "wrong (run the materialize stage first)"
            ) from None

    def split(self, name: str) -> SplitFiles:
        if name not in self.splits:
            raise StageInputError(f"the dataset {self.fingerprint} has no {name!r} split; it has {sorted(self.splits)}")
        return self.splits[name]


class DatasetExport(Contract):
    """The materialize stage's result: where the export is and what is in it."""

    FORMAT: ClassVar[str] = "yolonas-pipeline/dataset-export@1"
    format: str = FORMAT
    dataset_uri: str
    fingerprint: str
    class_names: list[str] = Field(min_length=1)
    splits: dict[str, SplitCounts]
    class_histogram: dict[str, int]
    reused: bool
    report_uri: str
    manifest_uri: str
    source: str | None = None
    revision: str | None = None

    @classmethod
    def from_manifest(cls, dataset_uri: str, manifest: DatasetManifest, *, reused: bool) -> DatasetExport:
        return cls(
            dataset_uri=dataset_uri,
            fingerprint=manifest.fingerprint,
            class_names=list(manifest.class_names),
            splits={s: SplitCounts(images=v.images, annotations=v.annotations) for s, v in manifest.splits.items()},
            class_histogram=dict(manifest.class_histogram),
            reused=reused,
            report_uri=join_uri(dataset_uri, manifest.report_file),
            manifest_uri=join_uri(dataset_uri, DATASET_MANIFEST_FILE),
            source=manifest.source.source,
            revision=manifest.source.revision,
        )

    def images(self, split: str) -> int:
        counts = self.splits.get(split)
        return counts.images if counts else 0


# -- inspect_checkpoint --------------------------------------------------------------------------------------
class CheckpointInfo(Part):
    """What a checkpoint holds, as read from its pickle's tensor metadata (no tensor bytes are read)."""

    uri: str
    size_bytes: int
    bytes_read: int  # bytes actually read (transferred, on S3) to inspect it, SHA-256 streaming included
    state_dict_key: str  # "ema_net" | "net" | "" (the top level is the state dict)
    num_classes: int  # detection: cls_pred rows; pose: cls_pred rows minus the keypoint confidences
    architecture: str  # one of MODEL_NAMES, or "unknown (head widths a/b/c)"
    num_keypoints: int | None = None
    class_names: list[str] | None = None  # processing_params["class_names"] when present
    epoch: int | None = None
    metrics: dict[str, float] | None = None  # the validation metrics; training ones prefixed "train/"
    sha256: str | None = None  # set when verified against an expected value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ClassPlan(Contract):
    """The one consistent class set handed to training (the inspection stage's result)."""

    FORMAT: ClassVar[str] = "yolonas-pipeline/class-plan@1"
    format: str = FORMAT
    model_name: ModelName
    num_classes: int = Field(ge=1)  # for the model, the loss and the metrics: the dataset's class count
    class_names: list[str]
    checkpoint_uri: str | None = None
    checkpoint_num_classes: int | None = None  # what the checkpoint's head was built with (models.get needs it)
    warnings: list[str] = Field(default_factory=list)
    checkpoint: CheckpointInfo | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.to_xcom()


# -- the trainer command's requests (argv) -------------------------------------------------------------------
class Request(Part):
    """A trainer command's request: flags on the command line, parsed back inside the trainer."""

    COMMAND: ClassVar[str] = ""

    def to_argv(self) -> list[str]:
        """``--field-name value``; booleans as ``--flag`` / ``--no-flag``; ``None`` fields are left out."""
        argv: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            if value is None:
                continue
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            else:
                argv.extend([flag, str(value)])
        return argv

    @classmethod
    def from_argv(cls, argv: Sequence[str], *, prog: str) -> Self:
        """Parse :meth:`to_argv`'s flags back; unknown or malformed flags exit with usage (status 2)."""
        parser = argparse.ArgumentParser(prog=prog, description=(cls.__doc__ or "").strip().splitlines()[0])
        for name, field in cls.model_fields.items():
            kind = _base_type(field.annotation)
            flag = "--" + name.replace("_", "-")
            required = field.is_required()
            default = None if required else field.default
            if kind is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, required=required)
            else:
                parser.add_argument(flag, type=kind, default=default, required=required, dest=name)
        values = vars(parser.parse_args(list(argv)))
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise StageInputError(describe_errors(exc)) from None


def _base_type(hint: Any) -> type:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is Literal:
        return type(typing.get_args(hint)[0])
    if hint not in (str, int, float, bool):
        raise TypeError(f"unsupported request field type {hint!r}")
    return typing.cast(type, hint)


def _check_input_size(value: int) -> int:
    if value < 64 or value % 32:
        raise ValueError(f"input_size={value} must be a multiple of 32 and at least 64 (YOLO-NAS strides)")
    return value


class TrainRequest(Request):
    """Fine-tune a YOLO-NAS model on a materialized COCO dataset; resumable from its output URI."""

    COMMAND: ClassVar[str] = "train"
    dataset_uri: str = Field(min_length=1)
    output_uri: str = Field(min_length=1)
    num_classes: int = Field(ge=1)
    model_name: ModelName = "yolo_nas_s"
    checkpoint_uri: str | None = None
    checkpoint_num_classes: int | None = Field(default=None, ge=1)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=16, ge=1)
    input_size: int = 640
    learning_rate: float = Field(default=5e-4, gt=0)
    warmup_epochs: int = Field(default=1, ge=0)
    mixed_precision: bool = True
    ema: bool = False
    workers: int = Field(default=0, ge=0)  # data loader processes per GPU; 0 = auto, from the CPUs it may use
    channels_last: bool = True  # NHWC weights and batches on CUDA (faster convolutions); off only to rule it out
    gpus: int = Field(default=1, ge=0)
    seed: int = 0

    _input_size = field_validator("input_size")(_check_input_size)

    @model_validator(mode="after")
    def _checkpoint_consistent(self) -> Self:
        if self.checkpoint_num_classes is not None and self.checkpoint_uri is None:
            raise ValueError("checkpoint_num_classes is set but checkpoint_uri is not")
        return self


class EvaluateRequest(Request):
    """Evaluate a trained YOLO-NAS checkpoint on one split of a materialized COCO dataset.

    The model (architecture, classes, input size, best checkpoint) is the one ``train_result_uri``
    (a :class:`TrainResult`) describes, so the command is fully known before training starts.
    """

    COMMAND: ClassVar[str] = "evaluate"
    dataset_uri: str = Field(min_length=1)
    train_result_uri: str = Field(min_length=1)
    output_uri: str = Field(min_length=1)
    split: str = "auto"
    batch_size: int = Field(default=16, ge=1)
    workers: int = Field(default=0, ge=0)
    score_threshold: float = Field(default=0.1, ge=0, lt=1)
    iou_threshold: float = Field(default=0.7, gt=0, le=1)
    #: Detections kept per image after NMS (COCO's maxDets).
    max_predictions: int = Field(default=100, ge=1)
    #: Also export the model to ONNX, with and without NMS, checked against PyTorch in onnxruntime.
    export_onnx: bool = False
    #: The champion pointer (champion.json); when it names a champion, its checkpoint is scored on the same
    #: split too, so the promotion gate compares like with like.
    champion_uri: str | None = None


def trainer_argv(request: Request, *, gpus: int = 1) -> list[str]:
    """The full command line, e.g. ``python -m yolonas_pipeline.trainer train --dataset-uri ...``.

    With several GPUs it runs under ``torchrun`` (super-gradients' own DDP launcher re-executes
    ``sys.argv`` and breaks on modern torch).
    """
    launcher = ["python"] if gpus <= 1 else ["torchrun", "--standalone", f"--nproc_per_node={gpus}"]
    return [*launcher, "-m", TRAINER_MODULE, request.COMMAND, *request.to_argv()]


# -- train ---------------------------------------------------------------------------------------------------
class TrainResult(Contract):
    """``result.json``, written by the trainer command when training finished; the train task's XCom."""

    FORMAT: ClassVar[str] = "yolonas-pipeline/train-result@1"
    format: str = FORMAT
    run_id: str
    model_name: ModelName
    num_classes: int = Field(ge=1)
    class_names: list[str]
    input_size: int
    epochs_completed: int = Field(ge=0)
    best_checkpoint_uri: str
    latest_checkpoint_uri: str
    average_checkpoint_uri: str | None = None
    run_uri: str
    valid_metrics: dict[str, Any] = Field(default_factory=dict)
    #: One entry per finished epoch: {"epoch", "train": {...}, "valid": {...}, "train_seconds", ...}.
    history: list[dict[str, Any]] = Field(default_factory=list)
    #: Files beside ``result.json`` (names relative to it): ``history`` (history.json), ``training_curves`` (PNG).
    files: dict[str, str] = Field(default_factory=dict)
    #: The channel order the model was trained on; None: a result from before it was recorded (those are BGR).
    channel_order: Literal["RGB", "BGR"] | None = None
    device: str
    gpus: int = Field(ge=0)
    loader_workers: int = Field(ge=0)
    #: Optimizer steps each process took per epoch (what the preflight plan predicts).
    steps_per_epoch: int | None = Field(default=None, ge=0)
    seconds_this_attempt: float = Field(ge=0)
    #: The request the trainer ran (what was asked for, as the trainer parsed it).
    request: TrainRequest | None = None

    @property
    def train_seconds(self) -> float:
        """Seconds spent training over every attempt (from the per-epoch history)."""
        return sum(float(entry.get("train_seconds") or entry.get("seconds") or 0) for entry in self.history)


# -- evaluate ------------------------------------------------------------------------------------------------
class ClassScore(Part):
    ap_50: float | None
    ap_50_95: float | None
    boxes: int


class ClassMetrics(ClassScore):
    images: int
    predictions: int
    precision: float | None
    recall: float | None
    f1: float | None


class ChampionScore(Part):
    """The champion scored on the candidate's split by the evaluate stage (``reason`` when it could not be)."""

    bundle_uri: str
    run_id: str | None = None
    split: str
    dataset_fingerprint: str | None = None
    reason: str | None = None
    model_name: str | None = None
    input_size: int | None = None
    model_sha256: str | None = None
    map_50: float | None = None
    map_50_95: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1: float | None = None
    per_class: dict[str, ClassScore] = Field(default_factory=dict)


class Metrics(Contract):
    """``metrics.json``, written by the trainer's ``evaluate`` command; the evaluate task's XCom."""

    FORMAT: ClassVar[str] = "yolonas-pipeline/metrics@1"
    format: str = FORMAT
    map_50: float
    map_50_95: float
    precision: float
    recall: float
    f1: float
    best_f1: dict[str, float]
    per_class: dict[str, ClassMetrics]
    confusion_matrix: dict[str, Any]
    worst_images: list[dict[str, Any]]
    split: str
    images: int
    class_names: list[str]
    dataset_uri: str
    dataset_fingerprint: str | None
    checkpoint_uri: str
    model_name: ModelName
    input_size: int
    thresholds: dict[str, Any]
    predictions: str
    #: plot key -> path relative to the evaluate output URI
    plots: dict[str, str]
    onnx: dict[str, Any] | None = None
    champion: ChampionScore | None = None
    device: str
    gpus: int
    seconds: float
    #: Where this document is; set by the evaluate task when it hands the metrics on.
    metrics_uri: str | None = None

    def files(self) -> list[str]:
        """Paths, relative to the evaluate output URI, of the files this document lists (sorted)."""
        files = [self.predictions, *self.plots.values()]
        files += [f"onnx/{name}" for name in ((self.onnx or {}).get("files") or {}).values()]
        return sorted(files)

    def summary_line(self) -> str:
        return (
            f"{self.split}: mAP@0.50={self.map_50:.4f} mAP@0.50:0.95={self.map_50_95:.4f} "
            f"precision={self.precision:.4f} recall={self.recall:.4f} f1={self.f1:.4f}"
        )


# -- publish -------------------------------------------------------------------------------------------------
class PromotionDecision(Part):
    """The gate's verdict with its reasons, as recorded in the run's manifest."""

    promote: bool
    reasons: list[str]
    margin: float
    class_ap_tolerance: float
    #: The floor the candidate had to reach (0 in decisions recorded before there was one).
    min_map_50_95: float = 0.0
    candidate: dict[str, Any]
    #: The champion compared against (``None`` when there was none), with where its numbers came from.
    champion: dict[str, Any] | None
    #: Per class: candidate AP@0.50:0.95 minus the champion's (``None`` when either has no boxes of it).
    class_ap_deltas: dict[str, float | None] = Field(default_factory=dict)
    #: The champion pointer's version when the decision was made; the pointer write is conditional on it.
    champion_version: str | None = None
    decided_at: str

    def summary(self) -> str:
        verdict = "PROMOTE" if self.promote else "KEEP CHAMPION"
        return f"promotion gate: {verdict}: " + "; ".join(self.reasons)


class FileEntry(Part):
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    size: int = Field(ge=0)
    source: str | None = None


class TrainingKey(Part):
    """What a model was trained from, and its SHA-256: two runs with the same key train the same model."""

    key: str = Field(pattern="^[0-9a-f]{64}$")
    inputs: dict[str, Any]


class BundleManifest(Contract):
    """``manifest.json`` of a published bundle: written last, the only sign that the bundle is complete."""

    FORMAT: ClassVar[str] = "yolonas-pipeline/model-bundle@2"
    format: str = FORMAT
    published_at: str
    code_version: dict[str, str | None]
    run_id: str
    model_name: ModelName
    class_names: list[str]
    input_size: int
    dataset: dict[str, Any]
    base_weights: dict[str, Any]
    evaluation: dict[str, Any]
    training: dict[str, Any]
    compute: dict[str, Any]
    files: dict[str, FileEntry]
    promotion: PromotionDecision | None = None
    #: The training key (absent in bundles published before keys existed: those are never reused).
    training_key: TrainingKey | None = None

    @classmethod
    def read_bundle(cls, bundle_uri: str, *, storage: Storage) -> BundleManifest:
        uri = join_uri(bundle_uri, BUNDLE_MANIFEST_FILE)
        try:
            return cls.read(uri, storage=storage)
        except FileNotFoundError:
            raise StageInputError(f"{bundle_uri} has no {BUNDLE_MANIFEST_FILE}: the bundle is incomplete") from None

    @property
    def dataset_uri(self) -> str | None:
        uri = self.dataset.get("uri")
        return str(uri) if uri else None


class ChampionPointer(Contract):
    """``champion.json``: which published bundle is the current champion, and what it scored."""

    FORMAT: ClassVar[str] = "yolonas-pipeline/champion@1"
    format: str = FORMAT
    model_name: ModelName
    run_id: str
    bundle_uri: str
    manifest_uri: str
    metrics: dict[str, Any]
    input_size: int | None = None
    class_names: list[str] | None = None
    promoted_at: str
    previous: dict[str, str | None] | None = None


class PublishResult(Contract):
    """The publish task's XCom: where the bundle is and what the gate decided."""

    FORMAT: ClassVar[str] = "yolonas-pipeline/publish-result@1"
    format: str = FORMAT
    bundle_uri: str
    manifest_uri: str
    files: list[str]
    reused: bool
    champion_uri: str | None
    promoted: bool
    promotion_reasons: list[str]
    champion_update: str | None
    #: What the model scored (mAP@0.50 and mAP@0.50:0.95 on the evaluation split) and, when the gate compared
    #: it with a champion, the champion's mAP@0.50:0.95 on the same split.
    model_name: str | None = None
    map_50: float | None = None
    map_50_95: float | None = None
    champion_map_50_95: float | None = None


# -- preflight -----------------------------------------------------------------------------------------------
class TrainerCommand(Part):
    """One trainer command as a pod or a local subprocess runs it, decided before any GPU is asked for."""

    cmds: list[str]
    arguments: list[str]
    #: Where the command writes its result (a :class:`TrainResult` or :class:`Metrics`).
    result_uri: str
    gpus: int = Field(ge=0)
    #: Kubernetes container resources (``requests``/``limits``) and node selector for the pod backend.
    requests: dict[str, str]
    limits: dict[str, str]
    node_selector: dict[str, str] = Field(default_factory=dict)

    @property
    def argv(self) -> list[str]:
        return [*self.cmds, *self.arguments]


class RunPlan(Contract):
    """What a training run will do, from the first two stages' results and the run's settings (preflight)."""

    FORMAT: ClassVar[str] = "yolonas-pipeline/run-plan@1"
    format: str = FORMAT
    preflight: bool
    run_id: str
    trigger: dict[str, Any]
    dataset: dict[str, Any]
    model: dict[str, Any]
    training: dict[str, Any]
    resources: dict[str, Any]
    outputs: dict[str, str]
    publishing: dict[str, Any]
    train: TrainerCommand
    evaluate: TrainerCommand
    summary: list[str]
    #: The training key; when a verified bundle with it exists (and ``force`` is off), the run reuses it.
    training_key: TrainingKey
    #: The bundle this run reuses instead of training (None: it trains).
    reused_bundle_uri: str | None = None
    #: Why bundles with the same key were not reused, or that ``force`` was set.
    reuse_notes: list[str] = Field(default_factory=list)


# -- where things are ----------------------------------------------------------------------------------------
def safe_segment(value: str) -> str:
    """Airflow run ids contain ``:`` and ``+``; keep S3 keys and local paths portable."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in value)


def stage_uri(runs_uri: str, run_id: str, stage: str) -> str:
    """``<runs_uri>/<run id>/<stage>``: where one stage of one run writes."""
    return join_uri(runs_uri, safe_segment(run_id), stage)


def bundle_uri(models_uri: str, model_name: str, run_id: str) -> str:
    return join_uri(models_uri, model_name, safe_segment(run_id))


def champion_uri(models_uri: str, model_name: str) -> str:
    return join_uri(models_uri, model_name, CHAMPION_FILE)
