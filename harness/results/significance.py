"""The significance of a run's gains, across its records: each gain's p-value under its rule
(harness.results.analysis.moderate), its Benjamini-Hochberg q-value across every gain of the run (`q_values`),
whether its verdict survives a false discovery rate of FDR (`fdr`), its minimum detectable change under the same
rule (`mdc`, harness.results.change.gain_detectable) and the seeds that would decide it
(harness.results.change.seeds_needed). The summary (harness.output.summary) shows these
rows and marks the verdicts that survive FDR in every table. In an A/A run (--calibration) `calibration` counts
the verdicts, each of which is then a false positive.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as sps

from harness.definitions.grid import parse_cell_id
from harness.results import analysis
from harness.results.baselines import MARGIN
from harness.results.bootstrap import FDR, LEVEL, q_values
from harness.results.change import MAX_SEEDS, gain_detectable, seeds_needed
from harness.results.moderation import prior_d0, shared_se
from harness.results.record import GAIN_FIELDS


def _terms(g: dict, priors: dict, group: str) -> tuple[float, float, float] | None:
    """(test-set SE, seed variance, prior degrees of freedom) of a gain's verdict under its rule: moderated, the
    shared test-set SE (the term more seeds do not shrink), the moderated seed variance and d0; seed-t, se_boot,
    the per-seed gains' sample variance and 0. None without per-seed gains or test-set error."""
    if not g.get("per_seed") or g.get("se_boot") is None:
        return None
    if g.get("rule") == analysis.MODERATED:
        return shared_se(g), g["seed_sd"] ** 2, prior_d0(priors[group])
    var = float(np.var(g["per_seed"], ddof=1)) if len(g["per_seed"]) > 1 else 0.0
    return float(g["se_boot"]), var, 0.0


def _seeds_needed(g: dict, effect: float, priors: dict, group: str):
    """Seeds with which a gain of size `effect` is decided with 80% power (harness.results.change.seeds_needed):
    an int, `>MAX` when even MAX seeds do not reach it, None without per-seed gains or test-set error."""
    terms = _terms(g, priors, group)
    if terms is None or len(g["per_seed"]) < 2:
        return None
    k = seeds_needed(effect, *terms)
    return f">{MAX_SEEDS}" if k is None else k


def detectable(g: dict, priors: dict, group: str) -> float | None:
    """The minimum detectable change of a gain under the rule its verdict came from (`rule`): the smallest true
    gain that its verdict's test calls positive or negative with 80% power at the gain's level (95%, or its look's
    with --seeds auto), at its
    seeds, with the same test-set SE, seed variance and degrees of freedom as its seeds needed
    (harness.results.change.gain_detectable; moderated: the moderated seed sd on d0 + k - 1 and the shared
    test-set SE). None without per-seed gains or test-set error. Not the record's `mdc` (the smallest change
    the baseline check catches, at the cell's Bonferroni level, without a prior)."""
    terms = _terms(g, priors, group)
    return None if terms is None else gain_detectable(*terms, len(g["per_seed"]), g.get("level", LEVEL))


def significance(records: list[dict], moderated: dict | None = None, margin: float | None = None
                 ) -> tuple[list[dict], dict]:
    """Per cell and language: the gain under its rule (harness.results.analysis.moderate), its p-value, the BH
    q-value across all gains of these records that carry a p-value, whether its verdict survives FDR 5% (`fdr`),
    the minimum detectable change under its rule (`mdc`, `detectable`; also set on the gains of `moderated`, so the
    tables show the same) and the seeds that would decide a gain of its size and of `margin` with 80%
    power; and the count of verdicts that survive FDR 5% (the same `fdr` flags the tables mark)."""
    moderated = moderated or analysis.moderate(records)
    margin = MARGIN if margin is None else margin
    rows = []
    for r in sorted(records, key=lambda r: r["cell"]):
        group = analysis.group(r)
        for lang in r["languages"]:
            g = moderated["gains"][r["cell"]][lang]
            g["mdc"] = detectable(g, moderated["priors"], group)
            rows.append({"cell": r["cell"], "language": lang, **{f: g[f] for f in GAIN_FIELDS},
                         "p_value": g.get("p_value"), "mdc": g["mdc"], "q_value": None, "fdr": False,
                         "rule": g["rule"], "seeds_needed": _seeds_needed(g, g["mean"], moderated["priors"], group),
                         "seeds_margin": _seeds_needed(g, margin, moderated["priors"], group)})
    tested = [row for row in rows if row["p_value"] is not None]
    if tested:
        for row, q in zip(tested, q_values([row["p_value"] for row in tested])):
            row["q_value"] = float(q)
            row["fdr"] = row["verdict"] in ("positive", "negative") and row["q_value"] < FDR
            moderated["gains"][row["cell"]][row["language"]]["fdr"] = row["fdr"]
    verdicts = [row for row in tested if row["verdict"] in ("positive", "negative")]
    return rows, {"level": FDR, "gains": len(tested), "verdicts": len(verdicts),
                  "survive": sum(row["fdr"] for row in verdicts), "margin": margin}


NOMINAL = 1 - LEVEL  # the false-positive rate per gain an A/A run's verdicts are held to


def calibration(records: list[dict], rows: list[dict]) -> dict | None:
    """An A/A run's verdicts counted (None when no record is of one): every true gain is zero, so each decided
    verdict (positive or negative) is a false positive. Per stratum (all gains, the target-language gains, each
    model): gains, positive, negative, the decided rate with its exact (Clopper-Pearson) 95% interval against the
    nominal 5%, and the verdicts that survive FDR 5%. `rows`: the significance rows of `records`."""
    aa = {r["cell"]: r for r in records if r.get("calibration")}
    if not aa:
        return None
    rows = [row for row in rows if row["cell"] in aa]

    def count(selected: list[dict]) -> dict:
        n, pos = len(selected), sum(row["verdict"] == "positive" for row in selected)
        neg = sum(row["verdict"] == "negative" for row in selected)
        low, high = sps.binomtest(pos + neg, n).proportion_ci(LEVEL, "exact") if n else (float("nan"),) * 2
        return {"gains": n, "positive": pos, "negative": neg, "rate": (pos + neg) / n if n else None,
                "ci_low": float(low), "ci_high": float(high), "fdr_survivors": sum(row["fdr"] for row in selected)}

    strata = {"all gains": rows,
              "target language": [row for row in rows if row["language"] == aa[row["cell"]]["language"]]}
    for model in sorted({parse_cell_id(c).model for c in aa}):
        strata[f"model {model}"] = [row for row in rows if parse_cell_id(row["cell"]).model == model]
    return {"cells": len(aa), "nominal": NOMINAL, "strata": {name: count(sel) for name, sel in strata.items()},
            "mixed": len(aa) != len(records)}
