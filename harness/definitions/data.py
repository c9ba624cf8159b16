"""Load, validate and tokenise data sets (Hugging Face `datasets` for reading; our checks for the errors).

Every problem with a data file is a `DataError` whose message is one line naming the file, the row (1-based,
the line number for JSONL) and the field, e.g. `data/x/train.jsonl: row 12 field 'label': unknown label 'maybe'`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.definitions.config import DatasetConfig
from harness.definitions.tasks import task_type

log = logging.getLogger(__name__)
EXTENSIONS = {"jsonl": "jsonl", "csv": "csv", "tsv": "tsv"}


class DataError(Exception):
    """A data set that cannot be used; str() is a one-line message naming file, row and field."""


@dataclass
class Split:
    """One split, validated: texts (and second texts for pairs) and labels as strings or float scores."""
    file: str
    texts: list
    texts_b: list | None
    labels: list

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class Encoded:
    """A tokenised split: one int array per example, and the targets (class ids or float scores)."""
    input_ids: list
    token_type_ids: list | None
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)


def split_file(dataset: DatasetConfig, root: Path, split: str) -> Path:
    """Where a split lives: `path/<split>.<ext>` under the root, or the data set's `splits` override; for hub
    data sets the `HUB_ID[:CONFIG]` reference itself (the split name is resolved when reading)."""
    if dataset.format == "hf":
        return Path(dataset.path)
    if split in dataset.splits:
        return Path(root) / dataset.splits[split]
    return Path(root) / dataset.path / f"{split}.{EXTENSIONS[dataset.format]}"


def cross_lingual_file(dataset: DatasetConfig, root: Path, ref: str) -> str:
    """A cross-lingual test set: a file relative to the root, or `HUB_ID[:CONFIG]` for hub data sets."""
    return ref if dataset.format == "hf" else str(Path(root) / ref)


def _read(dataset: DatasetConfig, file: str, split: str, cache_dir: Path | None):
    """Read one split with `datasets`; a parse failure is turned into a one-line error naming the row."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its read errors become our DataError
    kwargs = {"cache_dir": str(cache_dir) if cache_dir else None}
    try:
        if dataset.format == "hf":
            hub_id, _, config = file.partition(":")
            # `folders` (a parquet export): CONFIG is a folder of SPLIT/ folders, not a config the card declares
            where = {"data_dir": config or None} if dataset.layout == "folders" else {"name": config or None}
            return datasets.load_dataset(hub_id, split=dataset.splits.get(split, split), revision=dataset.revision,
                                         **where, **kwargs)
        if not Path(file).is_file():
            raise DataError(f"{file}: file not found (data set {dataset.name!r}, split {split!r}; "
                            f"check --data-dir and the `path` of the data set)")
        builder, extra = ("json", {}) if dataset.format == "jsonl" else \
            ("csv", {"delimiter": "\t" if dataset.format == "tsv" else ","})
        return datasets.load_dataset(builder, data_files={split: file}, split=split, **extra, **kwargs)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes a located one-line error
        if dataset.format == "hf":
            raise DataError(f"{file}: cannot load hub data set {dataset.name!r} split {split!r} "
                            f"({type(exc).__name__}); offline, point --data-dir/--spec at local files") from None
        raise DataError(_locate_parse_error(file, dataset, exc)) from None


def _not_utf8(file: str, dataset: DatasetConfig) -> str | None:
    """The first byte that is not UTF-8, as `FILE: row N field 'F': ...`, or None when the file is UTF-8."""
    delimiter = "\t" if dataset.format == "tsv" else ","
    header = None
    with open(file, "rb") as f:
        for line_no, line in enumerate(f, 1):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                text = line.decode("utf-8", errors="surrogateescape")
                field = _field_with_bad_bytes(text, header, delimiter, dataset.format)
                row = line_no if dataset.format == "jsonl" else line_no - 1
                return (f"{file}: row {row} field '{field}': not UTF-8 (byte 0x{line[err.start]:02x} at column "
                        f"{err.start + 1}) in data set {dataset.name!r}; save the file as UTF-8")
            if header is None and dataset.format != "jsonl":
                header = next(csv.reader([text], delimiter=delimiter), [])
    return None


