"""`--plan`: what a run would train, before it trains: one row per selected cell with the model and data set
revisions, data sizes, epochs, training examples and an estimated time on this device.

Nothing here touches the network or trains: sizes come from the profile (`sizes`, `max_train`, local files),
the speed from the finished records of the results directory (training examples/s of the same model), and the
seeds a cell needs from its earlier record there (the significance table's `seeds (gain)` column: the seeds with
which a gain of the recorded size is decided with 80% power, moderated across every record of the folder).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from harness.definitions.config import DatasetConfig, Profile
from harness.definitions.grid import Cell


@dataclass
class PlanRow:
    cell: str
    model: str
    target: str
    intermediate: str
    epochs: str  # "target/intermediate"
    examples: int | None  # training examples the cell runs (its share of a shared intermediate model included)
    seconds: float | None
    skip: str | None = None
    seeds_needed: str = "?"  # per language, from an earlier record of the cell ("?": none)


def revision_of(dataset: DatasetConfig) -> str:
    """`name@revision` of a hub data set (`unpinned` when the profile pins none); local data sets by name."""
    if dataset.format != "hf":
        return dataset.name
    return f"{dataset.name}@{dataset.revision or 'UNPINNED'}"


def train_size(dataset: DatasetConfig, root: Path) -> int | None:
    """Training examples of a data set when known without downloading: the `sizes` table, or a local file's rows;
    the paper recipe's `train_fraction` and the `max_train` subsample applied."""
    rows = dataset.sizes.get("train")
    if rows is None and dataset.format != "hf":
        rows = _local_rows(dataset, root, "train")
    if rows is None:
        return None
    if dataset.train_fraction:
        rows = round(dataset.train_fraction * rows)
    return min(rows, dataset.max_train) if dataset.max_train else rows


def eval_size(dataset: DatasetConfig, root: Path) -> int | None:
    rows = dataset.sizes.get("test")
    if rows is None and dataset.format != "hf" and not dataset.train_fraction:
        rows = _local_rows(dataset, root, "test")
    if rows is None and dataset.train_fraction and dataset.sizes.get("train"):
        rows = dataset.sizes["train"] - round(dataset.train_fraction * dataset.sizes["train"])
    if rows is None:
        return None
    return min(rows, dataset.max_test) if dataset.max_test else rows


def _local_rows(dataset: DatasetConfig, root: Path, split: str) -> int | None:
    from harness.definitions.data import split_file

    file = split_file(dataset, root, "train" if dataset.train_fraction else split)
    if not file.is_file():
        return None
    with open(file, encoding="utf-8", errors="replace") as f:
        lines = sum(1 for line in f if line.strip())
    return lines - (dataset.format != "jsonl")  # csv / tsv: a header row


def throughput(results_dir: Path, describe: str) -> float | None:
    """Median training examples/s of finished records of this model (`model` field) in the results directory."""
    speeds = []
    for path in sorted((Path(results_dir) / "cells").glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if record.get("model") == describe:
                speeds.append(float(record["timings"]["train_examples_per_s"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return statistics.median(speeds) if speeds else None


def seeds_needed(results_dir: Path) -> dict[str, str]:
    """{cell id: `en 3, de >50, ...`}: the seeds each earlier record's gains need (harness.results.significance,
    over every usable record of the folder)."""
    from harness.results.record import load_records
    from harness.results.significance import significance

    records, _ = load_records(results_dir)
    if not records:
        return {}
    rows, _ = significance(records)
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["cell"], []).append(f"{r['language']} {'-' if r['seeds_needed'] is None else r['seeds_needed']}")
    return {cell: ", ".join(parts) for cell, parts in out.items()}


def plan(profile: Profile, cells: list[Cell], seeds: int, results_dir: Path) -> list[PlanRow]:
    rows, counted = [], set()
    needed = seeds_needed(results_dir)
    for cell in cells:
        model = profile.models[cell.model]
        reason = profile.skip_reason(cell)
        if reason:
            rows.append(PlanRow(cell.id, model.describe, "-", "-", "-", None, None, skip=reason))
            continue
        target, inter = profile.targets[(cell.task, cell.domain)], profile.intermediates[cell.task]
        n_target, n_test, n_inter = (train_size(target, profile.data_root), eval_size(target, profile.data_root),
                                     train_size(inter, profile.data_root))
        sizes = f" ({_n(n_target)} train / {_n(n_test)} test)"
        examples = None
        if n_target is not None and n_inter is not None:
            # both arms train on the target; the intermediate model is trained once per model x task x seed and
            # shared by the task's domains: it is counted with the first of them in the plan
            examples = 2 * seeds * n_target * profile.target_train.epochs
            if cell.group not in counted:
                examples += seeds * n_inter * profile.intermediate_train.epochs
        counted.add(cell.group)
        speed = throughput(results_dir, model.describe)
        rows.append(PlanRow(cell.id, model.describe, revision_of(target) + sizes,
                            f"{revision_of(inter)} ({_n(n_inter)} train)",
                            f"{profile.target_train.epochs}/{profile.intermediate_train.epochs}", examples,
                            examples / speed if examples is not None and speed else None,
                            seeds_needed=needed.get(cell.id, "?")))
    return rows


def _n(value) -> str:
    return "?" if value is None else f"{value:,}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def format_plan(profile: Profile, rows: list[PlanRow], seeds: int) -> str:
    """The plan table, a total line and what the time estimate rests on."""
    table = [[r.cell, r.model, r.target, r.intermediate, r.epochs, _n(r.examples), _duration(r.seconds),
              r.seeds_needed]
             if r.skip is None else [r.cell, r.model, f"skipped: {r.skip}", "", "", "", "", ""] for r in rows]
    text = tabulate(table, headers=["cell", "model@revision", "target@revision (sizes)", "intermediate@revision",
                                    "epochs tgt/int", "train examples", "est. time", "seeds needed"],
                    tablefmt="simple")
    runnable = [r for r in rows if r.skip is None]
    known = [r.examples for r in runnable if r.examples is not None]
    timed = [r.seconds for r in runnable if r.seconds is not None]
    if timed:
        estimate = f"estimated {_duration(sum(timed))}" + ("" if len(timed) == len(runnable) else
                                                         f" for the {len(timed)} cell(s) with a measured speed")
    else:
        estimate = "estimated time unknown (no finished record of these models in --results-dir yet)"
    total = (f"{len(runnable)} of {len(rows)} cells run, {seeds} seed(s); {sum(known):,} training examples"
             f"{'' if len(known) == len(runnable) else f' ({len(runnable) - len(known)} cell(s) of unknown size)'}; "
             + estimate)
    basis = ("time = training examples / the median training examples/s of finished records of the same model in "
             "--results-dir (no record yet: '?'); evaluation and data loading are not counted. seeds needed: per "
             "language, the seeds with which a gain of the size of the cell's earlier record in --results-dir is "
             "decided with 80% power ('>50': the test set is too small for it; '?': no earlier record)")
    return f"profile {profile.name}: plan (nothing trained)\n{text}\n{total}\n{basis}"
