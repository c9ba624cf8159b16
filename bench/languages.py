"""Does the gain survive a change of language? Two model rows side by side, per cell (task-domain) and language:
each row's frozen floor, its direct arm and the gain of the intermediate step with its 95% interval and verdict,
read at the first K seeds (bench/verdicts.py's reading: the cell's own seed-t rule, what a fixed K-seed run
reports), and how many of each row's target-language and zero-shot gains are decided and which way.

    python bench/languages.py RESULTS_DIR... [--models e5,bert] [--seeds 3]

The results directories (records and saved predictions; one run holding both rows, or one run per row) are read
together and their cells split by model row: --models names the two (default: the first two found, in order).
Cells are matched by task and domain; a cell of one row only is listed with dashes for the other.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from verdicts import DECIDED, rows

from harness.definitions.grid import parse_cell_id


def _by_cell(table: list[dict]) -> dict:
    out = {}
    for t in table:
        c = parse_cell_id(t["cell"])
        out.setdefault(f"{c.task}-{c.domain}", {})[t["language"]] = t
    return out


def _side(t: dict | None, k: int) -> list[str]:
    if t is None:
        return ["-"] * 3
    frozen = "-" if t["frozen"] is None else f"{t['frozen']:.3f}"
    gain = f"{t[f'gain_{k}']:+.3f} [{t[f'low_{k}']:+.3f}, {t[f'high_{k}']:+.3f}] {t[f'verdict_{k}']}"
    return [frozen, f"{t['direct']:.3f}", gain]


def markdown(a: list[dict], b: list[dict], k: int, names: tuple[str, str]) -> str:
    left, right = _by_cell(a), _by_cell(b)
    head = ["cell", "lang", "rows"] + [f"{n} {col}" for n in names
                                       for col in ("floor", "direct", f"gain, {k} seeds [95%]")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in sorted(set(left) | set(right)):
        langs = {**right.get(cell, {}), **left.get(cell, {})}
        order = sorted(langs, key=lambda lang: (not langs[lang]["target"], lang))
        for lang in order:
            ta, tb = left.get(cell, {}).get(lang), right.get(cell, {}).get(lang)
            any_side = ta or tb
            shown = f"**{lang}**" if any_side["target"] else lang
            lines.append("| " + " | ".join([cell, shown, str(any_side["test_rows"])] + _side(ta, k) + _side(tb, k))
                         + " |")
    lines.append("")
    for name, table in zip(names, (a, b)):
        for what, sel in (("target language", [t for t in table if t["target"]]),
                          ("zero-shot", [t for t in table if not t["target"]])):
            words = Counter(t[f"verdict_{k}"] for t in sel)
            decided = sum(words[w] for w in DECIDED)
            detail = ", ".join(f"{w} {words[w]}" for w in DECIDED if words[w])
            lines.append(f"- {name}, {what}: {decided} of {len(sel)} gains decided at {k} seeds"
                         + (f" ({detail})" if detail else ""))
    return "\n".join(lines)


def split(table: list[dict], models: list[str] | None) -> tuple[tuple[str, str], list[dict], list[dict]]:
    """The two rows' gains (`models`, default the first two model rows in `table`) and their names."""
    found = list(dict.fromkeys(parse_cell_id(t["cell"]).model for t in table))
    names = models or found[:2]
    if len(names) != 2 or any(n not in found for n in names):
        raise SystemExit(f"bench/languages.py: two model rows needed, found {', '.join(found) or 'none'}"
                         + (f" (asked for {', '.join(models)})" if models else ""))
    a, b = ([t for t in table if parse_cell_id(t["cell"]).model == n] for n in names)
    return (names[0], names[1]), a, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results_dirs", type=Path, nargs="+", help="results directories (read together)")
    parser.add_argument("--models", help="the two model rows to put side by side, e.g. e5,bert")
    parser.add_argument("--seeds", type=int, default=3, help="read the first K seeds of each cell (default 3)")
    args = parser.parse_args()
    table = [t for d in args.results_dirs for t in rows(d, args.seeds)]
    names, a, b = split(table, args.models.split(",") if args.models else None)
    print(markdown(a, b, args.seeds, names))


if __name__ == "__main__":
    main()
