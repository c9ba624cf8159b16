"""The plugin's options, declared once (OPTIONS, in `pytest --help` order), how they are added to pytest's
parser, the value each resolves to (command line, else ini file, else default) and the `--seeds` grammar."""
from __future__ import annotations

from dataclasses import dataclass

from harness.definitions.grid import DOMAINS, MODELS, TASKS


@dataclass(frozen=True)
class Option:
    """A pytest option of the plugin. With `ini`, also settable in `[tool.pytest.ini_options]` under `dest`;
    the command line wins over the ini file, which wins over `default`."""
    flag: str
    help: str
    default: str | None = None
    ini: bool = False
    switch: bool = False  # a flag without a value (store_true)
    negated: str | None = None  # with `switch`: the flag that sets it False (unset: None, the profile decides)
    metavar: str | None = None
    deprecated: tuple = ()  # old flags kept as aliases: (flag, negated flag) of a switch, said to be deprecated

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")


def _names(kind, valid, more=""):
    return f"comma-separated {kind} to run (default: all of {', '.join(valid)}{more})"


# Every option of the plugin, in `pytest --help` order: add new options here.
OPTIONS = (
    Option("--profile", "profile naming models, data and hyper-parameters (tiny, offline (alias minilm), paper)",
           "tiny", ini=True),
    Option("--seeds", "seeds per arm: a count N (seeds 0..N-1), a comma list (3,4,5), or auto:MAX (the profile's "
           "seeds, then more in rounds up to MAX while a cell's target-language gain is undecided; O'Brien-Fleming "
           "alpha spending; docs/statistics.md); default: the profile's", ini=True, metavar="N|LIST|auto:MAX"),
    Option("--data-dir", "root folder of the profile's data sets (tiny: generated corpora)", ini=True),
    Option("--spec", "TOML file of extra data sets / cells (see docs/data.md)", ini=True),
    Option("--results-dir", "where cell records (cells/) and the run summary go", "results", ini=True),
    Option("--baselines", "folder of recorded baselines, one JSON file per profile", "baselines", ini=True),
    Option("--cache-dir", "intermediate checkpoints, tokenizers, generated corpora and data caches",
           ".cache/transfer-bench", ini=True),
    Option("--models", _names("models", MODELS, " and the profile's other rows, e.g. offline's e5")),
    Option("--tasks", _names("tasks", TASKS)),
    Option("--domains", _names("domains", DOMAINS, " and spec domains")),
    Option("--update-baselines", "record the cells that ran as baselines", switch=True),
    Option("--strict-baselines", "a cell with no baseline fails", switch=True),
    Option("--baseline-margin", "smallest change of a gain or main metric that can fail the baseline check "
           "(default: harness.results.baselines.MARGIN)", metavar="X"),
    Option("--margin", "equivalence margin of every verdict: `equivalent` when a gain's interval lies inside "
           "+-X (default: the profile's [margins] table, else 0.02; docs/statistics.md)", metavar="X"),
    Option("--rerun", "retrain cells even when a finished record exists", switch=True),
    Option("--compile", "train through torch.compile (pays off on GPUs and long runs; compiling costs tens of "
           "seconds per model and shape bucket)", switch=True),
    Option("--precision", "arithmetic of training, prediction and the floor: auto (bf16 autocast on a GPU that "
           "supports it, else fp32), fp32, or bf16 (also on a CPU: an e5 cell about 2x faster where it has AMX or "
           "AVX512-BF16; other numbers than fp32; records, caches and baseline entries keep precisions apart; "
           "docs/performance.md)",
           "auto", ini=True, metavar="auto|fp32|bf16"),
    Option("--train-together", "train a cell's seeds and both arms together as one grouped model, and the seeds' "
           "intermediate models as another (untuned cells; other per-seed numbers than sequential training, "
           "reproducible for the same --seeds; default in tiny; docs/performance.md) | train them one after another",
           switch=True, negated="--no-train-together", deprecated=("--ensemble", "--no-ensemble")),
    Option("--calibration", "A/A run: the intermediate arm replaced by a second direct arm with its own seed stream "
           "(initialisation, data order, dropout), so every true gain is 0 and every decided verdict is false; "
           "records and summary go to RESULTS_DIR/calibration, no baseline is checked or written "
           "(docs/statistics.md: Calibration)", switch=True),
    Option("--tune", "select each arm's learning rate and epochs on validation data (default in the offline and "
           "paper profiles; see docs/methodology.md) | train each arm once with the profile's recipe (default in tiny)",
           switch=True, negated="--no-tune"),
    Option("--model-set", "swap the profile's model rows for a named set of its TOML file, or add its rows (paper: "
           "multilingual = mBERT and XLM-R; offline: mpnet adds all-mpnet-base-v2; `--models` still filters rows)",
           metavar="NAME"),
    Option("--plan", "print what would run (cells, model and data set revisions, sizes, epochs, training "
           "examples, estimated time) and exit without training", switch=True),
    Option("--shard", "run only shard I of N (1-based): a deterministic share of the selected cells, model-task "
           "groups kept together (one Slurm array task each; combine with `python -m harness merge`)",
           metavar="I/N"),
)


