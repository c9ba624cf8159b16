"""Report tables, formats and plot on synthetic records (tests/recordgen.py), checked against golden files.

Regenerate the golden files after an intended change with `UPDATE_GOLDEN=1 pytest tests/test_report.py`
and review the diff.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from recordgen import GOLDEN_PAIR, golden_records, tiny_grid_records, write_golden_predictions

from harness.output import plot, report

GOLDEN = Path(__file__).parent / "golden"
ODD = "court_rulings_10%"


@pytest.fixture
def records():
    return golden_records()


@pytest.fixture
def summary(records, tmp_path):
    write_golden_predictions(tmp_path / "run")
    return report.build(tmp_path / "run", records)


@pytest.mark.parametrize("fmt", report.FORMATS)
def test_format_matches_golden_file(summary, fmt):
    text = report.render(summary, fmt)
    path = GOLDEN / f"report.{report.SUFFIX[fmt]}"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{path.name} differs (UPDATE_GOLDEN=1 to regenerate)"


def test_latex_escapes_underscores_and_percent(summary):
    tex = report.to_latex(summary)
    assert r"court\_rulings\_10\%" in tex
    assert ODD not in tex  # the raw name would break compilation (% starts a comment)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex


def test_tex_escape_covers_every_special_character():
    assert report.tex_escape(r"a_b%c&d#e$f{g}h~i^j\k") == (
        r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k")


def test_missing_cell_is_missing_never_zero(summary):
    entry = next(e for e in summary["cells"] if e["cell"] == "roberta-similarity-legal")
    assert entry["status"] == "missing" and "gain" not in entry
    row = next(r for r in report.main_rows(summary)[1] if r[0] == "roberta")
    headers = report.main_rows(summary)[0]
    assert row[headers.index("similarity / legal")] == "missing"
    xl = next(r for r in report.cross_lingual_rows(summary)[1] if r[:3] == ["roberta", "similarity", "legal"])
    assert xl[3:] == ["missing"] * 3
    tidy = [r for r in report.tidy_rows(summary) if r["cell"] == "roberta-similarity-legal"]
    assert tidy[0] == {"cell": "roberta-similarity-legal", "model": "roberta", "task": "similarity",
                       "domain": "legal", "status": "missing"}
    assert [r["arm"] for r in tidy[1:]] == ["robustness"] * 2
    assert all(r["status"] == "missing" and r.get("value") is None for r in tidy)
    robust = [r for r in summary["robustness"] if (r["model"], r["task"], r["domain"]) == ("roberta", "similarity",
                                                                                          "legal")]
    assert robust and all(r["source"] == "missing" and r["mean"] is None for r in robust)


def test_best_model_per_column_has_the_highest_score(summary, records):
    by_id = {r["cell"]: r for r in records}
    for col in summary["layout"]["columns"]:
        entries = [e for e in summary["cells"] if (e["task"], e["domain"]) == (col["task"], col["domain"])
                   and e["status"] == "ok"]
        scores = {e["model"]: max(by_id[e["cell"]]["metrics"][arm]["en"][e["main_metric"]]
                                  for arm in ("direct", "intermediate")) for e in entries}
        assert {e["model"] for e in entries if e["best"]} == {m for m, s in scores.items() if s == max(scores.values())}


def test_cross_lingual_mean_is_over_the_other_languages():
    recs = tiny_grid_records()
    summary = report.summarise(recs)
    for e, r in zip(sorted(summary["cells"], key=lambda e: e["cell"]), sorted(recs, key=lambda r: r["cell"])):
        assert e["cross_lingual_mean"] == pytest.approx((r["gain"]["de"]["mean"] + r["gain"]["fr"]["mean"]) / 2)


def test_robustness_has_an_interval_from_predictions_else_the_gain_difference(summary, records):
    by_id = {r["cell"]: r for r in records}
    rows = {(r["model"], r["task"], r["domain"], r["language"]): r for r in summary["robustness"]}
    analysed = rows[("bert", "classification", "legal", "en")]
    assert analysed["source"] == "predictions" and analysed["ci_low"] < analysed["mean"] < analysed["ci_high"]
    assert analysed["verdict"] in ("positive", "negative", "equivalent", "inconclusive")
    computed = rows[("bert", "similarity", ODD, "de")]
    assert computed["source"] == "computed" and computed["ci_low"] is None and computed["verdict"] is None
    assert computed["mean"] == pytest.approx(by_id[f"bert-similarity-{ODD}"]["gain"]["de"]["mean"]
                                             - by_id["bert-similarity-general"]["gain"]["de"]["mean"])
    markdown = report.to_markdown(summary)
    assert "no interval" in markdown
    assert f"- bert-similarity-{ODD}: robustness without interval (no predictions of bert-similarity-general" \
        in markdown
    assert not any(n.startswith(GOLDEN_PAIR[1]) for n in summary["robustness_notes"])


def test_cost_total_sums_the_cells(summary, records):
    total = summary["cost_total"]
    assert total["total_s"] == pytest.approx(sum(r["timings"]["total_s"] for r in records))
    assert total["train_s"] == pytest.approx(sum(r["timings"]["train_s"] for r in records))
    assert report.cost_rows(summary)[1][-1][0] == "total"


def test_csv_is_tidy_one_row_per_cell_arm_language_metric(summary, records):
    rows = list(csv.DictReader(io.StringIO(report.to_csv(summary))))
    keys = [(r["cell"], r["arm"], r["language"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys))
    arms = [len(r["metrics"]) for r in records]  # direct, intermediate and, where there is one, the frozen floor
    per_record = sum(a * len(r["languages"]) * 2 + len(r["languages"]) + 12 for a, r in zip(arms, records))
    assert len(rows) == per_record + 1 + len(summary["robustness"])  # + the missing cell
    value = next(r for r in rows if r["cell"] == "bert-classification-general" and r["arm"] == "gain"
                 and r["language"] == "de")
    assert float(value["value"]) == pytest.approx(records[0]["gain"]["de"]["mean"], abs=1e-6)


def test_tables_show_the_frozen_column_and_the_below_floor_mark(summary, records):
    """Main entry frozen / direct / +intermediate / gain; the arm below the floor (bert-similarity-general, en)
    marks its verdict in every format and the summary counts it."""
    headers, rows = report.main_rows(summary)
    entry = rows[0][headers.index("similarity / general")]
    assert entry.startswith("0.527 / 0.590 / 0.486 / -0.104") and entry.endswith(report.BELOW_FLOOR_MARK)
    assert report.BELOW_FLOOR_MARK not in rows[0][headers.index("classification / general")]
    assert rows[1][headers.index("classification / general")].startswith("- / ")  # a record without a floor
    line = "1 of 12 arms below the frozen model in their target language"
    for fmt, mark in (("markdown", report.BELOW_FLOOR_MARK), ("latex", r"\textdaggerdbl{}")):
        text = report.render(summary, fmt)
        assert mark in text and line in text.replace("\n", " ")
    assert line in report.terminal_table(records) and report.BELOW_FLOOR_MARK in report.terminal_table(records)
    flagged = [r for r in csv.DictReader(io.StringIO(report.to_csv(summary))) if r["below_floor"] == "yes"]
    assert {(r["cell"], r["arm"], r["language"]) for r in flagged} == {
        ("bert-similarity-general", "direct", "en"), ("bert-similarity-general", "gain", "en")}
    assert any(r["arm"] == "frozen" for r in csv.DictReader(io.StringIO(report.to_csv(summary))))
    data = json.loads(report.to_json(summary))
    assert data["floor"] == {"below": 1, "arms": 12, "arm_languages": 1}


def test_json_holds_the_summary(summary):
    data = json.loads(report.to_json(summary))
    assert data["cells_present"] == 11 and len(data["cells"]) == 12
    assert data == json.loads(json.dumps(summary))


def test_terminal_table_splits_by_task_and_marks_best(records):
    text = report.terminal_table(records)
    assert text.count("classification") >= 2 and "similarity" in text and "missing" in text
    assert " *" in text
    assert max(len(line) for line in text.splitlines()) < 160


def test_plot_is_a_nonblank_png_of_the_expected_size(tmp_path, summary):
    from matplotlib.image import imread

    path = report.plot(summary, tmp_path / "plot" / "t.png")
    fig = plot.figure(summary)
    width, height = (fig.get_size_inches() * fig.dpi).round().astype(int)
    image = imread(path)
    assert image.shape[:2] == (height, width)
    rgb = image[..., :3]
    assert rgb.std() > 0.05
    assert ((rgb[..., 2] > rgb[..., 0] + 0.3).any() and (rgb[..., 0] > rgb[..., 2] + 0.3).any()), \
        "a diverging map shows both signs"
    assert [p.name for p in path.parent.iterdir()] == ["t.png"]  # no temp file left behind


def test_plot_has_one_panel_per_language_group(summary):
    fig = plot.figure(summary)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["target language (en)", "cross-lingual mean (de)"]


def test_plot_without_cross_lingual_languages_has_one_panel(records):
    for r in records:
        r["languages"] = ["en"]
    fig = plot.figure(report.summarise(records))
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["target language (en)"]
    assert np.isfinite(fig.get_size_inches()).all()


def test_write_summary_writes_every_file_atomically(tmp_path, records):
    paths = report.write_summary(tmp_path, records)
    assert sorted(p.name for p in paths) == ["summary.csv", "summary.json", "summary.md", "summary.tex",
                                            "transfer.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    assert (tmp_path / "summary.md").read_text() == report.to_markdown(report.build(tmp_path, records))


def test_plot_colour_scale_is_symmetric_around_zero(summary):
    """Mostly gains and one small loss: the loss still gets its share of the colour bar, labelled."""
    cells = [e for e in summary["cells"] if e["status"] == "ok"]
    for k, e in enumerate(cells):
        for g in e["gain"].values():
            g["mean"] = 0.3 if k else -0.01
        e["cross_lingual_mean"] = 0.2
    fig = plot.figure(summary)
    image = next(im for ax in fig.axes for im in ax.get_images())
    assert (image.norm.vmin, image.norm.vmax) == pytest.approx((-0.3, 0.3))
    colourbar = fig.axes[-1]
    ticks = [t for t in colourbar.get_yticks() if -0.3 <= t <= 0.3]
    assert min(ticks) < 0 < max(ticks), ticks  # both signs labelled


def _tuned(record: dict, under_trained: list, verdict: str | None = None) -> dict:
    record = json.loads(json.dumps(record))
    record["tuning"] = {"trials_per_arm": 6, "space": {"lr": [1e-4, 3e-4], "epochs": [2, 3, 4]}}
    record["under_trained"] = under_trained
    record["budget"] = {"direct": {"target_steps": 30.0, "total_steps": 30.0},
                        "intermediate": {"intermediate_steps": 40, "target_steps": 20.0, "total_steps": 60.0}}
    record["timings"]["validation_s"] = 1.5
    if verdict:
        for g in record["gain"].values():
            g["verdict"] = verdict
    return record


def test_under_trained_verdicts_carry_a_footnote_and_tuning_costs_show(records, tmp_path):
    records = [_tuned(records[0], ["direct"]), _tuned(records[1], [], "uninformative")] + records[2:]
    summary = report.summarise(records)
    flagged, other = summary["cells"][0], summary["cells"][1]
    assert (flagged["under_trained"], flagged["tuned"], other["under_trained"]) == (["direct"], True, [])
    headers, rows = report.main_rows(summary)
    col = headers.index(f"{flagged['task']} / {flagged['domain']}")
    assert rows[0][col].rstrip(" *").endswith(f"){report.UNDER_TRAINED_MARK}")
    assert report.UNDER_TRAINED_MARK not in rows[0][headers.index(f"{other['task']} / {other['domain']}")]
    assert "(uninformative)" in rows[0][headers.index(f"{other['task']} / {other['domain']}")]
    assert report.UNDER_TRAINED_NOTE in report.to_markdown(summary)
    assert r"\textdagger{}" in report.to_latex(summary)
    cost_headers, cost = report.cost_rows(summary)
    line = dict(zip(cost_headers, cost[0]))
    assert (line["trials per arm"], line["direct steps"], line["+intermediate steps"], line["validation s"]) == \
        ("6", "30", "60", "1.50")
    assert dict(zip(cost_headers, cost[2]))["trials per arm"] == "-"  # an untuned cell
    report.plot(summary, tmp_path / "p.png")  # the uninformative marker draws
    assert report.UNDER_TRAINED_NOTE not in report.to_markdown(report.summarise(golden_records()))


def test_one_seed_verdicts_carry_their_caveat_and_three_seeds_do_not():
    from recordgen import make_record

    one = [make_record("bert", "classification", d) for d in ("general", "medical")]
    three = [make_record("bert", "classification", d, seeds=3) for d in ("general", "medical")]
    line = "2 cell(s) ran one seed: intervals of test-set sampling only, verdicts about these trained models"
    assert line in report.terminal_table(one)
    summary = report.summarise(one)
    assert summary["one_seed"] == ["bert-classification-general", "bert-classification-medical"]
    assert line in report.render(summary, "markdown").replace("\n", " ")
    assert "ran one seed" not in report.terminal_table(three)
    assert report.summarise(three)["one_seed"] == []
    mixed = report.summarise(one[:1] + three[1:])["one_seed"]
    assert mixed == ["bert-classification-general"]
