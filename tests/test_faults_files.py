"""File and data faults, each with the real operation: malformed and non-finite records, truncated files, a full
filesystem (a small tmpfs where it can be mounted; otherwise a write that fails with ENOSPC), a read-only folder,
a writer killed mid-write, the umask, text that is not UTF-8, and a very long line. Each case checks the message
(one line naming the file and the field), the exit status, and that nothing finished was lost or half-written.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from recordgen import golden_records, make_record, predictions, write_golden_predictions, write_records

from harness import fileio
from harness.__main__ import main
from harness.definitions import data as D
from harness.definitions.config import DatasetConfig
from harness.fileio import atomic_dir
from harness.output.report import write_summary
from harness.results import baselines
from harness.results import record as R

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).rglob(".*") if p.is_file())


# ---------------------------------------------------------------- bad records: report and compare go on

def _edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))  # json writes NaN as `NaN`, as a careless tool would


BAD_RECORDS = {  # file -> (change, the field the error line names)
    "bert-classification-general": (lambda r: r.update(seeds=3), "seeds"),
    "bert-classification-legal": (lambda r: r["gain"]["en"].update(mean="0.1"), "gain.en.mean"),
    "bert-similarity-general": (lambda r: r.update(gain=None), "gain"),
    "bert-similarity-legal": (lambda r: r.update(cell="bert-similarity"), "cell"),
    "roberta-classification-general": (lambda r: r["metrics"]["direct"]["de"].update(accuracy=float("nan")),
                                       "metrics.direct.de.accuracy"),
}


@pytest.fixture
def damaged_run(tmp_path) -> Path:
    run = tmp_path / "run"
    write_records(run, golden_records())
    for cell, (change, _) in BAD_RECORDS.items():
        _edit(R.record_path(run, cell), change)
    truncated = R.record_path(run, "roberta-classification-legal")
    truncated.write_bytes(truncated.read_bytes()[:100])
    return run


def _assert_one_line_per_bad_record(lines: list[str], run: Path) -> None:
    assert len(lines) == len(BAD_RECORDS) + 1 and all("\n" not in x for x in lines), lines
    for cell, (_, field) in BAD_RECORDS.items():
        assert any(x.startswith(f"{R.record_path(run, cell)}: field '{field}'") for x in lines), (cell, lines)
    assert any(x.startswith(f"{R.record_path(run, 'roberta-classification-legal')}: not valid JSON") for x in lines)


def test_report_names_each_bad_record_in_one_line_and_reports_the_rest(damaged_run, caplog, capsys):
    assert main(["report", "--results-dir", str(damaged_run), "--format", "json"]) == 0
    _assert_one_line_per_bad_record(errors(caplog), damaged_run)
    summary = json.loads(capsys.readouterr().out)
    assert summary["cells_present"] == len(golden_records()) - len(BAD_RECORDS) - 1
    missing = {e["cell"] for e in summary["cells"] if e["status"] == "missing"}
    assert set(BAD_RECORDS) - {"bert-similarity-legal"} <= missing  # shown as missing, never as zero


def test_compare_names_each_bad_record_compares_the_rest_and_exits_2(damaged_run, tmp_path, caplog, capsys):
    write_records(tmp_path / "good", golden_records())
    assert main(["compare", str(tmp_path / "good"), str(damaged_run)]) == 2
    _assert_one_line_per_bad_record(errors(caplog), damaged_run)
    out = capsys.readouterr().out
    assert "roberta-similarity-general" in out and "only old" in out


def test_a_record_with_nan_is_never_written_and_the_old_one_stays(tmp_path):
    path = R.record_path(tmp_path, "bert-sentiment-legal")
    good = make_record("bert", "sentiment", "legal")
    R.write_record(path, good)
    bad = make_record("bert", "sentiment", "legal")
    bad["gain"]["de"]["ci_low"] = float("nan")
    with pytest.raises(R.RecordError, match="field 'gain.de.ci_low': nan is not a finite number"):
        R.write_record(path, bad)
    assert R.read_record(path) == good and "NaN" not in path.read_text()
    assert temp_files(tmp_path) == []


def test_truncated_predictions_give_a_note_not_a_crash(tmp_path, caplog, capsys):
    write_records(tmp_path, golden_records())
    write_golden_predictions(tmp_path)
    path = R.predictions_path(tmp_path, "bert-classification-general")
    path.write_bytes(path.read_bytes()[:200])
    assert main(["report", "--results-dir", str(tmp_path), "--format", "json"]) == 0
    notes = json.loads(capsys.readouterr().out)["robustness_notes"]
    assert any(n.startswith("bert-classification-legal: robustness without interval") and str(path) in n
               and "predictions unreadable" in n for n in notes), notes


# ---------------------------------------------------------------- a full disk

@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs mounted at tmp_path/small (needs root or CAP_SYS_ADMIN; skipped otherwise)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"a small filesystem cannot be mounted here ({done.stderr.decode().strip() or 'not root'})")
    vfs = os.statvfs(mount)
    if vfs.f_blocks * vfs.f_frsize > 1024 * 1024:  # the mount did not take (e.g. another mount namespace)
        subprocess.run(["umount", str(mount)], capture_output=True)
        pytest.skip(f"{mount} is not the 256 KiB filesystem just mounted")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _fill(folder: Path, leave: int) -> Path:
    """A file that takes all the free space of folder's filesystem but `leave` bytes."""
    vfs = os.statvfs(folder)
    assert vfs.f_blocks * vfs.f_frsize <= 1024 * 1024, f"{folder}: not a small filesystem; refusing to fill it"
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, vfs.f_bavail * vfs.f_frsize - leave))
    return filler


