"""The renderers of a summary (harness.output.summary: the one JSON-ready model all formats are drawn from, so they
cannot disagree): Markdown, LaTeX (booktabs), tidy CSV, JSON and the terminal table, side by side so a column added
to one is seen next to the others; and `write_summary`, the end-of-run and `report` files (written atomically)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tabulate import tabulate

from harness.definitions.grid import ARMS, GENERAL
from harness.fileio import atomic_write_text
from harness.output.plot import plot
from harness.output.summary import (
    BELOW_FLOOR_MARK,
    BELOW_FLOOR_NOTE,
    BEST_NOTE,
    FDR_NOTE,
    MISSING,
    UNDER_TRAINED_MARK,
    UNDER_TRAINED_NOTE,
    build,
    calibration_lines,
    fdr_line,
    fdr_mark,
    floor_line,
    moderation_lines,
    one_seed_line,
    sequential_lines,
    summarise,
)
from harness.results.bootstrap import FDR

FORMATS = ("markdown", "latex", "csv", "json")
SUFFIX = {"markdown": "md", "latex": "tex", "csv": "csv", "json": "json"}
PLOT_NAME = "transfer.png"


# ---------------------------------------------------------------- cell text shared by the text formats

def num(x, signed: bool = False) -> str:
    if x is None:
        return MISSING
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _below(e: dict, lang: str) -> str:
    """The below-the-floor mark of a cell entry in one language, or ''."""
    return BELOW_FLOOR_MARK if any(b["language"] == lang for b in e.get("below_floor") or []) else ""


def _main_entry(e: dict) -> str:
    if e["status"] != "ok":
        return MISSING
    lang, main = e["language"], e["main_metric"]
    g = e["gain"][lang]
    mark = (UNDER_TRAINED_MARK if e.get("under_trained") else "") + _below(e, lang)
    frozen = e["metrics"].get("frozen", {}).get(lang, {}).get(main)
    return (f"{'-' if frozen is None else num(frozen)} / {num(e['metrics']['direct'][lang][main])} / "
            f"{num(e['metrics']['intermediate'][lang][main])} / {num(g['mean'], True)} "
            f"({g['verdict']}{fdr_mark(g)}){mark}")


def _gain_entry(g: dict | None, mark: str = "") -> str:
    return MISSING if g is None else f"{num(g['mean'], True)} ({g['verdict']}{fdr_mark(g)}){mark}"


def _interval_entry(row: dict) -> str:
    if row["source"] == MISSING:
        return MISSING
    if row["source"] == "computed":
        return f"{num(row['mean'], True)} (no interval)"
    return f"{num(row['mean'], True)} [{num(row['ci_low'], True)}, {num(row['ci_high'], True)}] ({row['verdict']})"


def _column_name(col: dict) -> str:
    return f"{col['task']} / {col['domain']}"


def _metric_note(summary: dict) -> str:
    metrics = {}
    for e in summary["cells"]:
        metrics.setdefault(e["main_metric"], []).append(e["task"])
    return ", ".join(f"{m} ({', '.join(dict.fromkeys(ts))})" for m, ts in metrics.items())


def _cells_by(summary: dict) -> dict:
    return {(e["model"], e["task"], e["domain"]): e for e in summary["cells"]}


def main_rows(summary: dict, best=lambda s: f"{s} *") -> tuple[list[str], list[list[str]]]:
    cols, by = summary["layout"]["columns"], _cells_by(summary)
    rows = []
    for model in summary["layout"]["models"]:
        entries = [by[(model, c["task"], c["domain"])] for c in cols]
        rows.append([model] + [best(_main_entry(e)) if e.get("best") else _main_entry(e) for e in entries])
    return ["model"] + [_column_name(c) for c in cols], rows


def cross_lingual_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    langs = summary["layout"]["languages"]
    rows = []
    for e in summary["cells"]:
        gains = e.get("gain") or {}
        xl = e.get("cross_lingual_mean")
        mean = MISSING if e["status"] != "ok" else "-" if xl is None else num(xl, True)
        rows.append([e["model"], e["task"], e["domain"]] + [_gain_entry(gains.get(x), _below(e, x)) for x in langs]
                    + [mean])
    return ["model", "task", "domain"] + langs + ["cross-lingual mean"], rows


def robustness_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    domains = list(dict.fromkeys(r["domain"] for r in summary["robustness"]))
    table: dict = {}
    for r in summary["robustness"]:
        table.setdefault((r["model"], r["task"], r["language"]), {})[r["domain"]] = _interval_entry(r)
    rows = [[m, t, lang] + [by_domain.get(d, "-") for d in domains] for (m, t, lang), by_domain in table.items()]
    return ["model", "task", "language"] + [f"{d} - {GENERAL}" for d in domains], rows


COST_COLUMNS = {"load s": "load_s", "intermediate s": "intermediate_s",
                "intermediate ex/s": "intermediate_examples_per_s", "train s": "train_s",
                "train ex/s": "train_examples_per_s", "validation s": "validation_s", "eval s": "eval_s",
                "eval ex/s": "eval_examples_per_s", "total s": "total_s", "trials per arm": "trials",
                "direct steps": "direct_steps", "+intermediate steps": "intermediate_steps"}


def _cost_text(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "trials" or key.endswith("_steps"):
        return f"{value:.0f}"
    return f"{value:.1f}" if key.endswith("_per_s") else f"{value:.2f}"


def cost_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    def line(name: str, cost: dict) -> list[str]:
        return [name] + [_cost_text(k, cost[k]) for k in COST_COLUMNS.values()]
    rows = [line(e["cell"], e["cost"]) if e["status"] == "ok" else [e["cell"]] + [MISSING] * len(COST_COLUMNS)
            for e in summary["cells"]]
    rows.append(line("total", summary["cost_total"]))
    return ["cell", *COST_COLUMNS], rows


def robustness_note(summary: dict) -> str:
    sources = {r["source"] for r in summary["robustness"]}
    note = "gain(domain) - gain(general) in the main metric, same model, task and language"
    if "computed" in sources:
        note += ("; entries marked 'no interval' are the difference of the two cells' gains, without interval "
                 "or verdict, because the pair's predictions could not be analysed")
    return note + "."


def _p_text(p) -> str:
    return MISSING if p is None else f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _seeds_text(k) -> str:
    return "-" if k is None else str(k)


def significance_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    rows = [[r["cell"], r["language"], _interval_entry({**r, "source": "record"}) + fdr_mark(r), r["rule"],
             _p_text(r["p_value"]), num(r["q_value"]), num(r["mdc"]), _seeds_text(r["seeds_needed"]),
             _seeds_text(r["seeds_margin"])] for r in summary["significance"]]
    margin = summary["fdr"].get("margin")
    return ["cell", "language", "gain [95% CI] (verdict)", "rule", "p", "q (FDR)", "MDC", "seeds (gain)",
            f"seeds ({num(margin) if margin is not None else 'margin'})"], rows


def significance_note(summary: dict) -> str:
    lines = "; ".join(moderation_lines(summary["moderation"]))
    caveat = one_seed_line(summary.get("one_seed", [])) and f"{one_seed_line(summary['one_seed'])}. "
    return (f"{fdr_line(summary['fdr'])}. {caveat}{FDR_NOTE}. rule: `moderated` (the seed variance shrunk towards "
            "a prior fitted across the run's gains of the same task, limma's moderated t) or `seed-t` (the cell's own "
            "interval: bootstrap plus t on seeds - 1 degrees of freedom)" + (f"; {lines}" if lines else "")
            + f". p: two-sided, from the interval's own distribution. q: the gain's Benjamini-Hochberg q-value "
            f"across the run's gains (a verdict with q < {FDR} survives FDR {FDR:.0%}). MDC: minimum detectable "
            "change, the smallest true gain that the verdict's own test (its rule, at 95%) calls positive or "
            "negative with 80% power at this many seeds; smaller true gains are mostly left undecided. "
            "seeds: the seeds with which a true gain of the observed size (and of --baseline-margin) is decided "
            "with 80% power ('>50': the test set's own sampling error is too large; '-': no seed spread).")


MOVED_HEADERS = ["cell", "lang", "moved", "baseline", "now", "change [interval]"]


def moved_table(moved) -> str:
    return tabulate([list(m) for m in moved], headers=MOVED_HEADERS, disable_numparse=True)


def _header(summary: dict) -> str:
    n = len(summary["cells"])
    return (f"profile {', '.join(summary['profiles']) or '-'}; {summary['cells_present']} of {n} cells present; "
            f"seeds per arm {', '.join(map(str, summary['seeds'])) or '-'}; main metric {_metric_note(summary)}"
            + (f"; precision {', '.join(summary['precisions'])}" if summary.get("precisions") else ""))


# ---------------------------------------------------------------- formats

MAIN_NOTE = (f"Target language. Entry: frozen / direct / +intermediate / gain (verdict), frozen: the pretrained model "
             f"untrained (similarity: cosine of pooled embeddings; classification: a logistic-regression probe on "
             f"them), '-' in records without it; {FDR_NOTE}; {BEST_NOTE}")
XL_NOTE = ("Gain (verdict) per test language, zero-shot in languages other than the cell's target language; "
           f"cross-lingual mean = mean gain over those languages; {BELOW_FLOOR_MARK}: an arm below the frozen model "
           f"in that language. {FDR_NOTE}.")
COST_NOTE = ("Seconds per phase and training / evaluation examples per second; intermediate time counts only "
             "where this run trained the intermediate model (otherwise it was cached). Train time covers every "
             "tuning trial; validation s: scoring the validation split after each epoch (tuning only); trials per "
             "arm: '-' untuned. Steps: optimizer steps behind each arm's evaluated model, mean over seeds "
             "(+intermediate: intermediate task plus target), the comparison's budget.")
# the tables after the main one: title, rows, note
SECTIONS = (("Cross-lingual transfer", cross_lingual_rows, lambda summary: XL_NOTE),
            ("Robustness to domain shift", robustness_rows, robustness_note),
            ("Cost", cost_rows, lambda summary: COST_NOTE),
            ("Significance and detectable change", significance_rows, significance_note))
MOVED_NOTE = ("Verdicts that claim less (weakened) or more (strengthened) than against the baseline without a "
              "significant change of the gain: reported, not failed.")


def _github(headers: list[str], rows: list[list[str]]) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def _main_note(summary: dict, best: str) -> str:
    flagged = any(e.get("under_trained") for e in summary["cells"])
    below = any(_below(e, e["language"]) for e in summary["cells"] if e["status"] == "ok")
    return (f"{MAIN_NOTE} {best}." + (f" {UNDER_TRAINED_NOTE}" if flagged else "")
            + (f" {BELOW_FLOOR_NOTE}" if below else "") + f" {floor_line(summary['floor']).capitalize()}.")


def to_markdown(summary: dict) -> str:
    parts = ["# transfer-bench summary", ""]
    for title, lines in (("Calibration (A/A)", calibration_lines(summary)),
                         ("Seeds until decided (--seeds auto)", sequential_lines(summary))):
        parts += [f"## {title}", ""] + [f"- {x}" for x in lines] + [""] if lines else []
    parts += [_header(summary) + ".", "", "## Main table", "",
             _main_note(summary, "in bold"), "", _github(*main_rows(summary, best=lambda s: f"**{s}**")), ""]
    for title, rows_of, note_of in SECTIONS:
        parts += [f"## {title}", "", note_of(summary), "", _github(*rows_of(summary)), ""]
        if rows_of is robustness_rows and summary["robustness_notes"]:
            parts += [f"- {n}" for n in summary["robustness_notes"]] + [""]
    if summary["baseline_moved"]:
        parts += ["## Weakened / strengthened against the baseline", "", MOVED_NOTE, "",
                  _github(MOVED_HEADERS, summary["baseline_moved"]), ""]
    parts += _errors_md(summary)
    return "\n".join(parts).rstrip() + "\n"


def _errors_md(summary: dict) -> list[str]:
    if not summary["errors"]:
        return []
    return ["## Records not used", ""] + [f"- {e}" for e in summary["errors"]] + [""]


_TEX = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                      "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                      "\u2020": r"\textdagger{}", "\u2021": r"\textdaggerdbl{}", "\u00a7": r"\S{}"})


def tex_escape(text) -> str:
    """Escape LaTeX's special characters so names such as `court_rulings_10%` print as written."""
    return str(text).translate(_TEX)


