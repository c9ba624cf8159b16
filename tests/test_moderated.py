"""The moderated rule (docs/statistics.md): the seed-variance prior across a run's gains (limma's fitFDist), the
interval and p-value of a gain as one distribution (mixture of the bootstrap's normal and the seed term's t),
fallbacks to today's rule, order / shard invariance of the summary, FDR marks that agree with the FDR line,
and the seeds-needed column. The false-positive rate and FDR by simulation: tests/test_moderated_simulation.py."""
from __future__ import annotations

import copy
import random
import re

import numpy as np
import pytest
from recordgen import tiny_grid_records
from scipy import integrate
from scipy import stats as sps

from harness.output import report
from harness.output.summary import FDR_MARK, summarise
from harness.results import analysis, baselines, bootstrap, change, moderation
from harness.results.significance import significance


def seeded_records(seeds: int = 3, shift: float = 0.0) -> list[dict]:
    """The 27 synthetic tiny-grid records with `seeds` distinct per-seed gains around each mean (spread fixed
    by the cell and language, as in recordgen) and a test-set standard error."""
    out = []
    for r in tiny_grid_records(shift):
        r = copy.deepcopy(r)
        r["seeds"] = list(range(seeds))
        rng = np.random.default_rng(bootstrap.stream_seed(r["cell"]))
        for lang, g in r["gain"].items():
            spread = 0.01 + 0.05 * rng.random()
            offsets = rng.normal(0, spread, seeds)
            g["per_seed"] = (g["mean"] + offsets - offsets.mean()).tolist()
            g["se_boot"] = 0.02 + 0.02 * rng.random()
        for by_lang in r["metrics_per_seed"].values():
            for scores in by_lang.values():
                for metric, values in scores.items():
                    scores[metric] = values * seeds
        out.append(r)
    return out


# ---------------------------------------------------------------- the prior

def test_fit_prior_recovers_a_scaled_inverse_chi_square_prior():
    rng = np.random.default_rng(1)
    true = 0.01 * 4 / rng.chisquare(4, 20000)  # d0 = 4, s0^2 = 0.01
    d0, s02 = moderation.fit_prior(true * rng.chisquare(2, 20000) / 2, 2)
    assert d0 == pytest.approx(4, rel=0.15) and s02 == pytest.approx(0.01, rel=0.1)


def test_fit_prior_of_equal_true_variances_has_infinite_degrees_of_freedom():
    rng = np.random.default_rng(2)
    d0, s02 = moderation.fit_prior(0.02 * rng.chisquare(2, 5000) / 2, 2)
    assert d0 > 50 and s02 == pytest.approx(0.02, rel=0.1)
    with pytest.raises(ValueError):
        moderation.fit_prior([0.1], 2)


def test_moderated_variance_is_the_weighted_mean_of_prior_and_sample():
    assert moderation.moderated_variance(0.04, 2, 6, 0.01) == pytest.approx(((6 * 0.01 + 2 * 0.04) / 8, 8))
    assert moderation.moderated_variance(0.04, 2, np.inf, 0.01) == (0.01, np.inf)


# ---------------------------------------------------------------- interval and p-value

@pytest.mark.parametrize("mean, se, scale, df", [(0.17, 0.029, 0.011, 2), (0.17, 0.029, 0.011, 6),
                                                 (0.05, 0.03, 0.02, 2), (0.3, 0.01, 0.05, 3), (0.1, 0.05, 0.0, 2)])
def test_mixture_p_value_is_the_exact_convolution(mean, se, scale, df):
    if scale == 0:
        exact = 2 * sps.norm.sf(mean / se)
    else:
        exact = 2 * integrate.quad(lambda z: sps.norm.pdf(z) * sps.t.sf((mean + se * z) / scale, df), -40, 40,
                                   limit=500, epsabs=1e-15)[0]
    assert moderation.mixture_p(mean, se, scale, df) == pytest.approx(exact, rel=1e-6)


def test_p_value_has_resolution_below_the_replicate_floor():
    """The motivating case: per-seed gains +0.188, +0.184, +0.152; the bootstrap could not go below 0.001."""
    g = {"mean": 0.1747, "per_seed": [0.188, 0.184, 0.152], "se_boot": 0.029}
    out = moderation.moderated_gain(g, 8.0, 0.03**2)
    assert out["p_value"] < 1e-4 and out["verdict"] == "positive"


def test_p_value_agrees_with_a_brute_force_bootstrap():
    """Where both are defined (p well above the replicate floor): today's rule counted from many replicates of the
    cell's own bootstrap (bootstrap.gain, 40,000 example resamples + t draws) against the mixture's exact p-value with
    the same ingredients (the seed mean's bootstrap SE and t on k - 1 df)."""
    from test_stats import classification

    rng = np.random.default_rng(7)
    for shift in (0.2, 0.35, 0.5):
        data = classification(rng, 3, shift, 0.3, n=256)
        g = bootstrap.gain(data, "accuracy", seed=3, n_boot=40000)
        s = float(np.std(g["per_seed"], ddof=1))
        exact = moderation.mixture_p(g["mean"], g["se_boot"], s / np.sqrt(3), 2)
        tolerance = 4 * np.sqrt(exact * (1 - exact) / 40000) + 0.1 * exact  # MC error + the normal approximation
        assert abs(g["p_value"] - exact) < tolerance, (shift, g["p_value"], exact)


