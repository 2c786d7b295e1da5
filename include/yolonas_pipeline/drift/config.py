"""What counts as drift: :class:`DriftConfig`, built from the DAG's *Drift settings* or ``YOLONAS_DRIFT_CONFIG``.

The model is the one definition of the settings: :meth:`DriftConfig.from_mapping` validates a mapping with
errors that name the setting, the value and what is accepted, and :meth:`DriftConfig.form_schema` is the same
rules as a JSON schema for the trigger form's Param.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from yolonas_pipeline.drift.features import FEATURE_NAMES, FeatureName
from yolonas_pipeline.drift.significance import CORRECTIONS, Correction
from yolonas_pipeline.errors import StageInputError

Metric = Literal["psi", "js"]
METRICS: tuple[Metric, ...] = get_args(Metric)
Decision = Literal["test", "threshold"]
DECISIONS: tuple[Decision, ...] = get_args(Decision)
#: PSI above 0.2 is the usual "significant shift"; a JS divergence of 0.1 is of the same order.
DEFAULT_THRESHOLDS: dict[str, float] = {"psi": 0.2, "js": 0.1}

Threshold = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, strict=True)]

_FEATURE_LIST = ", ".join(FEATURE_NAMES)
#: What each setting accepts, as the error messages say it.
_ACCEPTED: dict[str, str] = {
    "metric": f"one of {', '.join(METRICS)}",
    "thresholds": f"an object of feature -> number > 0; features: {_FEATURE_LIST}",
    "default_threshold": "a finite number > 0, or null for the metric's default "
    + ", ".join(f"{m} {t:g}" for m, t in DEFAULT_THRESHOLDS.items()),
    "min_count": "an integer >= 0",
    "brightness_sample": "an integer >= 0",
    "splits": "a list of split names, or null for every split of the export",
    "smoothing": "a finite number >= 0",
    "features": f"a list of feature names, or null for all; features: {_FEATURE_LIST}",
    "decision": f"one of {', '.join(DECISIONS)}",
    "alpha": "a number > 0 and < 1",
    "correction": f"one of {', '.join(CORRECTIONS)}",
    "permutations": "an integer from 99 to 100000",
}


class DriftConfig(BaseModel):
    """What counts as drift. Built from a mapping (DAG param, ``YOLONAS_DRIFT_CONFIG``) by :meth:`from_mapping`.

    Both metrics are always reported; ``metric`` is the one compared with the thresholds. With
    ``decision="test"`` (the default) a feature drifts when its score exceeds its threshold (the change is large
    enough to matter) *and* a permutation test on its two histograms finds the change unlikely to be sampling
    noise: its p-value, adjusted for the number of features judged (``correction``), is at most ``alpha``.
    ``decision="threshold"`` is the rule before the test: the score against the threshold alone. The dataset
    drifts when any judged feature does.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", title="Drift settings")

    metric: Metric = Field(
        default="psi",
        description="The score compared with the thresholds: psi (population stability index) or js "
        "(Jensen-Shannon divergence, base 2).",
    )
    thresholds: dict[FeatureName, Threshold] = Field(
        default_factory=dict,
        description="Feature name -> threshold; features not named use default_threshold.",
    )
    default_threshold: Threshold | None = Field(
        default=None,
        description="Threshold for features not in thresholds; null: the metric's default (PSI 0.2, JS 0.1).",
    )
    min_count: Count = Field(
        default=10,
        description="Features with fewer observations than this on either side are reported, not judged.",
    )
    brightness_sample: Count = Field(
        default=256,
        description="Images decoded per export for the brightness histogram (a seeded choice).",
    )
    splits: tuple[str, ...] | None = Field(
        default=None,
        description="Splits profiled; null: every split of the export.",
    )
    smoothing: Annotated[float, Field(ge=0, allow_inf_nan=False)] = Field(
        default=0.5,
        description="Pseudo-count added to every bin before PSI (Jeffreys: 0.5), so that an empty bin of a small "
        "dataset does not dominate the score.",
    )
    features: tuple[FeatureName, ...] | None = Field(
        default=None,
        description="Features judged; the others are still reported. null: all.",
    )

    decision: Decision = Field(
        default="test",
        description="test: a feature drifts when its score is over its threshold and a permutation test says the "
        "change is not sampling noise (p-value <= alpha after the correction); threshold: the score alone decides "
        "(the rule before the test; small datasets raise false alarms).",
    )
    alpha: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = Field(
        default=0.05,
        description="Significance level: the chance that a same-distribution dataset is judged drifted, over all "
        "judged features together (decision test).",
    )
    correction: Correction = Field(
        default="holm",
        description="How the features' p-values are corrected for being judged together: holm (step-down), "
        "bonferroni, or none (alpha per feature).",
    )
    permutations: Annotated[int, Field(ge=99, le=100_000, strict=True)] = Field(
        default=999,
        description="Random re-deals of the pooled observations per feature test; the smallest p-value is "
        "1 / (1 + permutations).",
    )

    @field_validator("thresholds", mode="before")
    @classmethod
    def _no_thresholds(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("splits", mode="before")
    @classmethod
    def _every_split(cls, value: Any) -> Any:
        if isinstance(value, list | tuple) and not value:
            return None  # an empty list: every split, as before
        return value

    @model_validator(mode="after")
    def _test_can_reach_alpha(self) -> DriftConfig:
        # the smallest adjusted p-value is (features judged) / (1 + permutations) under Holm or Bonferroni
        if self.decision != "test":
            return self
        judged = len(FEATURE_NAMES) if self.features is None else len(self.features)
        family = max(1, judged) if self.correction != "none" else 1
        if family / (1 + self.permutations) > self.alpha:
            needed = max(1, math.ceil(family / self.alpha) - 1)
            raise ValueError(
                f"permutations={self.permutations} cannot reach alpha {self.alpha:g} over {family} feature(s): "
                f"the smallest p-value is {family}/(1 + permutations); use at least {needed} permutations"
            )
        return self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | DriftConfig | None) -> DriftConfig:
        """Validate ``values`` (None or {}: the defaults); a :class:`StageInputError` names each bad setting."""
        if values is None:
            return cls()
        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            raise StageInputError(f"drift settings must be an object of setting -> value, got {values!r}")
        try:
            return cls.model_validate(dict(values))
        except ValidationError as exc:
            raise StageInputError(_describe(exc)) from None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The settings a mapping may name, in declaration order."""
        return tuple(cls.model_fields)

    @classmethod
    def form_schema(cls) -> dict[str, Any]:
        """The settings as JSON-schema keywords for an object-typed Param: ``Param({}, type="object", **schema)``.

        ``properties`` (each with its title, description and default) and ``additionalProperties: false``;
        self-contained (no ``$ref``), so Airflow's form validation needs nothing else.
        """
        schema = cls.model_json_schema()
        if "$defs" in schema:  # pragma: no cover - every field type above is inlined by pydantic
            raise RuntimeError(f"the drift settings schema has references: {sorted(schema['$defs'])}")
        return {"properties": schema["properties"], "additionalProperties": False}

    def threshold(self, feature: str) -> float:
        thresholds = cast("dict[str, float]", self.thresholds)
        if feature in thresholds:
            return float(thresholds[feature])
        if self.default_threshold is not None:
            return float(self.default_threshold)
        return DEFAULT_THRESHOLDS[self.metric]

    def judged(self, feature: str) -> bool:
        return self.features is None or feature in self.features

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON, every feature's effective threshold spelled out (the report records it)."""
        out = self.model_dump(mode="json")
        out["thresholds"] = {name: self.threshold(name) for name in FEATURE_NAMES}
        return out


