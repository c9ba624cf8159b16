"""Time `python -m harness report` on synthetic records of the full tiny grid (27 cells, 3 languages).

    python bench/report_speed.py [--repeat 5]

Prints wall and CPU seconds (best of --repeat) of the command as a user runs it, with and without --plot.
CPU time is shown too because wall time on a shared machine mostly measures the other processes.
"""
from __future__ import annotations

import argparse
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from recordgen import tiny_grid_records, write_records  # noqa: E402

log = logging.getLogger("report_speed")


def timed(cmd: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        write_records(tmp, tiny_grid_records())
        base = [sys.executable, "-m", "harness", "report", "--results-dir", tmp]
        for name, cmd in (("tables (markdown)", base), ("tables + --plot", base + ["--plot", f"{tmp}/t.png"]),
                          ("json", base + ["--format", "json"])):
            runs = [timed(cmd) for _ in range(args.repeat)]
            log.info("%-18s 27 records: wall %.2f s, cpu %.2f s (best of %d)", name, min(w for w, _ in runs),
                     min(c for _, c in runs), args.repeat)


if __name__ == "__main__":
    main()
