"""The heatmap of a summary's gains (`transfer.png`, `report --plot`): one panel per test-language group, rows
model, columns task x domain, each entry the gain and a verdict marker."""
from __future__ import annotations

from pathlib import Path

from harness.fileio import atomic_write
from harness.output.summary import FDR_MARK, MISSING

# ---------------------------------------------------------------- plot

MARKERS = {"positive": "\u25b2", "negative": "\u25bc", "equivalent": "=", "inconclusive": "\u25cb",
           "uninformative": "?", "mixed": "\u00b1"}


def _panels(summary: dict) -> list[tuple[str, dict]]:
    """(title, {(model, task, domain): (gain, verdict)}) per language group: target, cross-lingual mean."""
    target, cross, langs_t, langs_x = {}, {}, set(), set()
    for e in summary["cells"]:
        if e["status"] != "ok":
            continue
        key = (e["model"], e["task"], e["domain"])
        g = e["gain"][e["language"]]
        target[key] = (g["mean"], g["verdict"] + ("*" if g.get("fdr") else ""))
        langs_t.add(e["language"])
        others = [x for x in e["languages"] if x != e["language"]]
        if others:
            verdicts = {e["gain"][x]["verdict"] + ("*" if e["gain"][x].get("fdr") else "") for x in others}
            cross[key] = (e["cross_lingual_mean"], verdicts.pop() if len(verdicts) == 1 else "mixed")
            langs_x.update(others)
    panels = [(f"target language ({', '.join(sorted(langs_t))})", target)]
    if cross:
        panels.append((f"cross-lingual mean ({', '.join(sorted(langs_x))})", cross))
    return panels


def _draw_panel(ax, title: str, vals: dict, models: list, cols: list, image_args: dict, bound: float,
                xlabels: bool):
    import numpy as np

    grid = np.array([[vals.get((m, c["task"], c["domain"]), (np.nan, None))[0] for c in cols] for m in models],
                    dtype=float)
    image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", **image_args)
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(cols)), [f"{c['task']}\n{c['domain']}" if xlabels else "" for c in cols], fontsize=7,
                  rotation=40, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(models)), models, fontsize=8)
    for i, m in enumerate(models):
        for j, c in enumerate(cols):
            gain, verdict = vals.get((m, c["task"], c["domain"]), (None, None))
            dark = gain is not None and abs(gain) > 0.6 * bound
            ax.text(j, i, MISSING if gain is None else f"{gain:+.2f} {_marker(verdict)}", ha="center", va="center",
                    fontsize=7, color="white" if dark else "black", style="italic" if gain is None else "normal")
    return image


def _marker(verdict: str) -> str:
    """The verdict's marker, and FDR_MARK when it survives FDR 5% (verdict suffix `*`)."""
    return MARKERS[verdict.rstrip("*")] + (FDR_MARK if verdict.endswith("*") else "")


def figure(summary: dict):
    """Heatmap of the gains: models x task-domain, one panel per language group (stacked, sharing the
    columns), a verdict marker in every cell, missing cells grey.

    A bare matplotlib Figure (Agg canvas, no pyplot state, no display). Colours diverge around zero on a
    symmetric scale (CenteredNorm: a gain and a loss of the same size are equally dark, and the colour bar
    shows both signs), shared by the panels. Axes are placed in inches rather than by a layout engine, which
    would draw the figure twice.
    """
    from matplotlib import colormaps
    from matplotlib.colors import CenteredNorm
    from matplotlib.figure import Figure

    models, cols = summary["layout"]["models"], summary["layout"]["columns"]
    panels = _panels(summary)
    gains = [v[0] for _, vals in panels for v in vals.values()] + [0.0]
    bound = max(max(abs(g) for g in gains), 1e-3)
    norm = CenteredNorm(vcenter=0.0, halfrange=bound)
    image_args = {"cmap": colormaps["RdBu"].with_extremes(bad="#d9d9d9"), "norm": norm}
    left, right, bottom, top, gap = 1.0, 1.1, 1.1, 0.75, 0.35
    pw, ph = max(0.85 * len(cols), 2.5), 0.4 * len(models) + 0.2
    width, height = left + pw + right, bottom + len(panels) * ph + (len(panels) - 1) * gap + top
    fig = Figure(figsize=(width, height), dpi=110)
    for k, (title, vals) in enumerate(panels):
        y = bottom + (len(panels) - 1 - k) * (ph + gap)
        ax = fig.add_axes((left / width, y / height, pw / width, ph / height))
        image = _draw_panel(ax, title, vals, models, cols, image_args, bound, xlabels=k == len(panels) - 1)
    span = len(panels) * ph + (len(panels) - 1) * gap
    cax = fig.add_axes(((left + pw + 0.2) / width, bottom / height, 0.12 / width, span / height))
    fig.colorbar(image, cax=cax).set_label("gain (+intermediate - direct), main metric", fontsize=8)
    fig.suptitle("Intermediate-task transfer gain\n" + "   ".join(f"{s} {v}" for v, s in MARKERS.items())
                 + f" (cross-lingual verdicts differ)   {FDR_MARK} survives FDR 5%", fontsize=8, y=1 - 0.1 / height)
    return fig


def plot(summary: dict, path: Path) -> Path:
    """Write the heatmap as PNG, atomically."""
    return atomic_write(path, lambda f: figure(summary).savefig(f, format="png"))

