"""Beyond one machine: a deterministic share of the grid per job (`--shard I/N`), and merging the result
directories of the shards back into one run (`python -m harness merge OUT DIR...`)."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from harness.grid import Cell
from harness.record import atomic_write, load_records, predictions_path, record_path, write_record

log = logging.getLogger(__name__)


class MergeError(Exception):
    """Result directories that cannot be merged; str() says which file and why."""


def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (1 <= I <= N) -> (I, N)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 1/4 for the first of four shards") from None
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"--shard {text!r}: I must be between 1 and N (shards are numbered 1..N)")
    return index, count


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Shard `index` of `count` (1-based) of `cells`, in their order; the shards partition the cells.

    Cells of a model-task group share an intermediate model, so whole groups are dealt out (largest first, then
    by name, each to the least loaded shard) unless there are more shards than groups. The split depends only on
    the set of cells, so every job of an array computes the same split.
    """
    groups: dict[str, list[Cell]] = {}
    for cell in sorted(cells):
        groups.setdefault(cell.group, []).append(cell)
    units = list(groups.values()) if count <= len(groups) else [[c] for c in sorted(cells)]
    loads, mine = [0] * count, set()
    for unit in sorted(units, key=lambda u: (-len(u), u[0].id)):
        k = loads.index(min(loads))
        loads[k] += len(unit)
        if k == index - 1:
            mine.update(unit)
    return [c for c in cells if c in mine]


def run_configuration(record: dict) -> dict:
    """What must agree between records of one run: profile, seeds, hyper-parameters and library versions."""
    env = record.get("env") or {}
    return {"profile": record.get("profile"), "seeds": record.get("seeds"),
            "hyperparameters": record.get("hyperparameters"),
            "torch": env.get("torch"), "transformers": env.get("transformers")}


def _collect(sources: list[Path]) -> dict[str, tuple[Path, dict]]:
    """cell id -> (source dir, record), checking that every record belongs to the same run configuration."""
    chosen: dict[str, tuple[Path, dict]] = {}
    reference = None
    for src in sources:
        records, errors = load_records(src)
        if errors:
            raise MergeError(f"{errors[0]}; fix or remove it, then merge again")
        if not records and src.exists():
            log.info("%s: no cell records", src)
        for record in records:
            where = record_path(src, record["cell"])
            config = run_configuration(record)
            if reference is None:
                reference = (where, config)
            for field, value in config.items():
                if value != reference[1][field]:
                    raise MergeError(f"{where}: {field} {value!r} differs from {reference[0]} ({reference[1][field]!r});"
                                     f" merge only results of one profile and configuration")
            if record["cell"] in chosen and chosen[record["cell"]][1].get("config_key") != record.get("config_key"):
                raise MergeError(f"{where}: cell {record['cell']} also in {chosen[record['cell']][0]} with a different "
                                 f"config_key; these are not the same run")
            chosen.setdefault(record["cell"], (src, record))
    return chosen


def merge(out: Path, sources: list[Path]) -> list[dict]:
    """Copy every cell record (and its predictions) of `sources` into `out` and write the run's summary.

    Records already in `out` take part in the checks, so shards can be merged as they finish. Everything is
    checked before anything is written. Returns the merged records.
    """
    out = Path(out)
    sources = [Path(s) for s in sources]
    missing = [s for s in sources if not s.is_dir()]
    if missing:
        raise MergeError(f"{missing[0]}: not a directory (expected a --results-dir with cells/*.json)")
    everything = _collect([out, *[s for s in sources if s.resolve() != out.resolve()]])
    if not everything:
        raise MergeError(f"no cell records in {', '.join(map(str, sources))} (expected DIR/cells/*.json)")
    for cell_id, (src, record) in sorted(everything.items()):
        if src == out:
            continue
        predictions = predictions_path(src, cell_id)
        if predictions.exists():
            with open(predictions, "rb") as f:
                atomic_write(predictions_path(out, cell_id), lambda dst: shutil.copyfileobj(f, dst))
        write_record(record_path(out, cell_id), record)
    records = [record for _, record in sorted(everything.values(), key=lambda x: x[1]["cell"])]
    from harness.report import write_summary
    write_summary(out, records)
    return records
