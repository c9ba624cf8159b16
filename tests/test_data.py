"""Data loading and validation: good files load; every bad file is a one-line DataError naming file, row, field."""
from __future__ import annotations

import math

import numpy as np
import pytest

from harness.definitions.config import DatasetConfig
from harness.definitions.data import DataError, encode, load_split
from harness.definitions.tasks import task_type

CLS = DatasetConfig(name="toy", task="classification", domain="general")
SIM = DatasetConfig(name="toy-sim", task="similarity", domain="general", text="text_a", text_b="text_b", label="score")
GOOD = [{"text": "alpha beta", "label": "x"}, {"text": "gamma delta", "label": "y"}]


def _load(spec, path, labels=None, **kw):
    return load_split(spec, path.parent, "test", labels, file=str(path), cache_dir=path.parent / "ds-cache", **kw)


def _error(spec, path, labels=None) -> str:
    with pytest.raises(DataError) as info:
        _load(spec, path, labels)
    return str(info.value)


def _assert_located(message: str, path, row, field: str):
    """One line, naming the file, the row and the field."""
    assert "\n" not in message, message
    assert str(path) in message
    assert f"row {row} " in message, message
    assert f"field '{field}'" in message, message


def test_good_jsonl_loads(jsonl):
    split = _load(CLS, jsonl("ok.jsonl", GOOD))
    assert split.texts == ["alpha beta", "gamma delta"]
    assert split.labels == ["x", "y"]
    assert split.texts_b is None and len(split) == 2


def test_good_pairs_load_scores_as_floats(jsonl):
    rows = [{"text_a": "a b", "text_b": "c d", "score": 1}, {"text_a": "e", "text_b": "f", "score": "2.5"}]
    split = _load(SIM, jsonl("sim.jsonl", rows))
    assert split.texts_b == ["c d", "f"]
    assert split.labels == [1.0, 2.5] and all(isinstance(v, float) for v in split.labels)


@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
def test_csv_and_tsv_load(table, fmt, delimiter):
    path = table(f"ok.{fmt}", ["text", "label"], [["alpha, beta", "x"], ["gamma", "y"]], delimiter)
    split = _load(CLS.replace(format=fmt), path)
    assert split.texts == ["alpha, beta", "gamma"] and split.labels == ["x", "y"]


def test_missing_file_names_the_file_and_what_to_check(tmp_path):
    path = tmp_path / "nowhere" / "test.jsonl"
    message = _error(CLS, path)
    assert "\n" not in message and str(path) in message
    assert "not found" in message and "--data-dir" in message


@pytest.mark.parametrize("name,rows,labels,row,field", [
    ("malformed", [GOOD[0], '{"text": "gamma", "label": "y"', GOOD[1]], None, 2, "<json>"),
    ("not-an-object", [GOOD[0], GOOD[1], "[1, 2]"], None, 3, "<json>"),
    ("missing-column", [{"text": "a"}, {"text": "b"}], None, 1, "label"),
    ("column-missing-in-a-row", [GOOD[0], {"label": "y"}], None, 2, "text"),
    ("unknown-label", GOOD + [{"text": "eta", "label": "maybe"}], ["x", "y"], 3, "label"),
    ("missing-label", [GOOD[0], {"text": "eta", "label": None}], None, 2, "label"),
    ("empty-text", [GOOD[0], {"text": "   ", "label": "y"}], None, 2, "text"),
    ("non-string-text", [GOOD[0], {"text": 7, "label": "y"}], None, 2, "text"),
    ("empty-split", [], None, 1, "label"),
    ("blank-lines-only", ["", "  "], None, 1, "label"),
])
def test_bad_jsonl_is_one_located_line(jsonl, name, rows, labels, row, field):
    path = jsonl(f"{name}.jsonl", rows)
    _assert_located(_error(CLS, path, labels), path, row, field)


def test_unknown_label_message_lists_the_known_labels(jsonl):
    path = jsonl("unknown.jsonl", GOOD + [{"text": "eta", "label": "maybe"}])
    message = _error(CLS, path, ["x", "y"])
    assert "'maybe'" in message and "x, y" in message


def test_jsonl_row_is_the_line_number_despite_blank_lines(jsonl):
    path = jsonl("blank.jsonl", [GOOD[0], "", GOOD[1], {"text": "eta", "label": "maybe"}])
    _assert_located(_error(CLS, path, ["x", "y"]), path, 4, "label")


@pytest.mark.parametrize("name,score,problem", [
    ("nan", math.nan, "NaN"),
    ("infinite", math.inf, "infinite"),
    ("non-numeric", "high", "must be a number"),
    ("boolean", True, "must be a number"),
    ("missing", None, "must be a number"),
])
def test_bad_scores_are_one_located_line(jsonl, name, score, problem):
    rows = [{"text_a": "a", "text_b": "b", "score": 1.0}, {"text_a": "c", "text_b": "d", "score": score}]
    path = jsonl(f"{name}.jsonl", rows)
    message = _error(SIM, path)
    _assert_located(message, path, 2, "score")
    assert problem in message