def _field_with_bad_bytes(text: str, header: list | None, delimiter: str, fmt: str) -> str:
    """The key (JSONL) or column (CSV/TSV) whose value holds the undecodable bytes (as surrogates), or '?'."""
    def bad(value) -> bool:
        return isinstance(value, str) and any("\udc80" <= c <= "\udcff" for c in value)
    try:
        if fmt == "jsonl":
            obj = json.loads(text)
            keys = [k for k, v in obj.items() if bad(v) or bad(k)] if isinstance(obj, dict) else []
        else:
            values = next(csv.reader([text], delimiter=delimiter), [])
            keys = [(header or [])[i] if i < len(header or []) else f"column {i + 1}"
                    for i, v in enumerate(values) if bad(v)]
    except ValueError:
        keys = []
    return keys[0] if keys else "?"


def _locate_parse_error(file: str, dataset: DatasetConfig, exc: Exception) -> str:
    """Re-read a file the reader rejected with the standard library to name the first bad row."""
    encoding = _not_utf8(file, dataset)
    if encoding:
        return encoding
    with open(file, encoding="utf-8", errors="replace", newline="") as f:
        if dataset.format == "jsonl":
            rows = [(n, line) for n, line in enumerate(f, 1) if line.strip()]
            for row, line in rows:
                try:
                    obj = json.loads(line.rstrip())
                except json.JSONDecodeError as err:
                    return f"{file}: row {row} field '<json>': malformed JSON ({err.msg} at column {err.colno})"
                if not isinstance(obj, dict):
                    return f"{file}: row {row} field '<json>': expected an object, got {type(obj).__name__}"
        else:
            rows = [r for r in csv.reader(f, delimiter="\t" if dataset.format == "tsv" else ",") if r]
            for row, values in enumerate(rows[1:], 1):
                if len(values) != len(rows[0]):
                    return (f"{file}: row {row} field '<{dataset.format}>': {len(values)} fields, "
                            f"the header has {len(rows[0])}")
            rows = rows[1:]
    if not rows:
        return f"{file}: row 1 field '{dataset.label}': the split is empty"
    first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return f"{file}: row ? field '?': cannot parse ({first[:200]})"


def load_split(dataset: DatasetConfig, root: Path, split: str, labels: list | None = None,
               file: str | None = None, cache_dir: Path | None = None, limit: int | None = None,
               seed: int = 0) -> Split:
    """Load and validate one split. `labels` (from train) is the closed label set other splits must use.

    With `dataset.train_fraction` the data set's own train and test splits are carved from its train source
    (fixed seed) after every row of it is validated; an explicit `file` (a cross-lingual test) is used whole.
    """
    carve = file is None and bool(dataset.train_fraction) and split in ("train", "test")
    file = str(file or split_file(dataset, root, "train" if carve else split))
    ds = _read(dataset, file, "train" if carve else split, cache_dir)
    fields = [dataset.text] + ([dataset.text_b] if dataset.text_b else []) + [dataset.label]
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise DataError(f"{file}: row 1 field '{missing[0]}': column missing (columns: {', '.join(ds.column_names)})")
    if len(ds) == 0:
        raise DataError(f"{file}: row 1 field '{dataset.label}': the split is empty")
    try:  # the JSON reader passes bytes that are not UTF-8 through; they fail here, when decoded
        texts = list(ds[dataset.text])
        texts_b = list(ds[dataset.text_b]) if dataset.text_b else None
        raw_labels = list(ds[dataset.label])
    except UnicodeDecodeError as err:
        where = _not_utf8(file, dataset) if Path(file).is_file() else None
        raise DataError(where or f"{file}: data set {dataset.name!r} is not UTF-8 ({err})") from None
    for name, column in [(dataset.text, texts)] + ([(dataset.text_b, texts_b)] if texts_b is not None else []):
        for row, value in enumerate(column, 1):
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{_where(file, dataset, row, name)}: expected non-empty text, got {value!r}")
    split_labels = _check_labels(dataset, file, raw_labels, labels)
    keep = np.arange(len(texts))
    if carve:
        order = np.random.default_rng(0).permutation(len(texts))
        cut = round(dataset.train_fraction * len(texts))
        keep = order[:cut] if split == "train" else order[cut:]
    if limit and len(keep) > limit:
        # Validate every row first (a bad row fails wherever it is), then take a fixed-seed subsample: the same
        # rows as ds.shuffle(seed=seed).select(range(limit)). Sizes go into the record.
        keep = keep[np.random.default_rng(seed).permutation(len(keep))[:limit]]
    if len(keep) < len(texts):
        texts, split_labels = [texts[i] for i in keep], [split_labels[i] for i in keep]
        texts_b = [texts_b[i] for i in keep] if texts_b is not None else None
    return Split(file, texts, texts_b, split_labels)


