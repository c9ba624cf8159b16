"""Synthetic cell records (schema 1) for tests of the report, compare and merge code: no training involved.

Numbers are derived from the cell id with sha256 (stable across runs and machines) and are multiples of 1/256,
so every float prints the same everywhere and golden files stay byte-identical.
"""
from __future__ import annotations

import hashlib

import numpy as np

from harness.definitions.grid import cells
from harness.definitions.tasks import task_type
from harness.results.bootstrap import verdict
from harness.results.change import cell_detectable
from harness.results.record import SCHEMA_VERSION, record_path, save_predictions, write_record


def _unit(*parts) -> float:
    """A number in [0, 1) on a 1/256 grid, fixed by `parts`."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).digest()[0] / 256


def make_record(model: str, task: str, domain: str, languages=("en", "de", "fr"), seeds: int = 1,
                profile: str = "tiny", shift: float = 0.0) -> dict:
    """A complete record; `shift` moves every intermediate score (and so every gain) by that much."""
    cell = f"{model}-{task}-{domain}"
    main = task_type(task).main_metric
    metrics = {"direct": {}, "intermediate": {}}
    per_seed = {"direct": {}, "intermediate": {}}
    metrics_se = {"direct": {}, "intermediate": {}}
    gain = {}
    for lang in languages:
        d = 0.25 + _unit(cell, lang, "d") / 2
        delta = (_unit(cell, lang, "g") - 0.5) / 2 + shift
        half = 0.03125 + _unit(cell, lang, "w") / 8
        for arm, value in (("direct", d), ("intermediate", d + delta)):
            metrics[arm][lang] = {m: value - 0.0078125 * k for k, m in enumerate(task_type(task).metrics)}
            per_seed[arm][lang] = {m: [v] * seeds for m, v in metrics[arm][lang].items()}
            metrics_se[arm][lang] = {main: 0.03125}
        g = {"mean": delta, "ci_low": delta - half, "ci_high": delta + half,
             "verdict": verdict(delta - half, delta + half), "per_seed": [delta] * seeds, "se_boot": half / 2}
        p = _unit(cell, lang, "p")  # a bootstrap p-value in keeping with the verdict
        gain[lang] = {**g, "p_value": p / 32 if g["verdict"] != "inconclusive" else 0.0625 + p * 0.9,
                      "mdc": cell_detectable(g, len(languages))}
    record = {
        "schema": SCHEMA_VERSION, "cell": cell, "profile": profile, "model": f"tiny-{model}", "task": task,
        "domain": domain, "seeds": list(range(seeds)), "main_metric": main, "language": languages[0],
        "languages": list(languages), "metrics": metrics, "metrics_per_seed": per_seed, "metrics_se": metrics_se,
        "gain": gain,
        "intermediate_key": f"key-{model}-{task}",
        "intermediate": [{"seed": s, "key": f"key-{model}-{task}", "trained_here": domain == "general",
                          "seconds": 4.0 if domain == "general" else 0.0, "examples_per_s": 640.0, "examples": 2560}
                         for s in range(seeds)],
        "data": {}, "hyperparameters": {}, "config_key": f"cfg-{cell}",
        "timings": {"load_s": 0.5, "intermediate_s": 4.0 * seeds if domain == "general" else 0.0,
                    "train_s": 2.0 * seeds, "eval_s": 0.25 * seeds, "train_examples_per_s": 768.0,
                    "eval_examples_per_s": 3072.0, "total_s": 0.5 + (6.25 if domain == "general" else 2.25) * seeds},
        "env": {"python": "3.11", "torch": "2.13.0+cpu", "transformers": "5.24.0", "datasets": "5.2.0",
                "device": "cpu", "platform": "test", "torch_threads": 1, "git_commit": None},
    }
    return record


GOLDEN_PAIR = ("bert-classification-general", "bert-classification-legal")


def golden_records() -> list[dict]:
    """The fixed set behind the golden files: two models, two tasks, a spec domain whose name needs LaTeX
    escaping and one cell missing (roberta-similarity-legal). `golden_predictions` gives GOLDEN_PAIR, and only
    that pair, predictions, so its robustness has an interval and every other one is a gain difference."""
    out = []
    for model in ("bert", "roberta"):
        for task in ("classification", "similarity"):
            for domain in ("general", "legal", "court_rulings_10%"):
                if (model, task, domain) == ("roberta", "similarity", "legal"):
                    continue
                out.append(make_record(model, task, domain, languages=("en", "de")))
    for record in out:
        if record["cell"].startswith("bert-"):
            with_floor(record, below=[("direct", "en")] if record["cell"] == "bert-similarity-general" else [])
    return out


def with_floor(record: dict, below=()) -> dict:
    """`record` with a frozen floor (the direct arm's scores minus 1/16) and `below` ((arm, language), ...) listed
    in below_floor."""
    main = record["main_metric"]
    record["metrics"]["frozen"] = {lang: {m: v - 0.0625 for m, v in scores.items()}
                                   for lang, scores in record["metrics"]["direct"].items()}
    record["metrics_se"]["frozen"] = {lang: {main: 0.03125} for lang in record["languages"]}
    record["frozen"] = {"pooling": "cls", "normalized": False, "seconds": 0.5}
    record["below_floor"] = [{"arm": arm, "language": lang, "mean": -0.25, "ci_low": -0.375, "ci_high": -0.125}
                             for arm, lang in below]
    return record


def predictions(cell: str, languages=("en", "de"), n: int = 64) -> dict:
    """Per-example predictions of one seed of a 4-class cell: fixed by the cell id, about half right."""
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(cell.encode()).digest()[:4], "little"))
    arrays = {}
    for lang in languages:
        y = rng.integers(0, 4, n)
        arrays[f"y_true/{lang}"] = y
        for arm in ("direct", "intermediate"):
            arrays[f"{arm}/{lang}"] = np.where(rng.random((1, n)) < 0.5, y, (y + 1) % 4)
    return arrays


def write_golden_predictions(results_dir) -> None:
    for cell in GOLDEN_PAIR:
        save_predictions(results_dir, cell, predictions(cell))


def tiny_grid_records(shift: float = 0.0) -> list[dict]:
    """One record per cell of the full tiny grid (27 cells, languages en, de, fr)."""
    return [make_record(c.model, c.task, c.domain, shift=shift) for c in cells()]


def write_records(results_dir, records) -> None:
    for r in records:
        write_record(record_path(results_dir, r["cell"]), r)
