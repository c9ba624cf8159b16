"""`--precision auto|fp32|bf16` (harness/training/devices.py): what each resolves to, the one-line error for a bad
value, and a cell trained in bf16 on the CPU kept apart from fp32 (record, cache key, baseline entry)."""
from __future__ import annotations

import pytest
from helpers import grid_run, records, run_pytest

from harness.results.baselines import entry_key
from harness.training import devices
from harness.training.devices import PRECISION_ENV, cpu_has_bf16, precision, requested_precision, set_precision


@pytest.mark.parametrize("asked, expected", [(None, "fp32"), ("", "fp32"), ("auto", "fp32"), ("fp32", "fp32"),
                                             ("bf16", "bf16"), (" BF16 ", "bf16")])
def test_precision_on_the_cpu(asked, expected):
    env = {} if asked is None else {PRECISION_ENV: asked}
    assert precision("cpu", env) == expected


@pytest.mark.parametrize("asked", ["fp16", "half", "bf-16", "32"])
def test_unknown_precision_is_one_line_naming_the_option(asked):
    with pytest.raises(ValueError) as info:
        requested_precision({PRECISION_ENV: asked})
    text = str(info.value)
    assert text.startswith(f"--precision {asked.lower()!r}") and "auto, fp32, bf16" in text and "\n" not in text
    with pytest.raises(ValueError):
        precision("cpu", {PRECISION_ENV: asked})


@pytest.mark.parametrize("flags, native", [("fpu sse avx2 avx512f amx_bf16 amx_tile", True),
                                           ("fpu avx512f avx512_bf16", True),
                                           ("fpu sse avx2 avx512f avx512_vnni", False)])
def test_cpu_bf16_support_is_read_from_the_flags(tmp_path, flags, native):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n", encoding="utf-8")
    assert cpu_has_bf16(str(info)) is native
    assert cpu_has_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("before", [None, "fp32"])
def test_set_precision_puts_back_what_was_there(before):
    env = {} if before is None else {PRECISION_ENV: before}
    restore = set_precision(" BF16", env)
    assert env[PRECISION_ENV] == "bf16" and precision("cpu", env) == "bf16"
    restore()
    assert env == ({} if before is None else {PRECISION_ENV: before})
    with pytest.raises(ValueError):
        set_precision("fp8", env)
    assert env == ({} if before is None else {PRECISION_ENV: before})  # a bad value changes nothing


@pytest.mark.parametrize("native", [True, False])
def test_emulated_cpu_bf16_is_warned_about(monkeypatch, caplog, native):
    monkeypatch.setenv(PRECISION_ENV, "bf16")
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="harness"):
        assert devices.checked_precision("cpu") == "bf16"
    assert any("emulated, slower than fp32" in r.getMessage() for r in caplog.records) is not native


@pytest.mark.subprocess
def test_bad_precision_is_a_usage_error(tmp_path):
    run = run_pytest("bench", "--collect-only", "-q", "-p", "no:hypothesispytest", "--precision", "fp16",
                     f"--cache-dir={tmp_path / 'cache'}", f"--results-dir={tmp_path / 'results'}", timeout=300)
    assert run.returncode == 4, run.stdout + run.stderr
    assert "ERROR: --precision 'fp16' (TRANSFER_BENCH_PRECISION): expected one of auto, fp32, bf16" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_bf16_cell_on_the_cpu_is_recorded_and_cached_apart_from_fp32(tmp_path, monkeypatch):
    """The same micro cell and seed at fp32 and at bf16, sharing one cache: each record says its precision, their
    config keys (so their cached results and intermediate models) differ, the summary says it, they land under
    different baseline entries, and the bf16 cell trains its own intermediate model rather than reading fp32's from
    the cache. The option wins over an inherited setting."""
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    found = {}
    for asked in ("fp32", "bf16"):
        run = grid_run(tmp_path / asked, "-k", "bert-classification-general", "--precision", asked,
                       cache=tmp_path / "cache", timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert f"; precision {asked}\n" in run.stdout  # the summary's header says what it ran at
        found[asked] = records(tmp_path / asked / "results")["bert-classification-general"]
    fp32, bf16 = found["fp32"], found["bf16"]
    assert (fp32["env"]["precision"], bf16["env"]["precision"]) == ("fp32", "bf16")
    assert (entry_key(fp32), entry_key(bf16)) == ("cpu-fp32", "cpu-bf16")
    assert fp32["config_key"] != bf16["config_key"]
    assert fp32["intermediate_key"] != bf16["intermediate_key"]
    assert all(m["trained_here"] for m in bf16["intermediate"] if m["seed"] == 0)  # not fp32's, from the cache
