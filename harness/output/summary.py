"""Tables and plots of a run's cell records: the `report` command and the end-of-run summary files.

Every output is rendered from one JSON-ready summary (`summarise`), so the formats cannot disagree:
- main table: rows model, columns task x domain, entry `frozen / direct / +intermediate / gain (verdict)` in the
  cell's own (target) language and main metric (frozen: the untrained floor, harness.running.probe); the best
  model per column (highest score of either arm) marked;
- cross-lingual: the gain per language of each cell and its mean over the cell's other languages (zero-shot);
- robustness to domain shift: gain(domain) - gain(general) per model, task and language, with the interval
  that harness.results.analysis computes from the two cells' saved predictions, else (no predictions, another
  configuration) the difference of the two gains without an interval, and a note why;
- cost: seconds and examples/s per phase per cell, and the total; tuning trials per arm, and the optimizer steps
  behind each arm's evaluated model (the intermediate arm's include the intermediate task's).
- significance, as harness.results.significance computes it: per cell and language the gain under its rule
  (harness.results.analysis.moderate: the moderated seed variance, or the cell's own interval), its p-value and
  Benjamini-Hochberg q-value across every gain of the run, its minimum detectable change under that rule (the
  smallest true gain its verdict calls with 80% power), the seeds that would decide it, and how many verdicts
  survive a 5% false discovery rate: the same flags that put FDR_MARK on the verdicts of every table;
- weakened / strengthened: verdicts that claim less / more than against the baseline
  without a significant change (passed on by the pytest plugin; reported, not failed).
An entry whose arm was flagged by the convergence check (record `under_trained`) carries UNDER_TRAINED_MARK; one
with an arm significantly below the frozen floor (record `below_floor`) BELOW_FLOOR_MARK, and the summary counts
those arms ("N of M arms below the frozen model").
A cell of the grid (models seen x task-domain columns seen) without a record is `missing`, never zero.
"""
from __future__ import annotations

from pathlib import Path

from harness.definitions.grid import ARMS, DOMAINS, GENERAL, MODELS, TASKS, parse_cell_id
from harness.results import analysis
from harness.results.bootstrap import FDR
from harness.results.moderation import D0_MAX
from harness.results.record import GAIN_FIELDS
from harness.results.significance import calibration, significance

MISSING = "missing"
PHASES = ("load", "intermediate", "train", "eval")
BEST_NOTE = "best model per column (highest score of either arm)"
UNDER_TRAINED_MARK = "\u2020"
UNDER_TRAINED_NOTE = (f"{UNDER_TRAINED_MARK} an arm's validation score was still rising at its last epoch: it may be "
                      "under-trained, so the verdict may reflect training rather than transfer.")
BELOW_FLOOR_MARK = "\u00a7"
BELOW_FLOOR_NOTE = (f"{BELOW_FLOOR_MARK} an arm is significantly below the frozen model (paired bootstrap): it lost "
                    "what the pretrained model knew, so a gain there is repair, not transfer.")


# ---------------------------------------------------------------- summary (the one source of every format)

def _ordered(values, preferred) -> list:
    """Known names in their canonical order, then any others (spec domains) alphabetically."""
    values = set(values)
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def layout(records: list[dict], expected=()) -> dict:
    """The grid: models x (task, domain) columns seen in the records or in the `expected` cell ids (such as
    those of unreadable record files, so that they show as missing), and the languages."""
    cells = [parse_cell_id(r["cell"]) for r in records]
    for cell_id in expected:
        try:
            cells.append(parse_cell_id(cell_id))
        except ValueError:
            continue  # a file name that is no cell id: its error line already names it
    tasks = _ordered({c.task for c in cells}, TASKS)
    domains = _ordered({c.domain for c in cells}, DOMAINS)
    pairs = {(c.task, c.domain) for c in cells}
    langs: list[str] = []
    for r in sorted(records, key=lambda r: r["cell"]):
        langs += [x for x in r["languages"] if x not in langs]
    return {"models": _ordered({c.model for c in cells}, MODELS),
            "columns": [{"task": t, "domain": d} for t in tasks for d in domains if (t, d) in pairs],
            "languages": langs}


