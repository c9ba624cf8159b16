"""Metric functions, vectorised over bootstrap replicates.

Every function takes `y_true` and `y_pred` of shape (n,) or (b, n) - b resampled copies of a test set - and returns a
float or an array of b values, so the bootstrap in harness/results/bootstrap.py scores thousands of replicates in one
call. Results match scikit-learn / scipy (tests/test_metrics.py checks this).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from harness.definitions.tasks import task_type


def _squeeze(values: np.ndarray, batched: bool):
    return values if batched else float(values[0])


def accuracy(y_true, y_pred):
    y_true, y_pred, batched = _as_2d(y_true, y_pred)
    return _squeeze((y_true == y_pred).mean(axis=1), batched)


def macro_f1(y_true, y_pred):
    """Macro-F1 over the labels present in y_true or y_pred (scikit-learn's default label set)."""
    y_true, y_pred, batched = _as_2d(y_true, y_pred)
    total, present = np.zeros(len(y_true)), np.zeros(len(y_true))
    for label in np.union1d(np.unique(y_true), np.unique(y_pred)):
        t, p = y_true == label, y_pred == label
        denom = t.sum(axis=1) + p.sum(axis=1)  # 0 where a row (replicate) neither holds nor predicts the label
        total += 2 * (t & p).sum(axis=1) / np.maximum(denom, 1)
        present += denom > 0
    return _squeeze(total / present, batched)


def pearson(y_true, y_pred):
    y_true, y_pred, batched = _as_2d(y_true, y_pred)
    y_true, y_pred = y_true.astype(np.float64), y_pred.astype(np.float64)
    t = y_true - y_true.mean(axis=1, keepdims=True)
    p = y_pred - y_pred.mean(axis=1, keepdims=True)
    denom = np.sqrt((t * t).sum(axis=1) * (p * p).sum(axis=1))
    # A constant row correlates with nothing (scipy: NaN). Test for it exactly: rounding in the mean leaves
    # tiny non-zero deviations that would otherwise give r = +-1.
    constant = (np.ptp(y_true, axis=1) == 0) | (np.ptp(y_pred, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(constant, 0.0, (t * p).sum(axis=1) / denom)
    return _squeeze(np.clip(r, -1.0, 1.0), batched)


def spearman(y_true, y_pred):
    y_true, y_pred, batched = _as_2d(y_true, y_pred)
    return _squeeze(pearson(rankdata(y_true, axis=1), rankdata(y_pred, axis=1)), batched)


FUNCTIONS = {"accuracy": accuracy, "macro_f1": macro_f1, "pearson": pearson, "spearman": spearman}


def score(task: str, y_true, y_pred) -> dict[str, float]:
    """All metrics of a task (its entry in harness/definitions/tasks.py) for one set of predictions."""
    return {name: float(FUNCTIONS[name](y_true, y_pred)) for name in task_type(task).metrics}


IMBALANCED = 0.6  # majority-class share above which accuracy cannot tell a model from a constant guess


def main_metric(task: str, train_labels: list | None, declared: str | None = None) -> tuple[str, str]:
    """The metric a cell's verdict is read in, and why: the data set's declared one, else macro-F1 for a
    classification target whose majority class holds more than IMBALANCED of its training labels (as LexGLUE
    scores unfair ToS), else the task's default."""
    if declared:
        return declared, "declared by the data set"
    default = task_type(task).main_metric
    if default == "accuracy" and train_labels:
        label, count = max(((x, train_labels.count(x)) for x in set(train_labels)), key=lambda t: (t[1], t[0]))
        share = count / len(train_labels)
        if share > IMBALANCED:
            return "macro_f1", f"imbalanced labels: {share:.0%} of training examples are {label!r} " \
                               f"(> {IMBALANCED:.0%}), accuracy would reward the majority class"
    return default, f"default for {task}"


# The equivalence margin of a verdict (TOST-style: `equivalent` when the gain's interval lies inside +-margin), per
# main metric. 0.02 (two points of accuracy or macro-F1, 0.02 of Spearman's rho) is the smallest gain the harness
# treats as worth reporting anywhere else: the baseline check's --baseline-margin, the change no regression may
# hide below. A profile's or spec file's [margins] table sets it per metric, pytest --margin for all of them.
EQUIVALENCE_MARGIN = 0.02


def parse_margins(table, where: str) -> dict[str, float]:
    """A [margins] table: {metric: margin}, each a known metric and a number in [0, 1); ValueError in one line."""
    if not isinstance(table, dict):
        raise ValueError(f"{where} key 'margins': must be a table ([margins]) of metric = number")
    for metric, value in table.items():
        if metric not in FUNCTIONS:
            raise ValueError(f"{where} [margins] key '{metric}': unknown metric (valid: {', '.join(FUNCTIONS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{where} [margins] key '{metric}': must be a number in [0, 1), got {value!r}")
    return {metric: float(value) for metric, value in table.items()}


def equivalence_margin(metric: str, margins: dict, override: float | None = None) -> float:
    """The margin of gains read in `metric`: --margin when given, else the profile's, else EQUIVALENCE_MARGIN."""
    return float(override) if override is not None else float(margins.get(metric, EQUIVALENCE_MARGIN))


def single_class(runs) -> bool:
    """True when every run's predictions are one and the same class (a constant classifier)."""
    values = np.unique(np.concatenate([np.asarray(r).ravel() for r in runs]))
    return len(values) == 1


def _as_2d(y_true, y_pred):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in shape")
    if y_true.ndim == 1:
        return y_true[None], y_pred[None], False
    return y_true, y_pred, True
