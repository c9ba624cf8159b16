"""Transfer gains and domain-robustness differences with 95% confidence intervals, and their verdicts.

A gain is the mean over seeds of metric(intermediate) - metric(direct) on one test set. Its interval accounts
for the two sources of noise a reader cares about:
- test-set sampling, by a paired bootstrap: the test examples are resampled with replacement and the same
  resampled indices score both arms and every seed, so the arms are compared on the same examples;
- seed variance, by a Student-t term: each replicate adds t(k-1) * s / sqrt(k), s the spread of the k
  per-seed gains. Resampling k = 3 seeds instead (a nested bootstrap) cannot see its own tails: in
  simulations like those of tests/test_stats.py (256 examples, 3 seeds) it called 16-20% of no-difference
  cases decided once seed noise dominated; with the t term it was 5.1%. With one seed the interval
  covers test-set sampling only, that is, it is conditional on the two trained models.
The interval is the percentile interval of the replicates. The verdict reads it: above zero `positive`, below
zero `negative`, inside +-margin `equivalent` (the two one-sided tests of an equivalence at 2.5% each: an
interval that excludes 0 is signed first), otherwise `inconclusive` (not enough data to tell).

Why not scipy.stats.bootstrap: it resamples one level (observations along one axis), and a robustness
difference needs two independent example resamples (two test sets) plus seeds paired across them (seed j of
the general and the shifted cell share the intermediate model). With one seed and accuracy our interval is
scipy's paired percentile bootstrap; tests/test_stats.py checks that the two agree.

Random streams are seeded from the cell id and language (`stream_seed`), never from global state, so a
cell's intervals are the same alone, under xdist and in any order.

The change test between runs (harness.results.change) and the moderated seed variance
(harness.results.moderation) read their intervals and verdicts with this module's LEVEL and `verdict`, so that
an interval, its p-value and the baseline check's change test cannot drift apart.
"""
from __future__ import annotations

import hashlib
from typing import NamedTuple

import numpy as np

from harness.definitions.metrics import FUNCTIONS, pearson

N_BOOT = 2000
LEVEL = 0.95


class Arms(NamedTuple):
    """One test set of a cell: targets (n,) and each arm's predictions (seeds, n), seeds in the same order."""
    y_true: np.ndarray
    direct: np.ndarray
    intermediate: np.ndarray


def arms(y_true, direct, intermediate) -> Arms:
    """Arms from a target array and per-seed predictions (a list of arrays or one (seeds, n) array)."""
    y_true = np.asarray(y_true)
    direct, intermediate = np.atleast_2d(np.asarray(direct)), np.atleast_2d(np.asarray(intermediate))
    if direct.shape != intermediate.shape or direct.shape[1:] != y_true.shape:
        raise ValueError(f"predictions {direct.shape} / {intermediate.shape} do not match targets {y_true.shape}")
    return Arms(y_true, direct, intermediate)


def verdict(ci_low: float, ci_high: float, margin: float = 0.0) -> str:
    """The verdict of a 95% interval: `positive` / `negative` when it excludes 0, `equivalent` when it lies inside
    (-margin, +margin), else `inconclusive`."""
    if ci_low > 0:
        return "positive"
    if ci_high < 0:
        return "negative"
    return "equivalent" if -margin < ci_low and ci_high < margin else "inconclusive"


def stream_seed(*parts: str) -> int:
    """A bootstrap seed fixed by its parts (e.g. cell id and language), the same in every process."""
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:8], "little")


