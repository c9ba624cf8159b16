"""Resume: a finished record of the same configuration is reused instead of training the cell again."""
from __future__ import annotations

import logging
from pathlib import Path

from harness.results.baselines import missing_field
from harness.results.record import RecordError, load_predictions, read_record

log = logging.getLogger(__name__)


def finished_record(path: Path, config_key: str) -> dict | None:
    """The record at `path` if it is readable and was produced by the same configuration, else None (train).

    A truncated or corrupt record, or one whose predictions file is missing or unreadable, is not reused.
    """
    if not Path(path).exists():
        return None
    try:
        record = read_record(path)
    except RecordError as err:
        log.warning("%s; training the cell again", err)
        return None
    if record.get("config_key") != config_key:
        log.info("%s: configuration changed, training the cell again", path)
        return None
    if missing_field(record):  # written by an older harness: the baseline check needs this field
        log.info("%s: field '%s' missing (an older harness); training the cell again", path, missing_field(record))
        return None
    results_dir = Path(path).parent.parent
    try:
        if load_predictions(results_dir, record["cell"]) is None:
            raise RecordError(f"{results_dir}: predictions of {record['cell']} missing")
    except RecordError as err:
        log.warning("%s; training the cell again", err)
        return None
    return record
