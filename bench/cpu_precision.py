"""fp32 against bf16 autocast on this CPU (`--precision bf16`): speed of the harness's own training step and
prediction, and how far bf16's predictions move, for the offline profile's real encoders.

    python bench/cpu_precision.py --data-dir ../shared/data [--models e5,bert] [--rounds 3] [--threads 1]

For each model row: the same model (same seed, same initial weights), the same data (the unfair-ToS cell's English
training rows, `--epochs` epochs of the profile's target recipe; `--test` of its English test clauses for
prediction, the bulk of that cell's cost), the same torch threads. Rounds alternate fp32, bf16, fp32, bf16, ... so
the load of a shared machine falls on both alike; the figure to read is the median over rounds of fp32's time over bf16's (the
ratio, measured in the same run). `same-weights agreement`: the share of test clauses given the same class by
fp32 and bf16 with the same (untrained-head) weights; `trained`: by the two models trained at each precision,
whose macro-F1 follows. Prints one
Markdown table; no result is written anywhere.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="the offline profile's data (../shared/data)")
    ap.add_argument("--cache-dir", default=".cache/transfer-bench")
    ap.add_argument("--models", default="e5,bert")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per precision (after one warm-up round)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs per round")
    ap.add_argument("--test", type=int, default=512, help="test clauses predicted")
    ap.add_argument("--threads", type=int, default=1)
    opts = ap.parse_args(argv)

    import torch
    from tabulate import tabulate

    from harness.definitions import data as D
    from harness.definitions.metrics import macro_f1
    from harness.definitions.profiles import load_profile
    from harness.running.context import RunContext, encode, load_dataset, tokenizer_for
    from harness.training.devices import PRECISION_ENV, cpu_has_bf16, cpu_name
    from harness.training.loop import predict, train
    from harness.training.models import build_model

    torch.set_num_threads(opts.threads)
    profile = load_profile("offline", Path(opts.data_dir), Path(opts.cache_dir))
    ctx = RunContext(profile, Path(opts.cache_dir) / "cpu-precision-results", Path(opts.cache_dir), seeds=[0])
    tos = load_dataset(ctx, profile.targets[("classification", "legal")])
    cfg = replace(profile.target_train, epochs=opts.epochs)
    rows = []
    for name in opts.models.split(","):
        tok = tokenizer_for(ctx, name)
        train_rows = encode(ctx, tok, name, tos.train, cfg.max_length, tos.labels)
        test = tos.tests[tos.dataset.language]
        test = D.Split(test.file, test.texts[:opts.test], None, test.labels[:opts.test])
        test_rows = encode(ctx, tok, name, test, cfg.max_length, tos.labels)
        pad, left = tok.pad_token_id, tok.padding_side == "left"
        def fresh(row=profile.models[name], tok=tok):
            return build_model(row, tok, len(tos.labels), cfg.max_length, 0)

        scorer = fresh()
        seconds = {"fp32": {"train": [], "eval": []}, "bf16": {"train": [], "eval": []}}
        preds, trained = {}, {}
        for round_ in range(opts.rounds + 1):
            for precision in ("fp32", "bf16"):
                os.environ[PRECISION_ENV] = precision
                model = fresh()
                start = time.perf_counter()
                train(model, train_rows, cfg, 0, "cpu", pad, left, desc=f"{name} {precision}")
                train_s = time.perf_counter() - start
                start = time.perf_counter()
                preds[precision] = predict(scorer, test_rows, cfg.eval_batch_size, "cpu", pad, left)
                eval_s = time.perf_counter() - start
                trained[precision] = predict(model, test_rows, cfg.eval_batch_size, "cpu", pad, left)
                if round_:  # the first round warms up
                    seconds[precision]["train"].append(train_s)
                    seconds[precision]["eval"].append(eval_s)
        os.environ.pop(PRECISION_ENV, None)
        ratio = {phase: statistics.median(a / b for a, b in zip(seconds["fp32"][phase], seconds["bf16"][phase]))
                 for phase in ("train", "eval")}
        rate = {(p, phase): n / statistics.median(seconds[p][phase])
                for p in seconds for phase, n in (("train", len(train_rows)), ("eval", len(test_rows)))}
        rows.append([name, f"{rate['fp32', 'train']:.1f}", f"{rate['bf16', 'train']:.1f}", f"{ratio['train']:.2f}",
                     f"{rate['fp32', 'eval']:.1f}", f"{rate['bf16', 'eval']:.1f}", f"{ratio['eval']:.2f}",
                     f"{np.mean(preds['fp32'] == preds['bf16']):.3f}",
                     f"{np.mean(trained['fp32'] == trained['bf16']):.3f}",
                     *(f"{macro_f1(test_rows.targets, trained[p]):.3f}" for p in ("fp32", "bf16"))])
    print(f"{cpu_name()}; native bf16 (AMX or AVX512-BF16): {cpu_has_bf16()}; {opts.threads} thread(s); "
          f"{opts.rounds} timed rounds per precision; torch {torch.__version__}\n")
    headers = ["model", "train ex/s fp32", "bf16", "speed-up", "predict ex/s fp32", "bf16", "speed-up",
               "same-weights agreement", "trained agreement", "macro-F1 fp32", "bf16"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
