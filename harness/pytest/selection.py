"""Which cells run and where: `-k` matching for cells, `--shard I/N`, and the xdist scheduler that starts every
model-task group before it runs a second cell of any, and survives a crashed worker."""
from __future__ import annotations

import re
import signal

from _pytest.mark import KeywordMatcher
from _pytest.mark.expression import Expression
from xdist.scheduler import LoadGroupScheduling

from harness.definitions.grid import DOMAINS, MODELS, TASKS, Cell, parse_cell_id


def cell_of(nodeid: str) -> Cell | None:
    """The cell of a grid node id `...[MODEL-TASK-DOMAIN]` (optionally followed by `@group`), else None."""
    match = re.search(r"\[([^\[\]]+)\](@[^\]]*)?$", nodeid)
    if not match:
        return None
    try:
        cell = parse_cell_id(match.group(1))
    except ValueError:
        return None
    # a row beyond the grid's (e5): any lower-case name a profile file may give one
    return cell if (cell.model in MODELS or re.fullmatch(r"[a-z][a-z0-9_]*", cell.model)) and cell.task in TASKS \
        else None


# ---------------------------------------------------------------- -k

class CellKeywords:
    """`-k` for a cell: a word matches a model/task/domain by prefix (`-k bert` is not `roberta`, `-k sim`
    is similarity); a term with a dash matches the id from a word boundary; other names (module, folder,
    function) match by substring as in pytest."""

    def __init__(self, cell: Cell, item):
        self.cell, self.item = cell, item
        self.words = (cell.model, cell.task, cell.domain)
        own = {item.name, *MODELS, *TASKS, *DOMAINS, *self.words}
        self.others = [n.lower() for n in KeywordMatcher.from_item(item)._names if n not in own]
        self.others.append(item.originalname.lower())

    def __call__(self, term: str, /, **kwargs) -> bool:
        term = term.lower()
        if "[" in term:
            return term in self.item.name.lower()
        if "-" in term:
            return re.search(r"(^|-)" + re.escape(term), self.cell.id) is not None
        return any(w.startswith(term) for w in self.words) or any(term in n for n in self.others)


def select_by_keyword(text: str, items: list, cells: dict) -> tuple[list, list]:
    """(kept, dropped) items for the `-k` expression `text`; `cells` maps id(item) -> Cell for grid items,
    which match with CellKeywords, the others with pytest's own matcher. SyntaxError for a bad expression."""
    expr = Expression.compile(text)
    keep, drop = [], []
    for item in items:
        matcher = CellKeywords(cells[id(item)], item) if id(item) in cells else KeywordMatcher.from_item(item)
        (keep if expr.evaluate(matcher) else drop).append(item)
    return keep, drop


# ---------------------------------------------------------------- shards

def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (1 <= I <= N) -> (I, N)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 1/4 for the first of four shards") from None
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"--shard {text!r}: I must be between 1 and N (shards are numbered 1..N)")
    return index, count


def shard_cells(cells: list[Cell], index: int, count: int) -> list[Cell]:
    """Shard `index` of `count` (1-based) of `cells`, in their order; the shards partition the cells.

    Cells of a model-task group share an intermediate model, so whole groups are dealt out (largest first, then
    by name, each to the least loaded shard) unless there are more shards than groups. The split depends only on
    the set of cells, so every job of an array computes the same split.
    """
    groups: dict[str, list[Cell]] = {}
    for cell in sorted(cells):
        groups.setdefault(cell.group, []).append(cell)
    units = list(groups.values()) if count <= len(groups) else [[c] for c in sorted(cells)]
    loads, mine = [0] * count, set()
    for unit in sorted(units, key=lambda u: (-len(u), u[0].id)):
        k = loads.index(min(loads))
        loads[k] += len(unit)
        if k == index - 1:
            mine.update(unit)
    return [c for c in cells if c in mine]


# ---------------------------------------------------------------- xdist

