"""The head policy of a cell: how it pools, which similarity head it uses and how its classification head
starts, read from its target data set, its model row and the profile (in that order), and the part of cache and
configuration keys these choices add."""
from __future__ import annotations

from harness.definitions.config import Profile
from harness.definitions.grid import Cell
from harness.definitions.tasks import task_type
from harness.training.models import model_pooling


def cell_heads(profile: Profile, cell: Cell) -> tuple[str, str]:
    """(pooling, similarity head) of a cell: pooling from its model row, else the profile, else the checkpoint;
    the head of a pair regression task (similarity) from its target data set, else its model row, else the
    profile ('cross' for every other task). Both arms and the intermediate model use them."""
    row = profile.models[cell.model]
    pooling = row.pooling or profile.pooling or model_pooling(row)
    kind = task_type(cell.task)
    if not (kind.pair and kind.regression):
        return pooling, "cross"
    target = profile.targets.get((cell.task, cell.domain))
    return pooling, (target.similarity_head if target else None) or row.similarity_head or profile.similarity_head


def cell_head_init(profile: Profile, cell: Cell) -> str:
    """How a cell's classification head starts (one of HEAD_INITS): its model row's `head_init`, else the
    profile's. A regression task's head (similarity) always starts at random: there is no probe to start from."""
    if task_type(cell.task).regression:
        return "random"
    return profile.models[cell.model].head_init or profile.head_init


def heads_key(profile: Profile, cell: Cell) -> list:
    """The cell's pooling and similarity head as a part of cache and config keys, only where they differ from
    the seed recipe ([CLS] pooling, cross-encoder), so keys of that recipe stay as they were."""
    heads = cell_heads(profile, cell)
    return [] if heads == ("cls", "cross") else [{"pooling": heads[0], "similarity_head": heads[1]}]
