"""Scores between two profiles and the verdict: PSI, Jensen-Shannon, and :func:`compare_profiles`.

Each feature is scored with the population stability index (PSI, additively smoothed so that empty bins of
small datasets do not explode) and the Jensen-Shannon divergence (base 2, in [0, 1]). The score is the effect
size: how much the histogram moved. With ``decision="test"`` each judged feature also gets a permutation
test's p-value (:mod:`.significance`), corrected for the number of features judged; a feature drifts when its
score exceeds its threshold *and* its adjusted p-value is at most ``alpha``, so that neither the noise of a
small dataset nor a tiny change in a large one starts a retraining. ``decision="threshold"`` is the score
against the threshold alone. The dataset drifts when any judged feature does; every feature says why.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from yolonas_pipeline.contracts import Part
from yolonas_pipeline.drift.config import DriftConfig
from yolonas_pipeline.drift.features import FEATURES
from yolonas_pipeline.drift.profile import DatasetProfile, FeatureHistogram
from yolonas_pipeline.drift.significance import adjust, permutation_test, statistic_for

REPORT_FORMAT = "yolonas-pipeline/drift-report@1"
FeatureStatus = Literal["drifted", "stable", "insufficient_data", "not_judged"]


# -- scores ----------------------------------------------------------------------------------------------


def psi(reference: Sequence[float], current: Sequence[float], smoothing: float = 0.5) -> float:
    """Population stability index of two histograms over the same bins: sum (c - r) * ln(c / r).

    ``smoothing`` pseudo-counts are added to every bin of both, so empty bins stay finite.
    """
    _check_bins(reference, current)
    r, c = _proportions(reference, smoothing), _proportions(current, smoothing)
    total = 0.0
    for ri, ci in zip(r, c, strict=True):
        if ri > 0 and ci > 0:
            total += (ci - ri) * math.log(ci / ri)
        elif ri != ci:
            return math.inf
    return total


def js_divergence(reference: Sequence[float], current: Sequence[float]) -> float:
    """Jensen-Shannon divergence (base 2, between 0 and 1) of two histograms over the same bins."""
    _check_bins(reference, current)
    r, c = _proportions(reference, 0.0), _proportions(current, 0.0)
    total = 0.0
    for ri, ci in zip(r, c, strict=True):
        mi = (ri + ci) / 2
        if ri > 0:
            total += 0.5 * ri * math.log2(ri / mi)
        if ci > 0:
            total += 0.5 * ci * math.log2(ci / mi)
    return min(1.0, max(0.0, total))


def _check_bins(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b) or not a:
        raise ValueError(f"histograms must have the same, non-zero number of bins ({len(a)} vs {len(b)})")


def _proportions(counts: Sequence[float], smoothing: float) -> list[float]:
    total = sum(counts) + smoothing * len(counts)
    if total <= 0:
        return [1.0 / len(counts)] * len(counts)
    return [(c + smoothing) / total for c in counts]


def aligned(reference: FeatureHistogram, current: FeatureHistogram) -> tuple[list[str], list[int], list[int]]:
    """Both histograms over the union of their labels (class names can differ between revisions)."""
    if reference.labels == current.labels:
        return list(reference.labels), list(reference.counts), list(current.counts)
    labels = list(reference.labels) + [label for label in current.labels if label not in reference.labels]
    ref = dict(zip(reference.labels, reference.counts, strict=True))
    cur = dict(zip(current.labels, current.counts, strict=True))
    return labels, [ref.get(label, 0) for label in labels], [cur.get(label, 0) for label in labels]


# -- the verdict -----------------------------------------------------------------------------------------


class FeatureDrift(Part):
    """One feature's histograms on both sides, its scores, and whether it drifted."""

    feature: str
    title: str
    status: FeatureStatus
    score: float | None  # the configured metric
    threshold: float
    psi: float | None
    js: float | None
    labels: list[str]
    reference: list[int]
    current: list[int]
    reference_summary: dict[str, float | None]
    current_summary: dict[str, float | None]
    #: Observations on each side (boxes for the box features, images for the others).
    reference_total: int = 0
    current_total: int = 0
    #: The permutation test (decision "test"; None otherwise or when not judged): chi2 or ks, its value, the
    #: raw p-value and the family-wise adjusted one that is compared with alpha.
    test: str | None = None
    statistic: float | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    #: Why the status is what it is, in words.
    why: str = ""

    @property
    def drifted(self) -> bool:
        return self.status == "drifted"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class DriftReport(Part):
    """The verdict on a current export against its reference, with every feature's scores and histograms."""

    drifted: bool
    reason: str
    metric: str
    reference: dict[str, Any] | None  # None when there is no champion to compare with
    current: dict[str, Any]
    features: dict[str, FeatureDrift]
    config: dict[str, Any]
    created_at: str = Field(default_factory=_now)
    champion: dict[str, Any] | None = None
    #: The rule: "test" (score over threshold and adjusted p-value <= alpha) or "threshold" (score alone).
    decision: str = "threshold"
    alpha: float | None = None
    correction: str | None = None

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, f in self.features.items() if f.drifted]

    @property
    def scores(self) -> dict[str, float | None]:
        return {name: _round(f.score) for name, f in self.features.items()}

    def to_dict(self) -> dict[str, Any]:
        """``drift_report.json``'s content (infinite scores as the string ``"inf"``: JSON has no infinity)."""
        out = {"format": REPORT_FORMAT, **self.model_dump(), "drifted_features": self.drifted_features}
        finite: dict[str, Any] = _finite({**out, "scores": self.scores})
        return finite


