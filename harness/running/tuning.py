"""Per-arm model selection on validation data by early stopping, and the convergence check read off its curves.

Each arm (direct, intermediate) of each seed gets the same search (harness.definitions.space.SearchSpace): per
learning rate, one training run of up to `max_epochs` epochs, the validation split scored after every epoch; a
run stops after `patience` epochs without beating its own best score ("patience") or at its limit
("max_epochs"). The best (learning rate, epoch) over all runs (the first on ties: lower learning rate, earlier
epoch) is the arm's model for that seed, with that epoch's weights; only that model ever sees a test set.
Nothing here receives test data. The learning-rate schedule of each run is planned for `max_epochs` (a run
stopped early ends before its rate has decayed to zero), so an epoch's weights do not depend on the patience.

Convergence: an arm is flagged "may be under-trained" when, for some seed, the selected run stopped at
`max_epochs` while still rising (its last epoch beat the best epoch before it by more than `RISING`): a longer
limit might have done better, so a gain over it may reflect training, not transfer. A run stopped by patience
has converged in this sense and is never flagged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.definitions.space import SearchSpace

RISING = 0.01  # main-metric rise of the last epoch over the best before it that counts as "still rising"
UNDER_TRAINED = "may be under-trained"


@dataclass
class Search:
    """One arm and seed: every run's validation curve and the weights of the best epoch so far.

    `score(predictions) -> float` scores validation predictions (it holds the validation labels, nothing else)."""
    space: SearchSpace
    score: object
    runs: dict = field(default_factory=dict)  # lr -> {"lr", "curve", "best_epoch", "stopped"}
    best: dict | None = None  # {"lr", "epoch", "validation"}
    state: dict | None = None

    def observe(self, lr: float, epoch: int, predictions: np.ndarray, model) -> bool:
        """Record the validation score after `epoch` (1-based) of the run at `lr`, keep a copy of the weights
        when it beats every epoch before (of any run), and say whether the run should stop now."""
        value = float(self.score(predictions))
        run = self.runs.setdefault(lr, {"lr": lr, "curve": [], "best_epoch": None, "stopped": None})
        run["curve"].append(value)
        if run["best_epoch"] is None or value > run["curve"][run["best_epoch"] - 1]:
            run["best_epoch"] = epoch
        if self.best is None or value > self.best["validation"]:
            self.best = {"lr": lr, "epoch": epoch, "validation": value}
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if epoch - run["best_epoch"] >= self.space.patience:
            run["stopped"] = "patience"
        elif epoch >= self.space.max_epochs:
            run["stopped"] = "max_epochs"
        return run["stopped"] is not None

    def result(self, seed: int) -> dict:
        """The seed's choice, every run, and the selected run's curve and stop reason."""
        chosen = self.runs[self.best["lr"]]
        return {"seed": seed, "choice": dict(self.best), "runs": [dict(r, curve=list(r["curve"]))
                                                                  for r in self.runs.values()],
                "curve": list(chosen["curve"]), "stopped": chosen["stopped"]}


def convergence(results: list[dict]) -> dict:
    """Per seed, the selected run's stop reason and the rise of its last epoch over the best epoch before it; the
    arm is under-trained when a seed's selected run stopped at max_epochs rising by more than RISING."""
    rises = [float(r["curve"][-1] - max(r["curve"][:-1])) if len(r["curve"]) > 1 else None for r in results]
    rising = [r["seed"] for r, rise in zip(results, rises)
              if r["stopped"] == "max_epochs" and rise is not None and rise > RISING]
    return {"stopped": [r["stopped"] for r in results], "last_epoch_rise": rises, "rising_seeds": rising,
            "under_trained": bool(rising), "note": UNDER_TRAINED if rising else None}