def _cost(record: dict) -> dict:
    t = record["timings"]
    trained = [i for i in record.get("intermediate") or [] if i.get("trained_here") and i.get("examples_per_s")]
    inter_s = sum(i["seconds"] for i in trained)
    cost = {f"{p}_s": float(t.get(f"{p}_s", 0.0)) for p in PHASES}
    cost["validation_s"] = float(t.get("validation_s", 0.0))
    budget, tuned = record.get("budget") or {}, record.get("tuning")
    cost.update(total_s=float(t.get("total_s", sum(cost.values()))),
                trials=tuned["trials_per_arm"] if tuned else None,
                direct_steps=(budget.get("direct") or {}).get("total_steps"),
                intermediate_steps=(budget.get("intermediate") or {}).get("total_steps"),
                intermediate_examples_per_s=(sum(i["examples_per_s"] * i["seconds"] for i in trained) / inter_s
                                             if inter_s > 0 else None),
                train_examples_per_s=t.get("train_examples_per_s"), eval_examples_per_s=t.get("eval_examples_per_s"))
    return cost


def _score(record: dict) -> float:
    main, lang = record["main_metric"], record["language"]
    return max(record["metrics"][arm][lang][main] for arm in ARMS)


def _cell_entry(model: str, task: str, domain: str, record: dict | None, metric_of: dict) -> dict:
    entry = {"cell": f"{model}-{task}-{domain}", "model": model, "task": task, "domain": domain}
    if record is None:
        return {**entry, "status": MISSING, "main_metric": metric_of.get(task)}
    lang, others = record["language"], [x for x in record["languages"] if x != record["language"]]
    xl = [record["gain"][x]["mean"] for x in others]
    return {**entry, "status": "ok", "profile": record["profile"], "checkpoint": record["model"],
            "seeds": len(record["seeds"]), "main_metric": record["main_metric"], "language": lang,
            "languages": list(record["languages"]), "metrics": record["metrics"], "gain": record["gain"],
            "cross_lingual_mean": sum(xl) / len(xl) if xl else None, "best": False, "cost": _cost(record),
            "tuned": bool(record.get("tuning")), "under_trained": list(record.get("under_trained") or []),
            "below_floor": list(record.get("below_floor") or [])}


def _mark_best(entries: list[dict], by_id: dict) -> None:
    for column in {(e["task"], e["domain"]) for e in entries}:
        present = [e for e in entries if (e["task"], e["domain"]) == column and e["status"] == "ok"]
        if present:
            top = max(_score(by_id[e["cell"]]) for e in present)
            for e in present:
                e["best"] = _score(by_id[e["cell"]]) >= top - 1e-12


def _robustness(grid: dict, by_id: dict, intervals: dict) -> list[dict]:
    """gain(domain) - gain(general) per model, task, shifted domain and language."""
    rows = []
    for model in grid["models"]:
        for col in grid["columns"]:
            task, domain = col["task"], col["domain"]
            if domain == GENERAL or {"task": task, "domain": GENERAL} not in grid["columns"]:
                continue
            shifted, general = by_id.get(f"{model}-{task}-{domain}"), by_id.get(f"{model}-{task}-{GENERAL}")
            langs = (shifted or general or {}).get("languages") or grid["languages"]
            for lang in langs:
                rows.append({"model": model, "task": task, "domain": domain, "language": lang,
                             **_shift(shifted, general, lang, intervals)})
    return rows


def _shift(shifted: dict | None, general: dict | None, lang: str, intervals: dict) -> dict:
    empty = dict.fromkeys(GAIN_FIELDS)
    if shifted is None or general is None or lang not in shifted["gain"] or lang not in general["gain"]:
        return {**empty, "source": MISSING}
    analysed = intervals.get(shifted["cell"], {}).get(lang)
    if analysed:
        return {**{f: analysed[f] for f in GAIN_FIELDS}, "source": "predictions"}
    return {**empty, "mean": shifted["gain"][lang]["mean"] - general["gain"][lang]["mean"], "source": "computed"}


