"""Model selection measured: the `[tuning]` rules (selection `best` / `one-se`, `min_epochs`) against the fixed recipe,
on the offline profile's bert (all-MiniLM-L6-v2) target cells and on data sets the profile does not train on.

    python bench/selection.py --data-dir ../shared/data [--seeds 3] [--out selection.json]

Per data set and seed, the direct arm is trained once per learning rate of the profile's search space for the full
`max_epochs` (a run's schedule is planned for `max_epochs` whatever stops it, so an epoch's weights do not depend on
the stopping rule), and after every epoch its validation score, the validation score's bootstrap SE and its test
score are kept. Each rule is then replayed on those curves through harness.running.tuning.Search itself (patience,
`min_epochs`, selection), so every rule is judged on the same trained models; the test score of the checkpoint it
picks is what it would have reported. The fixed recipe ([train.target]: lr, epochs) is trained separately, as
`--no-tune` trains it. Test sets above 1,000 rows are cut to 1,000 (fixed seed) to keep the per-epoch scoring cheap.

Prints a Markdown table (test main metric, mean over seeds, per data set and rule; and how often each rule picked
the higher learning rate) and writes every curve to --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from harness.definitions.config import DatasetConfig
from harness.definitions.grid import Cell
from harness.definitions.metrics import FUNCTIONS, main_metric
from harness.definitions.profiles import load_profile
from harness.running import arms, tuning
from harness.running.cell import cell_setup
from harness.running.context import RunContext, load_dataset
from harness.training.loop import predict, train

OUTSIDE = [  # (name, task, domain, path, language): train files the offline profile never trains on
    ("uci_sentiment-amazon", "sentiment", "general", "uci_sentiment/amazon", "en"),
    ("xlmt_sentiment-es", "sentiment", "general", "xlmt_sentiment/es", "es"),
    ("sib200-de", "classification", "general", "sib200/de", "de"),
]
RULES = {  # name -> the [tuning] keys replayed
    "best": {"selection": "best", "min_epochs": 1},
    "best, min_epochs 6": {"selection": "best", "min_epochs": 6},
    "one-se": {"selection": "one-se", "min_epochs": 1},
    "one-se, min_epochs 6": {"selection": "one-se", "min_epochs": 6},
}
TEST_ROWS = 1000


def datasets(profile) -> list[tuple[Cell, DatasetConfig, str]]:
    out = [(Cell("bert", task, domain), d, "shipped") for (task, domain), d in sorted(profile.targets.items())]
    for name, task, domain, path, lang in OUTSIDE:
        out.append((Cell("bert", task, domain), DatasetConfig(name=name, task=task, domain=domain, path=path,
                                                              language=lang, max_train=160), "outside"))
    return out


def setup_for(ctx: RunContext, cell: Cell, dataset: DatasetConfig):
    """The cell's own setup (harness.running.cell.cell_setup) on the target language's test set, cut to TEST_ROWS."""
    dataset = dataclasses.replace(dataset, max_test=min(dataset.max_test or TEST_ROWS, TEST_ROWS),
                                  cross_lingual={})
    target = load_dataset(ctx, dataset, validation_fraction=ctx.profile.tuning.validation_fraction)
    metric = main_metric(cell.task, target.train.labels if target.labels else None, dataset.main_metric)[0]
    setup, test_enc = cell_setup(ctx, cell, target, metric, tuned=True)
    return setup, test_enc[dataset.language], len(target.train), len(target.validation)


def curves(setup: arms.Setup, test_enc, seed: int) -> dict:
    """Per learning rate: validation score, its bootstrap SE and test score after every epoch of a full-length run;
    and the fixed recipe's test score."""
    ctx, space, metric = setup.ctx, setup.ctx.profile.tuning, FUNCTIONS[setup.metric]
    pad, left = setup.pad
    se = tuning.validation_se(metric, np.asarray(setup.val_enc.targets))
    probed, out = [], {"seed": seed, "runs": {}}
    fresh = arms.fresh_factory(setup, seed, None, probed)
    for lr in space.lr:
        model, rows = fresh(), []

        def record(epoch, model=model, rows=rows):
            val = predict(model, setup.val_enc, setup.hp.eval_batch_size, ctx.device, pad, left)
            test = predict(model, test_enc, setup.hp.eval_batch_size, ctx.device, pad, left)
            rows.append([float(metric(setup.val_enc.targets, val)), se(val), float(metric(test_enc.targets, test))])
            return False

        train(model, setup.train_enc, dataclasses.replace(setup.hp, lr=lr, epochs=space.max_epochs), seed, ctx.device,
              pad, left, on_epoch=record)
        out["runs"][lr] = rows
    fixed = arms.sequential(setup, "direct", seed).model
    out["fixed"] = float(metric(test_enc.targets, predict(fixed, test_enc, setup.hp.eval_batch_size, ctx.device, pad,
                                                          left)))
    return out


