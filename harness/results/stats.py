"""Transfer gains and domain-robustness differences with 95% confidence intervals, and their verdicts.

A gain is the mean over seeds of metric(intermediate) - metric(direct) on one test set. Its interval accounts
for the two sources of noise a reader cares about:
- test-set sampling, by a paired bootstrap: the test examples are resampled with replacement and the same
  resampled indices score both arms and every seed, so the arms are compared on the same examples;
- seed variance, by a Student-t term: each replicate adds t(k-1) * s / sqrt(k), s the spread of the k
  per-seed gains. Resampling k = 3 seeds instead (a nested bootstrap) cannot see its own tails: in
  simulations like those of tests/test_stats.py (256 examples, 3 seeds) it called 16-20% of no-difference
  cases non-neutral once seed noise dominated; with the t term it was 5.1%. With one seed the interval
  covers test-set sampling only, that is, it is conditional on the two trained models.
The interval is the percentile interval of the replicates. The verdict reads it: above zero `positive`,
below zero `negative`, otherwise `neutral`.

Why not scipy.stats.bootstrap: it resamples one level (observations along one axis), and a robustness
difference needs two independent example resamples (two test sets) plus seeds paired across them (seed j of
the general and the shifted cell share the intermediate model). With one seed and accuracy our interval is
scipy's paired percentile bootstrap; tests/test_stats.py checks that the two agree.

Random streams are seeded from the cell id and language (`stream_seed`), never from global state, so a
cell's intervals are the same alone, under xdist and in any order.

Changes between two runs (the baseline check, `python -m harness compare`): `change` tests new - old of two
estimates, each a seed mean with its per-seed values and the bootstrap standard error of its test-set
sampling; `detectable` is the smallest change that test catches with 80% power; `q_values` controls the false
discovery rate across the gains of a run.

Length (over the ~350 lines of the other modules): the bootstrap, the change test and the moderated seed
variance share their interval, degrees of freedom and p-value conventions; kept in one module so that an
interval, its p-value and the baseline check's change test cannot drift apart.
"""
from __future__ import annotations

import functools
import hashlib
from typing import NamedTuple

import numpy as np
from scipy import special as sps_special
from scipy import stats as sps

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


