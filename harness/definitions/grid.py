"""The grid: cells, their ids and their pytest marks."""
from __future__ import annotations

from dataclasses import dataclass

from harness.definitions.tasks import TASK_TYPES

MODELS = ("bert", "roberta", "xlnet")
TASKS = tuple(TASK_TYPES)  # every task type a cell can have (harness/definitions/tasks.py)
# The design grid's tasks: every profile lists their cells; another task type (nli) has cells only where a
# profile has a data set for it, as a new domain does.
GRID_TASKS = ("classification", "sentiment", "similarity")
GENERAL = "general"  # the domain every other domain's gain is compared with (robustness)
DOMAINS = (GENERAL, "medical", "legal")
ARMS = ("direct", "intermediate")


@dataclass(frozen=True, order=True)
class Cell:
    model: str
    task: str
    domain: str

    @property
    def id(self) -> str:
        return f"{self.model}-{self.task}-{self.domain}"

    @property
    def group(self) -> str:
        """Cells that share an intermediate model (same model and task); under xdist the first of a group runs
        before any group's second (harness.pytest.selection.CellGroupScheduling)."""
        return f"{self.model}-{self.task}"

    def __str__(self) -> str:
        return self.id


def cells(models=MODELS, tasks=GRID_TASKS, domains=DOMAINS) -> list[Cell]:
    """Every model x task x domain cell, ordered so that a task's general cell precedes its shifted domains."""
    return [Cell(m, t, d) for m in models for t in tasks for d in domains]


def parse_cell_id(cell_id: str) -> Cell:
    """The one reader of cell ids: `MODEL-TASK-DOMAIN` (a domain may itself contain dashes)."""
    parts = cell_id.split("-", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"cell id {cell_id!r} is not MODEL-TASK-DOMAIN")
    return Cell(*parts)


def check_names(kind: str, names, valid) -> None:
    """Raise ValueError naming the valid choices when a name is unknown."""
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")