def test_nan_literal_in_jsonl_is_refused(jsonl):
    path = jsonl("nan-literal.jsonl", ['{"text_a": "a", "text_b": "b", "score": 1.0}',
                                       '{"text_a": "c", "text_b": "d", "score": NaN}'])
    _assert_located(_error(SIM, path), path, 2, "score")


def test_empty_second_text_of_a_pair(jsonl):
    path = jsonl("pair.jsonl", [{"text_a": "a", "text_b": "", "score": 1.0}])
    _assert_located(_error(SIM, path), path, 1, "text_b")


@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
@pytest.mark.parametrize("header,rows,labels,row,field", [
    (["text", "label"], [["a", "x"], ["b", "zz"]], ["x", "y"], 2, "label"),
    (["text", "label"], [["a", "x"], ["", "y"]], None, 2, "text"),
    (["text", "tag"], [["a", "x"]], None, 1, "label"),
    (["text", "label"], [], None, 1, "label"),
    (["text", "label"], [["a", "x"], ["b", "y", "extra", "more"]], None, 2, "<{fmt}>"),
])
def test_bad_csv_and_tsv_are_one_located_line(table, fmt, delimiter, header, rows, labels, row, field):
    path = table(f"bad.{fmt}", header, rows, delimiter)
    _assert_located(_error(CLS.replace(format=fmt), path, labels), path, row, field.format(fmt=fmt))


@pytest.mark.parametrize("fmt,delimiter", [("csv", ","), ("tsv", "\t")])
@pytest.mark.parametrize("score", ["nan", "", "high"])
def test_bad_scores_in_csv_and_tsv(table, fmt, delimiter, score):
    path = table(f"sim.{fmt}", ["text_a", "text_b", "score"], [["a", "b", "1.5"], ["c", "d", score]], delimiter)
    _assert_located(_error(SIM.replace(format=fmt), path), path, 2, "score")


def test_limit_subsamples_deterministically_after_validating_every_row(jsonl):
    rows = [{"text": f"w{i} w{i + 1}", "label": "xy"[i % 2]} for i in range(40)]
    path = jsonl("many.jsonl", rows)
    first, again = _load(CLS, path, limit=10, seed=3), _load(CLS, path, limit=10, seed=3)
    assert len(first) == 10 and first.texts == again.texts
    assert set(first.texts) < {r["text"] for r in rows}
    assert _load(CLS, path, limit=10, seed=4).texts != first.texts
    bad = jsonl("many-bad.jsonl", rows + [{"text": "z", "label": ""}])
    with pytest.raises(DataError, match="row 41 field 'label'"):
        _load(CLS, bad, limit=10, seed=3)


def test_label_set_is_sorted_and_closed_for_classification_only(jsonl):
    split = _load(CLS, jsonl("ok.jsonl", [GOOD[1], GOOD[0], GOOD[1]]))
    assert task_type("classification").label_set(split.labels) == ["x", "y"]
    assert task_type("similarity").label_set(split.labels) is None


def test_encode_maps_labels_to_ids_and_keeps_scores(jsonl, tiny_tokenizers):
    tok = tiny_tokenizers["bert"]
    split = _load(CLS, jsonl("ok.jsonl", [GOOD[1], GOOD[0]]))
    enc = encode(tok, split, max_length=8, labels=["x", "y"])
    assert enc.targets.tolist() == [1, 0] and enc.targets.dtype == np.int64
    assert len(enc) == 2 and all(len(ids) <= 8 for ids in enc.input_ids)
    pairs = _load(SIM, jsonl("sim.jsonl", [{"text_a": "a b", "text_b": "c", "score": 4.5}]))
    enc = encode(tok, pairs, max_length=8, labels=None)
    assert enc.targets.dtype == np.float32 and enc.targets.tolist() == [4.5]
    assert enc.token_type_ids is not None and set(enc.token_type_ids[0].tolist()) == {0, 1}


def test_encode_truncates_to_max_length(jsonl, tiny_tokenizers):
    split = _load(CLS, jsonl("long.jsonl", [{"text": " ".join(["ba"] * 100), "label": "x"}]))
    for tok in tiny_tokenizers.values():
        assert len(encode(tok, split, max_length=16, labels=["x"]).input_ids[0]) == 16


def test_generated_corpora_load_and_validate(tiny_profile, tmp_path):
    """Every target and intermediate set of the tiny profile passes validation with the promised shape."""
    root, cache = tiny_profile.data_root, tmp_path / "ds-cache"
    for (task, _domain), spec in tiny_profile.targets.items():
        train = load_split(spec, root, "train", cache_dir=cache)
        labels = task_type(task).label_set(train.labels)
        test = load_split(spec, root, "test", labels, cache_dir=cache)
        inter = load_split(tiny_profile.intermediates[task], root, "train", cache_dir=cache)
        assert len(inter) >= 10 * len(train), "intermediate sets are at least 10x the target training sets"
        assert len(spec.cross_lingual) >= 2
        for rel in spec.cross_lingual.values():
            assert len(load_split(spec, root, "test", labels, file=str(root / rel), cache_dir=cache)) == len(test)
        if task == "similarity":
            assert len(set(train.labels)) > 10, "similarity carries graded scores"
