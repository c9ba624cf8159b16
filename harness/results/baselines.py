"""Baselines: a profile's recorded results (baselines/<profile>.json) and the regression check against them.

File format 2, keys sorted so diffs are readable:
    {"schema": 2, "profile": "tiny", "cells": {CELL_ID: {"cpu-fp32": ENTRY, "cuda-bf16": ENTRY, ...}}}
One entry per device kind and precision, so a GPU run recorded with --update-baselines sits beside the CPU
one. An ENTRY is the subset `FIELDS` of the cell record, with the record's meanings (so tools can read a
baseline file as a set of records), plus `device` (kind: cpu, cuda, mps) and `precision` (fp32, bf16).
Format 1 files (no per-seed gains and test-set standard errors) are refused in one line naming the file.

The check (`judge`) tests the change, not the label. For each language of the baseline, the gain and each
arm's main metric are compared as two independent estimates (harness.results.change.change: both runs' seed
spreads and test-set sampling, Welch's t). A cell makes m = 3 x languages such comparisons, so each uses a
1 - 0.05/m interval (Bonferroni): under no change the whole cell fails at most 5% of the time, not each of its
comparisons. A comparison fails when
- that interval of the change excludes zero and the change is larger than `margin`, or
- the gain's verdict reverses (positive <-> negative, both intervals excluding zero), or
- the language is missing.
The verdicts are read as the summary's tables read them (harness.results.moderation.read_gain: moderated with the
prior of the gain's model, task and metric, or the record's own seed-t verdict where that group has no prior), with
the priors fitted on the baseline file (`priors_of`), so a cell is judged the same alone, under -k, in shards and in
any order. A verdict that moves without such a change is `weakened` when it claims less than before (positive or
negative -> equivalent or inconclusive, equivalent -> inconclusive) or `strengthened` when it claims more: reported,
not failed. A baseline file that still says `neutral` reads it as `inconclusive`. A significant
rise fails too: the code changed what it measures; record it with --update-baselines. Other seeds, another
machine or another precision are "same code, new randomness", which this rule expects to pass.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from tabulate import tabulate

from harness.definitions.grid import ARMS, parse_cell_id
from harness.fileio import atomic_write_text
from harness.results.change import cell_level, change
from harness.results.moderation import fit_priors, group_of, informative, prior_d0, read_gain, task_group
from harness.results.record import OLD_VERDICTS, UNINFORMATIVE, read_json

FORMAT = 2
FIELDS = ("main_metric", "languages", "seeds", "model", "config_key", "metrics", "metrics_per_seed", "metrics_se",
          "gain", "env")
COMPARED_GAIN_FIELDS = ("mean", "ci_low", "ci_high", "verdict", "per_seed", "se_boot")
MARGIN = 0.02  # default --baseline-margin (docs/statistics.md: the baseline check and its calibration)


class BaselineError(Exception):
    """A baseline file that cannot be used (unreadable, corrupt, an older format, another profile); str() names
    the file."""


def baseline_path(folder, profile: str) -> Path:
    return Path(folder) / f"{profile}.json"


def missing_field(entry: dict) -> str | None:
    """The first field (dotted path) that the check needs and `entry` (a record or baseline entry) lacks."""
    if not isinstance(entry, dict):
        return "(the entry is not an object)"
    for name in ("main_metric", "languages", "metrics", "metrics_per_seed", "metrics_se", "gain"):
        if name not in entry:
            return name
    main = entry["main_metric"]
    for lang in entry["gain"]:
        g = entry["gain"][lang]
        for f in COMPARED_GAIN_FIELDS:
            if not isinstance(g, dict) or f not in g:
                return f"gain.{lang}.{f}"
        for arm in ARMS:
            for block in ("metrics", "metrics_per_seed", "metrics_se"):
                try:
                    entry[block][arm][lang][main]
                except (KeyError, TypeError):
                    return f"{block}.{arm}.{lang}.{main}"
    return None


def read_file(path: Path) -> dict:
    """The parsed baseline file (JSON object with 'cells', format 2), of any profile. Raises BaselineError
    naming the file."""
    path = Path(path)
    data = read_json(path, BaselineError, "; fix or delete it")
    if not isinstance(data, dict) or not isinstance(data.get("cells"), dict):
        raise BaselineError(f"{path}: not a baseline file (a JSON object with 'cells' is expected)")
    if data.get("schema") == 1:
        raise BaselineError(f"{path}: baseline format 1 lacks the per-seed gains and test-set standard errors "
                            f"the check needs; move it away and record again with --update-baselines")
    if data.get("schema") != FORMAT:
        raise BaselineError(f"{path}: baseline format {data.get('schema')!r}, this harness reads {FORMAT}")
    for cell_id, entries in data["cells"].items():
        if not isinstance(entries, dict) or not entries:
            raise BaselineError(f"{path}: cell '{cell_id}' holds no entries (an object of DEVICE-PRECISION: entry)")
        for key, e in entries.items():
            problem = missing_field(e) or next((f for f in FIELDS + ("device", "precision") if f not in e), None)
            if problem:
                raise BaselineError(f"{path}: cell '{cell_id}' entry '{key}' field '{problem}' missing")
            for g in e["gain"].values():  # a file that still says `neutral` reads as today's `inconclusive`
                g["verdict"] = OLD_VERDICTS.get(g["verdict"], g["verdict"])
    return data


def load(path: Path, profile: str) -> dict:
    """{cell id: {entry key: entry}} of `profile`; {} when the file does not exist. Raises BaselineError."""
    path = Path(path)
    if not path.exists():
        return {}
    data = read_file(path)
    if data.get("profile") != profile:
        raise BaselineError(f"{path}: baselines of profile {data.get('profile')!r}, this run uses {profile!r}")
    return data["cells"]


def where(record: dict) -> tuple[str, str]:
    """(device kind, precision) a record ran with, e.g. ('cuda', 'bf16')."""
    env = record["env"]
    return str(env["device"]).split(":")[0], env.get("precision", "fp32")


def entry_key(record: dict) -> str:
    return "-".join(where(record))


def entry(record: dict) -> dict:
    device, precision = where(record)
    return {**{k: record[k] for k in FIELDS}, "device": device, "precision": precision}


def update(path: Path, profile: str, records: list[dict]) -> None:
    """Record these cells under their device and precision (replacing only those entries), atomically.

    The file lock serialises concurrent updates (e.g. shards of one grid); an unusable existing file raises
    BaselineError and is left as it is.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(f".{path.name}.lock")):
        cells = load(path, profile)
        for r in records:
            cells.setdefault(r["cell"], {})[entry_key(r)] = entry(r)
        text = json.dumps({"schema": FORMAT, "profile": profile, "cells": cells}, indent=1, sort_keys=True)
        atomic_write_text(path, text + "\n")