def _tex_table(caption: str, align: str, header_lines: list[str], rows: list[list[str]]) -> str:
    """A booktabs table. Hand-built rather than tabulate's latex_booktabs: the main table needs a two-level
    header (\\multicolumn per task, \\cmidrule under it) and bold cells, which tabulate cannot express."""
    body = [" & ".join(r) + r" \\" for r in rows]
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{tex_escape(caption)}}}",
                      rf"\begin{{tabular}}{{{align}}}", r"\toprule", *header_lines, r"\midrule", *body,
                      r"\bottomrule", r"\end{tabular}", r"\end{table}", ""])


def _tex_main(summary: dict) -> str:
    headers, rows = main_rows(summary, best=lambda s: f"\x00{s}\x01")
    cols = summary["layout"]["columns"]
    groups: list[list] = []
    for c in cols:
        if groups and groups[-1][0] == c["task"]:
            groups[-1][1] += 1
        else:
            groups.append([c["task"], 1])
    top, rules, start = [""], [], 2
    for task, span in groups:
        top.append(rf"\multicolumn{{{span}}}{{c}}{{{tex_escape(task)}}}")
        rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    second = ["model"] + [tex_escape(c["domain"]) for c in cols]
    cells = [[tex_escape(x).replace("\x00", r"\textbf{").replace("\x01", "}") for x in r] for r in rows]
    caption = f"Main table ({_header(summary)}). {_main_note(summary, 'in bold')}"
    return _tex_table(caption, "l" + "c" * len(cols),
                      [" & ".join(top) + r" \\", " ".join(rules), " & ".join(second) + r" \\"], cells)


