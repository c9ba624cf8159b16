"""One rule for verdicts: the baseline check reads both runs' verdicts as the summary's tables do
(harness.results.moderation.read_gain with the prior of the gain's model, task and metric, fitted on the baseline
file), and the summary's MDC is the detectable gain under the rule its verdict came from
(harness.results.significance.detectable, harness.results.change.gain_detectable)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from recordgen import make_record, tiny_grid_records
from scipy import stats as sps

from harness.results import analysis, baselines, change, compare, moderation
from harness.results.significance import significance

DOMAINS = ("general", "medical", "legal")
WIDE = 0.10  # the seed sd of every other gain of the group: the prior's s0


def _spread(mean: float, sd: float) -> list[float]:
    return [mean - sd, mean, mean + sd]  # sample sd exactly `sd`


def _gain(mean: float, sd: float, se: float, stored: str) -> dict:
    """A gain with three per-seed values of sample sd `sd`, test-set SE `se` and a stored (seed-t) verdict."""
    half = 1.96 * se + sps.t.ppf(0.975, 2) * sd / np.sqrt(3)  # about the seed-t interval
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "verdict": stored,
            "per_seed": _spread(mean, sd), "se_boot": se, "margin": 0.0, "p_value": 0.5}


def _group(others_sd: float, target: dict) -> tuple[dict, dict]:
    """Baseline cells of bert-sentiment-{general,medical,legal} (3 seeds) whose gains have seed sd `others_sd`
    except legal/en, which is `target`; and the legal record."""
    cells, legal = {}, None
    for i, domain in enumerate(DOMAINS):
        r = make_record("bert", "sentiment", domain, seeds=3)
        for j, (lang, g) in enumerate(sorted(r["gain"].items())):
            sd = others_sd * (1 + 0.2 * ((i + j) % 3 - 1))  # variances that vary a little (d0 capped at 4)
            g.update(_gain(g["mean"], sd, 0.02, g["verdict"]))
        if domain == "legal":
            r["gain"]["en"] = copy.deepcopy(target)
            legal = r
        cells[r["cell"]] = {baselines.entry_key(r): baselines.entry(r)}
    return cells, legal


def _rerun(record: dict, gain: dict) -> dict:
    out = copy.deepcopy(record)
    out["gain"]["en"] = gain
    return out


def _gain_row(result_rows: list[dict]) -> dict:
    return next(r for r in result_rows if r["language"] == "en" and r["what"] == "gain")


def test_a_reversal_of_the_stored_seed_t_verdicts_that_the_moderated_ones_do_not_make_passes(tmp_path):
    # seeds that agree (sd 0.001) under a wide prior: seed-t decided, moderated not
    old = _gain(+0.03, 0.001, 0.005, "positive")
    new = _gain(-0.03, 0.001, 0.005, "negative")
    assert old["ci_low"] > 0 and new["ci_high"] < 0  # what seed-t makes of them
    cells, legal = _group(WIDE, old)
    prior = baselines.verdict_prior(baselines.priors_of(cells), legal["cell"], "accuracy")
    assert prior is not None and prior["s0"] > 0.01
    read = [moderation.read_gain(g, prior) for g in (old, new)]
    assert [g["rule"] for g in read] == ["moderated"] * 2
    assert [g["verdict"] for g in read] == ["inconclusive"] * 2  # the moderated verdicts differ from the stored
    record = _rerun(legal, new)
    seed_t = baselines.judge(cells[legal["cell"]]["cpu-fp32"], record, 0.5)  # the stored verdicts (old rule)
    assert _gain_row(seed_t)["outcome"] == "fail" and _gain_row(seed_t)["why"] == "verdict reversed"
    result = baselines.check(record, cells, tmp_path / "tiny.json", margin=0.5)
    assert (result.status, result.moved) == ("ok", [])


def test_a_reversal_that_only_the_moderated_verdicts_make_fails_and_shows_them(tmp_path):
    # a gain of 0.06 whose three seeds spread by 0.05 under a tight prior: seed-t undecided, moderated decided
    old = _gain(+0.06, 0.05, 0.005, "inconclusive")
    new = _gain(-0.06, 0.05, 0.005, "inconclusive")
    cells, legal = _group(0.01, old)
    prior = baselines.verdict_prior(baselines.priors_of(cells), legal["cell"], "accuracy")
    assert [moderation.read_gain(g, prior)["verdict"] for g in (old, new)] == ["positive", "negative"]
    record = _rerun(legal, new)
    assert _gain_row(baselines.judge(cells[legal["cell"]]["cpu-fp32"], record, 0.5))["outcome"] == "ok"
    result = baselines.check(record, cells, tmp_path / "tiny.json", margin=0.5)
    assert result.status == "changed" and "verdict reversed" in result.message
    line = next(x for x in result.message.splitlines() if x.split()[:2] == ["en", "gain"])
    assert "positive +0.060" in line and "negative -0.060" in line and line.count("(moderated)") == 2
    # compare (python -m harness compare) judges by the same rule
    rows, _ = compare.compare({c: {"cell": c, "entries": e} for c, e in cells.items()}, {legal["cell"]: record}, 0.5)
    assert compare.failed(rows) and any(r["why"] == "verdict reversed" for r in rows)


def test_a_verdict_weakened_under_the_moderated_rule_is_reported_with_both_readings(tmp_path):
    old = _gain(+0.06, 0.05, 0.005, "inconclusive")
    new = _gain(+0.01, 0.05, 0.005, "inconclusive")  # stored verdicts equal: the seed-t rule reports nothing
    cells, legal = _group(0.01, old)
    result = baselines.check(_rerun(legal, new), cells, tmp_path / "tiny.json", margin=0.5)
    assert result.status == "ok"
    assert [m[:3] for m in result.moved] == [[legal["cell"], "en", "weakened"]]
    assert result.moved[0][3].startswith("positive +0.060") and result.moved[0][3].endswith("(moderated)")
    assert result.moved[0][4].startswith("inconclusive +0.010") and result.moved[0][4].endswith("(moderated)")


def test_a_cell_is_judged_by_the_file_alone_whatever_else_runs(tmp_path):
    """The priors come from the baseline file: one cell alone, all cells, in any order, with the session's cached
    priors, give the same rows; the tables of that cell run alone would have no prior (seed-t)."""
    old = _gain(+0.06, 0.05, 0.005, "inconclusive")
    cells, legal = _group(0.01, old)
    runs = [_rerun(legal, _gain(-0.06, 0.05, 0.005, "inconclusive"))]
    for domain in ("general", "medical"):
        r = make_record("bert", "sentiment", domain, seeds=3)
        r["gain"] = copy.deepcopy(cells[r["cell"]]["cpu-fp32"]["gain"])
        runs.append(r)
    path = tmp_path / "tiny.json"
    alone = baselines.check(runs[0], cells, path, margin=0.5)
    priors = baselines.priors_of(cells)
    together = [baselines.check(r, cells, path, 0.5, priors) for r in runs]
    backwards = [baselines.check(r, cells, path, 0.5, priors) for r in reversed(runs)][::-1]
    assert alone == together[0] == backwards[0] and together == backwards
    assert alone.status == "changed" and "(moderated)" in alone.message
    assert analysis.moderate(runs[:1])["gains"][legal["cell"]]["en"]["rule"] == "seed-t"  # the run's own: no prior


def _strictly_ok(cells: dict, path) -> list[str]:
    priors = baselines.priors_of(cells)
    rules = []
    for cell, entries in sorted(cells.items()):
        for entry in entries.values():
            record = {**copy.deepcopy(entry), "cell": cell,
                      "env": {"device": entry["device"], "precision": entry["precision"]}}
            result = baselines.check(record, cells, path, priors=priors)
            assert (result.status, result.moved, result.note) == ("ok", [], None), cell
            prior = baselines.verdict_prior(priors, cell, entry["main_metric"])
            rules += [moderation.read_gain(g, prior)["rule"] for g in entry["gain"].values()]
    return rules


def test_the_committed_tiny_baseline_passes_a_strict_check_against_itself():
    path = baselines.baseline_path("baselines", "tiny")
    cells = baselines.load(path, "tiny")
    rules = _strictly_ok(cells, path)
    assert len(rules) == 81 and set(rules) == {"moderated"}  # every group of the file has a prior


def test_a_baseline_file_that_still_says_neutral_is_read_and_judged_by_the_rule(tmp_path):
    data = json.loads(baselines.baseline_path("baselines", "tiny").read_text(encoding="utf-8"))
    for entries in data["cells"].values():
        for e in entries.values():
            for g in e["gain"].values():
                g["verdict"] = "neutral" if g["verdict"] == "inconclusive" else g["verdict"]
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    assert "neutral" in path.read_text(encoding="utf-8")
    assert set(_strictly_ok(baselines.load(path, "tiny"), path)) == {"moderated"}


# ---------------------------------------------------------------- mdc under the verdict's rule

def _seeded(seeds: int = 3) -> list[dict]:
    """The 27 tiny-grid records with distinct per-seed gains and each seed's own test-set SE."""
    out = []
    for r in tiny_grid_records():
        rng = np.random.default_rng(len(out))
        r["seeds"] = list(range(seeds))
        for g in r["gain"].values():
            offsets = rng.normal(0, 0.01 + 0.05 * rng.random(), seeds)
            g["per_seed"] = (g["mean"] + offsets - offsets.mean()).tolist()
            g["se_boot"] = 0.02 + 0.02 * rng.random()
            g["se_seeds"] = [g["se_boot"] * np.sqrt(seeds) * 0.9] * seeds  # shared part: about 0.5 se_boot^2
        out.append(r)
    return out