def _where(file: str, dataset: DatasetConfig, row: int, field: str) -> str:
    """`FILE: row N field 'F'`, N as users count: the line number for JSONL (the reader skips blank lines)."""
    if dataset.format == "jsonl":
        with open(file, encoding="utf-8", errors="replace") as f:
            lines = [n for n, line in enumerate(f, 1) if line.strip()]
        row = lines[row - 1] if row <= len(lines) else row
    return f"{file}: row {row} field '{field}'"


def _check_labels(dataset: DatasetConfig, file: str, raw: list, labels: list | None) -> list:
    """Scores as floats (regression tasks) or labels as strings, each checked; `labels` closes the label set."""
    check = _score if task_type(dataset.task).regression else (lambda value: _label(value, labels))
    out = []
    for row, value in enumerate(raw, 1):
        value, problem = check(value)
        if problem:
            raise DataError(f"{_where(file, dataset, row, dataset.label)}: {problem}")
        out.append(value)
    return out


def _score(value) -> tuple:
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_number(value):
        return value, f"score must be a number, got {value!r}"
    value = float(value)
    return value, None if math.isfinite(value) else f"score is {value} (NaN or infinite)"


def _label(value, labels: list | None) -> tuple:
    if value is None or isinstance(value, float) and math.isnan(value) or str(value).strip() == "":
        return value, "missing label"
    value = str(value)
    if labels is not None and value not in labels:
        return value, f"unknown label {value!r} (known: {', '.join(labels)})"
    return value, None


def _is_number(value) -> bool:
    try:
        float(value)
        return isinstance(value, str)
    except (TypeError, ValueError):
        return False


CHARS_PER_TOKEN = 64


def _head(texts: list, max_length: int) -> list:
    """Each text cut to `max_length * CHARS_PER_TOKEN` characters before tokenising.

    The models read only `max_length` tokens, but a fast tokenizer tokenises the whole text before truncating
    and keeps offsets and alignments per character: about 130 bytes of memory per character of a long line.
    A token of these tokenizers spans far fewer than 64 characters, so the kept tokens are the same with and
    without the cut (only a text that is mostly whitespace or characters the tokenizer drops could differ)."""
    limit = max_length * CHARS_PER_TOKEN
    return [t if len(t) <= limit else t[:limit] for t in texts]


def with_prefix(split: Split, prefix: str) -> Split:
    """The split with `prefix` put before every text (a model row's `text_prefix`, e.g. e5's "query: "), as it is
    tokenised and its cache key hashes it; the split itself when there is no prefix."""
    if not prefix:
        return split
    return Split(split.file, [prefix + t for t in split.texts],
                 None if split.texts_b is None else [prefix + t for t in split.texts_b], split.labels)