@pytest.mark.subprocess
def test_merge_into_a_full_disk_is_one_line_keeps_what_was_merged_and_leaves_no_temp(small_fs, tmp_path, caplog):
    shard = tmp_path / "shard"
    cells = [make_record("bert", "classification", d) for d in ("general", "legal", "medical")]
    write_records(shard, cells)
    for r in cells:
        R.save_predictions(shard, r["cell"], {**predictions(r["cell"]), "big": np.arange(6000)})  # ~48 KB each
    out = small_fs / "out"
    filler = _fill(small_fs, leave=64 * 1024)
    assert main(["merge", str(out), str(shard)]) == 2
    (line,) = errors(caplog)
    assert line.startswith(str(out)) and "not written (No space left on device)" in line, line
    assert temp_files(small_fs) == []
    for path in R.cells_dir(out).glob("*.json"):  # what was merged is whole
        R.read_record(path)
    filler.unlink()
    caplog.clear()
    assert main(["merge", str(out), str(shard)]) == 0, errors(caplog)
    assert sorted(p.stem for p in R.cells_dir(out).glob("*.json")) == sorted(r["cell"] for r in cells)
    assert temp_files(small_fs) == []


def test_a_write_that_fails_for_a_full_disk_keeps_the_old_file_and_no_temp(tmp_path):
    """The same failure where no small filesystem can be mounted: the disk fills during the write."""
    path = tmp_path / "predictions" / "x.npz"
    fileio.atomic_write(path, lambda f: f.write(b"old"))

    def fill(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(fileio.OutputError) as info:
        fileio.atomic_write(path, fill)
    assert str(info.value) == f"{path}: not written (No space left on device)"
    assert path.read_bytes() == b"old" and temp_files(tmp_path) == []


# ---------------------------------------------------------------- permissions and the umask

@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders; run as a normal user to check this")
def test_read_only_results_folder_is_one_line_and_the_old_record_stays(tmp_path):
    path = R.record_path(tmp_path, "bert-sentiment-legal")
    R.write_record(path, make_record("bert", "sentiment", "legal"))
    path.parent.chmod(0o555)
    try:
        with pytest.raises(fileio.OutputError) as info:
            R.write_record(path, make_record("bert", "sentiment", "legal", shift=0.1))
    finally:
        path.parent.chmod(0o755)
    assert str(info.value) == f"{path}: not written (Permission denied)"
    assert R.read_record(path) == make_record("bert", "sentiment", "legal")


def test_a_folder_where_a_file_is_is_one_line(tmp_path, caplog, capsys):
    write_records(tmp_path / "run", golden_records())
    (tmp_path / "file").write_text("x")
    assert main(["report", "--results-dir", str(tmp_path / "run"), "--plot", str(tmp_path / "file" / "t.png")]) == 2
    (line,) = errors(caplog)
    assert line.startswith(f"{tmp_path / 'file' / 't.png'}: not written") and "\n" not in line


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_every_output_follows_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        run = tmp_path / "run"
        records = golden_records()
        write_records(run, records)
        write_golden_predictions(run)
        write_summary(run, records)
        base = tmp_path / "baselines" / "tiny.json"
        baselines.update(base, "tiny", records[:2])
        baselines.update(base, "tiny", records[2:4])  # an update replaces the file: its mode stays
        entry = atomic_dir(tmp_path / "cache" / "intermediate" / "x", lambda tmp: (tmp / "body.bin").write_bytes(b"w"))
    finally:
        os.umask(old)
    outputs = [*R.cells_dir(run).iterdir(), *(run / "predictions").iterdir(), *run.glob("summary.*"),
               run / "transfer.png", base, entry / "body.bin", entry / ".complete"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in outputs} == \
        {p.name: oct(file_mode) for p in outputs}
    folders = [run, R.cells_dir(run), run / "predictions", base.parent, entry, entry.parent]
    assert {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {str(p): oct(dir_mode) for p in folders}


# ---------------------------------------------------------------- a writer killed mid-write

WRITER = """
import sys, time
from harness.fileio import atomic_write
def fill(f):
    f.write(b"new, but only half")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
atomic_write(sys.argv[1], fill)
"""


@pytest.mark.subprocess
def test_a_writer_killed_mid_write_loses_nothing_and_the_next_write_cleans_up(tmp_path):
    path = tmp_path / "predictions" / "bert-sentiment-legal.npz"
    fileio.atomic_write(path, lambda f: f.write(b"finished"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert path.read_bytes() == b"finished"  # readers never see the half-written file
    (left,) = temp_files(tmp_path)
    assert left.startswith(".bert-sentiment-legal.npz.tmp-")
    fileio.atomic_write(path, lambda f: f.write(b"rerun"))  # the next successful write removes the dead writer's temp
    assert path.read_bytes() == b"rerun" and temp_files(tmp_path) == []


# ---------------------------------------------------------------- data that is not UTF-8, a very long line

@pytest.mark.parametrize("fmt,content,row,field", [
    ("jsonl", b'{"text": "fine", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n', 2, "text"),
    ("csv", b"text,label\nfine,a\nok,b\ncaf\xe9,a\n", 3, "text"),
    ("tsv", b"text\tlabel\nfine\ta\nok\tb\n", None, None),
])
def test_text_that_is_not_utf8_is_one_line_naming_file_row_field_and_data_set(tmp_path, fmt, content, row, field):
    if row is None:  # a bad byte in a label of a TSV file
        content, row, field = content + b"x\t\xff\n", 3, "label"
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / f"train.{fmt}").write_bytes(content)
    spec = DatasetConfig(name="my-contracts", task="sentiment", domain="legal", format=fmt, path="mine")
    with pytest.raises(D.DataError) as info:
        D.load_split(spec, tmp_path, "train", cache_dir=tmp_path / "cache")
    message = str(info.value)
    assert message.startswith(f"{folder / f'train.{fmt}'}: row {row} field '{field}': not UTF-8 (byte 0x")
    assert "data set 'my-contracts'" in message and "\n" not in message


@pytest.mark.slow
def test_a_long_text_is_cut_before_tokenising_and_encodes_the_same(tmp_path):
    """The first max_length tokens of a text longer than the cut are those of the whole text
    (bench/long_line_memory.py measures the memory the cut saves on a 50 MB line)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    words = "the court held that the contract was void and the claim failed".split()
    (tmp_path / "corpus.txt").write_text(" ".join(words * 50))
    wordpiece = BertWordPieceTokenizer()
    wordpiece.train([str(tmp_path / "corpus.txt")], vocab_size=200)
    tok = PreTrainedTokenizerFast(tokenizer_object=wordpiece._tokenizer, pad_token="[PAD]", unk_token="[UNK]")
    long = " ".join(words[i % len(words)] + ("s" if i % 3 else "") for i in range(5_000))
    split = D.Split("x", [long, "a short one"], [long[::-1], "b"], ["a", "b"])
    enc = D.encode(tok, split, 48, ["a", "b"])
    whole = tok([long, "a short one"], [long[::-1], "b"], truncation=True, max_length=48,
                return_token_type_ids=True)
    assert len(long) > 48 * D.CHARS_PER_TOKEN
    assert [list(x) for x in enc.input_ids] == whole["input_ids"]
    assert [list(x) for x in enc.token_type_ids] == whole["token_type_ids"]


def test_ctrl_c_during_a_write_leaves_no_temp_file_and_the_old_file(tmp_path):
    path = tmp_path / "summary.md"
    fileio.atomic_write_text(path, "old")

    def interrupted(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fileio.atomic_write(path, interrupted)
    assert path.read_text() == "old" and temp_files(tmp_path) == []
