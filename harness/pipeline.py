"""One cell from configuration to files: train it (harness.running.cell), compute its statistics
(harness.results.analysis), write its predictions and record (harness.results.record). A finished record of the
same configuration is reused instead (harness.results.resume; `--rerun` trains again).

With `--seeds auto:MAX` the cell looks at its target-language gain after its first seeds and after each later round
(harness.results.sequential: the planned looks and their O'Brien-Fleming levels) and trains the next round only
while that gain is undecided; the record keeps every look (`sequential`) and reads all its gains at the level of
the look it stopped at."""
from __future__ import annotations

from harness.definitions.grid import Cell
from harness.results import bootstrap, sequential
from harness.results.analysis import cell_statistics
from harness.results.record import SCHEMA_VERSION, UNINFORMATIVE, record_path, save_predictions, write_record
from harness.results.resume import finished_record
from harness.running.cell import train_cell
from harness.running.context import RunContext


def run_cell(ctx: RunContext, cell: Cell) -> dict:
    """Train and evaluate both arms of `cell` for every seed and write its record. Returns the record."""
    path = record_path(ctx.results_dir, cell.id)
    looks = Looks(cell.id, len(ctx.seeds), ctx.auto_seeds) if ctx.auto_seeds else None
    outcome = train_cell(ctx, cell, finished=lambda key: finished_record(path, key), more=looks)
    if outcome.reused:
        return outcome.record
    record = {"schema": SCHEMA_VERSION, **cell_statistics(outcome.record, outcome.arrays)}
    if looks is not None:
        record = looks.apply(record)
    save_predictions(ctx.results_dir, cell.id, outcome.arrays)
    write_record(path, record)
    return record


class Looks:
    """`more` of train_cell for --seeds auto:MAX: at each planned look, the target-language gain read at that look's
    level (sequential.decide); the next round's seeds while it is undecided and looks remain."""

    def __init__(self, cell_id: str, initial: int, most: int):
        self.cell_id, self.plan, self.looks = cell_id, sequential.levels(initial, most), []

    def __call__(self, seeds: list, arrays: dict, metric: str, language: str, margin: float) -> list:
        level = dict(self.plan)[len(seeds)]
        data = bootstrap.arms(arrays[f"y_true/{language}"], arrays[f"direct/{language}"],
                              arrays[f"intermediate/{language}"])
        gain = bootstrap.gain(data, metric, bootstrap.stream_seed(self.cell_id, language), margin=margin)
        look = {**sequential.decide({**gain, "margin": margin}, level), "language": language}
        self.looks.append(look)
        following = [n for n, _ in self.plan if n > len(seeds)]
        look["futile"] = bool(following and look["verdict"] not in sequential.DECIDED
                              and sequential.futile({**gain, "margin": margin}, self.plan[-1][0]))
        if look["verdict"] in sequential.DECIDED or not following or look["futile"]:
            return []
        return list(range(max(seeds) + 1, max(seeds) + 1 + following[0] - len(seeds)))

    def apply(self, record: dict) -> dict:
        """The record with its looks, and every gain read at the level of the look the cell stopped at."""
        last = self.looks[-1]
        gains = {}
        for lang, g in record["gain"].items():
            read = sequential.decide(g, last["level"])
            gains[lang] = {**g, **{k: read[k] for k in ("ci_low", "ci_high", "verdict", "p_value")},
                           "level": last["level"]}
            if g["verdict"] == UNINFORMATIVE:
                gains[lang]["verdict"] = UNINFORMATIVE
        stopped = "decided" if last["verdict"] in sequential.DECIDED else "futile" if last.get("futile") else \
            "max seeds"
        return {**record, "gain": gains,
                "sequential": {"max_seeds": self.plan[-1][0], "planned": [n for n, _ in self.plan],
                               "looks": self.looks, "stopped": stopped, "level": last["level"],
                               "rule": sequential.RULE}}