def verdict(ci_low: float, ci_high: float) -> str:
    return "positive" if ci_low > 0 else "negative" if ci_high < 0 else "neutral"


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
    seed term too noisy with three seeds and the intervals too narrow (neutral 91% under no difference).
    """
    mean = resampled.mean(axis=0)
    k, b = resampled.shape
    if k < 2:
        return mean
    return mean + rng.standard_t(k - 1, size=b) * per_seed.std(ddof=1) / np.sqrt(k)


def interval(samples: np.ndarray, point: float, level: float = LEVEL) -> dict:
    low, high = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(point), "ci_low": float(low), "ci_high": float(high), "verdict": verdict(low, high)}


def p_value(samples: np.ndarray) -> float:
    """Two-sided bootstrap p-value of 'the quantity is zero': twice the smaller tail of the replicates beyond
    zero, counted as (m + 1) / (b + 1) so that it is never 0. Below 1 - LEVEL exactly when the percentile
    interval excludes zero (up to the interpolation of the percentiles)."""
    tail = min(np.sum(samples <= 0), np.sum(samples >= 0))
    return float(min(1.0, 2 * (tail + 1) / (len(samples) + 1)))


def gain(data: Arms, metric: str, seed: int, n_boot: int = N_BOOT, level: float = LEVEL) -> dict:
    """Gain of the intermediate arm over the direct arm on one test set: mean over seeds, interval, verdict,
    and what a comparison with another run needs (`change`): the per-seed gains, the bootstrap standard error
    of the seed mean over test-set resamples (`se_boot`) and the bootstrap p-value."""
    rng = np.random.default_rng(seed)
    per_seed = seed_gains(data, metric)
    resampled = _example_resample(data, metric, rng, n_boot)
    replicates = _replicates(per_seed, resampled, rng)
    out = interval(replicates, per_seed.mean(), level)
    out.update(per_seed=per_seed.tolist(), se_boot=float(resampled.mean(axis=0).std(ddof=1)),
               p_value=p_value(replicates))
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


# ---------------------------------------------------------------- changes between runs

POWER = 0.8


def _variance(estimate: dict, prior: tuple[float, float] | None = None) -> list[tuple[float, float]]:
    """(variance, degrees of freedom) of a seed mean: test-set sampling (bootstrap, taken as known) and, with
    two or more seeds, seed variance s^2 / k on k - 1 degrees of freedom, or with a `prior` (d0, s0^2) the
    moderated variance on d0 + k - 1 (moderated_variance)."""
    terms = [(float(estimate["se_boot"]) ** 2, np.inf)]
    k = len(estimate["per_seed"])
    if k > 1:
        s2, df = float(np.var(estimate["per_seed"], ddof=1)), k - 1
        if prior is not None:
            s2, df = moderated_variance(s2, df, *prior)
        terms.append((s2 / k, df))
    return terms


def _se_df(terms: list[tuple[float, float]]) -> tuple[float, float]:
    """Standard error of a sum of independent terms and its Welch-Satterthwaite degrees of freedom."""
    total = sum(v for v, _ in terms)
    weight = sum(v * v / df for v, df in terms if np.isfinite(df))
    return float(np.sqrt(total)), float(total * total / weight) if weight > 0 else np.inf


def change(old: dict, new: dict, level: float = LEVEL, prior: tuple[float, float] | None = None) -> dict:
    """new - old of two estimates (each `mean`, `per_seed`, `se_boot`) with a `level` interval and p-value;
    with a seed-variance `prior` (d0, s0^2) both runs' seed variances are moderated by it.

    The runs are taken as independent: the variance of the difference is the sum of both runs' seed variance
    of the mean (s^2 / k) and test-set sampling (se_boot^2), and the interval is Welch's t with
    Satterthwaite's degrees of freedom. Two runs scored on the same test set share its sampling, so counting
    it twice errs wide: under no change the test fails less often than 1 - level (tests/test_change.py).
    """
    se, df = _se_df(_variance(old, prior) + _variance(new, prior))
    diff = float(new["mean"]) - float(old["mean"])
    if se == 0:  # both runs without any spread: only an exact repeat is no change
        return {"change": diff, "ci_low": diff, "ci_high": diff, "se": 0.0, "df": df, "level": level,
                "p_value": 1.0 if diff == 0 else 0.0, "significant": diff != 0}
    crit = float(sps.t.ppf(0.5 + level / 2, df))
    p = float(2 * sps.t.sf(abs(diff) / se, df))
    return {"change": diff, "ci_low": diff - crit * se, "ci_high": diff + crit * se, "se": se, "df": df, "level": level,
            "p_value": p, "significant": p < 1 - level}


def detectable(estimate: dict, level: float = LEVEL, power: float = POWER) -> float:
    """Minimum detectable change: the smallest true change of this estimate that `change` finds with
    probability `power`, when the other run is as noisy as this one: (t_{(1+level)/2} + t_power) * se of the
    difference (the normal approximation of the power of a t test, on Satterthwaite's degrees of freedom)."""
    se, df = _se_df(_variance(estimate) * 2)
    return float((sps.t.ppf(0.5 + level / 2, df) + sps.t.ppf(power, df)) * se)


def q_values(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: a verdict with q < 0.05 belongs to a set of verdicts of which at
    most 5% are expected to be false discoveries."""
    p = np.asarray(p_values, dtype=float)
    return sps.false_discovery_control(p, method="bh") if p.size else p


# ---------------------------------------------------------------- moderated seed variance (limma's moderated t)

def fit_prior(variances, df, clusters=None) -> tuple[float, float]:
    """(d0, s0^2) of a scaled inverse chi-square prior for the true seed variances behind sample variances
    `variances` on `df` degrees of freedom each: limma's fitFDist (Smyth 2004, section 6.2), the method of
    moments on log variances. d0 is inf when the variances vary no more than sampling alone makes them (every
    gain then takes s0^2). Needs at least two variances.

    `clusters` (one label per variance): variances that share their seeds' models, such as a cell's languages,
    are correlated, and the plain sample variance of their logs then underestimates how much they vary (d0 too
    large, intervals too short: 5.6-6.2% false positives per gain in tests/test_moderated_simulation.py). With
    clusters the variance of the logs is the random-effects (one-way ANOVA) estimate, unbiased under that
    correlation: MSW + (MSB - MSW) / m, m the mean cluster size."""
    s2, d = np.asarray(variances, dtype=float), np.broadcast_to(np.asarray(df, dtype=float), np.shape(variances))
    if s2.size < 2:
        raise ValueError("a prior needs the variances of two gains or more")
    floor = 1e-5 * np.median(s2) if np.median(s2) > 0 else 1e-12  # limma's guard against zero variances
    e = np.log(np.maximum(s2, floor)) - sps_special.digamma(d / 2) + np.log(d / 2)
    emean = float(np.mean(e))
    evar = float(_log_variance(e, clusters) - np.mean(sps_special.polygamma(1, d / 2)))
    if evar <= 0:
        return np.inf, float(np.exp(emean))
    d0 = 2 * _trigamma_inverse(evar)
    return float(d0), float(np.exp(emean + sps_special.digamma(d0 / 2) - np.log(d0 / 2)))


def _log_variance(e: np.ndarray, clusters) -> float:
    """The marginal variance of `e`, clusters of correlated values taken into account (see fit_prior)."""
    if clusters is None:
        return float(np.var(e, ddof=1))
    labels, group = np.unique(np.asarray(clusters), return_inverse=True)
    sizes = np.bincount(group)
    if len(labels) < 2 or len(labels) == len(e):
        return float(np.var(e, ddof=1))
    means = np.bincount(group, weights=e) / sizes
    msw = float(np.sum((e - means[group]) ** 2) / (len(e) - len(labels)))
    msb = float(np.sum(sizes * (means - e.mean()) ** 2) / (len(labels) - 1))
    m = (len(e) - np.sum(sizes**2) / len(e)) / (len(labels) - 1)  # the ANOVA's mean cluster size
    return msw + max(msb - msw, 0.0) / m


def _trigamma_inverse(y: float) -> float:
    """x with trigamma(x) = y (limma's trigammaInverse: Newton's method on 1 / trigamma)."""
    if y > 1e7:
        return 1 / np.sqrt(y)
    if y < 1e-6:
        return 1 / y
    x = 0.5 + 1 / y
    for _ in range(50):
        tri = float(sps_special.polygamma(1, x))
        step = tri * (1 - tri / y) / float(sps_special.polygamma(2, x))
        x += step
        if -step / x < 1e-8:
            break
    return float(x)


def moderated_variance(s2: float, df: float, d0: float, s02: float) -> tuple[float, float]:
    """(posterior seed variance, its degrees of freedom d0 + df): the sample variance shrunk towards s0^2."""
    if not np.isfinite(d0):
        return float(s02), np.inf
    return float((d0 * s02 + df * s2) / (d0 + df)), float(d0 + df)


# Gauss-Legendre nodes on (0, 1) for the chi-square mixing variable of a t (quantile scale, clustered at 0 by
# u = w^4 so that the heavy tails, which come from small chi-square values, are resolved down to p ~ 1e-12)
_W, _WW = np.polynomial.legendre.leggauss(200)
_W, _WW = (_W + 1) / 2, _WW / 2
_U, _UW = _W**4, 4 * _W**3 * _WW


@functools.lru_cache(maxsize=256)
def _chi2_nodes(df: float) -> np.ndarray:
    return np.maximum(sps.chi2.ppf(_U, df), 1e-300)


def _spread(se: float, scale: float, df: float) -> tuple[np.ndarray, np.ndarray]:
    """Standard deviations of N(0, se^2) + scale * t_df conditional on the t's chi-square at the quadrature
    nodes, and the nodes' weights."""
    if scale == 0 or not np.isfinite(df):
        return np.array([np.hypot(se, scale)]), np.ones(1)
    return np.sqrt(se**2 + scale**2 * df / _chi2_nodes(float(df))), _UW


def _sf(x: np.ndarray, sd: np.ndarray, weights: np.ndarray) -> np.ndarray:
    if sd.max() == 0:
        return (x < 0).astype(float)
    return sps.norm.sf(x[:, None] / np.maximum(sd, 1e-300)[None, :]) @ weights


def mixture_sf(x, se: float, scale: float, df: float) -> np.ndarray:
    """P(N(0, se^2) + scale * T > x), T ~ t_df: the distribution of the gain's replicates (test-set sampling, taken
    normal with the bootstrap standard error, plus the seed term), integrated exactly rather than counted from
    replicates. A t is a normal whose variance is df / chi2_df, so conditional on the chi-square the sum is normal."""
    return _sf(np.atleast_1d(np.asarray(x, dtype=float)), *_spread(se, scale, df))


def mixture_p(mean: float, se: float, scale: float, df: float) -> float:
    """Two-sided p-value of 'the gain is zero' under the mixture: twice its tail beyond zero. Not floored by a
    replicate count; below 1 - LEVEL exactly when the mixture's equal-tailed interval excludes zero (the mixture
    is symmetric about the mean)."""
    if se == 0 and scale == 0:
        return 1.0 if mean == 0 else 0.0
    return float(min(1.0, 2 * mixture_sf(abs(mean), se, scale, df)[0]))


def mixture_quantile(q: float, se: float, scale: float, df: float) -> float:
    """The q-quantile of N(0, se^2) + scale * t_df (Brent's method on mixture_sf; symmetric, so only q >= 1/2)."""
    from scipy.optimize import brentq

    if q < 0.5:
        return -mixture_quantile(1 - q, se, scale, df)
    if se == 0 and scale == 0:
        return 0.0
    nodes = _spread(se, scale, df)
    tail = lambda x: float(_sf(np.array([x]), *nodes)[0]) - (1 - q)  # noqa: E731
    high = max(se, scale) * 4
    while tail(high) > 0:
        high *= 2
    return float(brentq(tail, 0.0, high, xtol=1e-12, rtol=1e-12))


def moderated_gain(gain: dict, d0: float, s02: float, level: float = LEVEL) -> dict:
    """A recorded gain (`mean`, `per_seed`, `se_boot`) re-read with the moderated seed variance: its interval is
    that of mean + N(0, se_boot^2) + t_{d0+k-1} * s~ / sqrt(k), s~^2 the seed variance shrunk towards the run's
    prior s0^2; `p_value` is the same distribution's, so p < 1 - level exactly when the verdict is not neutral."""
    k, mean, se = len(gain["per_seed"]), float(gain["mean"]), float(gain["se_boot"])
    s2, df = moderated_variance(float(np.var(gain["per_seed"], ddof=1)), k - 1, d0, s02)
    scale = float(np.sqrt(s2 / k))
    half = mixture_quantile(0.5 + level / 2, se, scale, df)
    low, high = mean - half, mean + half
    return {"mean": mean, "ci_low": low, "ci_high": high, "verdict": verdict(low, high),
            "p_value": mixture_p(mean, se, scale, df), "seed_sd": float(np.sqrt(s2)), "df": df}


MAX_SEEDS = 50


def seeds_needed(effect: float, se_boot: float, seed_var: float, df_prior: float, level: float = LEVEL,
                 power: float = POWER, most: int = MAX_SEEDS) -> int | None:
    """The fewest seeds (2..most) with which a true gain of size `effect` is called non-neutral with probability
    `power`: (t_{(1+level)/2} + t_power) * se <= |effect|, se^2 = se_boot^2 + seed_var / k on Satterthwaite's
    degrees of freedom (seed term: df_prior + k - 1; the test-set term does not shrink with seeds). None when
    even `most` seeds do not reach it (the test set's own sampling error is too large for that effect)."""
    k = np.arange(2, most + 1)
    seed, df_seed = seed_var / k, df_prior + k - 1.0
    total = se_boot**2 + seed
    se = np.sqrt(total)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(seed > 0, total**2 / (seed**2 / df_seed), np.inf)  # Welch-Satterthwaite, as _se_df
    reach = (se == 0) | ((sps.t.ppf(0.5 + level / 2, df) + sps.t.ppf(power, df)) * se <= abs(effect))
    return int(k[np.argmax(reach)]) if reach.any() else None


MIN_CELLS = 3  # cells (of one task and metric) with a seed spread that a prior is fitted from
# The prior counts as at most D0_MAX degrees of freedom (twice a 3-seed gain's own). Fitted from 27 gains of
# 2 df each, d0 is often estimated far too large (infinite when the spread of the variances is within sampling
# noise), and a gain whose true seed variance is above the pooled one then gets too short an interval: per-gain
# false positives under no effect in tests/test_moderated_simulation.py were 5.7% uncapped, 5.4% capped at 16,
# 5.2% at 8 and 4.6% at 4.
D0_MAX = 4.0


def group_of(task: str, metric: str) -> str:
    """The gains that share a seed-variance prior: one task type and main metric (their seed noise differs)."""
    return f"{task} ({metric})"


def fit_priors(gains) -> dict[str, dict]:
    """{group: {d0, s0, d0_fitted, gains, cells}} from (group, cell id, per-seed gains) triples, for each group
    with two or more seeds in at least MIN_CELLS cells; d0 is the fitted one capped at D0_MAX (d0_fitted: None
    when infinite). The triples' order does not matter (they are sorted first)."""
    by_group: dict[str, list] = {}
    for group, cell, per_seed in sorted(gains, key=lambda g: (g[0], g[1], list(g[2]))):
        if len(per_seed) > 1:
            by_group.setdefault(group, []).append((cell, per_seed))
    out = {}
    for group, items in sorted(by_group.items()):
        cells = sorted({c for c, _ in items})
        if len(cells) < MIN_CELLS:
            continue
        d0, s02 = fit_prior([np.var(p, ddof=1) for _, p in items], [len(p) - 1 for _, p in items],
                            [c for c, _ in items])
        out[group] = {"d0": float(min(d0, D0_MAX)), "d0_fitted": float(d0) if np.isfinite(d0) else None,
                      "s0": float(np.sqrt(s02)), "gains": len(items), "cells": len(cells)}
    return out


def prior_d0(prior: dict) -> float:
    """d0 of a fitted prior (stored as None when infinite, as JSON has no inf)."""
    return np.inf if prior["d0"] is None else float(prior["d0"])
