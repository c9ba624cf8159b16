"""Per-arm model selection on validation data, and the convergence check read off its validation curves.

Each arm (direct, intermediate) of each seed gets the same trials: one training run per learning rate of the
search space, as long as its largest epoch count, with the validation split scored after every epoch. The epoch
counts of the space are early-stopping choices read off that one run, not extra runs, so an arm costs
len(lr) runs of max(epochs) epochs and has len(lr) x len(epochs) trials. The trial with the best validation
score in the cell's main metric (the first on ties: lower learning rate, fewer epochs) is the arm's model for
that seed; only that model ever sees a test set. Nothing here receives test data.

Convergence: an arm whose selected runs' validation curve (mean over seeds) still rose by more than `RISING`
over its last epoch is flagged "may be under-trained": a longer schedule might have done better, so a gain
over it may reflect training, not transfer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

KEYS = ("lr", "epochs", "validation_fraction")


class TuningError(ValueError):
    """A search space that cannot be used; str() is one line naming where it was declared and the key."""


@dataclass(frozen=True)
class SearchSpace:
    """Learning rates (one training run each) x epoch counts (validation checkpoints of that run).

    `validation_fraction`: share of the training rows held out for validation when the data set has no
    validation split of its own and no unused training rows to take it from (harness.definitions.data.validation_split)."""
    lr: tuple = (1e-4,)
    epochs: tuple = (3,)
    validation_fraction: float = 0.15

    @property
    def trials(self) -> int:
        return len(self.lr) * len(self.epochs)

    @property
    def max_epochs(self) -> int:
        return max(self.epochs)

    def describe(self) -> dict:
        return {"lr": list(self.lr), "epochs": list(self.epochs), "validation_fraction": self.validation_fraction}


def parse_space(table, where: str, base: SearchSpace = SearchSpace()) -> SearchSpace:
    """A `[tuning]` table (keys of KEYS; those left out keep `base`'s values), checked: one-line TuningError
    `WHERE key 'tuning.KEY': problem` for an unknown key, an empty list, a non-positive learning rate or epoch
    count, or a fraction outside (0, 1)."""
    def fail(key: str, problem: str):
        raise TuningError(f"{where} key 'tuning.{key}': {problem}")

    if not isinstance(table, dict):
        raise TuningError(f"{where} key 'tuning': must be a table ([tuning]), got {table!r}")
    for key in table:
        if key not in KEYS:
            fail(key, f"unknown key (valid: {', '.join(KEYS)})")
    values = base.describe() | dict(table)
    for key, kind in (("lr", (int, float)), ("epochs", int)):
        items = values[key]
        if not isinstance(items, (list, tuple)) or not items:
            fail(key, f"must be a non-empty list, got {items!r}")
        for item in items:
            if isinstance(item, bool) or not isinstance(item, kind) or not math.isfinite(item) or item <= 0:
                fail(key, f"every value must be a positive {'number' if key == 'lr' else 'integer'}, got {item!r}")
        if len(set(items)) < len(items):
            fail(key, f"repeated value in {list(items)!r}")
    fraction = values["validation_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        fail("validation_fraction", f"must be a number between 0 and 1, got {fraction!r}")
    return SearchSpace(lr=tuple(sorted(float(x) for x in values["lr"])), epochs=tuple(sorted(values["epochs"])),
                       validation_fraction=float(fraction))