def _where(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":
            text += f".{part}" if text else part
    return text


def _describe(error: ValidationError) -> str:
    """One sentence per problem: the setting, the value, what is wrong and what is accepted."""
    unknown: list[str] = []
    problems: list[str] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            unknown.append(str(loc[0]))
            continue
        problems.append(_problem(item, loc))
    if unknown:
        problems.insert(
            0, f"unknown drift setting(s) {sorted(unknown)}; accepted: {', '.join(sorted(DriftConfig.field_names()))}"
        )
    return "; ".join(dict.fromkeys(problems))


def _problem(item: ErrorDetails, loc: tuple[int | str, ...]) -> str:
    if not loc:  # a rule across settings
        message = item["msg"].removeprefix("Value error, ")
        return f"drift settings refused: {message}"
    setting = str(loc[0])
    value = item.get("input")
    if setting in ("thresholds", "features") and item["type"] == "literal_error":
        # a key of thresholds or an item of features that is not a feature
        return f"drift {setting} name unknown feature {value!r}; features: {_FEATURE_LIST}"
    message = item["msg"]
    message = (message[:1].lower() + message[1:]).replace("valid tuple", "valid list")
    return f"drift {_where(loc)}={value!r} is refused ({message}); accepted: {_ACCEPTED.get(setting, 'see the schema')}"