class _Checkpoint:
    """Stands in for a model in Search.observe: its 'weights' are the checkpoint's test score."""
    def __init__(self, test: float):
        self.test = torch.tensor(test)

    def state_dict(self):
        return {"test": self.test}


def replay(space, runs: dict) -> dict:
    """A rule replayed on recorded curves with the harness's own Search: the picked checkpoint and its test score."""
    search = tuning.Search(space, score=lambda p: p[0], se=lambda p: p[1])
    for lr in space.lr:
        for epoch, (val, se, test) in enumerate(runs[lr], start=1):
            if search.observe(lr, epoch, np.array([val, se]), _Checkpoint(test)):
                break
    return {**search.choice, "test": float(search.state["test"]),
            "epochs_run": sum(len(r["curve"]) for r in search.runs.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--cache-dir", default=os.environ.get("BENCH_CACHE_DIR", ".bench-cache"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="selection.json")
    parser.add_argument("-k", default="", help="only data sets whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    profile = load_profile("offline", Path(args.data_dir), Path(args.cache_dir))
    ctx = RunContext(profile=profile, results_dir=Path(args.cache_dir) / "results", cache_dir=Path(args.cache_dir),
                     seeds=list(range(args.seeds)), tune=True)
    results = []
    for cell, dataset, kind in datasets(profile):
        if args.k not in dataset.name:
            continue
        t = time.perf_counter()
        setup, test_enc, n_train, n_val = setup_for(ctx, cell, dataset)
        per_seed = [curves(setup, test_enc, seed) for seed in ctx.seeds]
        results.append({"dataset": dataset.name, "kind": kind, "metric": setup.metric, "train": n_train,
                        "validation": n_val, "test": len(test_enc), "seconds": time.perf_counter() - t,
                        "seeds": per_seed})
        print(f"{dataset.name}: {time.perf_counter() - t:.0f} s", flush=True)
        Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
    print(table(results, profile.tuning))


def table(results: list[dict], base) -> str:
    high = max(base.lr)
    head = ["data set", "kind", "metric", "rows (train/val/test)", "fixed"] + list(RULES)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    picks = {name: [] for name in RULES}
    deltas = {name: {"shipped": [], "outside": []} for name in RULES}
    for r in results:
        fixed = np.mean([s["fixed"] for s in r["seeds"]])
        cells = [r["dataset"], r["kind"], r["metric"], f"{r['train']}/{r['validation']}/{r['test']}", f"{fixed:.3f}"]
        for name, keys in RULES.items():
            space = dataclasses.replace(base, **keys)
            chosen = [replay(space, {float(k): v for k, v in s["runs"].items()}) for s in r["seeds"]]
            score = np.mean([c["test"] for c in chosen])
            picks[name] += [c["lr"] == high for c in chosen]
            deltas[name][r["kind"]].append(score - fixed)
            cells.append(f"{score:.3f} ({score - fixed:+.3f}; lr {sum(c['lr'] == high for c in chosen)}/"
                         f"{len(chosen)} high, ep {np.mean([c['epoch'] for c in chosen]):.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name in RULES:
        lines.append(f"- {name}: higher lr picked {sum(picks[name])}/{len(picks[name])}; mean vs fixed: shipped "
                     f"{np.mean(deltas[name]['shipped'] or [np.nan]):+.3f}, outside "
                     f"{np.mean(deltas[name]['outside'] or [np.nan]):+.3f}; worst outside "
                     f"{min(deltas[name]['outside'] or [np.nan]):+.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
