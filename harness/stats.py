"""Transfer gains with confidence intervals, and verdicts.

The interval of a gain combines the two sources of noise a reader cares about: which test examples were
drawn (a paired bootstrap: both arms are scored on the same resampled examples) and which seeds were run
(seeds are resampled too, a two-level bootstrap). The verdict reads the 95% interval: above zero `positive`,
below zero `negative`, otherwise `neutral`.
"""
from __future__ import annotations

import numpy as np

from harness.metrics import FUNCTIONS

N_BOOT = 1000
VERDICTS = ("positive", "negative", "neutral")


def verdict(ci_low: float, ci_high: float) -> str:
    return "positive" if ci_low > 0 else "negative" if ci_high < 0 else "neutral"


def bootstrap_gains(y_true, direct, intermediate, metric: str, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """n_boot bootstrap replicates of mean-over-seeds metric(intermediate) - metric(direct).

    `direct` and `intermediate` are lists (one per seed) of predictions aligned with `y_true`.
    """
    fn = FUNCTIONS[metric]
    y_true = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n_boot, len(y_true)))
    diffs = np.stack([fn(y_true[idx], np.asarray(i)[idx]) - fn(y_true[idx], np.asarray(d)[idx])
                      for d, i in zip(direct, intermediate)])  # (seeds, n_boot)
    seeds = rng.integers(0, len(diffs), size=(n_boot, len(diffs)))
    return diffs[seeds, np.arange(n_boot)[:, None]].mean(axis=1)


def interval(samples: np.ndarray, point: float, level: float = 0.95) -> dict:
    low, high = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return {"mean": float(point), "ci_low": float(low), "ci_high": float(high), "verdict": verdict(low, high)}


def gain(y_true, direct, intermediate, metric: str, n_boot: int = N_BOOT, seed: int = 0) -> tuple[dict, np.ndarray]:
    """The gain of a cell in one language: point estimate, 95% interval, verdict; and the bootstrap samples."""
    fn = FUNCTIONS[metric]
    point = np.mean([fn(y_true, i) - fn(y_true, d) for d, i in zip(direct, intermediate)])
    samples = bootstrap_gains(y_true, direct, intermediate, metric, n_boot, seed)
    return interval(samples, point), samples


def difference(a: dict, a_samples: np.ndarray, b: dict, b_samples: np.ndarray) -> dict:
    """gain a - gain b for independent test sets (domain robustness): the replicates are subtracted."""
    return interval(np.asarray(a_samples) - np.asarray(b_samples), a["mean"] - b["mean"])
