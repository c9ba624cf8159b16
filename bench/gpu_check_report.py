"""The report of bench/gpu_check.sh: one Markdown table (OUT/gpu_check.md) and the raw figures (OUT/gpu_check.json)
from what the parts left in the output folder.

    python bench/gpu_check_report.py OUT

Reads OUT/parts.tsv (part, exit status, milliseconds, timeout), OUT/throughput.json (bench/gpu_throughput.py),
OUT/{tiny,minilm}.xml (junit) and the cell records under OUT/{tiny,minilm}/cells/. A part that did not run, timed
out or left no file is a row saying so; the report is written whatever happened (standard library only).
"""
from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

GRIDS = ("tiny", "minilm")


def parts(out: Path) -> list[dict]:
    rows = []
    path = out / "parts.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, ms, limit = (line.split("\t") + ["", "", "", ""])[:4]
        status = "skipped" if rc == "skipped" else "ok" if rc == "0" else "timed out" if rc in ("124", "137") \
            else f"failed (exit {rc})"
        rows.append({"part": name, "status": status, "exit": rc, "seconds": int(ms or 0) / 1000,
                     "timeout_s": int(limit or 0)})
    return rows


def junit(path: Path) -> dict | None:
    """Per-test outcome of a junit file: {test id: passed | failed | error | skipped}."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return None
    outcomes = {}
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        name = name[name.find("[") + 1:-1] if "[" in name else name
        kind = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        outcomes[name] = {"failure": "failed"}.get(kind, kind)
    return outcomes


def cells(folder: Path) -> list[dict]:
    records = []
    for path in sorted((folder / "cells").glob("*.json")) if (folder / "cells").is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        lang = record.get("language")
        main = record.get("main_metric")
        gain = record.get("gain", {}).get(lang, {})
        metrics = record.get("metrics", {})
        records.append({"cell": record.get("cell"), "seconds": record.get("timings", {}).get("total_s"),
                        "train_examples_per_s": record.get("timings", {}).get("train_examples_per_s"),
                        "main_metric": main, "language": lang,
                        "direct": metrics.get("direct", {}).get(lang, {}).get(main),
                        "intermediate": metrics.get("intermediate", {}).get(lang, {}).get(main),
                        "gain": gain.get("mean"), "verdict": gain.get("verdict"),
                        "device": record.get("env", {}).get("device")})
    return records


def collect(out: Path) -> dict:
    throughput = None
    if (out / "throughput.json").is_file():
        try:
            throughput = json.loads((out / "throughput.json").read_text())
        except json.JSONDecodeError:
            throughput = None
    grids = {name: {"tests": junit(out / f"{name}.xml"), "cells": cells(out / name)} for name in GRIDS}
    return {"parts": parts(out), "throughput": throughput, "grids": grids}


def _num(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def rows(report: dict) -> list[tuple[str, str, str, str]]:
    """(part, item, figure, value) rows of the one table."""
    out = [(p["part"], "run", p["status"], f"{p['seconds']:.0f} s of {p['timeout_s']} s") for p in report["parts"]]
    t = report["throughput"]
    if t:
        out.append(("throughput", "machine", t.get("device_name", "?"), f"torch {t.get('torch', '?')}"))
        for r in t.get("rows", []):
            item = f"{r['setting']}, batch {r['batch_size']}, epoch {r['epoch']}"
            value = (f"{r['examples_per_s']:.1f} ex/s, MFU {100 * r['mfu']:.1f}%, "
                     f"{_num(r.get('peak_memory_gib'), '.2f')} GiB, compiles {_num(r.get('compiles'), 'd')}")
            out.append(("throughput", item, f"ratio to Trainer {_num(r.get('ratio_to_trainer'), '.2f')}", value))
        for k in (t.get("kernels") or [])[:5]:
            out.append(("throughput", "top kernel", k["kernel"][:60], f"{100 * k['share']:.1f}% ({k['ms']:.1f} ms)"))
    for name, grid in report["grids"].items():
        tests = grid["tests"]
        if tests is not None:
            counts = {k: sum(v == k for v in tests.values()) for k in ("passed", "failed", "error", "skipped")}
            out.append((name, "tests", "passed / failed / error / skipped",
                        " / ".join(str(counts[k]) for k in ("passed", "failed", "error", "skipped"))))
            out += [(name, cell, "test", outcome) for cell, outcome in sorted(tests.items()) if outcome != "passed"]
        for c in grid["cells"]:
            out.append((name, c["cell"], f"{c['main_metric']} ({c['language']}) direct / intermediate / gain",
                        f"{_num(c['direct'], '.3f')} / {_num(c['intermediate'], '.3f')} / {_num(c['gain'], '+.3f')} "
                        f"{c['verdict']}; {_num(c['seconds'], '.1f')} s, "
                        f"{_num(c['train_examples_per_s'], '.0f')} train ex/s on {c['device']}"))
    return out


def markdown(report: dict) -> str:
    header = ("part", "item", "figure", "value")
    body = [tuple(str(x).replace("|", "\\|") for x in r) for r in rows(report)]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)]) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out = Path(argv[0])
    report = collect(out)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    text = markdown(report)
    (out / "gpu_check.md").write_text(text)
    print(text)
    print(f"written: {out / 'gpu_check.md'}, {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
