"""The grid: cells, their ids and their pytest marks."""
from __future__ import annotations

from dataclasses import dataclass

MODELS = ("bert", "roberta", "xlnet")
TASKS = ("classification", "sentiment", "similarity")
DOMAINS = ("general", "medical", "legal")
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
        """Cells that share an intermediate model (same model and task) run together under xdist loadgroup."""
        return f"{self.model}-{self.task}"

    def __str__(self) -> str:
        return self.id


def cells(models=MODELS, tasks=TASKS, domains=DOMAINS) -> list[Cell]:
    """Every model x task x domain cell, ordered so that a task's general cell precedes its shifted domains."""
    return [Cell(m, t, d) for m in models for t in tasks for d in domains]


def parse_cell_id(cell_id: str) -> Cell:
    parts = cell_id.split("-", 2)
    if len(parts) != 3:
        raise ValueError(f"cell id {cell_id!r} is not MODEL-TASK-DOMAIN")
    return Cell(*parts)


def check_names(kind: str, names, valid) -> None:
    """Raise ValueError naming the valid choices when a name is unknown."""
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown {kind} {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")


def parse_seeds(text: str | None) -> list[int] | None:
    """--seeds: a count N (seeds 0..N-1) or a comma-separated list of seeds (3,4,5); None when not given."""
    if text is None:
        return None
    try:
        values = [int(part) for part in str(text).split(",")]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected a count (5) or a comma-separated list of seeds (3,4,5)") from None
    if len(values) == 1 and values[0] < 1:
        raise ValueError(f"--seeds must be at least 1, got {text}")
    if len(values) == 1:
        return list(range(values[0]))
    if min(values) < 0 or len(set(values)) != len(values):
        raise ValueError(f"--seeds {text!r}: seeds must be distinct and not negative")
    return values