def add_options(parser) -> None:
    group = parser.getgroup("transfer-bench", "transfer-bench: intermediate-task transfer grid")
    for o in OPTIONS:
        if o.switch and o.negated:
            on, off = o.help.split(" | ")
            group.addoption(o.flag, dest=o.dest, action="store_true", default=None, help=on)
            group.addoption(o.negated, dest=o.dest, action="store_false", help=off)
            if o.deprecated:
                old_on, old_off = o.deprecated
                group.addoption(old_on, dest=o.dest, action="store_true", default=None,
                                help=f"deprecated alias of {o.flag}")
                group.addoption(old_off, dest=o.dest, action="store_false", help=f"deprecated alias of {o.negated}")
            continue
        if o.switch:
            group.addoption(o.flag, dest=o.dest, action="store_true", help=o.help)
            continue
        text = o.help + (f" (default: {o.default})" if o.default else "") + (f"; ini: {o.dest}" if o.ini else "")
        group.addoption(o.flag, dest=o.dest, default=None, metavar=o.metavar, help=text)
        if o.ini:
            parser.addini(o.dest, f"default {o.flag}", default=o.default or "")


def deprecated_flags(args) -> list[str]:
    """One line per deprecated alias among the command-line `args`, naming the flag to use instead."""
    new = {old: new for o in OPTIONS for old, new in zip(o.deprecated, (o.flag, o.negated))}
    return [f"{arg} is deprecated: use {new[arg]}" for arg in dict.fromkeys(args) if arg in new]


def setting(config, name: str):
    """An option's value: the command line's, else the ini file's, else its default (None when unset)."""
    value = config.getoption(name)
    return value if value not in (None, "") else (config.getini(name) or None)


AUTO = "auto:"


def parse_auto(text: str) -> int | None:
    """`--seeds auto:MAX` -> MAX (an integer of at least 2); None for the other forms. ValueError when malformed."""
    text = str(text).strip()
    if not text.startswith(AUTO):
        return None
    try:
        most = int(text[len(AUTO):])
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected auto:MAX, MAX the most seeds a cell may get (e.g. auto:10)") \
            from None
    if most < 2:
        raise ValueError(f"--seeds {text!r}: MAX must be at least 2 (e.g. auto:10)")
    return most


def parse_seeds(text: str) -> list[int]:
    """`--seeds`: a count N -> seeds 0..N-1; a comma list -> those seeds (distinct, >= 0). ValueError otherwise."""
    form = "a count (5: seeds 0..4) or a comma list of distinct seeds (3,4,5)"
    parts = [p.strip() for p in str(text).split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected {form}") from None
    if len(numbers) == 1 and "," not in str(text):
        if numbers[0] < 1:
            raise ValueError(f"--seeds {text!r}: at least one seed is needed; expected {form}")
        return list(range(numbers[0]))
    if min(numbers) < 0 or len(set(numbers)) != len(numbers):
        raise ValueError(f"--seeds {text!r}: expected {form}")
    return numbers
