"""One settings model per DAG: what a run may set, validated once, and the trigger form built from it.

:class:`TrainingSettings` (``yolonas_training``) and :class:`DriftSettings` (``yolonas_drift``) are frozen
pydantic models. Each field carries its bounds, its form title, description and section, so the trigger
form (:func:`form_params`) is generated from the model and cannot disagree with it. A run's settings are
**resolved once** (:func:`resolve`), by the DAG's first task, from the form's values, the trigger's conf and
the triggering asset event's ``conf``; every later task reads the typed result from XCom, never a Jinja
rendering, so no value's type depends on how a template renders (``"000…0"`` stays a string).

Unknown keys are refused with a "did you mean" hint, before any work is done; every string is bounded.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from yolonas_pipeline.contracts import ModelName, TrainRequest, describe_errors
from yolonas_pipeline.drift.config import DriftConfig
from yolonas_pipeline.drift.features import FEATURES
from yolonas_pipeline.errors import StageInputError
from yolonas_pipeline.materialize_schema import PRESETS, SchemaConfig, SchemaMapping, schema_form_json_schema

#: The promotion gate's defaults (see :mod:`yolonas_pipeline.promote`).
#: Half a point of mAP@0.50:0.95: a smaller gain is not worth replacing a deployed model for, and on a small
#: evaluation split it is within what one image more or less found moves the figure. Above 0, so a tie never wins.
DEFAULT_MARGIN = 0.005
DEFAULT_CLASS_AP_TOLERANCE = 0.05
#: The floor every champion must reach, the first one included. A model that detects nothing scores 0, and so
#: does one trained for an epoch from scratch; a detector that finds its objects, even loosely, scores several
#: times more (the demo's sample model 0.51). Low enough for a hard dataset's first model. 0: no floor.
DEFAULT_MIN_MAP_50_95 = 0.05

Bucket = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
Prefix = Annotated[
    str, StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
]
Uri = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
SplitName = Literal["train", "validation", "test"]
SourceSplit = Annotated[str, StringConstraints(min_length=1, max_length=128)]


def _form(title: str, section: str, description: str | None = None, **extra: Any) -> dict[str, Any]:
    """The trigger form's presentation of a field (Param keywords other than the schema)."""
    out: dict[str, Any] = {"title": title, "section": section, **extra}
    if description:
        out["description"] = description
    return out


def _check_prefix(value: str) -> str:
    segments = value.split("/")
    if any(segment in (".", "..") for segment in segments):
        raise ValueError(
            f"publish_prefix={value!r} has a '.' or '..' segment; give a plain relative path such as 'models'"
        )
    return value


