"""Seeds until decided (`--seeds auto:MAX`): a cell looks at its target-language gain after its first seeds and
after each further round (`looks`), and stops once the gain is decided. Looking repeatedly at 95% would call
more than 5% of no-effect gains decided, so each look reads the gain at a stricter level (`levels`): a
group-sequential design, its two-sided z boundaries (`boundaries`) spending the 5% over the looks by Lan and
DeMets' O'Brien-Fleming-type function (`spending`), and the look's verdict (`decide`) is the moderated rule's
interval at that level. tests/test_sequential.py measures the error rate, power and seeds used by simulation.
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import optimize as sps_optimize
from scipy import stats as sps

from harness.results.bootstrap import verdict
from harness.results.change import seeds_needed
from harness.results.moderation import mixture_p, mixture_quantile, moderated_gain, shared_se

ALPHA = 0.05  # the per-gain false-positive rate over all looks together
DECIDED = ("positive", "negative", "equivalent")  # the verdicts that stop a cell
_NODES = 301  # Gauss-Legendre nodes per look for the continuation densities
_X, _W = np.polynomial.legendre.leggauss(_NODES)


def looks(initial: int, most: int) -> list[int]:
    """The seed counts at which a cell looks: initial, 2 initial, 3 initial, ... and last `most`. A look after
    which fewer than `initial` seeds would remain is dropped (the last round takes them), except the first,
    which the cell's initial seeds make anyway: looks(3, 10) == [3, 6, 10], looks(3, 4) == [3, 4]."""
    if initial < 1 or most < initial:
        raise ValueError(f"--seeds auto:MAX needs MAX >= the initial seeds (at least 1): {initial} initial, MAX {most}")
    planned = [n for n in range(initial, most, initial) if n == initial or most - n >= initial]
    return planned + [most]


def spending(t: float, alpha: float = ALPHA) -> float:
    """Lan-DeMets O'Brien-Fleming-type two-sided alpha spending: 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)), the share of
    `alpha` spent by information fraction t in (0, 1] (alpha itself at t = 1; almost none early)."""
    if not 0 < t <= 1:
        raise ValueError(f"an information fraction is in (0, 1], got {t}")
    return float(2 * sps.norm.sf(sps.norm.isf(alpha / 2) / np.sqrt(t)))


def boundaries(fractions, alpha: float = ALPHA, spend=spending) -> list[float]:
    """Two-sided symmetric z boundaries c_1..c_K of looks at information fractions `fractions` (increasing, the
    last 1): under no effect, P(|Z_1| < c_1, ..., |Z_{k-1}| < c_{k-1}, |Z_k| >= c_k) = spend(t_k) - spend(t_{k-1}),
    Z_k the z statistics of Brownian motion on the information scale, corr(Z_i, Z_j) = sqrt(t_i / t_j).

    Computed exactly, one look after another, by recursive numerical integration of the density of the score
    S_k = Z_k sqrt(t_k) over the continuation region (Armitage, McPherson and Rowe 1969; Jennison and Turnbull
    2000, ch. 19; Gauss-Legendre nodes, each look's crossing found by Brent's method): deterministic; it gives
    gsDesign's published bounds to their 4 decimals. `spend(t, alpha)` is the cumulative spending function (default `spending`)."""
    t = np.asarray(fractions, dtype=float)
    if t.size == 0 or t[0] <= 0 or np.any(np.diff(t) <= 0) or abs(t[-1] - 1) > 1e-9:
        raise ValueError(f"information fractions must increase strictly in (0, 1] and end at 1, got {list(t)}")
    spent, previous, out = 0.0, 0.0, []
    nodes = mass = None  # the continuation region's nodes and density x weight of S_{k-1}
    for tk in t:
        target, spent = max(spend(tk, alpha) - spent, 0.0), spend(tk, alpha)
        sd = np.sqrt(tk - previous)
        if target <= 0:
            c = np.inf
        elif nodes is None:
            c = float(sps.norm.isf(target / 2))
        else:
            c = float(sps_optimize.brentq(_excess, 0.0, 40.0, args=(np.sqrt(tk), nodes, mass, sd, target), xtol=1e-12))
        out.append(c)
        half = min(c, 12.0) * np.sqrt(tk)  # beyond 12 sd the density is below 1e-32
        new = half * _X
        if nodes is None:
            density = sps.norm.pdf(new / sd) / sd
        else:
            density = sps.norm.pdf((new[:, None] - nodes[None, :]) / sd) @ mass / sd
        nodes, mass, previous = new, density * half * _W, tk
    return out


