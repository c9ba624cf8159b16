"""The baseline rule by simulation (harness.results.baselines.judge on records built with harness.results.bootstrap,
as a cell builds them): how often a cell with no change fails (false alarms), and how often a change of a given size is
caught (power), at the tiny grid's test-set size (256 examples per language), 3 languages and 3 seeds.

"No change" is what the check must tolerate: the same code with new randomness (other seeds, another
machine), scored on the same test sets as the baseline.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from harness.results import baselines, bootstrap, change, significance

N_TEST, SEEDS, LANGS, N_BOOT = 256, 3, ("en", "de", "fr"), 300


def draw_test_sets(rng) -> dict:
    """Per language: 4-class targets and each example's easiness (logit of being right)."""
    return {lang: (rng.integers(0, 4, N_TEST), rng.normal(0.5, 1.5, N_TEST)) for lang in LANGS}


def record(rng, tests: dict, seed_sd: float, shift: float) -> dict:
    """A record's numbers from one run: example i is right with probability sigmoid(easiness_i + q), q ~ N(arm
    effect, seed_sd) per seed and arm (training noise); the intermediate arm's effect is 1 + shift."""
    rec = {"main_metric": "accuracy", "languages": list(LANGS), "gain": {}}
    for block in ("metrics", "metrics_per_seed", "metrics_se"):
        rec[block] = {"direct": {}, "intermediate": {}}
    for lang, (y, easy) in tests.items():
        preds = {}
        for arm, effect in (("direct", 0.0), ("intermediate", 1.0 + shift)):
            q = rng.normal(effect, seed_sd, (SEEDS, 1))
            right = rng.random((SEEDS, N_TEST)) < 1 / (1 + np.exp(-(easy + q)))
            preds[arm] = np.where(right, y, (y + rng.integers(1, 4, (SEEDS, N_TEST))) % 4)
            per_seed = [float(np.mean(p == y)) for p in preds[arm]]
            rec["metrics"][arm][lang] = {"accuracy": float(np.mean(per_seed))}
            rec["metrics_per_seed"][arm][lang] = {"accuracy": per_seed}
            rec["metrics_se"][arm][lang] = {"accuracy": bootstrap.metric_se(y, preds[arm], "accuracy",
                                                                            int(rng.integers(2**31)), N_BOOT)}
        g = bootstrap.gain(bootstrap.arms(y, preds["direct"], preds["intermediate"]), "accuracy",
                           int(rng.integers(2**31)), N_BOOT)
        rec["gain"][lang] = {**g, "mdc": change.cell_detectable(g, len(LANGS))}
    return rec


def trial(rng, seed_sd: float, shift: float, margin: float = 0.0) -> tuple[list[dict], dict]:
    """The rows of judging a new run (intermediate effect shifted by `shift`) against a baseline run."""
    tests = draw_test_sets(rng)
    old, new = record(rng, tests, seed_sd, 0.0), record(rng, tests, seed_sd, shift)
    return baselines.judge(old, new, margin), old


@pytest.mark.parametrize("seed_sd, reps", [(0.3, 100), (1.0, 100)])
@pytest.mark.slow
def test_false_alarms_without_a_change_are_at_most_5_percent(seed_sd, reps):
    """Margin 0: the statistics alone. Per cell-language (any of its gain and arm comparisons failing) the rate
    must be <= 5%; per cell (the Bonferroni family) it must not be significantly above 5%."""
    rng = np.random.default_rng(11)
    cell_fails = lang_fails = 0
    for _ in range(reps):
        rows, _ = trial(rng, seed_sd, 0.0)
        failed = {r["language"] for r in rows if r["outcome"] == "fail"}
        lang_fails += len(failed)
        cell_fails += bool(failed)
    print(f"seed_sd {seed_sd}: {lang_fails} of {reps * len(LANGS)} cell-languages, {cell_fails} of {reps} cells fail")
    assert lang_fails / (reps * len(LANGS)) <= 0.05, (lang_fails, reps)
    assert binomtest(cell_fails, reps, 0.05, alternative="greater").pvalue > 0.01, (cell_fails, reps)