@pytest.mark.parametrize("seed", range(40))
def test_verdict_and_p_value_say_the_same(seed):
    rng = np.random.default_rng(seed)
    g = {"mean": float(rng.normal(0, 0.08)), "per_seed": rng.normal(0, 0.05, 3).tolist(),
         "se_boot": float(rng.uniform(0.005, 0.05))}
    out = moderation.moderated_gain(g, float(rng.choice([0.5, 3.0, 20.0, np.inf])), float(rng.uniform(0.01, 0.06)) ** 2)
    assert (out["verdict"] in ("positive", "negative")) == (out["p_value"] < 0.05)
    assert out["ci_low"] < out["mean"] < out["ci_high"]
    assert out["mean"] - out["ci_low"] == pytest.approx(out["ci_high"] - out["mean"])


# ---------------------------------------------------------------- analysis.moderate: rules and fallbacks

def test_a_grid_is_moderated_and_each_gain_names_its_rule():
    out = analysis.moderate(seeded_records())
    assert set(out["priors"]) == {f"{m}-{t} ({metric})" for m in ("bert", "roberta", "xlnet") for t, metric in
                                  (("classification", "accuracy"), ("sentiment", "accuracy"), ("similarity", "spearman"))}
    assert all(p["cells"] == 3 and p["gains"] == 9 for p in out["priors"].values())  # a prior per model and task
    assert {g["rule"] for gains in out["gains"].values() for g in gains.values()} == {analysis.MODERATED}
    assert out["notes"] == []


def test_a_cell_run_alone_keeps_todays_rule_and_says_so():
    record = seeded_records()[0]
    out = analysis.moderate([record])
    assert out["priors"] == {}
    assert out["gains"][record["cell"]] == {lang: {**g, "rule": analysis.SEED_T} for lang, g in record["gain"].items()}
    (note,) = out["notes"]
    assert record["cell"] in note and "today's rule" in note and "\n" not in note


def test_a_record_without_per_seed_gains_is_named_and_that_gain_falls_back():
    records = seeded_records()
    del records[4]["gain"]["de"]["per_seed"]
    out = analysis.moderate(records)
    (note,) = out["notes"]
    assert note.startswith(f"{records[4]['cell']}: ") and " de:" in note and "\n" not in note
    assert out["gains"][records[4]["cell"]]["de"]["rule"] == analysis.SEED_T
    assert out["gains"][records[4]["cell"]]["en"]["rule"] == analysis.MODERATED


def test_one_seed_runs_keep_todays_rule():
    out = analysis.moderate(tiny_grid_records())
    assert out["priors"] == {} and out["notes"] == []
    assert {g["rule"] for gains in out["gains"].values() for g in gains.values()} == {analysis.SEED_T}


# ---------------------------------------------------------------- the summary: invariance and one answer

def test_same_records_in_any_order_or_sharding_give_the_same_summary():
    records = seeded_records()
    whole = report.to_json(summarise(records))
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    assert report.to_json(summarise(shuffled)) == whole
    shards = [records[i::3] for i in range(3)]  # as `--shard I/3` runs and `merge` combine them
    assert report.to_json(summarise([r for shard in reversed(shards) for r in shard])) == whole


def test_tables_and_the_fdr_line_agree():
    summary = summarise(seeded_records(shift=0.05))
    survive = summary["fdr"]["survive"]
    assert 0 < survive < summary["fdr"]["verdicts"]
    assert f"{survive} of {summary['fdr']['verdicts']} verdicts survive FDR 5%" in report.to_markdown(summary)
    _, xl = report.cross_lingual_rows(summary)  # every gain of every cell
    assert sum(entry.count(FDR_MARK) for row in xl for entry in row) == survive
    _, sig = report.significance_rows(summary)
    assert sum(row[2].count(FDR_MARK) for row in sig) == survive
    marked = {(r["cell"], r["language"]) for r in summary["significance"] if r["fdr"]}
    assert all(r["verdict"] in ("positive", "negative") and r["q_value"] < 0.05 for r in summary["significance"]
               if (r["cell"], r["language"]) in marked)
    _, main = report.main_rows(summary)  # target language only: the marked target-language gains
    targets = {(e["cell"], e["language"]) for e in summary["cells"] if e["status"] == "ok"}
    assert sum(entry.count(FDR_MARK) for row in main for entry in row) == len(marked & targets)


