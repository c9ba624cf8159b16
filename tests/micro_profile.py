"""A pytest plugin for the harness's integration tests: the `micro` profile, the `tiny` profile cut down so
that a grid run in a subprocess takes seconds. Load it with `-p micro_profile` and tests/ on PYTHONPATH
(tests/helpers.py's grid_command)."""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

from harness.definitions import profiles
from harness.definitions.space import SearchSpace


def micro(data_dir, cache_dir) -> profiles.Profile:
    p = profiles.tiny(data_dir, cache_dir)
    size = {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64, "vocab": 600}
    return dataclasses.replace(
        p, name="micro",
        models={m: dataclasses.replace(s, size=size) for m, s in p.models.items()},
        targets={k: s.replace(max_train=96, max_test=48) for k, s in p.targets.items()},
        intermediates={k: s.replace(max_train=320) for k, s in p.intermediates.items()},
        target_train=dataclasses.replace(p.target_train, epochs=2, max_length=32),
        intermediate_train=dataclasses.replace(p.intermediate_train, epochs=1, max_length=32),
        tuning=SearchSpace(lr=(1e-3, 3e-3), max_epochs=2, patience=1),
        train_together=False)  # sequential, as the tests of the cell loop expect; --train-together: the grouped path


profiles.PROFILES["micro"] = micro


def pytest_runtest_call(item):
    """Fault tests: with MICRO_HOLD_CELL=CELL-ID and MICRO_HOLD_FILE=PATH, the process running that cell writes
    its pid to PATH and waits there, to be killed or interrupted by the test at a known point."""
    cell = getattr(getattr(item, "callspec", None), "params", {}).get("cell")
    if cell is not None and str(cell) == os.environ.get("MICRO_HOLD_CELL"):
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            # started in the background by a shell without job control (`.ci/run &`): SIGINT is ignored there, the
            # test's Ctrl-C would never arrive and the run would sleep on; a user's Ctrl-C comes from a terminal
            signal.signal(signal.SIGINT, signal.default_int_handler)
        Path(os.environ["MICRO_HOLD_FILE"]).write_text(str(os.getpid()))
        time.sleep(600)
