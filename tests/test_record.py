"""The cell record (harness/results/record.py): one declared format, one validator on read and on write, its paths,
and the atomic writer every output goes through."""
from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest
from recordgen import make_record

from harness import fileio
from harness.fileio import atomic_write_text
from harness.results import record as R
from harness.results.record import RecordError, read_record, write_record
from harness.running import environment


def _record(**changes) -> dict:
    return {**make_record("bert", "sentiment", "legal", languages=("en", "de")), **changes}


def _leftovers(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_every_declared_field_has_one_check():
    assert set(R.CHECKS) == R.CellRecord.__required_keys__ | R.CellRecord.__optional_keys__


def test_write_then_read_round_trip(tmp_path):
    path = R.record_path(tmp_path, "bert-sentiment-legal")
    write_record(path, _record())
    assert path.parent == tmp_path / "cells"
    assert read_record(path) == _record()
    assert _leftovers(path.parent) == []


def test_paths_of_a_cell(tmp_path):
    assert R.record_path(tmp_path, "a-b-c") == tmp_path / "cells" / "a-b-c.json"
    assert R.predictions_path(tmp_path, "a-b-c") == tmp_path / "predictions" / "a-b-c.npz"


def _set(path: str, value):
    """A change of the record at a dotted path (`gain.en.mean`); value DELETE removes the key."""
    def change(record):
        *parents, last = path.split(".")
        node = record
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return change


DELETE = object()
BAD = [  # (change, the field named, words of the problem)
    (_set("seeds", 3), "seeds", "list"),
    (_set("seeds", [0, 0]), "seeds", "distinct"),
    (_set("seeds", [True]), "seeds", "integers"),
    (_set("gain.en.mean", "0.1"), "gain.en.mean", "expected a number, got '0.1'"),
    (_set("gain", None), "gain", "expected an object"),
    (_set("gain.en", None), "gain.en", "expected an object"),
    (_set("gain.de", DELETE), "gain.de", "missing"),
    (_set("gain.en.verdict", "great"), "gain.en.verdict", "positive, negative, equivalent, inconclusive"),
    (_set("gain.en.ci_high", math.inf), "gain.en.ci_high", "not a finite number"),
    (_set("metrics.direct.en.accuracy", math.nan), "metrics.direct.en.accuracy", "not a finite number"),
    (_set("metrics.intermediate", DELETE), "metrics.intermediate", "missing"),
    (_set("metrics.direct.de.accuracy", DELETE), "metrics.direct.de.accuracy", "missing"),
    (_set("metrics_per_seed.direct.en.accuracy", [0.5, 0.6]), "metrics_per_seed.direct.en.accuracy", "2 values"),
    (_set("cell", "bert-sentiment"), "cell", "MODEL-TASK-DOMAIN"),
    (_set("cell", "bert-sentiment-medical"), "cell", "does not match domain"),
    (_set("cell", "../x-sentiment-legal"), "cell", "MODEL-TASK-DOMAIN"),
    (_set("languages", ["de"]), "languages", "target language 'en'"),
    (_set("timings.total_s", None), "timings.total_s", "expected a number"),
    (_set("intermediate_key", 7), "intermediate_key", "non-empty string"),
    (_set("hyperparameters", {"lr": math.nan}), "hyperparameters.lr", "not a finite number"),
    (_set("new_field", {"x": [1.0, math.nan]}), "new_field.x[1]", "not a finite number"),  # undeclared: still finite
]


@pytest.mark.parametrize("change,field,words", BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)])
def test_a_bad_record_is_refused_on_write_and_on_read_in_one_line(tmp_path, change, field, words):
    record = _record()
    change(record)
    path = R.record_path(tmp_path, "bert-sentiment-legal")
    with pytest.raises(RecordError) as info:
        write_record(path, record)
    message = str(info.value)
    assert message.startswith(f"{path}: not written, field '{field}'") and words in message, message
    assert not path.parent.exists() or list(path.parent.iterdir()) == []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))  # what a hand edit or another tool could leave: NaN as `NaN`
    with pytest.raises(RecordError) as info:
        read_record(path)
    message = str(info.value)
    assert message.startswith(f"{path}: field '{field}'") and words in message and "\n" not in message, message


def test_optional_fields_may_be_absent_and_unknown_ones_are_kept(tmp_path):
    record = _record(tuning={"trials": 4})
    for name in R.CellRecord.__optional_keys__:
        record.pop(name, None)
    path = R.record_path(tmp_path, record["cell"])
    write_record(path, record)
    assert read_record(path) == record