def _round(value: float | None) -> float | None:
    if value is None or math.isinf(value):
        return value
    return round(value, 6)


def _finite(value: Any) -> Any:
    """JSON has no infinity: an unsmoothed PSI over an empty bin is written as the string "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _profile_summary(profile: DatasetProfile) -> dict[str, Any]:
    return {
        "dataset_uri": profile.dataset_uri,
        "fingerprint": profile.fingerprint,
        "source": profile.source,
        "splits": profile.splits,
        "images": profile.images,
        "boxes": profile.boxes,
        "class_names": profile.class_names,
    }


def _feature_drift(
    name: str, reference: DatasetProfile | None, current: DatasetProfile, config: DriftConfig
) -> FeatureDrift:
    """One feature's histograms and scores, and its permutation test; the status is settled by :func:`_judge`."""
    cur = current.features[name]
    if reference is None:
        labels, ref_counts, cur_counts = list(cur.labels), [0] * len(cur.counts), list(cur.counts)
        ref_summary: dict[str, float | None] = {}
    else:
        labels, ref_counts, cur_counts = aligned(reference.features[name], cur)
        ref_summary = reference.features[name].summary
    threshold = config.threshold(name)
    score_psi = score_js = score = statistic = p_value = None
    test = None
    status: FeatureStatus
    n_ref, n_cur = sum(ref_counts), sum(cur_counts)
    if reference is None:
        status, why = "not_judged", "no reference to compare with"
    elif min(n_ref, n_cur) < max(1, config.min_count):
        status = "insufficient_data"
        why = f"fewer than min_count {config.min_count} observations on a side ({n_ref} vs {n_cur})"
    else:
        score_psi = psi(ref_counts, cur_counts, config.smoothing)
        score_js = js_divergence(ref_counts, cur_counts)
        score = score_psi if config.metric == "psi" else score_js
        if not config.judged(name):
            status, why = "not_judged", "not among the judged features"
        else:
            status, why = "stable", ""  # settled by _judge
            if config.decision == "test":
                test = statistic_for(FEATURES[name].categorical)
                statistic, p_value = permutation_test(
                    ref_counts, cur_counts, categorical=FEATURES[name].categorical, permutations=config.permutations
                )
    return FeatureDrift(
        feature=name,
        title=FEATURES[name].title,
        status=status,
        score=score,
        threshold=threshold,
        psi=_round(score_psi),
        js=_round(score_js),
        labels=labels,
        reference=ref_counts,
        current=cur_counts,
        reference_summary=ref_summary,
        current_summary=cur.summary,
        reference_total=n_ref,
        current_total=n_cur,
        test=test,
        statistic=_round(statistic),
        p_value=_round(p_value),
        why=why,
    )


def _p(value: float | None) -> str:
    return "-" if value is None else (f"{value:.3g}" if value >= 0.001 else f"{value:.1e}")


def _varies(feature: FeatureDrift) -> bool:
    return sum(1 for r, c in zip(feature.reference, feature.current, strict=True) if r + c > 0) > 1


