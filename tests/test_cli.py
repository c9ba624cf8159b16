"""`python -m harness report|compare`: outputs, exit statuses, bad input; and the end-of-run summary files."""
from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import pytest
from helpers import run_harness, run_pytest
from recordgen import golden_records, tiny_grid_records, write_golden_predictions, write_records

from harness.__main__ import main
from harness.output import report
from harness.results import baselines
from harness.results import compare as C

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture
def run_dir(tmp_path):
    write_records(tmp_path / "run", golden_records())
    write_golden_predictions(tmp_path / "run")
    return tmp_path / "run"


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("fmt", report.FORMATS)
def test_report_prints_the_golden_output(run_dir, capsys, fmt):
    assert main(["report", "--results-dir", str(run_dir), "--format", fmt]) == 0
    assert capsys.readouterr().out == (GOLDEN / f"report.{report.SUFFIX[fmt]}").read_text(encoding="utf-8")


def test_report_plot_option_writes_png(run_dir, tmp_path, capsys):
    assert main(["report", "--results-dir", str(run_dir), "--plot", str(tmp_path / "out" / "gains.png")]) == 0
    assert (tmp_path / "out" / "gains.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("make", [lambda p: p / "absent", lambda p: (p / "empty" / "cells").mkdir(parents=True)
                                  or p / "empty"], ids=["missing-dir", "empty-dir"])
def test_report_without_records_is_one_line_error(tmp_path, caplog, capsys, make):
    path = make(tmp_path)
    assert main(["report", "--results-dir", str(path)]) == 2
    (line,) = errors(caplog)
    assert str(path) in line and "\n" not in line
    assert capsys.readouterr().out == ""


def test_report_names_bad_records_and_reports_the_rest(run_dir, caplog, capsys):
    cells = run_dir / "cells"
    (cells / "bert-similarity-general.json").write_text("{ not json", encoding="utf-8")
    other = json.loads((cells / "bert-similarity-legal.json").read_text())
    other["schema"] = 2
    (cells / "bert-similarity-legal.json").write_text(json.dumps(other), encoding="utf-8")
    assert main(["report", "--results-dir", str(run_dir)]) == 0
    lines = errors(caplog)
    assert len(lines) == 2 and all("\n" not in x for x in lines)
    assert any("bert-similarity-general.json" in x and "not valid JSON" in x for x in lines)
    assert any("bert-similarity-legal.json" in x and "schema version 2" in x for x in lines)
    out = capsys.readouterr().out
    assert "9 of 12 cells present" in out
    assert "## Records not used" in out and "bert-similarity-general.json" in out
    bert = next(line for line in out.splitlines() if line.startswith("| bert "))
    assert bert.count("missing") == 2  # the two unreadable cells, still in the grid


