"""Cell ids, marks and selection: the grid as pytest sees it (collect-only runs in a subprocess)."""
from __future__ import annotations

import itertools
import re

import pytest
from helpers import run_pytest

from harness.definitions.grid import DOMAINS, GRID_TASKS, MODELS, Cell, cells, check_names, parse_cell_id

ALL_IDS = {f"{m}-{t}-{d}" for m, t, d in itertools.product(MODELS, GRID_TASKS, DOMAINS)}
GRID_LINE = re.compile(r"^bench/test_transfer\.py::test_transfer\[([^\]]+)\]$", re.M)


def test_cells_and_ids():
    grid = cells()
    assert len(grid) == 27 and {c.id for c in grid} == ALL_IDS
    cell = Cell("roberta", "sentiment", "medical")
    assert cell.id == str(cell) == "roberta-sentiment-medical"
    assert cell.group == "roberta-sentiment"
    assert parse_cell_id(cell.id) == cell
    with pytest.raises(ValueError, match="MODEL-TASK-DOMAIN"):
        parse_cell_id("bert-sentiment")


def test_check_names_lists_the_valid_names():
    check_names("model", ["bert", "xlnet"], MODELS)
    with pytest.raises(ValueError) as info:
        check_names("model", ["bert", "gpt2"], MODELS)
    assert "'gpt2'" in str(info.value) and "bert, roberta, xlnet" in str(info.value)


@pytest.fixture(scope="module")
def collect(tiny_corpora, tmp_path_factory):
    """`collect(*args, paths=("bench",))` -> (exit code, selected grid ids in order, output)."""
    cache = tmp_path_factory.mktemp("grid-cache")

    def run(*args, paths=("bench",)):
        # hypothesis's plugin alone costs seconds of import per run and plays no part in the grid
        # `--opt=value`: a bare path argument would take part in pytest's rootdir choice (common ancestor of
        # the path arguments), and with a checkout under /tmp the rootdir would become /tmp
        proc = run_pytest(*paths, "--collect-only", "-q", "-p", "no:hypothesispytest", f"--data-dir={tiny_corpora}",
                          f"--cache-dir={cache}", f"--results-dir={cache / 'results'}", *args)
        output = proc.stdout + proc.stderr
        return proc.returncode, GRID_LINE.findall(proc.stdout), output
    return run


@pytest.mark.slow
@pytest.mark.subprocess
def test_collect_lists_the_27_cells(collect):
    code, ids, output = collect()
    assert code == 0, output
    assert len(ids) == 27 and set(ids) == ALL_IDS


@pytest.mark.parametrize("expression,expected", [
    ("legal", {i for i in ALL_IDS if i.endswith("-legal")}),
    ("bert and sentiment", {"bert-sentiment-general", "bert-sentiment-medical", "bert-sentiment-legal"}),
    ("roberta and not similarity and general", {"roberta-classification-general", "roberta-sentiment-general"}),
    ("xlnet-classification-medical", {"xlnet-classification-medical"}),
])
@pytest.mark.slow
@pytest.mark.subprocess
def test_dash_k_selects_cells(collect, expression, expected):
    """`-k` words are model / task / domain names: `bert` must not select the `roberta` cells."""
    code, ids, output = collect("-k", expression)
    assert code == 0, output
    assert set(ids) == expected and len(ids) == len(expected)


@pytest.mark.slow
@pytest.mark.subprocess
def test_each_cell_carries_model_task_and_domain_marks(collect):
    code, ids, output = collect("-m", "xlnet and similarity and medical")
    assert code == 0, output
    assert ids == ["xlnet-similarity-medical"]
    code, ids, _ = collect("-m", "medical")
    assert sorted(ids) == sorted(i for i in ALL_IDS if i.endswith("-medical"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_filter_options_narrow_the_grid(collect):
    code, ids, output = collect("--models", "bert,xlnet", "--tasks", "similarity", "--domains", "general")
    assert code == 0, output
    assert sorted(ids) == ["bert-similarity-general", "xlnet-similarity-general"]


@pytest.mark.parametrize("option,value,valid", [
    ("--profile", "huge", "tiny"),
    ("--models", "bert,gpt2", "bert, roberta, xlnet"),
    ("--tasks", "translation", "classification, sentiment, similarity"),
    ("--domains", "finance", "general, medical, legal"),
])
@pytest.mark.slow
@pytest.mark.subprocess
def test_unknown_names_are_a_usage_error_listing_the_valid_ones(collect, option, value, valid):
    code, ids, output = collect(option, value)
    assert code == pytest.ExitCode.USAGE_ERROR, output
    assert ids == []
    bad = value.split(",")[-1]
    error = [line for line in output.splitlines() if bad in line and "ERROR" in line]
    assert error and valid in error[0], output
    assert "Traceback" not in output


@pytest.mark.slow
@pytest.mark.subprocess
def test_from_the_repository_root_dash_k_reaches_the_grid(collect):
    """`pytest -k legal` with no path (the design card's usage) reaches the legal cells through testpaths.
    (tests/ is ignored only to keep this run short: importing the unit tests' libraries takes many seconds.)"""
    code, ids, output = collect("-k", "legal", "--ignore", "tests", paths=())
    assert code == 0, output
    assert sorted(ids) == sorted(i for i in ALL_IDS if i.endswith("-legal"))