def _cost_total(entries: list[dict]) -> dict:
    costs = [e["cost"] for e in entries if e["status"] == "ok"]
    total = {k: sum(c[k] for c in costs) for k in ("load_s", "intermediate_s", "train_s", "validation_s", "eval_s",
                                                   "total_s")}
    total.update(trials=None, direct_steps=None, intermediate_steps=None)
    for phase in ("intermediate", "train", "eval"):
        timed = [c for c in costs if c[f"{phase}_examples_per_s"] is not None and c[f"{phase}_s"] > 0]
        seconds = sum(c[f"{phase}_s"] for c in timed)
        total[f"{phase}_examples_per_s"] = (sum(c[f"{phase}_examples_per_s"] * c[f"{phase}_s"] for c in timed)
                                            / seconds if seconds > 0 else None)
    return total


FDR_MARK = "\u2021"
FDR_NOTE = (f"{FDR_MARK} the verdict survives FDR {FDR:.0%} (Benjamini-Hochberg across the run's gains); a verdict "
            "without it is called at 5% per gain")


def floor_count(records: list[dict]) -> dict:
    """Arms below the frozen floor: in their cell's target language (`below`, of `arms` arms of cells with a
    floor) and over every test language (`arm_languages`)."""
    floored = [r for r in records if "frozen" in r["metrics"]]
    below = {(r["cell"], b["arm"]) for r in floored for b in r.get("below_floor") or [] if b["language"] == r["language"]}
    return {"below": len(below), "arms": len(ARMS) * len(floored),
            "arm_languages": sum(len(r.get("below_floor") or []) for r in floored)}


def floor_line(floor: dict) -> str:
    if not floor["arms"]:
        return "no record has a frozen floor"
    return (f"{floor['below']} of {floor['arms']} arms below the frozen model in their target language "
            f"({floor['arm_languages']} arm x language pairs below it in all)")


def fdr_mark(g: dict) -> str:
    """FDR_MARK on a verdict that survives FDR 5% (summary `fdr`), else nothing."""
    return FDR_MARK if g.get("fdr") else ""


def fdr_line(fdr: dict) -> str:
    if not fdr["gains"]:
        return "no gain carries a p-value: no false discovery rate"
    return (f"{fdr['survive']} of {fdr['verdicts']} verdicts survive FDR {fdr['level']:.0%} "
            f"(Benjamini-Hochberg across {fdr['gains']} gains; marked {FDR_MARK})")


def one_seed_line(cells: list[str]) -> str:
    """The caveat of the cells that ran one seed ('' when none did): their intervals hold the test set's sampling
    only, so a verdict there is about the two trained models, not about intermediate training."""
    if not cells:
        return ""
    return (f"{len(cells)} cell(s) ran one seed: intervals of test-set sampling only, verdicts about these trained "
            f"models, not the method (3+ seeds for that)")


CALIBRATION_NOTE = ("CALIBRATION RUN (A/A, --calibration): the intermediate arm is a second direct arm with its own "
                    "seeds, so every true gain is 0 and every positive or negative verdict is a false positive; no "
                    "baseline was checked or written")


def calibration_lines(summary: dict) -> list[str]:
    """An A/A run's verdict counts, a line per stratum (nothing for a run that is not one)."""
    cal = summary.get("calibration")
    if not cal:
        return []
    lines = [CALIBRATION_NOTE + (" (the results folder also holds other records: only the A/A ones are counted)"
                                 if cal["mixed"] else "") + "."]
    for name, c in cal["strata"].items():
        rate = "-" if c["rate"] is None else f"{c['rate']:.1%} [{c['ci_low']:.1%}, {c['ci_high']:.1%}]"
        lines.append(f"{name}: {c['positive'] + c['negative']} of {c['gains']} gains decided ({c['positive']} "
                     f"positive, {c['negative']} negative): {rate} against the nominal {cal['nominal']:.0%}; "
                     f"{c['fdr_survivors']} survive FDR {FDR:.0%}")
    return lines


def sequential_block(records: list[dict]) -> list[dict]:
    """Per cell run with --seeds auto:MAX: its looks (seeds, level, the target-language verdict and interval at each),
    why it stopped, the seeds it trained and its training seconds."""
    out = []
    for r in sorted(records, key=lambda r: r["cell"]):
        block = r.get("sequential")
        if block:
            out.append({"cell": r["cell"], "language": r["language"], "max_seeds": block["max_seeds"],
                        "seeds": len(r["seeds"]), "stopped": block["stopped"], "looks": block["looks"],
                        "seconds": (r.get("timings") or {}).get("total_s")})
    return out