def power(shift: float, reps: int = 40, seed_sd: float = 0.3) -> tuple[float, float, float]:
    """(share of gain comparisons that fail, mean true change of the gain, mean minimum detectable change)."""
    rng = np.random.default_rng(12)
    caught, changes, mdcs = [], [], []
    for _ in range(reps):
        rows, old = trial(rng, seed_sd, shift)
        for r in rows:
            if r["what"] == "gain":
                caught.append(r["outcome"] == "fail")
                changes.append(abs(r["change"]["change"]))
                mdcs.append(old["gain"][r["language"]]["mdc"])
    return float(np.mean(caught)), float(np.mean(changes)), float(np.mean(mdcs))


@pytest.mark.slow
def test_power_grows_with_the_change():
    """The power curve (docs/statistics.md: calibration of the baseline check): the intermediate arm of the new run
    loses `shift` in logit (0 to 4: its gain falls by 0 to about 0.6). The recorded minimum detectable change (MDC)
    assumes the other run as noisy as this one; a run whose intermediate arm collapsed disagrees with the direct arm
    on more examples, so its gain is noisier and 80% power comes only at about 1.5 MDC (measured: 49% at 1.0
    MDC)."""
    curve = [power(-shift) for shift in (0.0, 1.0, 2.0, 3.0, 4.0)]
    for rate, size, mdc in curve:
        print(f"mean |change| {size:.3f}: caught {rate:.0%} (mean MDC {mdc:.3f})")
    rates = [c[0] for c in curve]
    assert rates == sorted(rates) and rates[0] <= 0.05 and rates[-1] >= 0.85, curve
    mdc = curve[0][2]
    assert all(rate >= 0.8 for rate, size, _ in curve if size >= 1.5 * mdc), curve
    assert all(rate < 0.8 for rate, size, _ in curve if size < 0.6 * mdc), curve


def test_a_change_smaller_than_the_margin_never_fails():
    rng = np.random.default_rng(13)
    rows, _ = trial(rng, 0.3, 2.5, margin=1.0)
    assert all(r["outcome"] != "fail" for r in rows if r["what"] != "gain" or r["why"] != "verdict reversed")


def test_change_adds_both_runs_seed_and_test_set_variances():
    old = {"mean": 0.10, "per_seed": [0.05, 0.10, 0.15], "se_boot": 0.03}
    new = {"mean": 0.30, "per_seed": [0.30, 0.30], "se_boot": 0.04}
    c = change.change(old, new)
    se = np.sqrt(0.03**2 + 0.05**2 / 3 + 0.04**2)  # the new run's seeds agree: no seed term
    assert c["change"] == pytest.approx(0.2) and c["se"] == pytest.approx(se)
    assert c["df"] == pytest.approx(se**4 / ((0.05**2 / 3) ** 2 / 2))  # Welch-Satterthwaite
    assert c["significant"] and c["ci_low"] > 0 and not change.change(old, old)["significant"]
    point = {"mean": 0.0, "per_seed": [0.0], "se_boot": 0.0}
    assert change.change(point, point)["significant"] is False
    assert change.change(point, {**point, "mean": 0.01})["significant"] is True


def test_q_values_are_benjamini_hochberg():
    p = [0.01, 0.04, 0.03, 0.2]
    # sorted 0.01, 0.03, 0.04, 0.2 -> 0.01*4/1, 0.03*4/2, 0.04*4/3, 0.2 -> monotone from the top
    assert significance.q_values(p) == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert significance.q_values([]).size == 0


def test_bootstrap_p_value_agrees_with_the_interval():
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.1, 0.3):
        samples = rng.normal(shift, 0.1, 4000)
        low, high = np.percentile(samples, [2.5, 97.5])
        assert (bootstrap.p_value(samples) < 0.05) == (low > 0 or high < 0)
