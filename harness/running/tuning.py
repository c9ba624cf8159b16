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

from dataclasses import dataclass, field

import numpy as np

from harness.definitions.space import SearchSpace

RISING = 0.01  # main-metric rise over the last epoch that counts as "still clearly rising"
UNDER_TRAINED = "may be under-trained"


@dataclass
class Search:
    """One arm and seed: every trial's validation score and the weights of the best trial so far.

    `score(predictions) -> float` scores validation predictions (it holds the validation labels, nothing else)."""
    space: SearchSpace
    score: object
    trials: list = field(default_factory=list)  # {"lr", "epochs", "validation"} per trial
    curves: dict = field(default_factory=dict)  # lr -> validation score after each epoch (1..max)
    best: dict | None = None
    state: dict | None = None

    def observe(self, lr: float, epoch: int, predictions: np.ndarray, model) -> None:
        """Record the validation score after `epoch` of the run at `lr`; keep a copy of the weights when it
        is a trial (an epoch count of the space) better than every trial before."""
        value = float(self.score(predictions))
        self.curves.setdefault(lr, []).append(value)
        if epoch not in self.space.epochs:
            return
        trial = {"lr": lr, "epochs": epoch, "validation": value}
        self.trials.append(trial)
        if self.best is None or value > self.best["validation"]:
            self.best = trial
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def result(self, seed: int) -> dict:
        return {"seed": seed, "choice": dict(self.best), "trials": list(self.trials),
                "curve": list(self.curves[self.best["lr"]])}


def convergence(results: list[dict]) -> dict:
    """The arm's mean validation curve over seeds (of the selected learning rate's run) and whether it was still
    rising over the last epoch by more than RISING."""
    curve = np.mean([r["curve"] for r in results], axis=0)
    rise = float(curve[-1] - curve[-2]) if len(curve) > 1 else None
    flagged = rise is not None and rise > RISING
    return {"curve": [float(x) for x in curve], "last_epoch_rise": rise, "under_trained": flagged,
            "note": UNDER_TRAINED if flagged else None}

