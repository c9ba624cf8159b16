"""Task types: the one table of what differs between tasks (input columns, head, metrics, label policy).

Every other module asks this table instead of testing a task's name; a new task type is one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskType:
    """`columns` are the spec-file keys naming the input columns (one text, or a pair) and the target column.

    A regression task predicts one float (a head with num_labels=1, MSE loss) and its targets are scores that
    must be finite numbers; a classification task predicts one of a closed label set taken from the training
    split (labels are compared as strings), so a test label that training never saw is an error.
    """
    name: str
    columns: tuple  # ("text", "label") or ("text_a", "text_b", target)
    regression: bool
    metrics: tuple  # the first is the main metric (gains and verdicts are judged on it)
    description: str

    @property
    def pair(self) -> bool:
        return len(self.columns) == 3

    @property
    def target(self) -> str:
        return self.columns[-1]

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    def num_labels(self, labels: list | None) -> int:
        return 1 if self.regression else len(labels)

    def label_set(self, train_labels: list) -> list | None:
        """The closed label set of a classification task (sorted, from the training split); None for regression."""
        return None if self.regression else sorted(set(train_labels))


_CLASSIFY = ("accuracy", "macro_f1")
TASK_TYPES = {t.name: t for t in (
    TaskType("classification", ("text", "label"), False, _CLASSIFY, "topic classification of one text"),
    TaskType("sentiment", ("text", "label"), False, _CLASSIFY, "sentiment polarity of one text"),
    TaskType("similarity", ("text_a", "text_b", "score"), True, ("spearman", "pearson"),
             "sentence-pair similarity score (regression)"),
    TaskType("nli", ("text_a", "text_b", "label"), False, _CLASSIFY,
             "natural language inference: premise and hypothesis -> entailment / neutral / contradiction"),
)}


def task_type(name: str) -> TaskType:
    if name not in TASK_TYPES:
        raise ValueError(f"unknown task {name!r}; valid: {', '.join(TASK_TYPES)}")
    return TASK_TYPES[name]
