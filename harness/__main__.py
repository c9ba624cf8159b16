"""Command line: `python -m harness report|compare|merge ...`.

One function per subcommand, `NAME(args) -> exit status`, and one `add_NAME(subparsers)` that declares its
arguments and binds the function; `build_parser` registers each pair. Exit status 2 means bad input.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("harness")

BAD_INPUT = 2


def add_report(sub) -> None:
    from harness.output.report import FORMATS
    p = sub.add_parser("report", help="tables (and a plot) of a run's cell records",
                       description="Main, cross-lingual, robustness and cost tables of the records under "
                                   "RESULTS_DIR/cells, printed to stdout. Unusable records are named on stderr "
                                   "and left out; exit status 2 when no record is usable.")
    p.add_argument("--results-dir", type=Path, default=Path("results"), help="run folder (default: results)")
    p.add_argument("--format", choices=FORMATS, default="markdown", help="output format (default: markdown)")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="also write a heatmap of the gains to FILE.png")
    p.set_defaults(func=report)


def report(args) -> int:
    from harness.fileio import OutputError
    from harness.output import report as R
    from harness.results.record import cells_dir, load_records

    records, errors = load_records(args.results_dir)
    for line in errors:
        log.error("%s", line)
    if not records:
        if not errors:
            log.error("%s: no cell records (run `pytest bench --results-dir %s` first)", cells_dir(args.results_dir),
                      args.results_dir)
        return BAD_INPUT
    summary = R.build(args.results_dir, records, errors,
                      expected=[p.stem for p in cells_dir(args.results_dir).glob("*.json")])
    sys.stdout.write(R.render(summary, args.format))
    if args.plot:
        try:
            log.info("wrote %s", R.plot(summary, args.plot))
        except OutputError as err:
            log.error("%s", err)
            return BAD_INPUT
    return 0


def add_compare(sub) -> None:
    from harness.results.baselines import MARGIN
    p = sub.add_parser("compare", help="changes between two runs by the baseline rule (exit 1 when one fails)",
                       description="Per cell and language: the gain and each arm's main metric on both sides and "
                                   "the change with its 95%% interval, judged by the rule of the baseline check "
                                   "(harness/results/baselines.py): exit status 1 when a change fails by it, 2 on bad "
                                   "input (including any unreadable record), else 0.")
    p.add_argument("old", type=Path, help="results directory or baseline file (baselines/<profile>.json)")
    p.add_argument("new", type=Path, help="results directory or baseline file")
    p.add_argument("--baseline-margin", type=float, default=MARGIN, metavar="X",
                   help=f"smallest change that can fail (default {MARGIN:g}, as pytest --baseline-margin)")
    p.set_defaults(func=compare)


def compare(args) -> int:
    from harness.results import compare as C

    try:
        (old, old_errors), (new, new_errors) = C.load_source(args.old), C.load_source(args.new)
    except C.SourceError as err:
        log.error("%s", err)
        return BAD_INPUT
    for line in old_errors + new_errors:
        log.error("%s", line)
    rows, notes = C.compare(old, new, args.baseline_margin)
    for line in notes:
        log.info("%s", line)
    sys.stdout.write(C.table(rows) + "\n" + C.summary_line(rows, args.baseline_margin) + "\n")
    if old_errors or new_errors:
        return BAD_INPUT
    return 1 if C.failed(rows) else 0


def add_merge(sub) -> None:
    p = sub.add_parser("merge", help="combine the result directories of shards (--shard I/N) into one run",
                       description="Copy the cell records and predictions of every DIR into OUT and write OUT's "
                                   "summary files. Refuses (exit status 2, nothing written) records of different "
                                   "profiles, seeds, hyper-parameters or library versions, a cell present twice "
                                   "with different configurations, and unreadable records.")
    p.add_argument("out", type=Path, help="the merged results directory (its existing records take part)")
    p.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="results directories of the shards")
    p.set_defaults(func=merge)


def merge(args) -> int:
    from harness.fileio import OutputError
    from harness.output.report import write_summary
    from harness.results.merge import MergeError
    from harness.results.merge import merge as merge_dirs

    try:
        records = merge_dirs(args.out, args.dirs)
        write_summary(args.out, records)
    except (MergeError, OutputError) as err:
        log.error("%s", err)
        return BAD_INPUT
    log.info("merged %d cells into %s", len(records), args.out)
    return 0


COMMANDS = (add_report, add_compare, add_merge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description="transfer-bench commands")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
