"""Does the gain survive a change of language? Two models' runs side by side, per cell (task-domain) and language:
each model's frozen floor, its direct arm and the gain of the intermediate step with its 95% interval and verdict,
read at the first K seeds (bench/verdicts.py's reading: the cell's own seed-t rule, what a fixed K-seed run
reports), and how many of each model's zero-shot gains are decided and which way.

    python bench/languages.py RESULTS_A RESULTS_B [--seeds 3] [--names e5,MiniLM]

RESULTS_A and RESULTS_B are results directories (records and saved predictions) of the same profile, e.g. the
offline profile's `e5` and `bert` rows. Cells are matched by task and domain; a cell in one run only is listed with
dashes for the other.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="results directory of the first model's run")
    parser.add_argument("b", type=Path, help="results directory of the second model's run")
    parser.add_argument("--seeds", type=int, default=3, help="read the first K seeds of each cell (default 3)")
    parser.add_argument("--names", default="A,B", help="column names of the two runs (default A,B)")
    args = parser.parse_args()
    names = tuple(args.names.split(",", 1)) if "," in args.names else (args.names, "B")
    print(markdown(rows(args.a, args.seeds), rows(args.b, args.seeds), args.seeds, names))


if __name__ == "__main__":
    main()
