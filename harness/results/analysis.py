"""Every statistic of the harness, computed from per-example predictions or from the records:
- `cell_statistics`: a cell's own (when its record is written): each arm's test-set standard error, the gain
  per language with its interval, p-value and minimum detectable change, and `uninformative` verdicts;
- `robustness`: across cells over their saved predictions, done when a summary is built (end of run, `report`,
  `merge`): the robustness of a gain to domain shift. A cell never reads another cell's files; this runs after
  them, so `-k` subsets, shards and reruns in any order get the same numbers;
- `moderate`: across cells from their records, when a summary is built: each gain re-read with a seed variance
  that borrows strength from the run's other gains of the same task (limma's moderated t, Smyth 2004; the rule
  `moderated`), or, where that is not possible, as the cell recorded it (today's rule, `seed-t`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.definitions.grid import ARMS, GENERAL, parse_cell_id
from harness.definitions.metrics import single_class
from harness.results import bootstrap, moderation
from harness.results.change import cell_detectable
from harness.results.record import FROZEN, UNINFORMATIVE, CellRecord, Interval, RecordError, load_predictions

UNINFORMATIVE_NOTE = ("both arms predict one and the same class for every test example in every seed: the gain "
                      "says nothing about transfer")


def cell_statistics(record: dict, arrays: dict) -> dict:
    """`record` (a cell's trained fields: harness.running.cell) with `metrics_se` and `gain` added, computed from
    its predictions `arrays` (`y_true/LANG`, `ARM/LANG`: seeds x examples). Random streams: stream_seed of the
    cell, language (and arm), so the numbers do not depend on which other cells ran."""
    cell, main, languages = record["cell"], record["main_metric"], record["languages"]
    margin = float(record.get("margin", 0.0))
    classes = record["data"]["target"].get("labels") is not None
    metrics_se, gains = {arm: {} for arm in ARMS}, {}
    floored = all(f"{FROZEN}/{lang}" in arrays for lang in languages)
    below = [] if floored else None
    for lang in languages:
        y_true = arrays[f"y_true/{lang}"]
        for arm in ARMS:
            metrics_se[arm][lang] = {main: bootstrap.metric_se(y_true, np.asarray(arrays[f"{arm}/{lang}"]), main,
                                                               bootstrap.stream_seed(cell, lang, arm))}
        if floored:
            metrics_se.setdefault(FROZEN, {})[lang] = {main: bootstrap.metric_se(
                y_true, np.asarray(arrays[f"{FROZEN}/{lang}"]), main, bootstrap.stream_seed(cell, lang, FROZEN))}
            below += floor_differences(cell, lang, main, y_true, arrays)
        direct, inter = list(arrays[f"direct/{lang}"]), list(arrays[f"intermediate/{lang}"])
        gain = bootstrap.gain(bootstrap.arms(y_true, direct, inter), main, bootstrap.stream_seed(cell, lang),
                              margin=margin)
        gain["margin"] = margin
        gain["mdc"] = cell_detectable(gain, len(languages))
        if classes and single_class(direct + inter):
            gain.update(verdict=UNINFORMATIVE, note=UNINFORMATIVE_NOTE)
        gains[lang] = gain
    return {**record, "metrics_se": metrics_se, "gain": gains, **({"below_floor": below_floor(below)} if floored else {})}


def floor_differences(cell: str, lang: str, main: str, y_true, arrays: dict) -> list[dict]:
    """Each arm's main metric minus the frozen floor's on this test set, with the paired bootstrap of a gain (the
    floor as the `direct` side, repeated for every seed: the same resampled examples score both)."""
    out = []
    for arm in ARMS:
        runs = np.atleast_2d(np.asarray(arrays[f"{arm}/{lang}"]))
        floor = np.repeat(np.atleast_2d(np.asarray(arrays[f"{FROZEN}/{lang}"])), len(runs), axis=0)
        diff = bootstrap.gain(bootstrap.arms(y_true, floor, runs), main,
                              bootstrap.stream_seed(cell, lang, arm, FROZEN))
        out.append({"arm": arm, "language": lang, **{k: diff[k] for k in ("mean", "ci_low", "ci_high", "p_value")}})
    return out


def below_floor(differences: list[dict]) -> list[dict]:
    """The arm x language pairs significantly below the floor, corrected for the cell's multiplicity: a cell makes
    2 x languages comparisons (24 on SIB-200), so at 5% each about one false `below` per cell would be expected.
    Listed are those below zero whose Benjamini-Hochberg q-value across the cell's comparisons is under 5%."""
    q = bootstrap.q_values([d["p_value"] for d in differences])
    return [{**d, "q_value": float(qv)} for d, qv in zip(differences, q) if d["mean"] < 0 and qv < bootstrap.FDR]



def _model(record: CellRecord) -> str:
    return parse_cell_id(record["cell"]).model


def _incomparable(general: CellRecord, shifted: CellRecord) -> str | None:
    """Why two records cannot be paired seed by seed (their seed j must share the intermediate model), or None."""
    for field in ("seeds", "hyperparameters", "main_metric"):
        if general.get(field) != shifted.get(field):
            return f"{field} differ"
    keys = [[m.get("key") for m in r.get("intermediate") or []] for r in (general, shifted)]
    if keys[0] != keys[1] or general.get("intermediate_key") != shifted.get("intermediate_key"):
        return "intermediate models differ"
    return None


def robustness(results_dir: Path, records: list[CellRecord]) -> tuple[dict[str, dict[str, Interval]], list[str]]:
    """gain(domain) - gain(general) with its interval, per shifted-domain record and language, from the
    predictions of both cells under `results_dir`: ({cell id: {language: interval}}, one note per pair of
    records that has none). Same random streams as always (bootstrap.stream_seed of the shifted cell)."""
    by_id = {r["cell"]: r for r in records}
    out, notes = {}, []
    for shifted in sorted(records, key=lambda r: r["cell"]):
        general = by_id.get(f"{_model(shifted)}-{shifted['task']}-{GENERAL}")
        if shifted["domain"] == GENERAL or general is None:
            continue
        why = _incomparable(general, shifted)
        try:
            saved = [load_predictions(results_dir, r["cell"]) for r in (general, shifted)]
        except RecordError as err:
            why = why or str(err)
            saved = [None, None]
        if why is None and None in saved:
            why = f"no predictions of {(general, shifted)[saved.index(None)]['cell']}"
        intervals = {}
        if why is None:
            try:
                intervals = _intervals(shifted, *saved)
            except (KeyError, ValueError) as err:  # predictions files that do not match their records
                why = f"predictions do not match the records ({err})"
        if intervals:
            out[shifted["cell"]] = intervals
        else:
            notes.append(f"{shifted['cell']}: robustness without interval ({why or 'no test language in common'})")
    return out, notes


def _intervals(shifted: CellRecord, general_saved: dict, shifted_saved: dict) -> dict[str, Interval]:
    out = {}
    for lang in shifted["languages"]:
        if f"y_true/{lang}" in general_saved and f"y_true/{lang}" in shifted_saved:
            base, here = (bootstrap.arms(s[f"y_true/{lang}"], s[f"direct/{lang}"], s[f"intermediate/{lang}"])
                          for s in (general_saved, shifted_saved))
            out[lang] = bootstrap.robustness(base, here, shifted["main_metric"],
                                             bootstrap.stream_seed(shifted["cell"], lang, "robustness"))
    return out


MODERATED, SEED_T = moderation.MODERATED, moderation.SEED_T  # the rules an interval comes from (docs/statistics.md)


def _usable(gain: dict) -> bool:
    return isinstance(gain.get("per_seed"), list) and "se_boot" in gain


def group(record: CellRecord) -> str:
    """The prior a record's gains share (harness.results.moderation.group_of)."""
    return moderation.group_of(_model(record), record["task"], record["main_metric"])


def moderate(records: list[CellRecord]) -> dict:
    """Every gain of `records` under the moderated rule where it applies: {"gains": {cell: {language: gain}},
    "priors": {group: prior}, "notes": [one line per fallback]}. Each gain keeps the record's fields and gets
    `rule` (MODERATED or SEED_T) and, moderated, `seed_sd` and `df`; the interval, verdict and p-value are the
    rule's. A prior per model, task and main metric (harness.results.moderation.fit_priors) needs MIN_CELLS cells with a
    seed spread; without it (a cell run alone, one seed) or without per-seed gains, a gain keeps the record's
    interval and bootstrap p-value (today's rule), and a note says so. Deterministic: the same records in any order give
    the same answer."""
    records = sorted(records, key=lambda r: r["cell"])
    priors = moderation.fit_priors((group(r), r["cell"], g["per_seed"]) for r in records for g in r["gain"].values()
                                   if _usable(g) and moderation.informative(g))
    gains, notes, alone = {}, [], {}
    for r in records:
        prior, out, lacking = priors.get(group(r)), {}, []
        for lang in r["languages"]:
            g = r["gain"][lang]
            out[lang] = moderation.read_gain(g, prior)  # the rule the baseline check reads verdicts with too
            if not _usable(g):
                lacking.append(lang)
        if lacking:
            notes.append(f"{r['cell']}: no per-seed gains or se_boot in {', '.join(lacking)}: today's rule "
                         f"({SEED_T}) for {'that gain' if len(lacking) == 1 else 'those gains'}")
        elif prior is None and len(r["seeds"]) > 1:
            alone.setdefault(group(r), []).append(r["cell"])
        gains[r["cell"]] = out
    for name, cells in sorted(alone.items()):
        notes.append(f"{name}: {len(cells)} cell(s) with a seed spread, a prior needs {moderation.MIN_CELLS}: "
                     f"today's rule ({SEED_T}) for {', '.join(cells)}")
    return {"gains": gains, "priors": priors, "notes": notes}