def encode(tokenizer, split: Split, max_length: int, labels: list | None, separate: bool = False) -> Encoded:
    """Tokenise once (fast tokenizer, batched); padding happens per batch in harness.training.loop. Targets are class
    ids in the order of `labels`, or the float scores of a regression task (`labels` None).

    `separate` (pairs, for a bi-encoder): each text tokenised on its own (up to `max_length` tokens, with its
    own special tokens) and the two packed in one row, token type 0 for the first text and 1 for the second
    (harness.training.models.unpack_pairs splits them again)."""
    if separate:
        a, b = (tokenizer(_head(texts, max_length), truncation=True, max_length=max_length,
                          return_attention_mask=False)["input_ids"] for texts in (split.texts, split.texts_b))
        ids = [np.asarray(x + y, dtype=np.int64) for x, y in zip(a, b)]
        types = [np.repeat(np.array([0, 1], dtype=np.int64), [len(x), len(y)]) for x, y in zip(a, b)]
        return Encoded(ids, types, _targets(split, labels))
    args = [_head(split.texts, max_length)] + ([_head(split.texts_b, max_length)] if split.texts_b is not None else [])
    enc = tokenizer(*args, truncation=True, max_length=max_length, return_token_type_ids=True,
                    return_attention_mask=False)
    ids = [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]
    types = [np.asarray(x, dtype=np.int64) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None
    return Encoded(ids, types, _targets(split, labels))


def _targets(split: Split, labels: list | None) -> np.ndarray:
    if labels is None:
        targets = np.asarray(split.labels, dtype=np.float32)
    else:
        index = {label: i for i, label in enumerate(labels)}
        targets = np.asarray([index[label] for label in split.labels], dtype=np.int64)
    return targets


VALIDATION_NAMES = ("validation", "dev")


def own_validation_file(dataset: DatasetConfig, root: Path) -> str | None:
    """The data set's own validation split, when it has one that training does not read: its `splits` entry
    `validation` (a file, or a hub split name), else `path/validation.<ext>` or `path/dev.<ext>`."""
    if "validation" in dataset.splits:
        return str(split_file(dataset, root, "validation"))
    if dataset.format == "hf":
        return None
    train = split_file(dataset, root, "train").resolve()
    for name in VALIDATION_NAMES:
        file = Path(root) / dataset.path / f"{name}.{EXTENSIONS[dataset.format]}"
        if file.is_file() and file.resolve() != train:
            return str(file)
    return None


def validation_split(dataset: DatasetConfig, root: Path, train: Split, labels: list | None, fraction: float,
                     cache_dir: Path | None = None) -> tuple[Split, Split, str]:
    """(train, validation, source) for model selection; the validation split never overlaps training or test:
    - `own`: the data set's own validation split (own_validation_file), up to `limit` examples; train as is;
    - `unused training rows`: rows of the training source that the fixed-seed max_train subsample left out
      (up to `limit` of them, at least `fraction` x train); train as is;
    - `carved`: else a fixed-seed `fraction` of the training rows, which training then goes without.
    `limit` is the data set's `max_validation`, else its `max_test` (so a profile can test on every row and keep
    its validation split as it was). Validation rows with a label training never sees are left out (no model
    could predict them)."""
    want = max(1, round(fraction * len(train)))
    limit = dataset.max_validation if dataset.max_validation is not None else dataset.max_test
    own = own_validation_file(dataset, root)
    if own:
        split = load_split(dataset, root, "validation", file=own, cache_dir=cache_dir, limit=limit)
        return train, _known(split, labels), "own"
    if dataset.max_train:
        full = load_split(dataset, root, "train", cache_dir=cache_dir)
        # the same permutation load_split subsamples with: its first max_train rows are `train`
        rest = np.random.default_rng(0).permutation(len(full))[dataset.max_train:]
        rest = rest[:max(want, limit or 0)]
        if len(rest) >= want:
            return train, _known(_take(full, rest), labels), "unused training rows"
    order = np.random.default_rng(0).permutation(len(train))
    return _take(train, order[want:]), _known(_take(train, order[:want]), labels), "carved"


def _take(split: Split, idx) -> Split:
    return Split(split.file, [split.texts[i] for i in idx],
                 [split.texts_b[i] for i in idx] if split.texts_b is not None else None,
                 [split.labels[i] for i in idx])


def _known(split: Split, labels: list | None) -> Split:
    if labels is None:
        return split
    known = set(labels)
    return _take(split, [i for i, label in enumerate(split.labels) if label in known])
