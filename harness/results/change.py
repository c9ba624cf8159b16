"""Changes between two runs (the baseline check, `python -m harness compare`): `change` tests new - old of two
estimates, each a seed mean with its per-seed values and the bootstrap standard error of its test-set
sampling; `detectable` is the smallest change that test catches with 80% power, and `seeds_needed` the fewest
seeds with which a gain of a given size is called with that power. A cell's comparisons share one Bonferroni
level (`cell_level`), and `cell_detectable` is a gain's minimum detectable change at that level (the record's
`mdc`). `gain_detectable` is another quantity: the smallest true gain a verdict's own test calls with 80% power
(the summary's MDC column, harness.results.significance).
"""
from __future__ import annotations

import numpy as np
from scipy import stats as sps

from harness.definitions.grid import ARMS
from harness.results.bootstrap import LEVEL
from harness.results.moderation import moderated_variance

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


ALPHA = 0.05  # chance that a cell with no change fails (all its comparisons together)


def cell_level(languages: int) -> float:
    """The interval level of each comparison of a cell with this many languages (Bonferroni)."""
    return 1 - ALPHA / (len(ARMS) + 1) / languages


def cell_detectable(gain: dict, languages: int) -> float:
    """Minimum detectable change of a gain in a cell with this many languages (`detectable` at `cell_level`)."""
    return detectable(gain, cell_level(languages))


MAX_SEEDS = 50


def _detectable_at(k: np.ndarray, se_boot: float, seed_var: float, df_prior: float, level: float,
                   power: float) -> np.ndarray:
    """(t_{(1+level)/2} + t_power) * se at k seeds, se^2 = se_boot^2 + seed_var / k on Satterthwaite's degrees of
    freedom (seed term: df_prior + k - 1; the test-set term is taken as known)."""
    seed, df_seed = seed_var / k, df_prior + k - 1.0
    total = se_boot**2 + seed
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(seed > 0, total**2 / (seed**2 / df_seed), np.inf)  # Welch-Satterthwaite, as _se_df
    return (sps.t.ppf(0.5 + level / 2, df) + sps.t.ppf(power, df)) * np.sqrt(total)


def seeds_needed(effect: float, se_boot: float, seed_var: float, df_prior: float, level: float = LEVEL,
                 power: float = POWER, most: int = MAX_SEEDS) -> int | None:
    """The fewest seeds (2..most) with which a true gain of size `effect` is called positive or negative with probability
    `power`: (t_{(1+level)/2} + t_power) * se <= |effect|, se^2 = se_boot^2 + seed_var / k on Satterthwaite's
    degrees of freedom (seed term: df_prior + k - 1; the test-set term does not shrink with seeds). None when
    even `most` seeds do not reach it (the test set's own sampling error is too large for that effect)."""
    k = np.arange(2, most + 1)
    reach = _detectable_at(k.astype(float), se_boot, seed_var, df_prior, level, power) <= abs(effect)
    return int(k[np.argmax(reach)]) if reach.any() else None


def gain_detectable(se_boot: float, seed_var: float, df_prior: float, seeds: int, level: float = LEVEL,
                    power: float = POWER) -> float:
    """Minimum detectable gain: the smallest true gain that a verdict's test at `level` calls positive (or
    negative) with probability `power` at `seeds` seeds, (t_{(1+level)/2} + t_power) * se with se and degrees of
    freedom as in seeds_needed (so seeds_needed(gain_detectable(..., k), ...) is k). Pass the rule's terms: the
    moderated seed variance, df_prior d0 and the shared test-set SE (harness.results.moderation.shared_se), or the
    sample seed variance, 0 and se_boot (seed-t); seed_var 0 with one seed (test-set sampling only)."""
    return float(_detectable_at(np.array([float(seeds)]), se_boot, seed_var, df_prior, level, power)[0])