class CellGroupScheduling(LoadGroupScheduling):
    """xdist's `loadgroup`, with three changes.

    Each cell is its own work unit, and a worker that needs one is given the first cell of a model-task group
    no worker has started, else the next cell in collection order: the first cell of a group trains the group's
    intermediate models (cached on disk, harness.running.intermediate.intermediate_body), so every group's expensive
    first cell runs before any cheap second one, and by the time the cheap cells are handed out their
    intermediate models are built (a worker that needed one still being trained would wait on its lock, not
    train it again: the numbers do not depend on where a cell runs). Whole groups as units (xdist's own
    `loadgroup`) left the 2-core `tiny` grid's workers 437 s and 532 s busy (9 groups of 78-131 s on 2
    workers); cells as units balance them to within one cheap cell (the same records' timings: 480 s and 490 s).
    A worker holds its running cell and the next (xdist runs an item only once it knows the one after), not
    xdist's three, so the last cells go to whichever worker frees up first.

    Cells are grouped by their model-task group read from the node id, not only through the `@group` suffix
    that xdist's workers add: with pytest 9 that suffix is lost (pytest-xdist issue #1386). Any other test
    (the harness's own, or a user's beside the grid) is scheduled with the rest of its file, as under
    `--dist loadfile`: without the suffix, each test was a unit of its own, so a module-scoped fixture (a grid
    run in a subprocess, in tests/test_regression.py four of them) was built again on every worker that got one
    of its tests. A test's own `@group` suffix, where one arrives, still decides.

    A crashed worker does not hang the run (pytest-xdist issue #1327, fixed upstream by PR #1328 after 3.8.0):
    the cell it was running is failed (not retried: an out-of-memory cell would crash worker after worker),
    only the work units with cells left are queued again, and every node is rescheduled twice so that a
    replacement worker gets the second item it waits for before it runs its first.
    """

    def _split_scope(self, nodeid: str) -> str:
        cell = cell_of(nodeid)
        if cell:
            return f"cells:{cell.group}:{cell.id}"
        scope = super()._split_scope(nodeid)  # an `@group` suffix, where the worker still adds one
        return nodeid.split("::", 1)[0] if scope == nodeid else scope

    @staticmethod
    def _group_of(scope: str) -> str:
        """The model-task group of a cell's work unit; other tests' units are groups of their own."""
        return scope.rsplit(":", 1)[0] if scope.startswith("cells:") else scope

    def _assign_work_unit(self, node) -> None:
        started = {self._group_of(scope) for work in self.assigned_work.values() for scope in work}
        scope = next((s for s in self.workqueue if self._group_of(s) not in started), next(iter(self.workqueue)))
        unit = self.workqueue.pop(scope)
        self.assigned_work.setdefault(node, {})[scope] = unit
        collection = self.registered_collections[node]
        node.send_runtest_some([collection.index(nodeid) for nodeid, done in unit.items() if not done])

    def _reschedule(self, node) -> None:
        if node.shutting_down:
            return
        if not self.workqueue:
            node.shutdown()
            return
        if self._pending_of(self.assigned_work[node]) <= 1:  # xdist's own threshold is 2
            self._assign_work_unit(node)

    def remove_node(self, node) -> str | None:
        workload = self.assigned_work.pop(node)
        pending = [(scope, nodeid) for scope, unit in workload.items()
                   for nodeid, done in unit.items() if not done]
        if not pending:
            return None
        scope, crashed = pending[0]
        workload[scope][crashed] = True
        for scope, unit in workload.items():
            if not all(unit.values()):
                self.workqueue[scope] = unit
        for other in self.assigned_work:
            self._reschedule(other)
        return crashed

    def schedule(self) -> None:
        if self.collection is None:
            return super().schedule()
        for _ in range(2):
            for node in self.nodes:
                if node in self.registered_collections:  # a replacement worker may not have collected yet
                    self._reschedule(node)


def exit_description(returncode: int | None) -> str:
    """'killed by signal 9 (SIGKILL)' / 'exited with status 3' / 'exit status unknown' for a worker process."""
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "unknown signal"
        return f"killed by signal {-returncode} ({name})"
    return f"exited with status {returncode}"