def _direct(se: float, seed_var: float, df_seed: float, k: int) -> float:
    """(t_0.975 + t_0.8) x sqrt(se^2 + seed_var / k) on Satterthwaite's df, written out."""
    total = se**2 + seed_var / k
    df = total**2 / ((seed_var / k) ** 2 / df_seed)
    return float((sps.t.ppf(0.975, df) + sps.t.ppf(0.8, df)) * np.sqrt(total))


def test_mdc_of_a_moderated_gain_uses_its_moderated_variance_and_the_shared_test_set_error():
    records = _seeded()
    moderated = analysis.moderate(records)
    rows, _ = significance(records, moderated)
    row = next(r for r in rows if r["cell"] == "roberta-similarity-medical" and r["language"] == "de")
    g = moderated["gains"][row["cell"]]["de"]
    record_gain = next(r for r in records if r["cell"] == row["cell"])["gain"]["de"]
    assert row["rule"] == "moderated"
    d0 = moderation.prior_d0(moderated["priors"][analysis.group(next(r for r in records if r["cell"] == row["cell"]))])
    want = _direct(moderation.shared_se(g), g["seed_sd"] ** 2, d0 + 2, 3)
    assert row["mdc"] == pytest.approx(want, rel=1e-9) and g["mdc"] == row["mdc"]  # the tables read the same
    seed_t = _direct(record_gain["se_boot"], float(np.var(record_gain["per_seed"], ddof=1)), 2, 3)
    assert abs(row["mdc"] - seed_t) > 0.01 and abs(row["mdc"] - record_gain["mdc"]) > 0.01
    # mdc, seeds needed and the verdict agree: a true gain of the mdc is decided at the gain's own seeds
    terms = (moderation.shared_se(g), g["seed_sd"] ** 2, d0)
    assert change.seeds_needed(row["mdc"] * (1 + 1e-9), *terms) == 3
    assert change.seeds_needed(row["mdc"] * 0.999, *terms) > 3


def test_mdc_of_a_seed_t_gain_uses_its_own_spread_and_se_boot():
    records = _seeded()[:1]  # one cell alone: no prior
    rows, _ = significance(records)
    g = records[0]["gain"][rows[0]["language"]]
    assert rows[0]["rule"] == "seed-t"
    assert rows[0]["mdc"] == pytest.approx(_direct(g["se_boot"], float(np.var(g["per_seed"], ddof=1)), 2, 3), rel=1e-9)
    one = make_record("bert", "sentiment", "legal", seeds=1)  # one seed: test-set sampling only
    rows, _ = significance([one])
    assert rows[0]["mdc"] == pytest.approx((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * one["gain"]["en"]["se_boot"])