@pytest.mark.parametrize("text,problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a cell record"),
    (json.dumps(_record(schema=99)), "schema version 99, this harness reads 1"),
    (json.dumps({k: v for k, v in _record().items() if k != "schema"}), "schema version None"),
    (json.dumps({k: v for k, v in _record().items() if k != "gain"}), "field 'gain' missing"),
    (json.dumps(_record(cell="bert-sentiment-general", domain="general")), "does not match the file name"),
])
def test_read_record_errors_name_the_file(tmp_path, text, problem):
    path = R.record_path(tmp_path, "bert-sentiment-legal")
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(RecordError) as info:
        read_record(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


def test_read_record_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(RecordError, match="cannot read") as info:
        read_record(tmp_path / "gone.json")
    assert str(tmp_path / "gone.json") in str(info.value)


def test_load_records_keeps_good_ones_and_reports_bad_ones(tmp_path):
    for domain in ("general", "legal"):
        write_record(R.record_path(tmp_path, f"bert-sentiment-{domain}"), make_record("bert", "sentiment", domain))
    (R.cells_dir(tmp_path) / "bert-sentiment-medical.json").write_text("{")
    records, errors = R.load_records(tmp_path)
    assert [r["cell"] for r in records] == ["bert-sentiment-general", "bert-sentiment-legal"]
    assert len(errors) == 1 and "bert-sentiment-medical.json" in errors[0]


def test_predictions_round_trip_and_a_damaged_file_is_one_line(tmp_path):
    arrays = {"y_true/en": np.arange(5), "direct/en": np.ones((3, 5), np.float32)}
    path = R.save_predictions(tmp_path, "a-b-c", arrays)
    loaded = R.load_predictions(tmp_path, "a-b-c")
    assert set(loaded) == set(arrays) and all(np.array_equal(loaded[k], v) for k, v in arrays.items())
    assert loaded["direct/en"].dtype == np.float32
    assert R.load_predictions(tmp_path, "x-y-z") is None
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(RecordError, match="predictions unreadable") as info:
        R.load_predictions(tmp_path, "a-b-c")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_atomic_write_replaces_whole_files(tmp_path):
    path = tmp_path / "deep" / "x.json"
    atomic_write_text(path, "old\n")
    atomic_write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert _leftovers(path.parent) == []


def test_atomic_write_failure_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    atomic_write_text(path, "old\n")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", broken_replace)
    with pytest.raises(fileio.OutputError, match="disk full") as info:
        atomic_write_text(path, "new\n")
    assert str(info.value).startswith(f"{path}: not written")
    assert path.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "x.json", "x")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
        os.umask(0o002)
        assert stat.S_IMODE(atomic_write_text(tmp_path / "y.json", "y").stat().st_mode) == 0o664
    finally:
        os.umask(old)


def test_stale_temp_files_are_removed_by_the_next_write_and_live_ones_kept(tmp_path):
    path = tmp_path / "x.npz"
    host = fileio.socket.gethostname()
    dead = tmp_path / f".x.npz.tmp-{host}-999999999-ab12"  # beyond pid_max: no such process
    live = tmp_path / f".x.npz.tmp-{host}-{os.getpid()}-cd34"
    elsewhere = tmp_path / ".x.npz.tmp-another-host-1-ef56"
    old = tmp_path / ".x.npz.tmp-another-host-2-0000"
    other_file = tmp_path / f".y.npz.tmp-{host}-999999999-ab12"  # another output's: not touched
    for p in (dead, live, elsewhere, old, other_file):
        p.write_bytes(b"partial")
    os.utime(old, (1, 1))
    atomic_write_text(path, "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["x.npz", live.name, elsewhere.name, other_file.name])


def test_unserialisable_record_leaves_nothing(tmp_path):
    path = R.record_path(tmp_path, "bert-sentiment-legal")
    with pytest.raises(TypeError):
        write_record(path, _record(env={"device": object()}))
    assert not path.exists()
    assert not path.parent.exists() or _leftovers(path.parent) == []


def test_env_info_names_the_versions():
    import torch
    import transformers

    env = environment.env_info("cpu")
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__
    assert env["device"] == "cpu" and env["python"].count(".") == 2
    assert {"datasets", "platform", "torch_threads", "git_commit"} <= set(env)