def _judge(features: dict[str, FeatureDrift], config: DriftConfig) -> dict[str, FeatureDrift]:
    """Settle each judged feature's status: the threshold alone, or the threshold and the adjusted p-value."""
    metric = config.metric.upper()
    judged = [name for name, f in features.items() if f.status == "stable" and f.score is not None]
    adjusted: dict[str, float] = {}
    if config.decision == "test":
        # a feature whose pooled observations all lie in one bin cannot be told apart (p = 1 whatever happens):
        # it is left out of the family, as the test conditions on the pooled histogram anyway
        tested = [name for name in judged if features[name].p_value is not None and _varies(features[name])]
        raw = [float(features[name].p_value or 0.0) for name in tested]
        adjusted = dict(zip(tested, adjust(raw, config.correction), strict=True))
    out = dict(features)
    rule = {"holm": f"Holm over {len(adjusted)}", "bonferroni": f"Bonferroni over {len(adjusted)}"}.get(
        config.correction, "uncorrected"
    )
    for name in judged:
        f = features[name]
        score = float(f.score or 0.0)
        large = score > f.threshold
        effect = f"{metric} {score:.3f} {'>' if large else '<='} {f.threshold:g}"
        if config.decision != "test":
            status: FeatureStatus = "drifted" if large else "stable"
            out[name] = f.model_copy(update={"status": status, "why": effect})
            continue
        if name not in adjusted:
            why = f"{effect}; every observation in one bin on both sides: nothing to tell apart"
            out[name] = f.model_copy(update={"status": "stable", "why": why, "p_adjusted": 1.0})
            continue
        p_adj = adjusted[name]
        noise = p_adj > config.alpha
        sig = f"p {_p(p_adj)} ({rule}) {'>' if noise else '<='} alpha {config.alpha:g}"
        counts = f"{f.reference_total} vs {f.current_total} observations"
        if large and not noise:
            status, why = "drifted", f"{effect} and {sig}: a real change that matters ({counts})"
        elif large:
            status, why = "stable", f"{effect} but {sig}: within sampling noise for {counts}"
        elif not noise:
            status, why = "stable", f"{sig} but {effect}: a real change too small to matter ({counts})"
        else:
            status, why = "stable", f"{effect} and {sig} ({counts})"
        out[name] = f.model_copy(update={"status": status, "why": why, "p_adjusted": _round(p_adj)})
    return out


def _reason(
    features: Mapping[str, FeatureDrift],
    reference: DatasetProfile,
    current: DatasetProfile,
    config: DriftConfig,
) -> str:
    metric = config.metric.upper()
    test = config.decision == "test"
    over = [f for f in features.values() if f.drifted]
    if over:
        reason = "drift in " + ", ".join(
            f"{f.feature} ({metric} {f.score:.3f} > {f.threshold:g}"
            + (f", p {_p(f.p_adjusted)} <= {config.alpha:g})" if test else ")")
            for f in over
        )
    else:
        scored = [f for f in features.values() if f.score is not None and f.status != "not_judged"]
        large = [f for f in scored if (f.score or 0.0) > f.threshold]
        if test and large:
            reason = "no feature drifted: " + ", ".join(
                f"{f.feature} {metric} {f.score:.3f} > {f.threshold:g} but p {_p(f.p_adjusted)} > alpha "
                f"{config.alpha:g} (noise for {f.reference_total} vs {f.current_total} observations)"
                for f in large
            )
        elif scored:
            top = max(scored, key=lambda f: f.score or 0.0)
            reason = (
                f"no feature over its threshold; largest {metric} {top.score:.3f} ({top.feature}, "
                f"threshold {top.threshold:g})"
            )
        else:
            reason = f"no feature had at least {config.min_count} observations on both sides to judge"
        skipped = [f.feature for f in features.values() if f.status == "insufficient_data"]
        if skipped:
            reason += f"; too little data to judge {', '.join(skipped)}"
    if reference.fingerprint == current.fingerprint:
        reason += f" (the current export is the reference snapshot itself, fingerprint {current.fingerprint})"
    return reason


def compare_profiles(
    reference: DatasetProfile | None,
    current: DatasetProfile,
    config: DriftConfig | None = None,
    *,
    no_reference_is_drift: bool = True,
    no_reference_reason: str = "there is no reference snapshot to compare with",
    champion: Mapping[str, Any] | None = None,
) -> DriftReport:
    """Score every feature of ``current`` against ``reference`` and decide whether the dataset drifted.

    Without a reference (no champion yet) nothing is scored; ``no_reference_is_drift`` decides the outcome
    and the reason says so. ``champion`` (e.g. :meth:`ChampionReference.to_dict`) is recorded in the report.
    """
    config = config or DriftConfig()
    features = _judge({name: _feature_drift(name, reference, current, config) for name in FEATURES}, config)
    if reference is None:
        drifted = no_reference_is_drift
        verdict = "treated as drift, so that a first model gets trained" if drifted else "not treated as drift"
        reason = f"{no_reference_reason}; {verdict}"
    else:
        drifted = any(f.drifted for f in features.values())
        reason = _reason(features, reference, current, config)
    return DriftReport(
        drifted=drifted,
        reason=reason,
        metric=config.metric,
        reference=_profile_summary(reference) if reference else None,
        current=_profile_summary(current),
        features=features,
        config=config.to_dict(),
        champion=dict(champion) if champion else None,
        decision=config.decision,
        alpha=config.alpha if config.decision == "test" else None,
        correction=config.correction if config.decision == "test" else None,
    )