def test_the_summary_verdicts_are_the_moderated_ones():
    records = seeded_records(shift=0.05)
    summary = summarise(records)
    moderated = analysis.moderate(records)["gains"]
    for e in summary["cells"]:
        for lang, g in e["gain"].items():
            assert g["verdict"] == moderated[e["cell"]][lang]["verdict"]
            assert g["rule"] == analysis.MODERATED


# ---------------------------------------------------------------- seeds needed

def test_seeds_needed_by_hand():
    """Infinite prior degrees of freedom: normal quantiles, so k >= s0^2 / ((effect / 2.8016)^2 - se_boot^2)."""
    z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
    effect, se_boot, var = 0.1, 0.02, 0.05**2
    by_hand = int(np.ceil(var / ((effect / z) ** 2 - se_boot**2)))  # 0.0025 / (0.001274 - 0.0004) = 2.86 -> 3
    assert by_hand == 3 and change.seeds_needed(effect, se_boot, var, np.inf) == 3
    assert change.seeds_needed(0.05, 0.02, var, np.inf) is None  # 2.8 * 0.02 > 0.05: the test set is too small
    # finite degrees of freedom: the t quantiles on Satterthwaite's df, checked for k = 3 and 4 by hand
    def enough(k, d0):
        seed = var / k
        df = (se_boot**2 + seed) ** 2 / (seed**2 / (d0 + k - 1))
        return (sps.t.ppf(0.975, df) + sps.t.ppf(0.8, df)) * np.sqrt(se_boot**2 + seed) <= effect
    assert not enough(3, 2) and enough(4, 2) and change.seeds_needed(effect, se_boot, var, 2) == 4


def test_significance_rows_carry_seeds_for_the_gain_and_the_margin():
    rows, fdr = significance(seeded_records(shift=0.1), margin=0.3)
    assert fdr["margin"] == 0.3
    row = rows[0]
    model, task = row["cell"].split("-")[:2]
    prior = analysis.moderate(seeded_records(shift=0.1))["priors"][moderation.group_of(model, task, "accuracy")]
    g = analysis.moderate(seeded_records(shift=0.1))["gains"][row["cell"]][row["language"]]
    expected = change.seeds_needed(0.3, g["se_boot"], g["seed_sd"] ** 2, moderation.prior_d0(prior))
    assert row["seeds_margin"] == (expected if expected is not None else f">{change.MAX_SEEDS}")


# ---------------------------------------------------------------- the baseline check with the prior

def test_change_test_with_a_prior_uses_the_moderated_seed_variance():
    old = {"mean": 0.10, "per_seed": [0.05, 0.10, 0.15], "se_boot": 0.03}
    new = {"mean": 0.20, "per_seed": [0.19, 0.20, 0.21], "se_boot": 0.03}
    d0, s02 = 4.0, 0.03**2
    c = change.change(old, new, prior=(d0, s02))
    v_old, v_new = (d0 * s02 + 2 * 0.05**2) / 6, (d0 * s02 + 2 * 0.01**2) / 6
    assert c["se"] == pytest.approx(np.sqrt(2 * 0.03**2 + v_old / 3 + v_new / 3))
    assert c["df"] > change.change(old, new)["df"]


def test_priors_of_a_baseline_file_and_identical_records_pass():
    records = seeded_records()
    cells = {r["cell"]: {"cpu-fp32": {**baselines.entry({**r, "env": {"device": "cpu"}})}} for r in records}
    priors = baselines.priors_of(cells)
    tasks = {"classification (accuracy)", "sentiment (accuracy)", "similarity (spearman)"}
    assert set(priors) == tasks | {f"{m}-{t}" for m in ("bert", "roberta", "xlnet") for t in tasks}
    assert baselines.gain_prior(priors, "bert-sentiment-legal", "accuracy")[1] == pytest.approx(
        priors["sentiment (accuracy)"]["s0"] ** 2)
    assert all(baselines.check(r, cells, "b.json", priors=priors).status == "ok" for r in records)


def test_plan_prints_the_seeds_each_cell_needs_from_earlier_records(tmp_path):
    from recordgen import write_records

    from harness.definitions.grid import parse_cell_id
    from harness.definitions.profiles import tiny
    from harness.output.plan import format_plan, plan

    records = seeded_records(shift=0.1)
    write_records(tmp_path / "run", records)
    rows, _ = significance(records)
    expected = ", ".join(f"{r['language']} {r['seeds_needed'] if r['seeds_needed'] is not None else '-'}"
                         for r in rows if r["cell"] == "bert-sentiment-legal")
    profile = tiny(tmp_path / "corpora", tmp_path / "cache")
    cells = [parse_cell_id("bert-sentiment-legal"), parse_cell_id("bert-sentiment-general")]
    planned = plan(profile, cells, 3, tmp_path / "run")
    assert planned[0].seeds_needed == expected and re.search(r"en \d+", expected)
    assert expected in format_plan(profile, planned, 3)
    assert plan(profile, cells, 3, tmp_path / "empty")[0].seeds_needed == "?"
