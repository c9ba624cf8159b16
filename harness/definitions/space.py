"""The per-arm search space (a `[tuning]` table of a profile or --spec file), parsed and checked.

Per learning rate, one training run of up to `max_epochs` epochs, scored on validation after every epoch and
stopped after `patience` epochs without improvement, counted only from epoch `min_epochs` on (early stopping;
harness.running.tuning does the search). `selection` is the rule that picks the arm's (learning rate, epoch):
`best`, the highest validation score, or `one-se`, the most conservative one (lowest learning rate, then earliest
epoch) within one bootstrap standard error of the highest. A cell whose validation split has fewer than
`min_validation` rows is not searched: it trains the profile's fixed recipe on all its training rows (harness.
running.cell), since a dozen rows cannot rank checkpoints (docs/methodology.md: "Too few validation rows").
"""
from __future__ import annotations

import math
from dataclasses import dataclass

KEYS = ("lr", "max_epochs", "patience", "min_epochs", "selection", "validation_fraction", "min_validation")
SELECTIONS = ("best", "one-se")
REPLACED = {"epochs": "replaced by 'max_epochs' (the epoch limit of each run) and 'patience' (epochs without "
                      "validation improvement before a run stops)"}


class TuningError(ValueError):
    """A search space that cannot be used; str() is one line naming where it was declared and the key."""


@dataclass(frozen=True)
class SearchSpace:
    """Learning rates (one training run each) with early stopping: at most `max_epochs` epochs a run, stopped
    after `patience` epochs whose validation score did not beat the run's best, but never before `min_epochs`
    (a slow start is not cut short); the arm's model picked by `selection` (see the module docstring).

    `validation_fraction`: share of the training rows held out for validation when the data set has no
    validation split of its own and no unused training rows to take it from
    (harness.definitions.data.validation_split). `min_validation`: the fewest validation rows a search reads;
    a cell with fewer trains the fixed recipe instead (1: always search)."""
    lr: tuple = (1e-4,)
    max_epochs: int = 3
    patience: int = 2
    validation_fraction: float = 0.15
    min_epochs: int = 1
    selection: str = "best"
    min_validation: int = 30

    @property
    def trials(self) -> int:
        """Training runs per arm and seed (one per learning rate)."""
        return len(self.lr)

    def describe(self) -> dict:
        return {"lr": list(self.lr), "max_epochs": self.max_epochs, "patience": self.patience,
                "min_epochs": self.min_epochs, "selection": self.selection,
                "validation_fraction": self.validation_fraction, "min_validation": self.min_validation}


def parse_space(table, where: str, base: SearchSpace = SearchSpace()) -> SearchSpace:
    """A `[tuning]` table (keys of KEYS; those left out keep `base`'s values), checked: one-line TuningError
    `WHERE key 'tuning.KEY': problem` for an unknown or replaced key, an empty or repeated learning-rate list, a
    non-positive learning rate, a `max_epochs`, `patience`, `min_epochs` or `min_validation` below 1, a `min_epochs` above
    `max_epochs`, an unknown `selection`, or a fraction outside (0, 1)."""
    def fail(key: str, problem: str):
        raise TuningError(f"{where} key 'tuning.{key}': {problem}")

    if not isinstance(table, dict):
        raise TuningError(f"{where} key 'tuning': must be a table ([tuning]), got {table!r}")
    for key in table:
        if key in REPLACED:
            fail(key, f"{REPLACED[key]}, e.g. max_epochs = 10, patience = 3")
        if key not in KEYS:
            fail(key, f"unknown key (valid: {', '.join(KEYS)})")
    values = base.describe() | dict(table)
    lrs = values["lr"]
    if not isinstance(lrs, (list, tuple)) or not lrs:
        fail("lr", f"must be a non-empty list, got {lrs!r}")
    for lr in lrs:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            fail("lr", f"every value must be a positive number, got {lr!r}")
    if len(set(lrs)) < len(lrs):
        fail("lr", f"repeated value in {list(lrs)!r}")
    for key in ("max_epochs", "patience", "min_epochs", "min_validation"):
        if isinstance(values[key], bool) or not isinstance(values[key], int) or values[key] < 1:
            fail(key, f"must be an integer of at least 1, got {values[key]!r}")
    if values["min_epochs"] > values["max_epochs"]:
        fail("min_epochs", f"must not exceed max_epochs ({values['max_epochs']}), got {values['min_epochs']!r}")
    if values["selection"] not in SELECTIONS:
        fail("selection", f"must be one of {', '.join(SELECTIONS)}, got {values['selection']!r}")
    fraction = values["validation_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        fail("validation_fraction", f"must be a number between 0 and 1, got {fraction!r}")
    return SearchSpace(lr=tuple(sorted(float(x) for x in lrs)), max_epochs=values["max_epochs"],
                       patience=values["patience"], validation_fraction=float(fraction),
                       min_epochs=values["min_epochs"], selection=values["selection"],
                       min_validation=values["min_validation"])
