"""Merging the result directories of shards (`--shard I/N`, split in harness/pytest/selection.py) back into one run:
`python -m harness merge OUT DIR...`."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from harness.fileio import atomic_write
from harness.results.record import load_records, predictions_path, record_path, write_record

log = logging.getLogger(__name__)


class MergeError(Exception):
    """Result directories that cannot be merged; str() says which file and why."""


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
    """Copy every cell record (and its predictions) of `sources` into `out` (the caller writes the summary).

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
    return [record for _, record in sorted(everything.values(), key=lambda x: x[1]["cell"])]