class RunSettings(BaseModel):
    """A run's settings: frozen, strict types, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, protected_namespaces=())
    #: Where the settings come from, for error messages (e.g. "the yolonas_training run's settings").
    DAG_ID: ClassVar[str] = ""

    @classmethod
    def field_names(cls) -> list[str]:
        return list(cls.model_fields)

    @classmethod
    def validated(cls, values: Mapping[str, Any], *, origin: str) -> Self:
        """Validate ``values``; unknown keys and bad values fail with one message naming each field."""
        check_known_keys(cls, values, origin=origin)
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise StageInputError(f"{origin}: {describe_errors(exc)}") from None

    def to_xcom(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def parse_resolved(cls, values: Mapping[str, Any]) -> Self:
        """The settings a run resolved (the ``settings`` task's XCom), validated again on the way in."""
        return cls.validated(values, origin=f"the {cls.DAG_ID} run's resolved settings")


def check_known_keys(model: type[BaseModel], values: Iterable[str], *, origin: str) -> None:
    """Refuse keys that are not fields of ``model``, suggesting the closest field name for each."""
    fields = _field_keys(model)
    unknown = sorted(set(values) - set(fields))
    if not unknown:
        return
    # The form shows titles ("Architecture"), so a key may be a title rather than the field's name.
    titles = {}
    for name, field in model.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        title = str(extra.get("title") or "")
        titles[_normalized(title)] = field.alias or name
    hints = []
    for key in unknown:
        shown = key if len(key) <= 64 else key[:61] + "..."
        match = titles.get(_normalized(key))
        if match is None:
            close = difflib.get_close_matches(key.lower(), fields, n=1, cutoff=0.6)
            match = close[0] if close else None
        hints.append(f"{shown!r} (did you mean {match!r}?)" if match else repr(shown))
    raise StageInputError(f"{origin} sets unknown field(s) {', '.join(hints)}; accepted: {', '.join(fields)}")


def _normalized(text: str) -> str:
    return "".join(c for c in text.lower() if c.isalnum())


def _field_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


# -- the fields both DAGs share ----------------------------------------------------------------------------------
def _schema_is_valid(value: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
    """The materializer's own check of a schema value (preset name or mapping), so a bad one fails at trigger time."""
    if value is not None:
        try:
            SchemaConfig.from_mapping(value)
        except StageInputError as exc:
            raise ValueError(str(exc)) from None
    return value


#: A preset name, a mapping validated by :class:`~yolonas_pipeline.materialize_schema.SchemaMapping`, or None.
SchemaSetting = Annotated[
    str | dict[str, Any] | None,
    AfterValidator(_schema_is_valid),
    WithJsonSchema(schema_form_json_schema()),
]


class DatasetFields(RunSettings):
    dataset_source: Annotated[str, StringConstraints(min_length=1, max_length=1024)] = Field(
        default="cppe-5",
        json_schema_extra=_form(
            "Dataset",
            "Dataset",
            "Hugging Face hub name, local save_to_disk folder, or parquet/arrow files (at most 1024 characters).",
        ),
    )
    dataset_revision: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = Field(
        default=None,
        json_schema_extra=_form(
            "Revision", "Dataset", "Hub branch, tag or commit, at most 256 characters; empty: the newest."
        ),
    )
    schema_: SchemaSetting = Field(
        default=None,
        alias="schema",
        json_schema_extra=_form(
            "Schema",
            "Dataset",
            "How boxes and classes are stored; null: detect. A preset name in quotes (one of "
            f"{', '.join(PRESETS)}) or a mapping of keys ({', '.join(SchemaMapping.model_fields)}), e.g. "
            '{"preset": "objects_categories", "bbox_format": "xyxy"} or {"objects_column": null, "bbox_key": '
            '"boxes", "category_key": "labels", "class_names": ["cat", "dog"]}.',
        ),
    )
    split_map: dict[SplitName, SourceSplit] | None = Field(
        default=None,
        json_schema_extra=_form(
            "Splits",
            "Dataset",
            'Output split -> source split, e.g. {"train": "train", "test": "test"}; empty: by name '
            "(a seeded 10% of train for validation if the source has none).",
        ),
    )
    model_name: ModelName = Field(
        default="yolo_nas_s",
        json_schema_extra=_form(
            "Architecture",
            "Model",
            "YOLO-NAS S, M or L (one of the list).",
            values_display={"yolo_nas_s": "YOLO-NAS S", "yolo_nas_m": "YOLO-NAS M", "yolo_nas_l": "YOLO-NAS L"},
        ),
    )
    publish_bucket: Bucket = Field(
        default="yolonas",
        json_schema_extra=_form("Bucket", "Publishing", "S3 bucket name (3-63 lowercase letters, digits, '.', '-')."),
    )
    publish_prefix: Prefix = Field(
        default="models",
        json_schema_extra=_form(
            "Prefix",
            "Publishing",
            "Bundles go to s3://<bucket>/<prefix>/<model>/<run id>/; a relative path of letters, digits, '_', '.', "
            "'-' segments, no '.' or '..' segment, at most 256 characters.",
        ),
    )

    _prefix = field_validator("publish_prefix")(_check_prefix)

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, protected_namespaces=(), populate_by_name=True)

    @property
    def models_uri(self) -> str:
        return f"s3://{self.publish_bucket}/{self.publish_prefix}"

    @property
    def schema_name(self) -> str | None:
        """The preset the schema names (``"custom"`` for a mapping without one); None: detect."""
        if isinstance(self.schema_, dict):
            return str(self.schema_.get("preset") or "custom")
        return self.schema_


class TrainingSettings(DatasetFields):
    """What one ``yolonas_training`` run does: dataset, model, training arguments, resources, publishing."""

    DAG_ID: ClassVar[str] = "yolonas_training"
    preflight: bool = Field(
        default=False,
        json_schema_extra=_form(
            "Preflight only",
            "Run",
            "Materialize and inspect, report what a full run would do, then stop before training. This DAG runs "
            "one run at a time; the yolonas_preflight DAG does the same without waiting for a training run.",
        ),
    )
    force: bool = Field(
        default=False,
        json_schema_extra=_form(
            "Train even if already trained",
            "Run",
            "Off: when a published, verified bundle was trained from the same inputs (dataset, base weights, "
            "training settings, trainer environment, code), the run reuses it and asks for no GPU.",
        ),
    )
    checkpoint_uri: Uri | None = Field(
        default=None,
        json_schema_extra=_form(
            "Base weights URI",
            "Model",
            "Local path or s3:// URI of a super-gradients checkpoint, at most 2048 characters; empty: train from "
            "scratch.",
        ),
    )
    checkpoint_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = Field(
        default=None,
        json_schema_extra=_form(
            "Base weights SHA-256",
            "Model",
            "64 lowercase hex digits, checked before the weights are used; empty: not checked.",
        ),
    )
    epochs: int = Field(default=10, ge=1, le=300, json_schema_extra=_form("Epochs", "Training", "1 to 300."))
    batch_size: int = Field(
        default=16,
        ge=1,
        le=256,
        json_schema_extra=_form("Batch size", "Training", "Images per step per GPU, 1 to 256."),
    )
    input_size: int = Field(
        default=640,
        ge=64,
        le=1280,
        multiple_of=32,
        json_schema_extra=_form("Input size (px)", "Training", "64 to 1280, a multiple of 32 (YOLO-NAS strides)."),
    )
    learning_rate: float = Field(
        default=5e-4,
        gt=0,
        le=1,
        json_schema_extra=_form("Learning rate", "Training", "AdamW's peak rate after warm-up, above 0 and at most 1."),
    )
    mixed_precision: bool = Field(
        default=True, json_schema_extra=_form("Mixed precision", "Training", "AMP on CUDA; ignored on the CPU.")
    )
    workers: int = Field(
        default=0,
        ge=0,
        le=64,
        json_schema_extra=_form(
            "Loader workers", "Training", "Data loader processes per GPU, 0 to 64; 0: from the CPUs."
        ),
    )
    gpus: int = Field(
        default=1,
        ge=0,
        le=8,
        json_schema_extra=_form(
            "GPUs",
            "Resources",
            "GPUs for the training pod, 0 to 8 (0: a CPU pod); above 1 the trainer runs under torchrun. The local "
            "backend uses the GPUs of the machine it runs on, if any.",
        ),
    )
    promotion_margin: float = Field(
        default=DEFAULT_MARGIN,
        ge=0,
        le=1,
        json_schema_extra=_form(
            "Promotion margin (mAP@0.5:0.95)",
            "Publishing",
            "0 to 1. The new model becomes champion (champion.json) only if its mAP@0.5:0.95 beats the champion's "
            "by more than this, on the same evaluation split (a tie never promotes).",
        ),
    )
    min_map_50_95: float = Field(
        default=DEFAULT_MIN_MAP_50_95,
        ge=0,
        le=1,
        json_schema_extra=_form(
            "Minimum mAP@0.5:0.95",
            "Publishing",
            "0 to 1. No model below this becomes champion, the first one included (a model that detects nothing "
            "scores 0); 0: no floor.",
        ),
    )
    class_ap_tolerance: float = Field(
        default=DEFAULT_CLASS_AP_TOLERANCE,
        ge=0,
        le=1,
        json_schema_extra=_form(
            "Per-class AP tolerance",
            "Publishing",
            "0 to 1: the largest drop of any one class's AP@0.5:0.95 that still allows promotion.",
        ),
    )

    def train_options(self) -> dict[str, Any]:
        """The :class:`~yolonas_pipeline.contracts.TrainRequest` fields a run sets."""
        keys = ("epochs", "batch_size", "input_size", "learning_rate", "mixed_precision", "workers")
        return {key: getattr(self, key) for key in keys if key in TrainRequest.model_fields}


NoChampionPolicy = Literal["retrain", "skip"]


class DriftSettings(DatasetFields):
    """What one ``yolonas_drift`` run compares, and what the retraining it may start uses."""

    DAG_ID: ClassVar[str] = "yolonas_drift"
    reference_uri: Uri | None = Field(
        default=None,
        json_schema_extra=_form(
            "Reference export (instead of the champion's)",
            "Reference",
            "A materialized export (s3://.../datasets/<fingerprint>) to compare with, at most 2048 characters; "
            "empty: the champion's.",
        ),
    )
    when_no_champion: NoChampionPolicy = Field(
        default="retrain",
        json_schema_extra=_form(
            "When there is no champion",
            "Reference",
            "Retrain (treat it as drift) or do nothing (one of the list).",
            values_display={"retrain": "Treat as drift: train a first model", "skip": "Do nothing"},
        ),
    )
    drift_config: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra=_form(
            "Drift settings",
            "Drift",
            'e.g. {"metric": "psi", "thresholds": {"class_balance": 0.1}, "default_threshold": 0.25, "alpha": 0.05}; '
            f"features: {', '.join(FEATURES)}. Empty: a feature drifts when its PSI is over 0.2 and a permutation "
            "test says the change is not noise (Holm-adjusted p <= alpha 0.05); decision threshold: PSI alone.",
            # The form validates the object with the drift stage's own schema.
            **DriftConfig.form_schema(),
        ),
    )
    retrigger: bool = Field(
        default=False,
        json_schema_extra=_form(
            "Retrigger", "Drift", "Emit the drift event even if this same drift already started a retraining."
        ),
    )
    retrain_conf: dict[str, Any] = Field(
        default_factory=dict,
        json_schema_extra=_form(
            "Retraining form values",
            "Drift",
            'yolonas_training form values for the run drift starts, e.g. {"epochs": 50}; the drifted dataset, the '
            "architecture, bucket and prefix of this run are added unless set here.",
        ),
    )

    @field_validator("drift_config")
    @classmethod
    def _drift_config_is_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            DriftConfig.from_mapping(value)
        except StageInputError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("retrain_conf")
    @classmethod
    def _retrain_conf_is_training_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            TrainingSettings.validated(value, origin="retrain_conf")
        except StageInputError as exc:
            raise ValueError(str(exc)) from None
        return value

    def retraining_conf(self, *, dataset_revision: str | None) -> dict[str, Any]:
        """The ``conf`` of the drift event: the settings the retraining run uses (validated as such)."""
        conf: dict[str, Any] = {
            "dataset_source": self.dataset_source,
            "schema": self.schema_,
            "split_map": self.split_map,
            "model_name": self.model_name,
            "publish_bucket": self.publish_bucket,
            "publish_prefix": self.publish_prefix,
            **self.retrain_conf,
        }
        conf["dataset_revision"] = dataset_revision or self.dataset_revision
        conf = {k: v for k, v in conf.items() if v is not None}
        TrainingSettings.validated(conf, origin="the retraining conf")
        return conf


