"""`--shard I/N` and `python -m harness merge OUT DIR...` (harness/results/merge.py)."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import run_harness, run_pytest
from hypothesis import given
from hypothesis import strategies as st
from recordgen import make_record, tiny_grid_records, write_records

from harness.definitions.grid import cells
from harness.pytest.selection import parse_shard, shard_cells
from harness.results.merge import MergeError, merge
from harness.results.record import load_records, record_path

GRID = cells()


@pytest.mark.parametrize("text, expected", [("1/4", (1, 4)), ("4/4", (4, 4)), (" 2 / 3 ", (2, 3))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["0/4", "5/4", "1/0", "a/b", "3", "1/2/3"])
def test_parse_shard_rejects_with_the_expected_form(text):
    with pytest.raises(ValueError, match=r"--shard .*(I/N|between 1 and N)"):
        parse_shard(text)


@given(st.sets(st.sampled_from(GRID), min_size=1), st.integers(1, 12), st.randoms())
def test_shards_partition_the_cells_deterministically(selected, count, rnd):
    ordered = sorted(selected)
    shuffled = list(ordered)
    rnd.shuffle(shuffled)
    shards = [shard_cells(ordered, i, count) for i in range(1, count + 1)]
    assert sorted(c for s in shards for c in s) == ordered  # every cell exactly once
    assert [sorted(shard_cells(shuffled, i, count)) for i in range(1, count + 1)] == shards  # order-free
    groups = Counter(c.group for c in ordered)
    if count <= len(groups):  # whole model-task groups, balanced to within one group
        assert all(len({i for i, s in enumerate(shards) if any(c.group == g for c in s)}) == 1 for g in groups)
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= max(groups.values())
    else:
        assert all(len(s) <= -(-len(ordered) // count) for s in shards)


def _pytest_collect(*args, cache: Path):
    return run_pytest("bench", "--co", "-q", "-p", "no:hypothesispytest", f"--cache-dir={cache}", *args, timeout=300)


@pytest.mark.slow
@pytest.mark.subprocess
def test_shard_option_splits_the_grid_between_jobs(tmp_path):
    ids = []
    for i in (1, 2):
        run = _pytest_collect("--shard", f"{i}/2", cache=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        ids.append(re.findall(r"test_transfer\[([\w-]+)\]", run.stdout))
    assert sorted(ids[0] + ids[1]) == sorted(c.id for c in GRID)
    assert {i.rsplit("-", 1)[0] for i in ids[0]}.isdisjoint({i.rsplit("-", 1)[0] for i in ids[1]})
    bad = _pytest_collect("--shard", "3/2", cache=tmp_path)
    assert bad.returncode != 0 and "--shard '3/2': I must be between 1 and N" in bad.stderr


def _shards(tmp_path: Path, records: list[dict], n: int = 2) -> list[Path]:
    dirs = []
    for i in range(n):
        d = tmp_path / f"shard{i + 1}"
        write_records(d, records[i::n])
        for r in records[i::n]:
            (d / "predictions").mkdir(exist_ok=True)
            np.savez(d / "predictions" / f"{r['cell']}.npz", **{"y_true/en": np.arange(4) + i})
        dirs.append(d)
    return dirs


def test_merge_combines_shards_into_one_run(tmp_path):
    records = tiny_grid_records()
    out = tmp_path / "merged"
    merged = merge(out, _shards(tmp_path, records, 3))
    assert [r["cell"] for r in merged] == sorted(r["cell"] for r in records)
    on_disk, errors = load_records(out)
    assert errors == [] and on_disk == sorted(records, key=lambda r: r["cell"])
    assert len(list((out / "predictions").glob("*.npz"))) == 27
    assert not (out / "summary.md").exists()  # the merge command writes it, not the merge
    assert merge(out, [tmp_path / "shard1"]) == merged  # merging again (or a late shard) is idempotent


def test_merge_command_writes_the_summary_of_the_merged_run(tmp_path):
    from harness.__main__ import main

    out = tmp_path / "merged"
    assert main(["merge", str(out), *map(str, _shards(tmp_path, tiny_grid_records(), 3))]) == 0
    assert (out / "summary.md").exists() and (out / "summary.json").exists()


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(profile="minilm"), "profile 'minilm' differs"),
    (lambda r: r.update(seeds=[1]), "seeds [1] differs"),
    (lambda r: r.update(hyperparameters={"target": {"lr": 1.0}}), "hyperparameters"),
    (lambda r: r["env"].update(torch="2.0.0"), "torch '2.0.0' differs"),
])
def test_merge_refuses_records_of_another_configuration_and_writes_nothing(tmp_path, change, message):
    records = tiny_grid_records()[:6]
    change(records[5])
    dirs = _shards(tmp_path, records)
    with pytest.raises(MergeError, match=re.escape(message)) as err:
        merge(tmp_path / "merged", dirs)
    assert "bert-classification-legal.json" in str(err.value) or "bert-sentiment-legal.json" in str(err.value)
    assert "merge only results of one profile and configuration" in str(err.value)
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_one_cell_run_twice_with_different_configurations(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_records(a, [make_record("bert", "sentiment", "legal")])
    other = make_record("bert", "sentiment", "legal")
    other["config_key"] = "something-else"
    write_records(b, [other])
    with pytest.raises(MergeError, match="cell bert-sentiment-legal also in .* different config_key"):
        merge(tmp_path / "merged", [a, b])


def test_merge_refuses_unreadable_records_and_missing_dirs(tmp_path):
    dirs = _shards(tmp_path, tiny_grid_records()[:4])
    path = record_path(dirs[1], "bert-classification-medical")
    path.write_text(path.read_text()[:50])
    with pytest.raises(MergeError, match="bert-classification-medical.json: not valid JSON"):
        merge(tmp_path / "merged", dirs)
    with pytest.raises(MergeError, match="nowhere: not a directory"):
        merge(tmp_path / "merged", [tmp_path / "nowhere"])


@pytest.mark.slow
@pytest.mark.subprocess
def test_merge_command(tmp_path):
    dirs = _shards(tmp_path, tiny_grid_records()[:4])
    ok = run_harness("merge", str(tmp_path / "out"), *map(str, dirs))
    assert ok.returncode == 0 and "merged 4 cells" in ok.stderr
    write_records(dirs[0], [make_record("xlnet", "similarity", "legal", profile="paper")])
    refused = run_harness("merge", str(tmp_path / "out2"), *map(str, dirs))
    assert refused.returncode == 2 and "profile 'paper' differs" in refused.stderr
