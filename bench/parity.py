"""Final test metric of the harness's loop against Hugging Face Trainer, seed by seed.

    python bench/parity.py [--cases tiny-bert tiny-roberta tiny-xlnet minilm] [--seeds 10] [--data-dir DIR]

Each case and seed fine-tunes one initial model three ways (bench/reference.py: compare_loops):
- harness: harness.training.loop, length-grouped batches;
- trainer_same_batches: Trainer fed the harness's batches, with its own loop, optimizer, scheduler and collator;
  any difference from `harness` is the loops' own (weight_diff: the largest weight difference after training);
- trainer: Trainer with its own random sampler, as run_glue.py runs it; the difference from `harness` is the
  batch order, a random effect: it is summarised over the seeds as a mean and a 95% t-interval.
Prints a table per seed and a summary per case. The minilm case needs ../shared/data and the weights package.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference import LOOPS, PARITY_CASES, compare_loops, parity_case  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def summary(name: str, runs: list) -> dict:
    """Means per arm; the largest |harness - trainer_same_batches|; harness - trainer as mean and t-interval."""
    row = {"case": name, "seeds": len(runs)}
    for arm in LOOPS:
        values = [r[arm] for r in runs if arm in r]
        if values:
            row[f"{arm}_mean"] = float(np.mean(values))
    if all("trainer_same_batches" in r for r in runs):
        row["max_abs_diff_same_batches"] = max(abs(r["harness"] - r["trainer_same_batches"]) for r in runs)
        row["max_weight_diff"] = max(r["weight_diff"] for r in runs)
    if all("trainer" in r for r in runs):
        diff = np.array([r["harness"] - r["trainer"] for r in runs])
        row["diff_vs_trainer_mean"] = float(diff.mean())
        if len(diff) > 1:
            half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
            row["diff_vs_trainer_95ci"] = f"[{diff.mean() - half:+.4f}, {diff.mean() + half:+.4f}]"
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(PARITY_CASES), choices=PARITY_CASES)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--arms", nargs="+", default=list(LOOPS), choices=LOOPS)
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA, help="../shared/data (for minilm)")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache/transfer-bench"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the tiny profile)")
    args = parser.parse_args(argv)
    if "harness" not in args.arms:
        parser.error("--arms must include harness: every other arm is compared with it")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    per_seed, summaries = [], []
    with tempfile.TemporaryDirectory() as out:
        for name in args.cases:
            try:
                case = parity_case(name, args.data_dir, args.cache_dir)
            except ValueError as err:
                print(f"{name}: skipped: {err}", file=sys.stderr)
                continue
            runs = []
            for seed in range(args.seeds):
                start = time.perf_counter()
                result = compare_loops(case, seed, out, arms=args.arms)
                runs.append(result)
                per_seed.append({"case": name, "seed": seed, **result, "seconds": time.perf_counter() - start})
                print(tabulate([per_seed[-1]], headers="keys", floatfmt=".4g"), flush=True)
            summaries.append(summary(name, runs))
    print("\nper seed\n" + tabulate(per_seed, headers="keys", floatfmt=".4g"))
    print("\nsummary\n" + tabulate(summaries, headers="keys", floatfmt=".4g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
