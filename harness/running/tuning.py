"""Per-arm model selection on validation data by early stopping, and the convergence check read off its curves.

Each arm (direct, intermediate) of each seed gets the same search (harness.definitions.space.SearchSpace): per
learning rate, one training run of up to `max_epochs` epochs, the validation split scored after every epoch; a
run stops after `patience` epochs without beating its own best score ("patience"; counted from epoch `min_epochs`
on, so a run that starts slowly is not cut short) or at its limit ("max_epochs"). The selection rule picks the
arm's model for that seed among every (learning rate, epoch), with that epoch's weights; only that model ever sees a
test set:
- `best`: the highest validation score (the first on ties: lower learning rate, earlier epoch);
- `one-se`: the most conservative checkpoint (lowest learning rate, then earliest epoch) whose score is within one
  bootstrap standard error of the highest. The maximum over a dozen noisy checkpoints is a winner's curse: a jagged
  curve's peak is partly noise, which this rule does not chase (Hastie, Tibshirani and Friedman, ch. 7.10).
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
    """One arm and seed: every run's validation curve, and the weights of the checkpoints the selection rule may
    still pick.

    `score(predictions) -> float` scores validation predictions (it holds the validation labels, nothing else);
    `se(predictions) -> float`, the bootstrap standard error of that score over the validation rows, is read by the
    `one-se` rule (`best` never calls it).

    Checkpoints arrive in the order of conservatism (learning rates ascending, then epochs), so the `one-se` choice
    is the first checkpoint whose score reaches the threshold T = best - se(best). Only a checkpoint that beats
    every one before it can be that first one, and T never falls (it is the running maximum of best - se(best)
    over the bests seen), so a checkpoint below T is dropped for good: a few copies of the weights are held, not
    one per epoch. Under `best`, T is the best score and only its checkpoint is held."""
    space: SearchSpace
    score: object
    se: object = None
    runs: dict = field(default_factory=dict)  # lr -> {"lr", "curve", "best_epoch", "stopped"}
    best: dict | None = None  # {"lr", "epoch", "validation"}: the highest score
    best_se: float = 0.0  # se(best) under `one-se`
    threshold: float = -np.inf
    candidates: list = field(default_factory=list)  # [(choice, state)], scores ascending, all >= threshold

    def observe(self, lr: float, epoch: int, predictions: np.ndarray, model) -> bool:
        """Record the validation score after `epoch` (1-based) of the run at `lr`, keep a copy of the weights when
        the selection rule may pick this checkpoint, and say whether the run should stop now: `patience` epochs
        without beating its own best, once `min_epochs` epochs have run, or its `max_epochs`."""
        value = float(self.score(predictions))
        run = self.runs.setdefault(lr, {"lr": lr, "curve": [], "best_epoch": None, "stopped": None})
        run["curve"].append(value)
        if run["best_epoch"] is None or value > run["curve"][run["best_epoch"] - 1]:
            run["best_epoch"] = epoch
        if self.best is None or value > self.best["validation"]:
            self.best = {"lr": lr, "epoch": epoch, "validation": value}
            spread = float(self.se(predictions)) if self.space.selection == "one-se" else 0.0
            self.best_se = spread
            self.threshold = max(self.threshold, value - spread)
            self.candidates = [c for c in self.candidates if c[0]["validation"] >= self.threshold]
            self.candidates.append(({"lr": lr, "epoch": epoch, "validation": value},
                                    {k: v.detach().clone() for k, v in model.state_dict().items()}))
        if epoch >= self.space.min_epochs and epoch - run["best_epoch"] >= self.space.patience:
            run["stopped"] = "patience"
        elif epoch >= self.space.max_epochs:
            run["stopped"] = "max_epochs"
        return run["stopped"] is not None

    @property
    def choice(self) -> dict:
        """The selected (lr, epoch, validation): the first held checkpoint (the best itself under `best`)."""
        return self.candidates[0][0]

    @property
    def state(self) -> dict:
        """The selected checkpoint's weights."""
        return self.candidates[0][1]

    def result(self, seed: int) -> dict:
        """The seed's choice (with the best checkpoint and the threshold the rule read), every run, and the
        selected run's curve and stop reason."""
        chosen = self.runs[self.choice["lr"]]
        return {"seed": seed, "choice": dict(self.choice), "best": {**self.best, "se": self.best_se}, "threshold": self.threshold,
                "selection": self.space.selection,
                "runs": [dict(r, curve=list(r["curve"])) for r in self.runs.values()],
                "curve": list(chosen["curve"]), "stopped": chosen["stopped"]}


def validation_se(metric, targets: np.ndarray, n_boot: int = 200, seed: int = 0):
    """`se(predictions)`: the bootstrap standard error of `metric(targets, predictions)` over resamples of the
    validation rows (fixed resamples, so the same predictions always give the same SE)."""
    idx = np.random.default_rng(seed).integers(0, len(targets), size=(n_boot, len(targets)))

    def se(predictions: np.ndarray) -> float:
        return float(np.std([metric(targets[i], predictions[i]) for i in idx], ddof=1))
    return se


def convergence(results: list[dict]) -> dict:
    """Per seed, the selected run's stop reason and the rise of its last epoch over the best epoch before it; the
    arm is under-trained when a seed's selected run stopped at max_epochs rising by more than RISING."""
    rises = [float(r["curve"][-1] - max(r["curve"][:-1])) if len(r["curve"]) > 1 else None for r in results]
    rising = [r["seed"] for r, rise in zip(results, rises)
              if r["stopped"] == "max_epochs" and rise is not None and rise > RISING]
    return {"stopped": [r["stopped"] for r in results], "last_epoch_rise": rises, "rising_seeds": rising,
            "under_trained": bool(rising), "note": UNDER_TRAINED if rising else None}