def resampled_ranks(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average ranks (scipy's rankdata) of each resample values[idx[r]], without sorting every resample.

    One sort of `values`; then a resampled element's rank is the number of resampled elements below its
    value plus half the tied ones (+1/2), counted per distinct value. O(b n) instead of O(b n log n).
    """
    distinct, group = np.unique(values, return_inverse=True)
    b, g = len(idx), len(distinct)
    counts = np.bincount((group[idx] + g * np.arange(b)[:, None]).ravel(), minlength=b * g).reshape(b, g)
    below = np.cumsum(counts, axis=1) - counts
    return np.take_along_axis(below + (counts + 1) / 2, group[idx], axis=1)


def _scorer(metric: str, y_true: np.ndarray, idx: np.ndarray | None):
    """prediction -> metric against y_true, on the original examples (idx None) or on each resample idx (b, n)."""
    if idx is None:
        return lambda pred: FUNCTIONS[metric](y_true, pred)
    if metric == "spearman":  # Pearson of ranks; the targets' ranks are shared by every arm and seed
        y_ranks = resampled_ranks(y_true, idx)
        return lambda pred: pearson(y_ranks, resampled_ranks(pred, idx))
    y = y_true[idx]
    return lambda pred: FUNCTIONS[metric](y, pred[idx])


def seed_gains(data: Arms, metric: str, idx: np.ndarray | None = None) -> np.ndarray:
    """metric(intermediate) - metric(direct) per seed: shape (seeds,), or (seeds, b) on example resamples idx (b, n)."""
    score = _scorer(metric, data.y_true, idx)
    return np.array([score(i) - score(d) for d, i in zip(data.direct, data.intermediate)])


def _example_resample(data: Arms, metric: str, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Per-seed gains (seeds, n_boot) on resamples of the test examples, one index set for arms and seeds."""
    n = len(data.y_true)
    return seed_gains(data, metric, rng.integers(0, n, size=(n_boot, n)))


def _replicates(per_seed: np.ndarray, resampled: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replicates of the mean gain over seeds: the example bootstrap of the seed mean, plus t(k-1) * s / sqrt(k).

    per_seed (k,) holds the seeds' gains, resampled (k, b) the same on b example resamples. s, the spread of
    the per-seed gains, also holds example-by-seed noise that the example bootstrap carries already, so the
    interval errs wide when seeds agree; estimating and removing that share (variance components) made the
    seed term too noisy with three seeds and the intervals too narrow (inconclusive 91% under no difference).
    """
    mean = resampled.mean(axis=0)
    k, b = resampled.shape
    if k < 2:
        return mean
    return mean + rng.standard_t(k - 1, size=b) * per_seed.std(ddof=1) / np.sqrt(k)


def interval(samples: np.ndarray, point: float, level: float = LEVEL, margin: float = 0.0) -> dict:
    low, high = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(point), "ci_low": float(low), "ci_high": float(high),
            "verdict": verdict(low, high, margin)}


def p_value(samples: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'the quantity is zero': twice the smaller tail of the replicates beyond
    zero, counted as (m + 1) / (b + 1) so that it is never 0. Below 1 - LEVEL exactly when the percentile
    interval excludes zero (up to the interpolation of the percentiles)."""
    tail = min(np.sum(samples <= 0), np.sum(samples >= 0))
    return float(min(1.0, 2 * (tail + 1) / (len(samples) + 1)))


FDR = 0.05


def q_values(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: a verdict with q < 0.05 belongs to a set of verdicts of which at
    most 5% are expected to be false discoveries."""
    p = np.asarray(p_values, dtype=float)
    from scipy import stats as sps

    return sps.false_discovery_control(p, method="bh") if p.size else p


def gain(data: Arms, metric: str, seed: int, n_boot: int = N_BOOT, level: float = LEVEL, margin: float = 0.0) -> dict:
    """Gain of the intermediate arm over the direct arm on one test set: mean over seeds, interval, verdict,
    and what a comparison with another run needs (`change`): the per-seed gains, the bootstrap standard error
    of the seed mean over test-set resamples (`se_boot`), each seed's own (`se_seeds`: what the summary's rule
    separates the test-set noise the seeds share from, moderation.shared_se) and the bootstrap p-value."""
    rng = np.random.default_rng(seed)
    per_seed = seed_gains(data, metric)
    resampled = _example_resample(data, metric, rng, n_boot)
    replicates = _replicates(per_seed, resampled, rng)
    out = interval(replicates, per_seed.mean(), level, margin)
    out.update(per_seed=per_seed.tolist(), se_boot=float(resampled.mean(axis=0).std(ddof=1)),
               se_seeds=resampled.std(axis=1, ddof=1).tolist(), p_value=p_value(replicates))
    return out


def metric_se(y_true, pred: np.ndarray, metric: str, seed: int, n_boot: int = N_BOOT) -> float:
    """Bootstrap standard error, over test-set resamples, of one arm's metric averaged over seeds (pred: (seeds, n))."""
    y_true, pred = np.asarray(y_true), np.atleast_2d(np.asarray(pred))
    idx = np.random.default_rng(seed).integers(0, len(y_true), size=(n_boot, len(y_true)))
    score = _scorer(metric, y_true, idx)
    return float(np.mean([score(p) for p in pred], axis=0).std(ddof=1))


def robustness(general: Arms, shifted: Arms, metric: str, seed: int, n_boot: int = N_BOOT,
               level: float = LEVEL) -> dict:
    """gain(shifted domain) - gain(general) for the same model, task, language and seeds.

    The two test sets are independent, so each is resampled on its own; seed j of both cells shares the
    intermediate model and the initialisation, so the seed term reads the spread of the paired differences.
    """
    if general.direct.shape[0] != shifted.direct.shape[0]:
        raise ValueError(f"general has {general.direct.shape[0]} seeds, shifted {shifted.direct.shape[0]}")
    rng = np.random.default_rng(seed)
    per_seed = seed_gains(shifted, metric) - seed_gains(general, metric)
    resampled = _example_resample(shifted, metric, rng, n_boot) - _example_resample(general, metric, rng, n_boot)
    return interval(_replicates(per_seed, resampled, rng), per_seed.mean(), level)