# -- the trigger form --------------------------------------------------------------------------------------------
Settings = TypeVar("Settings", bound=RunSettings)


def defaults_with(model: type[Settings], overrides: Mapping[str, Any], *, origin: str) -> Settings:
    """The model's defaults with ``overrides`` (e.g. a deployment's JSON defaults) applied and validated."""
    return model.validated(overrides, origin=origin)


def form_params(model: type[RunSettings], defaults: RunSettings) -> dict[str, Any]:
    """The trigger form: one JSON-schema validated ``Param`` per field, generated from the model."""
    from airflow.sdk import Param  # only the DAG files need Airflow; everything else here is plain pydantic

    schema = model.model_json_schema(by_alias=True)
    definitions = schema.get("$defs", {})
    values = defaults.to_xcom()
    params: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        prop = _inline(schema["properties"][key], definitions)
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        presentation: dict[str, Any] = {k: v for k, v in extra.items() if k in _PRESENTATION}
        params[key] = Param(values[key], **_param_schema(prop), **presentation)
    # The form shows sections in the order their first field appears.
    order = {section: i for i, section in enumerate(SECTIONS)}
    return dict(sorted(params.items(), key=lambda item: order.get(item[1].schema.get("section"), len(order))))


#: The trigger form's sections, in the order they are shown.
SECTIONS = ("Run", "Dataset", "Model", "Training", "Resources", "Reference", "Drift", "Publishing")