def test_compare_identical_runs_exits_0(run_dir, capsys):
    assert main(["compare", str(run_dir), str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith("0 failed by the baseline rule (margin 0.02), 0 weakened")


def test_compare_exits_1_when_a_change_fails_by_the_baseline_rule(tmp_path, capsys):
    write_records(tmp_path / "old", tiny_grid_records())
    write_records(tmp_path / "new", tiny_grid_records(shift=0.2))
    assert main(["compare", str(tmp_path / "old"), str(tmp_path / "new")]) == 1
    out = capsys.readouterr().out
    assert "significant change" in out and out.rstrip().endswith("0 only on one side")
    main(["compare", str(tmp_path / "old"), str(tmp_path / "new"), "--baseline-margin", "0.3"])
    out = capsys.readouterr().out  # only reversed verdicts fail when every change is below the margin
    assert "significant change" not in out and "verdict reversed" in out


def test_compare_and_the_check_agree(tmp_path):
    """The same rule: a pair fails in `compare` exactly when the baseline check fails the cell."""
    old, new = tiny_grid_records(), tiny_grid_records(shift=0.1)
    write_records(tmp_path / "old", old)
    write_records(tmp_path / "new", new)
    rows, _ = C.compare(*(C.load_source(tmp_path / side)[0] for side in ("old", "new")))
    failed_pairs = {r["cell"] for r in rows if r["outcome"] == "fail"}
    checked = {r["cell"] for r in new if baselines.check(
        r, {o["cell"]: {"cpu-fp32": baselines.entry(o)} for o in old}, tmp_path / "b.json").status == "changed"}
    assert failed_pairs == checked and 0 < len(checked) < len(new)


def test_compare_accepts_a_baseline_file(run_dir, tmp_path, capsys):
    path = tmp_path / "tiny.json"
    baselines.update(path, "tiny", golden_records())
    assert main(["compare", str(path), str(run_dir)]) == 0
    assert main(["compare", str(run_dir), str(path)]) == 0
    assert "+0.000 [" in capsys.readouterr().out


def test_compare_reports_cells_on_one_side_only(run_dir, tmp_path, capsys):
    write_records(tmp_path / "new", golden_records()[:-1])
    assert main(["compare", str(run_dir), str(tmp_path / "new")]) == 0
    assert "only old" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [("{ broken", "not valid JSON"),
                                              ('{"schema": 3, "cells": {}}', "baseline format 3"),
                                              ('{"schema": 1, "cells": {}}', "baseline format 1 lacks"),
                                              ('{"schema": 2}', "not a baseline file")])
def test_compare_bad_baseline_exits_2_naming_the_file(run_dir, tmp_path, caplog, content, message):
    path = tmp_path / "base.json"
    path.write_text(content, encoding="utf-8")
    assert main(["compare", str(path), str(run_dir)]) == 2
    (line,) = errors(caplog)
    assert str(path) in line and message in line


def test_compare_missing_path_exits_2(run_dir, tmp_path, caplog):
    assert main(["compare", str(run_dir), str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere") in errors(caplog)[0]


def test_compare_with_an_unreadable_record_still_compares_but_exits_2(run_dir, tmp_path, caplog, capsys):
    write_records(tmp_path / "new", golden_records())
    (tmp_path / "new" / "cells" / "bert-similarity-general.json").write_text("[]", encoding="utf-8")
    assert main(["compare", str(run_dir), str(tmp_path / "new")]) == 2
    assert "bert-similarity-general.json" in errors(caplog)[0]
    assert "bert-classification-general" in capsys.readouterr().out


def test_compare_names_a_record_of_an_older_harness(run_dir, tmp_path, caplog):
    records = golden_records()
    del records[0]["metrics_se"]
    write_records(tmp_path / "new", records)
    assert main(["compare", str(run_dir), str(tmp_path / "new")]) == 2
    assert f"{records[0]['cell']}.json: field 'metrics_se' missing" in errors(caplog)[0]


@pytest.mark.subprocess
def test_module_entry_point_runs(run_dir):
    done = run_harness("compare", str(run_dir), str(run_dir))
    assert done.returncode == 0, done.stderr
    assert "bert-classification-general" in done.stdout


PLUGIN_TEST = """
import sys
sys.path.insert(0, {tests!r})
import pytest
from helpers import run_harness, run_pytest
from recordgen import make_record
from harness.results.record import record_path, write_record


@pytest.mark.parametrize("cell_id", ["bert-classification-general", "roberta-classification-legal", "bert-x-y"])
def test_cell(cell_id, request):
    if cell_id == "bert-x-y":
        pytest.fail("this cell failed")
    path = record_path(request.config.getoption("results_dir"), cell_id)
    write_record(path, make_record(*cell_id.split("-")))
    request.node.user_properties.append(("transfer_record", str(path)))
"""


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
@pytest.mark.slow
@pytest.mark.subprocess
def test_grid_run_writes_summary_files_and_prints_the_main_table(tmp_path, xdist):
    (tmp_path / "test_fake_grid.py").write_text(textwrap.dedent(PLUGIN_TEST.format(tests=str(Path(__file__).parent))))
    results = tmp_path / "results"
    done = run_pytest("-p", "no:cacheprovider", str(tmp_path), "--results-dir", str(results), *xdist, cwd=tmp_path,
                      timeout=300)
    assert done.returncode == 1, done.stdout[-3000:]  # the failed cell
    assert sorted(p.name for p in results.iterdir()) == ["cells", "summary.csv", "summary.json", "summary.md",
                                                        "summary.tex", "transfer.png"]
    assert "transfer-bench summary" in done.stdout and "2 of 4 cells present" in done.stdout
    summary = json.loads((results / "summary.json").read_text())
    assert {e["cell"] for e in summary["cells"] if e["status"] == "missing"} == {
        "bert-classification-legal", "roberta-classification-general"}