def _excess(c: float, root_t: float, nodes: np.ndarray, mass: np.ndarray, sd: float, target: float) -> float:
    """P(not stopped before, |Z_k| >= c) - target: S_k = S_{k-1} + N(0, sd^2), S_{k-1} at `nodes` with `mass`."""
    b = c * root_t
    return float(mass @ (sps.norm.sf((b - nodes) / sd) + sps.norm.cdf((-b - nodes) / sd))) - target


@functools.lru_cache(maxsize=64)
def _levels(initial: int, most: int, alpha: float) -> tuple[tuple[int, float], ...]:
    planned = looks(initial, most)
    bounds = boundaries([n / most for n in planned], alpha)
    return tuple((n, float(1 - 2 * sps.norm.sf(c))) for n, c in zip(planned, bounds))


def levels(initial: int, most: int, alpha: float = ALPHA) -> list[tuple[int, float]]:
    """(seeds, two-sided interval level 1 - 2 (1 - Phi(c_k))) of each planned look (`looks`), the boundaries at
    information fractions n_k / most. Information is counted in seeds, as if a gain's variance shrank as 1 / n:
    the test-set noise the seeds share does not shrink with more seeds, so a gain's true information fraction at an
    early look, (c^2 + s^2 / most) / (c^2 + s^2 / n_k) for shared test-set SE c and seed sd s, is larger than
    n_k / most, and the looks are more correlated than the design assumes. That errs conservative: auto:10 from 3 seeds
    gave 4.5-4.6% false positives per gain whichever noise dominated (tests/test_sequential.py)."""
    return list(_levels(int(initial), int(most), float(alpha)))


def decide(gain: dict, level: float) -> dict:
    """A look's reading of a recorded gain (`mean`, `per_seed`, `se_boot`, optional `se_seeds` and `margin`): its
    `level` interval, verdict and p-value by the moderated rule with no prior (moderated_gain with d0 = 0: the
    gain's own seed variance on k - 1 degrees of freedom, the test-set noise the seeds share counted once). With
    one seed (no spread to read) the interval is mean +- z * se_boot, test-set sampling only."""
    k, mean = len(gain["per_seed"]), float(gain["mean"])
    if k >= 2:
        read = moderated_gain(gain, 0.0, 0.0, level)
        low, high, p = read["ci_low"], read["ci_high"], read["p_value"]
    else:
        se = float(gain["se_boot"])
        half = mixture_quantile(0.5 + level / 2, se, 0.0, np.inf)
        low, high, p = mean - half, mean + half, mixture_p(mean, se, 0.0, np.inf)
    return {"seeds": k, "level": level, "mean": mean, "ci_low": low, "ci_high": high,
            "verdict": verdict(low, high, gain.get("margin", 0.0)), "p_value": p}
RULE = "Lan-DeMets O'Brien-Fleming alpha spending over looks at the planned seeds; futility stop"
POWER = 0.8


def futile(gain: dict, most: int) -> bool:
    """Whether even `most` seeds could not decide the gain, so that more rounds would spend compute for no verdict:
    a gain as large as the far edge of the look's 95% interval (the largest gain the seeds so far leave plausible)
    would still be called positive or negative with less than 80% power at `most` seeds
    (harness.results.change.seeds_needed with the shared test-set SE and the seeds' own variance), and an interval
    of `most` seeds around the gain would still reach beyond +-margin (no `equivalent` either). What stops such a
    cell is the test-set noise the seeds share, which more seeds do not shrink (a 20-pair test set, say). Stopping
    for futility only ends a cell without a verdict, so it never adds a false positive.

    Read at the observed gain instead of the interval's edge, the rule stopped most cells at their first look and
    cost 13-40 points of power at a true gain of 0.05 (tests/test_sequential.py)."""
    k, mean = len(gain["per_seed"]), abs(float(gain["mean"]))
    if k < 2:
        return False
    read = decide(gain, 1 - ALPHA)
    edge = max(abs(read["ci_low"]), abs(read["ci_high"]))
    c, var = shared_se(gain), float(np.var(gain["per_seed"], ddof=1))
    needed = seeds_needed(edge, c, var, 0.0, power=POWER, most=most)
    half = sps.norm.isf(ALPHA / 2) * np.sqrt(c**2 + var / most)
    return bool((needed is None or needed > most) and mean + half >= float(gain.get("margin", 0.0)))