def pick(entries: dict, record: dict) -> tuple[dict, str | None]:
    """The entry to check `record` against: its own device and precision, else its precision on another device,
    else another precision; with a note (one line, no cell id) when it is not the record's own precision."""
    device, precision = where(record)
    if f"{device}-{precision}" in entries:
        return entries[f"{device}-{precision}"], None
    same = sorted(k for k, e in entries.items() if e["precision"] == precision)
    if same:
        return entries[same[0]], None
    key = sorted(entries)[0]
    other = entries[key]
    return other, f"no {precision} baseline, checked against the {other['device']} {other['precision']} one"


# ---------------------------------------------------------------- the rule

def _estimate(block: dict, arm: str, lang: str, main: str) -> dict:
    return {"mean": block["metrics"][arm][lang][main], "per_seed": block["metrics_per_seed"][arm][lang][main],
            "se_boot": block["metrics_se"][arm][lang][main]}


def _reversed(old: str, new: str) -> bool:
    return {old, new} == {"positive", "negative"}


# how much a verdict claims: nothing, no effect beyond the margin, an effect of a sign
_CLAIM = {"inconclusive": 0, UNINFORMATIVE: 0, "equivalent": 1, "positive": 2, "negative": 2}


def _moved(old: str, new: str) -> str:
    """A verdict that moved without a significant change of its gain: `weakened` when it claims less than before
    (positive -> inconclusive, positive -> equivalent, equivalent -> inconclusive), else `strengthened`."""
    return "weakened" if _CLAIM.get(new, 0) < _CLAIM.get(old, 0) else "strengthened"


def _outcome(change: dict, margin: float) -> str:
    return "fail" if change["significant"] and abs(change["change"]) > margin else "ok"


def priors_of(cells: dict) -> dict[str, dict]:
    """Seed-variance priors of the gains (harness.results.moderation.fit_priors) fitted across every entry of
    `cells` ({cell id: {entry key: entry}}, a baseline file's cells), two kinds in one dict: per task and main
    metric (keys of moderation.task_group, e.g. `sentiment (accuracy)`): the prior with which the check's change
    test moderates both runs' seed variances of a gain (`gain_prior`); and per model, task and main metric (keys of
    moderation.group_of, `bert-sentiment (accuracy)`, the summary's groups): the prior with which both runs' verdicts
    are read (`verdict_prior`). Fixed by the baseline file, so a cell is judged the same alone, under -k, in
    shards and in any order."""
    triples = []
    for cell, entries in cells.items():
        try:
            parsed = parse_cell_id(cell)
        except ValueError:
            continue
        for e in entries.values():
            for g in e["gain"].values():
                if informative(g):
                    triples += [(task_group(parsed.task, e["main_metric"]), cell, g["per_seed"]),
                                (group_of(parsed.model, parsed.task, e["main_metric"]), cell, g["per_seed"])]
    return fit_priors(triples)


def gain_prior(priors: dict, cell: str, main_metric: str) -> tuple[float, float] | None:
    """(d0, s0^2) of a cell's gains from `priors_of`, or None (no prior: the unmoderated change test)."""
    try:
        parsed = parse_cell_id(cell)
        prior = priors.get(task_group(parsed.task, main_metric))
    except ValueError:
        return None
    return None if prior is None else (prior_d0(prior), prior["s0"] ** 2)


