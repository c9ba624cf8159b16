"""Compare two runs (results directories or baseline files), cell by cell and language by language, by the
rule of the baseline check (harness.results.baselines.judge): the same statistics, margin and outcomes, so that
`python -m harness compare OLD NEW` and `pytest bench` agree on what fails.
"""
from __future__ import annotations

from pathlib import Path

from harness.results import baselines
from harness.results.record import cells_dir, load_records


class SourceError(Exception):
    """A results directory or baseline file that cannot be read at all; str() names it."""


def _baseline(path: Path) -> dict:
    """Cells of a baseline file as {cell: {"cell": id, "entries": {key: entry}}}."""
    try:
        data = baselines.read_file(path)
    except baselines.BaselineError as err:
        raise SourceError(str(err)) from None
    return {cell: {"cell": cell, "entries": entries} for cell, entries in sorted(data["cells"].items())}


def load_source(path) -> tuple[dict, list[str]]:
    """Records by cell id of a results directory or a baseline file, and one error line per bad record.

    Raises SourceError when there is nothing to compare: no such path, no records, an unreadable baseline.
    """
    path = Path(path)
    errors = []
    if path.is_file():
        cells = _baseline(path)
    elif path.is_dir():
        records, errors = load_records(path)
        cells = {}
        for r in records:
            problem = baselines.missing_field(r)
            if problem:
                errors.append(f"{cells_dir(path) / (r['cell'] + '.json')}: field '{problem}' missing")
            else:
                cells[r["cell"]] = r
    else:
        raise SourceError(f"{path}: no such results directory or baseline file")
    if not cells and not errors:
        raise SourceError(f"{path}: no cell records (expected {cells_dir(path)}/*.json or a baseline file)")
    return cells, errors


def _resolve(side: dict, other: dict) -> tuple[dict, str | None]:
    """A record as it is; a baseline cell -> its entry of the other side's device and precision (or a note)."""
    if "entries" not in side:
        return side, None
    probe = next(iter(sorted(other["entries"].items())))[1] if "entries" in other else other
    return baselines.pick(side["entries"], {**probe, "cell": side["cell"]})


def compare(old: dict, new: dict, margin: float = baselines.MARGIN) -> tuple[list[dict], list[str]]:
    """Rows of the rule (harness.results.baselines.judge) for every cell on both sides, plus a row per cell or language
    on one side only (`outcome` only old / only new, never a failure), and the precision notes. The gains'
    seed-variance priors are fitted on the old side, as the baseline check fits them on the baseline file."""
    rows, notes = [], []
    priors = baselines.priors_of({cell: side.get("entries") or {"record": side} for cell, side in old.items()})
    for cell in sorted(set(old) | set(new)):
        if cell not in old or cell not in new:
            side = "only old" if cell in old else "only new"
            rows.append({"cell": cell, "language": "-", "what": "cell", "old": "-", "new": "-", "change": None,
                         "outcome": side, "why": ""})
            continue
        (o, note_o), (n, note_n) = _resolve(old[cell], new[cell]), _resolve(new[cell], old[cell])
        notes += [f"{cell}: {x}" for x in (note_o, note_n) if x]
        prior = baselines.gain_prior(priors, cell, o["main_metric"])
        rows += [{**r, "cell": cell} for r in baselines.judge(o, n, margin, prior,
                                                              baselines.verdict_prior(priors, cell, o["main_metric"]))]
        rows += [{"cell": cell, "language": lang, "what": "language", "old": "missing", "new": "present",
                  "change": None, "outcome": "only new", "why": ""} for lang in n["languages"]
                 if lang not in o["languages"]]
    return rows, notes


def table(rows: list[dict]) -> str:
    return baselines.rows_table(rows, cell=True)


def failed(rows: list[dict]) -> bool:
    return any(r["outcome"] == "fail" for r in rows)


def summary_line(rows: list[dict], margin: float = baselines.MARGIN) -> str:
    count = {k: sum(r["outcome"] == k for r in rows) for k in ("fail", "weakened", "strengthened")}
    compared = len({(r["cell"], r["language"]) for r in rows if r["change"] is not None})
    one_side = sum(r["outcome"] in ("only old", "only new") for r in rows)
    return (f"{count['fail']} failed by the baseline rule (margin {margin:g}), {count['weakened']} weakened, "
            f"{count['strengthened']} strengthened, in {compared} cell-language pair(s); {one_side} only on one side")
