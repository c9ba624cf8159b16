"""Tables of a run's cell records."""
from __future__ import annotations

from tabulate import tabulate


def terminal_table(records: list[dict]) -> str:
    """One line per cell and language: direct, +intermediate, gain [95% CI] and verdict."""
    rows = []
    for r in sorted(records, key=lambda r: r["cell"]):
        main = r["main_metric"]
        for lang in r["languages"]:
            g = r["gain"][lang]
            rows.append([r["cell"], lang, main, f"{r['metrics']['direct'][lang][main]:.3f}",
                         f"{r['metrics']['intermediate'][lang][main]:.3f}",
                         f"{g['mean']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]", g["verdict"]])
    return tabulate(rows, headers=["cell", "lang", "metric", "direct", "+intermediate", "gain [95% CI]", "verdict"])
