"""Statistics over seeds: percentile bootstrap intervals, the paired Wilcoxon comparison and
the paired t-test.

Host-side NumPy/SciPy on a few numbers per seed (one per run), used by `selal_jax.verbs.report`.

* Interval: 95 % percentile bootstrap of the mean over seeds: BOOTSTRAP_RESAMPLES resamples of the
  seeds with replacement drawn by `numpy.random.default_rng(BOOTSTRAP_SEED)` (a fresh generator
  per interval, so each number is reproducible on its own), the 2.5th and 97.5th percentiles of
  the resampled means (`numpy.percentile`, linear interpolation). None for fewer than
  MIN_BOOTSTRAP_N seeds: resampling 2-4 numbers gives an interval no wider than their range
  (from 2 seeds the only possible means are the two values and their midpoint), which reads as
  significant when it excludes 0; the report lists the seeds' values instead.
* Paired t-test (`paired_t_test`): per seed present in both runs, the two-sided paired t-test of
  the differences (`scipy.stats.ttest_rel`), as the pairwise penalty matrix of Ash et al.
  (BADGE, ICLR 2020) and nnActive use it.
* Paired comparison: per seed present in both runs, the difference strategy - reference; its
  mean, bootstrap interval and the two-sided Wilcoxon signed-rank p-value
  (`scipy.stats.wilcoxon` with its defaults: zero differences dropped). With n non-zero
  differences the exact test cannot give p below 2 / 2**n (every difference of one sign), so
  p < 0.05 needs n >= 6; with fewer, the comparison carries a sentence saying so.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
ALPHA = 0.05  # the significance level the too-few-seeds sentence refers to
MIN_BOOTSTRAP_N = 5  # fewer values: no bootstrap interval (see the module docstring)


def bootstrap_interval(
    values,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of `values` [n]; None for n < MIN_BOOTSTRAP_N."""
    x = np.asarray(values, np.float64)
    if len(x) < MIN_BOOTSTRAP_N:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def min_wilcoxon_p(n_nonzero: int) -> float:
    """The smallest two-sided p of the exact signed-rank test with n non-zero differences."""
    return min(1.0, 2.0 ** (1 - n_nonzero))


def min_pairs_for(alpha: float = ALPHA) -> int:
    """The fewest non-zero paired differences with which the exact test can give p < alpha."""
    return max(1, math.floor(1 - math.log2(alpha)) + 1)


def paired_seeds(values: dict, reference: dict) -> list:
    """The seeds with a number in both {seed: number or None} maps, sorted."""
    return sorted(s for s in values if values[s] is not None and reference.get(s) is not None)


def paired_comparison(values: dict, reference: dict) -> dict:
    """Paired by seed: strategy - reference.

    Args:
      values, reference: {seed: number or None}; seeds missing or None in either are left out.

    Returns:
      {'seeds': paired seeds (list), 'differences': [n], 'mean': float | None,
       'interval': (lo, hi) | None, 'p': Wilcoxon p | None, 'note': '' or a sentence}.
    """
    from scipy import stats

    seeds = paired_seeds(values, reference)
    d = np.array([values[s] - reference[s] for s in seeds], np.float64)
    out = {"seeds": seeds, "differences": d.tolist(), "mean": None, "interval": None, "p": None}
    if len(d) == 0:
        return {**out, "note": "no seed in common with the reference"}
    out.update(mean=float(d.mean()), interval=bootstrap_interval(d))
    n_nonzero = int(np.count_nonzero(d))
    if n_nonzero == 0:
        return {**out, "note": "every paired difference is 0: no test"}
    out["p"] = float(stats.wilcoxon(d).pvalue)
    needed = min_pairs_for(ALPHA)
    if n_nonzero < needed:
        out["note"] = (
            f"{n_nonzero} non-zero paired difference{'s' if n_nonzero > 1 else ''}: the smallest "
            f"p the signed-rank test can give is 2/2^{n_nonzero} = "
            f"{min_wilcoxon_p(n_nonzero):.4g}, so p < {ALPHA} needs at least {needed} paired seeds"
        )
    else:
        out["note"] = ""
    return out


def paired_t_test(values: dict, reference: dict) -> dict:
    """Two-sided paired t-test of values - reference, paired by seed.

    Args:
      values, reference: {seed: number or None}; seeds missing or None in either are left out.

    Returns:
      {'seeds': paired seeds (list), 'mean': mean difference | None, 'p': the two-sided p of
       `scipy.stats.ttest_rel` | None}: p is None with fewer than 2 pairs, NaN when every
      difference is 0 (no test), 0 when they are all equal and non-zero.
    """
    from scipy import stats

    seeds = paired_seeds(values, reference)
    a = np.array([values[s] for s in seeds], np.float64)
    b = np.array([reference[s] for s in seeds], np.float64)
    out = {"seeds": seeds, "mean": float(np.mean(a - b)) if seeds else None, "p": None}
    if len(seeds) >= 2:
        with warnings.catch_warnings():  # (near-)zero variance: t is +-inf or NaN, as documented
            warnings.simplefilter("ignore", RuntimeWarning)
            out["p"] = float(stats.ttest_rel(a, b).pvalue)
    return out
