"""One cell from configuration to files: train it (harness.running.cell), compute its statistics
(harness.results.analysis), write its predictions and record (harness.results.record). A finished record of the
same configuration is reused instead (harness.results.resume; `--rerun` trains again)."""
from __future__ import annotations

from harness.definitions.grid import Cell
from harness.results.analysis import cell_statistics
from harness.results.record import SCHEMA_VERSION, record_path, save_predictions, write_record
from harness.results.resume import finished_record
from harness.running.cell import train_cell
from harness.running.context import RunContext


def run_cell(ctx: RunContext, cell: Cell) -> dict:
    """Train and evaluate both arms of `cell` for every seed and write its record. Returns the record."""
    path = record_path(ctx.results_dir, cell.id)
    outcome = train_cell(ctx, cell, finished=lambda key: finished_record(path, key))
    if outcome.reused:
        return outcome.record
    record = {"schema": SCHEMA_VERSION, **cell_statistics(outcome.record, outcome.arrays)}
    save_predictions(ctx.results_dir, cell.id, outcome.arrays)
    write_record(path, record)
    return record