def verdict_prior(priors: dict, cell: str, main_metric: str) -> dict | None:
    """The prior (a fit_priors value) with which a cell's verdicts are read, from `priors_of`: that of its model,
    task and metric (moderation.group_of, as in the summary), or None (the record's own seed-t verdicts)."""
    try:
        parsed = parse_cell_id(cell)
    except ValueError:
        return None
    return priors.get(group_of(parsed.model, parsed.task, main_metric))


def judge(old: dict, new: dict, margin: float = MARGIN, prior: tuple[float, float] | None = None,
          verdicts: dict | None = None) -> list[dict]:
    """One row per language of `old` and per quantity (the gain, each arm's main metric): `what`, the two
    values, the `change` (harness.results.change.change at `cell_level`; the gain's with the seed-variance
    `prior` when given, see priors_of) and the `outcome`: ok, fail, weakened or strengthened. Reversed, weakened
    and strengthened compare the two gains' verdicts under the tables' rule (moderation.read_gain with the prior
    `verdicts`, see verdict_prior; None: the records' own seed-t verdicts); a gain row's `old` and `new` are those
    read gains, each with its `rule`."""
    rows, main = [], old["main_metric"]
    level = cell_level(len(old["languages"]))
    for lang in old["languages"]:
        if lang not in new["gain"]:
            rows.append({"language": lang, "what": "language", "old": "present", "new": "missing", "change": None,
                         "outcome": "fail", "why": "missing"})
            continue
        og, ng = read_gain(old["gain"][lang], verdicts), read_gain(new["gain"][lang], verdicts)
        c = change(og, ng, level, prior)
        outcome, why = _outcome(c, margin), "significant change"
        if _reversed(og["verdict"], ng["verdict"]):
            outcome, why = "fail", "verdict reversed"
        elif outcome == "ok" and og["verdict"] != ng["verdict"]:
            outcome = _moved(og["verdict"], ng["verdict"])
        rows.append({"language": lang, "what": "gain", "old": og, "new": ng, "change": c, "outcome": outcome,
                     "why": why if outcome == "fail" else ""})
        for arm in ARMS:
            c = change(_estimate(old, arm, lang, main), _estimate(new, arm, lang, main), level)
            rows.append({"language": lang, "what": f"{arm} {main}", "old": old["metrics"][arm][lang][main],
                         "new": new["metrics"][arm][lang][main], "change": c, "outcome": _outcome(c, margin),
                         "why": "significant change" if _outcome(c, margin) == "fail" else ""})
    return rows


def value_text(value) -> str:
    if isinstance(value, dict):
        rule = f" ({value['rule']})" if value.get("rule") else ""
        return f"{value['verdict']} {value['mean']:+.3f} [{value['ci_low']:+.3f}, {value['ci_high']:+.3f}]{rule}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def change_text(c: dict | None) -> str:
    return "-" if c is None else f"{c['change']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}] ({c['level']:.1%})"


def rows_table(rows: list[dict], cell: bool = False) -> str:
    lines = [([r["cell"]] if cell else []) + [r["language"], r["what"], value_text(r["old"]), value_text(r["new"]),
                                              change_text(r["change"]), r["why"] or r["outcome"]] for r in rows]
    return tabulate(lines, headers=(["cell"] if cell else []) + ["lang", "what", "baseline", "now",
                                                                 "change [interval]", "outcome"],
                    disable_numparse=True)


@dataclass
class Check:
    """The baseline check of one cell. status: ok; changed (a failure: the message is a table of what
    failed); new (no baseline for the cell). moved: weakened/strengthened rows; note: which entry was used
    when none of the run's precision exists."""
    status: str
    message: str
    moved: list = field(default_factory=list)
    note: str | None = None


def check(record: dict, cells: dict, path: Path, margin: float = MARGIN, priors: dict | None = None) -> Check:
    """The check of a cell record against the baseline entries `cells` read from `path`; `priors`: priors_of
    `cells` (computed here when not given): the change test's prior and the verdicts' (judge)."""
    cell = record["cell"]
    if cell not in cells:
        return Check("new", f"{cell}: no baseline in {path}; record one with --update-baselines")
    base, note = pick(cells[cell], record)
    priors = priors_of(cells) if priors is None else priors
    rows = [{**r, "cell": cell} for r in judge(base, record, margin, gain_prior(priors, cell, base["main_metric"]),
                                               verdict_prior(priors, cell, base["main_metric"]))]
    failed = [r for r in rows if r["outcome"] == "fail"]
    moved = [r for r in rows if r["outcome"] in ("weakened", "strengthened")]
    moved = [[cell, r["language"], r["outcome"], value_text(r["old"]), value_text(r["new"]), change_text(r["change"])]
             for r in moved]
    if not failed:
        return Check("ok", f"{cell}: as recorded in {path}", moved, note)
    return Check("changed", f"{cell}: differs from {path} (margin {margin:g})\n{rows_table(failed)}", moved, note)