def sequential_lines(summary: dict) -> list[str]:
    """A line per cell of a --seeds auto run (nothing otherwise): the looks it took and how it stopped."""
    lines = []
    for c in summary.get("sequential") or []:
        looks = ", ".join(f"{lk['seeds']} seeds at {lk['level']:.4f}: {lk['verdict']} {lk['mean']:+.3f} "
                          f"[{lk['ci_low']:+.3f}, {lk['ci_high']:+.3f}]" for lk in c["looks"])
        took = f"; {c['seconds']:.0f} s" if c.get("seconds") is not None else ""
        lines.append(f"{c['cell']} ({c['language']}): {looks}; stopped: {c['stopped']} with {c['seeds']} of at most "
                     f"{c['max_seeds']} seeds{took}")
    return lines


def moderation_lines(moderation: dict) -> list[str]:
    """One line per fitted prior and per fallback (harness.results.analysis.moderate)."""
    lines = []
    for group, p in sorted(moderation["priors"].items()):
        fitted = "inf" if p["d0_fitted"] is None else f"{p['d0_fitted']:.1f}"
        lines.append(f"{group}: moderated seed variance, prior s0 {p['s0']:.3f} on d0 {p['d0']:.1f} degrees of "
                     f"freedom (fitted {fitted}, capped at {D0_MAX:g}) from {p['gains']} gains of {p['cells']} cells")
    return lines + list(moderation["notes"])


def summarise(records: list[dict], errors: list[str] = (), expected=(), robustness: dict | None = None,
              notes: list[str] = (), moved=(), margin: float | None = None) -> dict:
    """Everything the tables and the plot show, as plain JSON-ready data (the `json` format prints it).

    `expected`: cell ids that belong to the grid even without a usable record (shown as missing).
    `robustness`, `notes`: harness.results.analysis.robustness of the records (see `build`); without them every
    robustness entry is the difference of two gains. `moved`: rows of verdicts weakened / strengthened against
    the baseline (cell, language, outcome, baseline, now, change). Gains are those of
    harness.results.analysis.moderate (the rule in each gain's `rule`), with `fdr` marking the verdicts that
    survive FDR 5%; `margin`: the --baseline-margin of the significance table's seeds column."""
    moderation = analysis.moderate(records)
    gains, fdr = significance(records, moderation, margin)
    records = [{**r, "gain": moderation["gains"][r["cell"]]} for r in records]
    by_id = {r["cell"]: r for r in records}
    grid = layout(records, expected)
    metric_of = {r["task"]: r["main_metric"] for r in records}  # not harness.definitions.metrics: scipy costs a second
    entries = [_cell_entry(m, c["task"], c["domain"], by_id.get(f"{m}-{c['task']}-{c['domain']}"), metric_of)
               for m in grid["models"] for c in grid["columns"]]
    _mark_best(entries, by_id)
    return {"schema": 1, "profiles": sorted({r["profile"] for r in records}),
            "seeds": sorted({len(r["seeds"]) for r in records}),
            "precisions": sorted({r.get("env", {}).get("precision", "fp32") for r in records}),
            "one_seed": sorted(r["cell"] for r in records if len(r["seeds"]) == 1), "layout": grid,
            "cells_present": sum(e["status"] == "ok" for e in entries), "cells": entries,
            "robustness": _robustness(grid, by_id, robustness or {}), "robustness_notes": list(notes),
            "significance": gains, "fdr": fdr, "floor": floor_count(records),
            "moderation": {"priors": moderation["priors"], "notes": moderation["notes"]},
            "calibration": calibration(records, gains), "sequential": sequential_block(records),
            "baseline_moved": [list(m) for m in moved],
            "cost_total": _cost_total(entries), "errors": list(errors)}


def build(results_dir: Path, records: list[dict], errors: list[str] = (), expected=(), moved=(),
          margin: float | None = None) -> dict:
    """The summary of `records`, with robustness intervals analysed from the predictions under `results_dir`."""
    intervals, notes = analysis.robustness(results_dir, records)
    return summarise(records, errors, expected, intervals, notes, moved, margin)

