"""Compare the gains of two runs (results directories or baseline files), cell by cell and language by language.

Significance of a change: each side gives a gain and its 95% interval. The interval's half-width over
z = 1.96 is read as that gain's standard error (normal approximation; the bootstrap percentile intervals
are near-symmetric for these sample sizes), and the two sides are treated as independent, so the change
new - old has standard error sqrt(se_old^2 + se_new^2) and 95% interval change +/- 1.96 * that. The change
is significant when that interval excludes zero. Two runs scored on the same test examples are positively
correlated, so assuming independence overstates the variance: the test is conservative.
"""
from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist

from tabulate import tabulate

from harness import baselines
from harness.record import cells_dir, gain_text, gains_problem, load_records

Z = NormalDist().inv_cdf(0.975)


class SourceError(Exception):
    """A results directory or baseline file that cannot be read at all; str() names it."""


def _baseline(path: Path) -> tuple[dict, list[str]]:
    try:
        data = baselines.read_file(path)
    except baselines.BaselineError as err:
        raise SourceError(str(err)) from None
    cells, errors = {}, []
    for cell_id, entry in sorted(data["cells"].items()):
        problem = gains_problem(entry)
        if problem:
            errors.append(f"{path}: cell '{cell_id}' {problem}")
        else:
            cells[cell_id] = {**entry, "cell": cell_id}
    return cells, errors


def load_source(path) -> tuple[dict, list[str]]:
    """Records by cell id of a results directory or a baseline file, and one error line per bad record.

    Raises SourceError when there is nothing to compare: no such path, no records, an unreadable baseline.
    """
    path = Path(path)
    if path.is_file():
        cells, errors = _baseline(path)
    elif path.is_dir():
        records, errors = load_records(path)
        cells = {r["cell"]: r for r in records}
    else:
        raise SourceError(f"{path}: no such results directory or baseline file")
    if not cells and not errors:
        raise SourceError(f"{path}: no cell records (expected {cells_dir(path)}/*.json or a baseline file)")
    return cells, errors


def change(old: dict, new: dict) -> dict:
    """new - old with a 95% interval from the two intervals (independent, normal approximation)."""
    se = math.hypot((old["ci_high"] - old["ci_low"]) / (2 * Z), (new["ci_high"] - new["ci_low"]) / (2 * Z))
    diff = new["mean"] - old["mean"]
    low, high = diff - Z * se, diff + Z * se
    return {"change": diff, "ci_low": low, "ci_high": high, "significant": low > 0 or high < 0}


def compare(old: dict, new: dict) -> list[dict]:
    """One row per cell and language present on either side; `status` says which side has it."""
    rows = []
    for cell in sorted(set(old) | set(new)):
        o, n = old.get(cell, {}).get("gain", {}), new.get(cell, {}).get("gain", {})
        for lang in list(dict.fromkeys([*o, *n])):
            og, ng = o.get(lang), n.get(lang)
            row = {"cell": cell, "language": lang, "old": og, "new": ng,
                   "status": "both" if og and ng else "only old" if og else "only new"}
            if og and ng:
                row.update(change(og, ng), verdict_changed=og["verdict"] != ng["verdict"])
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [[r["cell"], r["language"], gain_text(r["old"]), gain_text(r["new"]),
              f"{r['change']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if r["status"] == "both" else "-",
              ("yes" if r["significant"] else "no") if r["status"] == "both" else "-",
              ("CHANGED" if r["verdict_changed"] else "same") if r["status"] == "both" else r["status"]]
             for r in rows]
    return tabulate(lines, headers=["cell", "lang", "old gain [95% CI]", "new gain [95% CI]", "change [95% CI]",
                                    "significant", "verdict"], disable_numparse=True)


def summary_line(rows: list[dict]) -> str:
    both = [r for r in rows if r["status"] == "both"]
    return (f"{sum(r['verdict_changed'] for r in both)} verdict(s) changed, "
            f"{sum(r['significant'] for r in both)} significant change(s) in {len(both)} cell-language pair(s); "
            f"{len(rows) - len(both)} only on one side")
