"""Is a difference between two histograms more than sampling noise? Permutation tests, and a family-wise rule.

A fixed PSI threshold does not know how many observations stand behind a histogram: two small samples of the
same distribution differ by chance, and their PSI often passes 0.2. The test asks how often that difference
arises when both histograms come from one distribution, with exactly these counts. Under that null hypothesis
the observations are exchangeable: pooling both histograms and dealing ``n_current`` of the pooled
observations to the current side at random (a multivariate hypergeometric draw) is a sample of the null, and
the p-value is the share of such deals whose statistic is at least the observed one (with the usual +1 on both
sides, so that it is never 0). No large-sample approximation is made, so the p-value is valid for the small
exports that fine-tuning sees, and plain numpy is enough (no scipy; numpy is imported when a test runs, not
with this module: DAG files import the drift package).

The statistic follows the feature's kind, as tabular drift tools choose it:

- categorical (``class_balance``): Pearson's chi-squared statistic over the pooled expected counts;
- ordered bins (every other feature): the Kolmogorov-Smirnov distance between the two cumulative histograms,
  which sees a shift of the whole distribution along the axis better than a bin-by-bin statistic.

Several features are judged together; :func:`adjust` corrects their p-values for that (Holm's step-down rule by
default, or Bonferroni), so the chance that any stable feature of a same-distribution pair is flagged stays at
the significance level ``alpha``, not ``features x alpha``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

Statistic = Literal["chi2", "ks"]
Correction = Literal["holm", "bonferroni", "none"]
CORRECTIONS: tuple[Correction, ...] = get_args(Correction)

#: Relative tolerance when comparing a permuted statistic with the observed one (float rounding of ties).
_TIE = 1e-9


def statistic_for(categorical: bool) -> Statistic:
    """Chi-squared for categorical features, Kolmogorov-Smirnov for ordered bins."""
    return "chi2" if categorical else "ks"


def _statistics(
    reference: npt.NDArray[np.float64], current: npt.NDArray[np.float64], kind: Statistic
) -> npt.NDArray[np.float64]:
    """The statistic of each row pair (shape (..., bins)); both sides' totals are the same in every row."""
    import numpy as np

    n_ref = reference.sum(axis=-1, keepdims=True)
    n_cur = current.sum(axis=-1, keepdims=True)
    if kind == "ks":
        cdf_ref = np.cumsum(reference, axis=-1) / n_ref
        cdf_cur = np.cumsum(current, axis=-1) / n_cur
        out: npt.NDArray[np.float64] = np.abs(cdf_ref - cdf_cur).max(axis=-1)
        return out
    pooled = reference + current
    total = n_ref + n_cur
    with np.errstate(divide="ignore", invalid="ignore"):
        expected_ref = pooled * (n_ref / total)
        expected_cur = pooled * (n_cur / total)
        terms = (reference - expected_ref) ** 2 / expected_ref + (current - expected_cur) ** 2 / expected_cur
    chi2: npt.NDArray[np.float64] = np.where(pooled > 0, terms, 0.0).sum(axis=-1)
    return chi2


def _seed(reference: Sequence[int], current: Sequence[int], kind: str) -> int:
    """A seed from the counts themselves: the same histograms always get the same p-value."""
    text = f"{kind}|{','.join(map(str, reference))}|{','.join(map(str, current))}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def permutation_test(
    reference: Sequence[int],
    current: Sequence[int],
    *,
    categorical: bool,
    permutations: int = 999,
    seed: int | None = None,
) -> tuple[float, float]:
    """``(statistic, p_value)`` of the observed histograms against ``permutations`` random re-deals of their pool.

    The p-value is ``(1 + #{permuted >= observed}) / (1 + permutations)``: at least ``1 / (1 + permutations)``.
    Histograms with every observation in one bin, or an empty side, give p = 1 (nothing to tell apart).
    ``seed`` None: derived from the counts, so a report is reproducible.
    """
    if len(reference) != len(current) or not reference:
        raise ValueError(f"histograms must have the same, non-zero number of bins ({len(reference)} vs {len(current)})")
    if permutations < 1:
        raise ValueError(f"permutations must be at least 1, got {permutations}")
    import numpy as np

    kind = statistic_for(categorical)
    ref = np.asarray(reference, dtype=np.int64)
    cur = np.asarray(current, dtype=np.int64)
    if (ref < 0).any() or (cur < 0).any():
        raise ValueError("histogram counts must be >= 0")
    observed = float(_statistics(ref.astype(np.float64), cur.astype(np.float64), kind))
    pooled = ref + cur
    if ref.sum() == 0 or cur.sum() == 0 or np.count_nonzero(pooled) < 2:
        return observed, 1.0
    rng = np.random.default_rng(_seed(reference, current, kind) if seed is None else seed)
    # only bins with observations take part: the others contribute nothing to either statistic's spread
    occupied = pooled > 0
    dealt = rng.multivariate_hypergeometric(pooled[occupied], int(cur.sum()), size=permutations)
    permuted_cur = np.zeros((permutations, len(pooled)), dtype=np.float64)
    permuted_cur[:, occupied] = dealt
    permuted_ref = pooled.astype(np.float64) - permuted_cur
    permuted = _statistics(permuted_ref, permuted_cur, kind)
    extreme = int(np.count_nonzero(permuted >= observed * (1 - _TIE)))
    return observed, (1 + extreme) / (1 + permutations)


def adjust(p_values: Sequence[float], correction: Correction = "holm") -> list[float]:
    """Family-wise adjusted p-values, in the input order: a feature is significant when its value <= alpha.

    ``holm``: Holm's step-down rule (sorted ascending, the i-th of m multiplied by m - i + 1, kept monotone),
    never less powerful than ``bonferroni`` (each multiplied by m); ``none``: as they are. Both corrections keep
    the chance of any false flag among the m features at most alpha, whatever their dependence.
    """
    m = len(p_values)
    if correction == "none" or m == 0:
        return [min(1.0, float(p)) for p in p_values]
    if correction == "bonferroni":
        return [min(1.0, float(p) * m) for p in p_values]
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, float(p_values[index]) * (m - rank)))
        adjusted[index] = running
    return adjusted
