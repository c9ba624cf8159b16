"""Cell records: written atomically, refused when not finite, read back with errors that name the file."""
from __future__ import annotations

import json
import math

import pytest

from harness import record as results
from harness.record import RecordError, atomic_write_text, read_record, write_record


def _record(**changes) -> dict:
    record = {
        "schema": results.SCHEMA_VERSION, "cell": "bert-sentiment-legal", "profile": "tiny", "model": "tiny-bert()",
        "task": "sentiment", "domain": "legal", "seeds": [0],
        "metrics": {"direct": {"en": {"accuracy": 0.5, "macro_f1": 0.4}},
                    "intermediate": {"en": {"accuracy": 0.6, "macro_f1": 0.55}}},
        "gain": {"en": {"mean": 0.1, "ci_low": 0.02, "ci_high": 0.18, "verdict": "positive"}},
        "intermediate_key": "abc", "timings": {"total_s": 1.0}, "env": {"python": "3"},
    }
    record.update(changes)
    return record


def _leftovers(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_then_read_round_trip(tmp_path):
    path = results.record_path(tmp_path, "bert-sentiment-legal")
    write_record(path, _record())
    assert path.parent == tmp_path / "cells"
    assert read_record(path) == _record()
    assert _leftovers(path.parent) == []


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

    monkeypatch.setattr(results.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n"
    assert _leftovers(tmp_path) == []


def test_unserialisable_record_leaves_nothing(tmp_path):
    path = tmp_path / "cells" / "c.json"
    with pytest.raises(TypeError):
        write_record(path, _record(env={"device": object()}))
    assert not path.exists()
    assert not (tmp_path / "cells").exists() or _leftovers(tmp_path / "cells") == []


@pytest.mark.parametrize("where,patch", [
    ("metrics.direct.en.accuracy", lambda r: r["metrics"]["direct"]["en"].update(accuracy=math.nan)),
    ("gain.en.ci_high", lambda r: r["gain"]["en"].update(ci_high=math.inf)),
])
def test_nan_or_infinite_numbers_refuse_to_write(tmp_path, where, patch):
    record = _record()
    patch(record)
    path = tmp_path / "c.json"
    with pytest.raises(RecordError) as info:
        write_record(path, record)
    assert str(path) in str(info.value) and where in str(info.value)
    assert not path.exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("text,problem", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not a cell record"),
    (json.dumps(_record(schema=99)), "schema version 99"),
    (json.dumps({k: v for k, v in _record().items() if k != "schema"}), "schema version None"),
    (json.dumps({k: v for k, v in _record().items() if k != "gain"}), "field 'gain' missing"),
])
def test_read_record_errors_name_the_file(tmp_path, text, problem):
    path = tmp_path / "bad.json"
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
    write_record(results.record_path(tmp_path, "a"), _record(cell="a"))
    write_record(results.record_path(tmp_path, "b"), _record(cell="b"))
    (results.cells_dir(tmp_path) / "c.json").write_text("{")
    records, errors = results.load_records(tmp_path)
    assert [r["cell"] for r in records] == ["a", "b"]
    assert len(errors) == 1 and "c.json" in errors[0]


def test_env_info_names_the_versions():
    import torch
    import transformers

    env = results.env_info("cpu")
    assert env["torch"] == torch.__version__ and env["transformers"] == transformers.__version__
    assert env["device"] == "cpu" and env["python"].count(".") == 2
    assert {"datasets", "platform", "torch_threads", "git_commit"} <= set(env)