def _inline(prop: Mapping[str, Any], definitions: Mapping[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if isinstance(ref, str):
        return dict(definitions[ref.rsplit("/", 1)[1]])
    return dict(prop)


_PRESENTATION = {"title", "description", "section", "values_display", "default"}


def _param_schema(prop: Mapping[str, Any]) -> dict[str, Any]:
    """Pydantic's JSON schema for one field as Param keywords (``anyOf [X, null]`` becomes a nullable X)."""
    out = {k: v for k, v in prop.items() if k not in _PRESENTATION}
    options = out.pop("anyOf", None)
    if options:
        non_null = [o for o in options if o.get("type") != "null"]
        nullable = len(non_null) < len(options)
        if len(non_null) == 1:
            out.update({k: v for k, v in non_null[0].items() if k not in _PRESENTATION})
            kind = out.get("type")
            if nullable:
                out["type"] = ["null", kind] if isinstance(kind, str) else ["null"]
                if "enum" in out:
                    out["enum"] = [None, *out["enum"]]
        else:
            out["anyOf"] = options
    if "const" in out and "enum" not in out:
        out["enum"] = [out.pop("const")]
    return out


# -- resolution: once per run ---------------------------------------------------------------------------------
def event_conf(triggering_asset_events: Mapping[Any, Sequence[Any]] | None, asset_name: str) -> dict[str, Any]:
    """``extra["conf"]`` of the newest event of ``asset_name`` that triggered this run ({} if none)."""
    if not triggering_asset_events:
        return {}
    events = [e for asset, found in triggering_asset_events.items() if asset.name == asset_name for e in found]
    if not events:
        return {}
    latest = max(events, key=lambda e: e.timestamp)
    conf = (latest.extra or {}).get("conf") or {}
    if not isinstance(conf, Mapping):
        raise StageInputError(f"the {asset_name} event's extra.conf must be an object, got {conf!r}")
    return dict(conf)


def resolve(
    model: type[Settings],
    *,
    params: Mapping[str, Any],
    conf: Mapping[str, Any] | None,
    event: Mapping[str, Any] | None = None,
    event_origin: str = "the triggering asset event",
) -> Settings:
    """A run's settings: the form's values (``params``, which Airflow already merged with the trigger's conf),
    overridden by the triggering asset event's ``conf``; unknown keys in either conf are refused."""
    run_name = f"the {model.DAG_ID} run's conf" if model.DAG_ID else "the run's conf"
    check_known_keys(model, (conf or {}).keys(), origin=run_name)
    check_known_keys(model, (event or {}).keys(), origin=f"{event_origin}'s conf")
    fields = set(_field_keys(model))
    values = {k: v for k, v in params.items() if k in fields}
    values.update(event or {})
    return model.validated(values, origin=f"the {model.DAG_ID} run's settings")


def json_from_env(variable: str) -> dict[str, Any]:
    """A JSON object from the environment ({} when unset); the error names the variable."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{variable} is not valid JSON ({exc}): {text!r}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{variable} must be a JSON object, got {text!r}")
    return value
