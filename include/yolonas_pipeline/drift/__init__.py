"""Detection-aware drift between two materialized COCO exports.

Tabular drift tools compare columns; a detection dataset drifts in what a detector cares about. Each export
is summarised as a :class:`DatasetProfile` of six histograms on fixed bins (:data:`FEATURES`), and a current
export is compared with the snapshot the champion model was trained on. A feature drifts when its change is
both large enough to matter (PSI or JS over a threshold) and unlikely to be sampling noise for the number of
observations behind it (a permutation test, corrected for the features judged together). One module per job:

| module | what |
|---|---|
| :mod:`.features` | the six features and their fixed bins (:data:`FEATURES`, :class:`FeatureSpec`) |
| :mod:`.config` | :class:`DriftConfig`: what counts as drift; its JSON schema for the trigger form |
| :mod:`.profile` | :func:`profile_dataset`: an export's histograms, cached by fingerprint |
| :mod:`.significance` | :func:`permutation_test` (chi-squared, Kolmogorov-Smirnov), :func:`adjust` (Holm) |
| :mod:`.divergence` | PSI, Jensen-Shannon, :func:`compare_profiles`: the :class:`DriftReport` |
| :mod:`.champion` | :func:`read_champion`: the champion's training snapshot, through the contracts |
| :mod:`.report` | :func:`write_report`: ``drift_report.json`` and ``drift_report.png`` (matplotlib) |

Plain Python: no Airflow, no torch. Everything is read and written through
:class:`~yolonas_pipeline.storage.Storage`, and logged through this package's module loggers.
"""

from __future__ import annotations

from yolonas_pipeline.drift.champion import ChampionReference, read_champion
from yolonas_pipeline.drift.config import DECISIONS, DEFAULT_THRESHOLDS, METRICS, Decision, DriftConfig, Metric
from yolonas_pipeline.drift.divergence import (
    REPORT_FORMAT,
    DriftReport,
    FeatureDrift,
    FeatureStatus,
    compare_profiles,
    js_divergence,
    psi,
)
from yolonas_pipeline.drift.features import FEATURE_NAMES, FEATURES, FeatureName, FeatureSpec
from yolonas_pipeline.drift.profile import (
    PROFILE_FORMAT,
    PROFILE_VERSION,
    DatasetProfile,
    FeatureHistogram,
    profile_cache_uri,
    profile_dataset,
    profile_settings,
)
from yolonas_pipeline.drift.report import REPORT_JSON, REPORT_PNG, render_png, write_report
from yolonas_pipeline.drift.significance import CORRECTIONS, Correction, adjust, permutation_test

__all__ = [
    "CORRECTIONS",
    "DECISIONS",
    "DEFAULT_THRESHOLDS",
    "FEATURES",
    "FEATURE_NAMES",
    "METRICS",
    "PROFILE_FORMAT",
    "PROFILE_VERSION",
    "REPORT_FORMAT",
    "REPORT_JSON",
    "REPORT_PNG",
    "ChampionReference",
    "Correction",
    "DatasetProfile",
    "Decision",
    "DriftConfig",
    "DriftReport",
    "FeatureDrift",
    "FeatureHistogram",
    "FeatureName",
    "FeatureSpec",
    "FeatureStatus",
    "Metric",
    "adjust",
    "compare_profiles",
    "js_divergence",
    "permutation_test",
    "profile_cache_uri",
    "profile_dataset",
    "profile_settings",
    "psi",
    "read_champion",
    "render_png",
    "write_report",
]
