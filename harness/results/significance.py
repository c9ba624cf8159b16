"""The significance of a run's gains, across its records: each gain's p-value under its rule
(harness.results.analysis.moderate), its Benjamini-Hochberg q-value across every gain of the run (`q_values`),
whether its verdict survives a false discovery rate of FDR (`fdr`), its minimum detectable change and the seeds
that would decide it (harness.results.change.seeds_needed). The summary (harness.output.summary) shows these
rows and marks the verdicts that survive FDR in every table.
"""
from __future__ import annotations

import numpy as np
from scipy import stats as sps

from harness.results import analysis
from harness.results.baselines import MARGIN
from harness.results.change import MAX_SEEDS, seeds_needed
from harness.results.moderation import group_of, prior_d0
from harness.results.record import GAIN_FIELDS

FDR = 0.05


def q_values(p_values) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: a verdict with q < 0.05 belongs to a set of verdicts of which at
    most 5% are expected to be false discoveries."""
    p = np.asarray(p_values, dtype=float)
    return sps.false_discovery_control(p, method="bh") if p.size else p


def _seeds_needed(g: dict, effect: float, priors: dict, group: str):
    """Seeds with which a gain of size `effect` is decided with 80% power (harness.results.change.seeds_needed):
    an int, `>MAX` when even MAX seeds do not reach it, None without per-seed gains or test-set error."""
    if len(g.get("per_seed") or []) < 2 or g.get("se_boot") is None:
        return None
    if g.get("rule") == analysis.MODERATED:
        var, d0 = g["seed_sd"] ** 2, prior_d0(priors[group])
    else:
        var, d0 = float(sum((x - g["mean"]) ** 2 for x in g["per_seed"]) / (len(g["per_seed"]) - 1)), 0.0
    k = seeds_needed(effect, g["se_boot"], var, d0)
    return f">{MAX_SEEDS}" if k is None else k


def significance(records: list[dict], moderated: dict | None = None, margin: float | None = None
                 ) -> tuple[list[dict], dict]:
    """Per cell and language: the gain under its rule (harness.results.analysis.moderate), its p-value, the BH
    q-value across all gains of these records that carry a p-value, whether its verdict survives FDR 5% (`fdr`),
    the minimum detectable change and the seeds that would decide a gain of its size and of `margin` with 80%
    power; and the count of verdicts that survive FDR 5% (the same `fdr` flags the tables mark)."""
    moderated = moderated or analysis.moderate(records)
    margin = MARGIN if margin is None else margin
    rows = []
    for r in sorted(records, key=lambda r: r["cell"]):
        group = group_of(r["task"], r["main_metric"])
        for lang in r["languages"]:
            g = moderated["gains"][r["cell"]][lang]
            rows.append({"cell": r["cell"], "language": lang, **{f: g[f] for f in GAIN_FIELDS},
                         "p_value": g.get("p_value"), "mdc": g.get("mdc"), "q_value": None, "fdr": False,
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
