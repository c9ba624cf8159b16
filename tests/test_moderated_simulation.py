"""The moderated rule by simulation at the tiny grid's sizes (issue 21, calibration): 27 cells of three task
groups (9 cells each) x 3 languages = 81 gains, 256 test examples per language, 3 seeds. Every gain goes
through the summary's own code (harness.results.significance.significance: the prior fitted across the run, the
moderated interval, p-value, BH q-value and FDR mark); today's rule (`seed-t`) is the cell's interval, taken
here in its exact form (the mixture with t on k - 1 degrees of freedom; the harness counts it from 2,000
replicates, so its p-value is floored at 2/2001, as below).

Training noise as the records show it: the models of a seed are shared by the cell's three test languages; the
seed term (logit scale, per seed and arm) differs between cells and task groups, so that per-seed gains spread by
about 0.005-0.15 and test-set standard errors are about 0.02-0.03, as in baselines/tiny.json. Examples keep most
of their easiness across seeds (a shared uniform draw with probability SHARED), as trained models agree on most
examples.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from harness.results import bootstrap, moderation
from harness.results.significance import q_values, significance

N_TEST, SEEDS, LANGS = 256, 3, ("en", "de", "fr")
TASKS = {"sentiment": (0.05, 0.35), "classification": (0.1, 0.9), "similarity": (0.05, 0.7)}  # seed sd range
CELLS_PER_TASK = 9
SHARED = 0.8
FLOOR = 2 / 2001
EFFECTS = (0.05, 0.1, 0.2, 0.3)

pytestmark = pytest.mark.slow


def logit_shift(gain: float) -> float:
    """The intermediate arm's logit shift whose expected accuracy gain over easiness N(0.5, 1.5) is `gain`."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    e = 0.5 + 1.5 * z
    expit = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    from scipy.optimize import brentq
    return brentq(lambda d: float(w @ (expit(e + d) - expit(e))) - gain, 0, 5)


def simulate(rng, effects: np.ndarray) -> list[dict]:
    """One run's records: `effects` (27, 3) true accuracy gains per cell and language."""
    records, cell = [], 0
    for task, (low, high) in TASKS.items():
        for c in range(CELLS_PER_TASK):
            sd = rng.uniform(low, high)
            q = {"direct": rng.normal(0, sd, SEEDS), "intermediate": rng.normal(0, sd, SEEDS)}
            gains = {}
            for j, lang in enumerate(LANGS):
                easy = rng.normal(0.5, 1.5, N_TEST)
                shared = rng.random(N_TEST)
                right = {}
                for arm, shift in (("direct", 0.0), ("intermediate", logit_shift(effects[cell, j])
                                                     if effects[cell, j] else 0.0)):
                    u = np.where(rng.random((SEEDS, N_TEST)) < SHARED, shared, rng.random((SEEDS, N_TEST)))
                    right[arm] = u < 1 / (1 + np.exp(-(easy + shift + q[arm][:, None])))
                diff = right["intermediate"].astype(float) - right["direct"]
                per_seed = diff.mean(axis=1)
                se = float(diff.mean(axis=0).std() / np.sqrt(N_TEST))  # the ideal bootstrap's SE of the seed mean
                scale = float(per_seed.std(ddof=1) / np.sqrt(SEEDS))
                half = moderation.mixture_quantile(0.975, se, scale, SEEDS - 1)
                mean = float(per_seed.mean())
                gains[lang] = {"mean": mean, "ci_low": mean - half, "ci_high": mean + half,
                               "verdict": bootstrap.verdict(mean - half, mean + half), "per_seed": per_seed.tolist(),
                               "se_boot": se, "p_value": max(FLOOR, moderation.mixture_p(mean, se, scale, SEEDS - 1))}
            records.append({"cell": f"m{c}-{task}-d{c}", "task": task, "main_metric": "accuracy",
                            "languages": list(LANGS), "seeds": list(range(SEEDS)), "gain": gains})
            cell += 1
    return records


def calls(records: list[dict]) -> dict[str, np.ndarray]:
    """(81,) signs called (+1, -1, 0) per rule: today's per gain and with BH at 5% on its (floored) p-values;
    moderated per gain and with the summary's FDR mark."""
    rows, _ = significance(records)
    row = {(r["cell"], r["language"]): r for r in rows}
    order = [(r["cell"], lang) for r in records for lang in r["languages"]]  # the records' order, as `effects`
    sign = {"positive": 1, "negative": -1}
    today = np.array([sign.get(g["verdict"], 0) for r in records for g in r["gain"].values()])
    q = q_values([g["p_value"] for r in records for g in r["gain"].values()])
    return {"today": today, "today+FDR": np.where(q < 0.05, today, 0),
            "moderated": np.array([sign.get(row[key]["verdict"], 0) for key in order]),
            "moderated+FDR": np.array([sign.get(row[key]["verdict"], 0) if row[key]["fdr"] else 0
                                       for key in order])}


def test_moderated_rule_keeps_the_false_positive_rate_under_no_effect():
    rng = np.random.default_rng(2112)
    reps = 60
    wrong = {k: 0 for k in ("today", "today+FDR", "moderated", "moderated+FDR")}
    spreads = []
    for _ in range(reps):
        records = simulate(rng, np.zeros((27, 3)))
        spreads += [np.std(g["per_seed"], ddof=1) for r in records for g in r["gain"].values()]
        for k, v in calls(records).items():
            wrong[k] += int(np.count_nonzero(v))
    n = reps * 81
    print(f"per-seed gain sd: 5-95% {np.percentile(spreads, 5):.3f}-{np.percentile(spreads, 95):.3f}")
    print("null, per-gain false-positive rate: " + ", ".join(f"{k} {v / n:.2%}" for k, v in wrong.items()))
    assert wrong["moderated"] / n <= 0.05
    assert sps.binomtest(wrong["moderated"], n, 0.05, alternative="greater").pvalue > 0.01


def test_moderated_rule_controls_the_fdr_and_gains_power_in_a_mix():
    """30% of the cells (all three languages) carry a true gain of 0.05-0.3; the rest none."""
    rng = np.random.default_rng(2113)
    reps = 60
    fdp = {k: [] for k in ("today", "today+FDR", "moderated", "moderated+FDR")}
    found = {k: {e: [] for e in EFFECTS} for k in fdp}
    for _ in range(reps):
        effects = np.zeros((27, 3))
        true = rng.choice(27, 8, replace=False)
        effects[true] = rng.choice(EFFECTS, (8, 1))
        truth = effects.ravel()
        for k, v in calls(simulate(rng, effects)).items():
            false = np.count_nonzero(v[truth == 0]) + np.count_nonzero(v[truth > 0] < 0)
            fdp[k].append(false / max(1, np.count_nonzero(v)))
            for e in EFFECTS:
                found[k][e] += (v[truth == e] > 0).tolist()
    for k in fdp:
        print(f"{k}: FDR {np.mean(fdp[k]):.1%}; power " + ", ".join(f"{e}: {np.mean(found[k][e]):.0%}"
                                                                    for e in EFFECTS))
    assert np.mean(fdp["moderated+FDR"]) <= 0.05 + 2 * np.std(fdp["moderated+FDR"]) / np.sqrt(reps)
    assert np.mean(fdp["moderated+FDR"]) <= 0.06
    assert np.mean(found["moderated"][0.3]) >= np.mean(found["today"][0.3])
    assert np.mean(found["moderated+FDR"][0.3]) > np.mean(found["today+FDR"][0.3])