def to_latex(summary: dict) -> str:
    parts = ["% transfer-bench summary; needs \\usepackage{booktabs}", *[f"% {tex_escape(x)}" for x in
                                                                         calibration_lines(summary)], _tex_main(summary)]
    for title, rows_of, note_of in SECTIONS:
        headers, rows = rows_of(summary)
        caption = f"{title}. {note_of(summary)}"
        parts.append(_tex_table(caption, "l" * len(headers),
                                [" & ".join(tex_escape(h) for h in headers) + r" \\"],
                                [[tex_escape(x) for x in r] for r in rows]))
    parts += [f"% robustness: {tex_escape(n)}" for n in summary["robustness_notes"]]
    parts += [f"% record not used: {tex_escape(e)}" for e in summary["errors"]]
    return "\n".join(parts).rstrip() + "\n"


CSV_FIELDS = ("cell", "model", "task", "domain", "status", "arm", "language", "metric", "value", "ci_low",
              "ci_high", "verdict", "q_value", "mdc", "rule", "p_value", "fdr", "below_floor")


def _csv_value(x) -> str:
    return "" if x is None else str(round(x, 6)) if isinstance(x, float) else str(x)


def tidy_rows(summary: dict) -> list[dict]:
    """One row per cell x arm x language x metric; arm is direct, intermediate, frozen (the floor), gain, robustness
    or cost. `below_floor`: `yes` on an arm's rows (and the gain's) in a language where an arm is below the floor."""
    rows, sig = [], {(r["cell"], r["language"]): r for r in summary["significance"]}
    for e in summary["cells"]:
        base = {k: e[k] for k in ("cell", "model", "task", "domain")}
        if e["status"] != "ok":
            rows.append({**base, "status": MISSING})
            continue
        below = {(b["arm"], b["language"]) for b in e.get("below_floor") or []}
        for arm in ARMS + (("frozen",) if "frozen" in e["metrics"] else ()):
            for lang in e["languages"]:
                rows += [{**base, "status": "ok", "arm": arm, "language": lang, "metric": m, "value": v,
                          "below_floor": "yes" if (arm, lang) in below else None}
                         for m, v in sorted(e["metrics"][arm][lang].items())]
        rows += [{**base, "status": "ok", "arm": "gain", "language": lang, "metric": e["main_metric"],
                  "value": g["mean"], "ci_low": g["ci_low"], "ci_high": g["ci_high"], "verdict": g["verdict"],
                  "q_value": sig[(e["cell"], lang)]["q_value"], "mdc": g.get("mdc"), "rule": g.get("rule"),
                  "p_value": g.get("p_value"), "fdr": sig[(e["cell"], lang)]["fdr"],
                  "below_floor": "yes" if _below(e, lang) else None}
                 for lang, g in ((x, e["gain"][x]) for x in e["languages"])]
        rows += [{**base, "status": "ok", "arm": "cost", "metric": k, "value": v} for k, v in e["cost"].items()]
    by = _cells_by(summary)
    for r in summary["robustness"]:
        e = by[(r["model"], r["task"], r["domain"])]
        rows.append({**{k: e[k] for k in ("cell", "model", "task", "domain")},
                     "status": "ok" if r["source"] == "predictions" else r["source"], "arm": "robustness",
                     "language": r["language"], "metric": e["main_metric"], "value": r["mean"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"], "verdict": r["verdict"]})
    return rows


def to_csv(summary: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in tidy_rows(summary):
        writer.writerow({k: _csv_value(row.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()


def to_json(summary: dict) -> str:
    return json.dumps(summary, indent=1, sort_keys=True) + "\n"


RENDER = {"markdown": to_markdown, "latex": to_latex, "csv": to_csv, "json": to_json}


def render(summary: dict, fmt: str) -> str:
    return RENDER[fmt](summary)


def terminal_table(records: list[dict]) -> str:
    """The main table for a terminal: one block per task (the full task x domain table is too wide)."""
    summary = summarise(records)
    headers, rows = main_rows(summary)
    flagged = any(e.get("under_trained") for e in summary["cells"])
    below = any(_below(e, e["language"]) for e in summary["cells"] if e["status"] == "ok")
    blocks = ["\n".join(calibration_lines(summary))] if summary["calibration"] else []
    caveat = one_seed_line(summary.get("one_seed", [])) and f"{one_seed_line(summary['one_seed'])}\n"
    blocks += [f"{_header(summary)}\n{fdr_line(summary['fdr'])}\n{caveat}{floor_line(summary['floor'])}\n"
              f"entry: frozen / direct / +intermediate / gain (verdict), target language; {BEST_NOTE} *"
              + (f"\n{UNDER_TRAINED_NOTE}" if flagged else "") + (f"\n{BELOW_FLOOR_NOTE}" if below else "")]
    cols = summary["layout"]["columns"]
    for task in dict.fromkeys(c["task"] for c in cols):
        idx = [i + 1 for i, c in enumerate(cols) if c["task"] == task]
        blocks.append(tabulate([[r[0]] + [r[i] for i in idx] for r in rows],
                               headers=[task] + [cols[i - 1]["domain"] for i in idx], disable_numparse=True))
    return "\n\n".join(blocks)


def write_summary(results_dir: Path, records: list[dict], errors: list[str] = (), expected=(),
                  moved=(), margin: float | None = None) -> list[Path]:
    """The run's summary.{md,csv,tex,json} and transfer.png in the results directory, each written atomically."""
    summary = build(results_dir, records, errors, expected, moved, margin)
    paths = []
    for fmt in FORMATS:
        paths.append(atomic_write_text(Path(results_dir) / f"summary.{SUFFIX[fmt]}", render(summary, fmt)))
    paths.append(plot(summary, Path(results_dir) / PLOT_NAME))
    return paths

