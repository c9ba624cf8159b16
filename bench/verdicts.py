"""Every gain of a results folder as a table: per cell and language, the gain with its interval and verdict read at
the first K seeds (at 95%, the cell's own seed-t rule: what a fixed K-seed run reports), next to the record's own
(for a `--seeds auto:MAX` run: all its seeds, at the level of the look it stopped at), and the frozen floor.

    python bench/verdicts.py RESULTS_DIR [--seeds 3] [--format md|csv]

Recomputed from the saved predictions (harness.results.bootstrap.gain, the same random streams as the cell), so the
K-seed reading of an auto run is exactly what a K-seed run of the same seeds records.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from harness.results import bootstrap
from harness.results.record import load_predictions, load_records

DECIDED = ("positive", "negative", "equivalent")


def _mean_of_first(record: dict, arm: str, lang: str, k: int) -> float:
    """The arm's metric, mean of the first k seeds (what a k-seed run records); the record's mean where it has no
    per-seed values."""
    per_seed = ((record.get("metrics_per_seed") or {}).get(arm, {}).get(lang) or {}).get(record["main_metric"])
    if per_seed:
        return sum(per_seed[:k]) / len(per_seed[:k])
    return record["metrics"][arm][lang][record["main_metric"]]


def rows(results_dir: Path, k: int) -> list[dict]:
    records, errors = load_records(results_dir)
    for line in errors:
        print(f"skipped: {line}", file=sys.stderr)
    out = []
    for r in sorted(records, key=lambda r: r["cell"]):
        saved = load_predictions(results_dir, r["cell"])
        if saved is None:
            continue
        for lang in r["languages"]:
            data = bootstrap.arms(saved[f"y_true/{lang}"], saved[f"direct/{lang}"][:k],
                                  saved[f"intermediate/{lang}"][:k])
            fixed = bootstrap.gain(data, r["main_metric"], bootstrap.stream_seed(r["cell"], lang),
                                   margin=float(r.get("margin", 0.0)))
            own = r["gain"][lang]
            out.append({"cell": r["cell"], "language": lang, "target": lang == r["language"],
                        "metric": r["main_metric"], "test_rows": len(saved[f"y_true/{lang}"]),
                        "frozen": (r["metrics"].get("frozen", {}).get(lang) or {}).get(r["main_metric"]),
                        "direct": _mean_of_first(r, "direct", lang, k),
                        "intermediate": _mean_of_first(r, "intermediate", lang, k),
                        f"gain_{k}": fixed["mean"], f"low_{k}": fixed["ci_low"], f"high_{k}": fixed["ci_high"],
                        f"verdict_{k}": fixed["verdict"], "seeds": len(r["seeds"]), "gain": own["mean"],
                        "low": own["ci_low"], "high": own["ci_high"], "verdict": own["verdict"],
                        "level": own.get("level", bootstrap.LEVEL),
                        "seconds": (r.get("timings") or {}).get("total_s")})
    return out


def markdown(table: list[dict], k: int) -> str:
    head = ["cell", "lang", "rows", "frozen", f"gain, {k} seeds [95%]", "verdict", "gain, record [level]",
            "verdict", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in table:
        frozen = "-" if t["frozen"] is None else f"{t['frozen']:.3f}"
        lang = f"**{t['language']}**" if t["target"] else t["language"]
        lines.append(f"| {t['cell']} | {lang} | {t['test_rows']} | {frozen} | {t[f'gain_{k}']:+.3f} "
                     f"[{t[f'low_{k}']:+.3f}, {t[f'high_{k}']:+.3f}] | {t[f'verdict_{k}']} | {t['gain']:+.3f} "
                     f"[{t['low']:+.3f}, {t['high']:+.3f}] at {t['level']:.4f} | {t['verdict']} | {t['seeds']} |")
    for name, sel in (("target-language gains", [t for t in table if t["target"]]), ("all gains", table)):
        lines.append(f"\n{name}: decided at {k} seeds {sum(t[f'verdict_{k}'] in DECIDED for t in sel)} of {len(sel)}; "
                     f"in the records {sum(t['verdict'] in DECIDED for t in sel)} of {len(sel)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--seeds", type=int, default=3, help="read the first K seeds of each cell (default 3)")
    parser.add_argument("--format", choices=("md", "csv"), default="md")
    args = parser.parse_args()
    table = rows(args.results_dir, args.seeds)
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(table[0]) if table else ["cell"])
        writer.writeheader()
        writer.writerows(table)
    else:
        print(markdown(table, args.seeds))


if __name__ == "__main__":
    main()
