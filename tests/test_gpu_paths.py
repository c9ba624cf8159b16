"""The GPU paths, tested on CPU: shape buckets, the SDPA backend probe (with an injected clock), compiling once
per bucket (counted with a cheap backend), bucketed evaluation batches, and the GPU benchmark's smoke run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.definitions.config import TrainConfig
from harness.definitions.data import Split, encode
from harness.running.environment import device_info
from harness.training import attention, buckets
from harness.training.loop import collate, eval_batches, lengths_of, predict, train
from harness.training.models import build_model

ROOT = Path(__file__).resolve().parents[1]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 64), st.sampled_from([1, 8, 16, 32]), st.integers(1, 128))
def test_bucket_width_rounds_up_to_the_multiple_within_the_cap(multiple, cap, longest):
    longest = min(longest, cap)  # examples are truncated to the maximum length
    shapes = buckets.Buckets(multiple, cap)
    width = shapes.width(longest)
    assert longest <= width <= max(cap, longest)
    assert width in shapes.widths()
    assert width == cap or width % multiple == 0
    assert len(shapes.widths()) <= -(-cap // multiple)


def test_buckets_by_device_and_override():
    assert buckets.multiple_for("cpu", {}) == 1 and buckets.multiple_for("cuda:0", {}) == buckets.GPU_MULTIPLE
    assert buckets.multiple_for("cuda", {"TRANSFER_BENCH_BUCKETS": "exact"}) == 1
    assert buckets.multiple_for("cpu", {"TRANSFER_BENCH_BUCKETS": "8"}) == 8
    with pytest.raises(ValueError, match="TRANSFER_BENCH_BUCKETS='sixteen'"):
        buckets.multiple_for("cuda", {"TRANSFER_BENCH_BUCKETS": "sixteen"})
    assert buckets.Buckets(16, 128).widths() == [16, 32, 48, 64, 80, 96, 112, 128]
    assert buckets.Buckets(16, 100).widths()[-2:] == [96, 100]  # never wider than the longest possible example
    assert buckets.Buckets(1, 5).widths() == [1, 2, 3, 4, 5]
    assert buckets.eval_batch_size("cpu", 64) == 64 and buckets.eval_batch_size("cuda", 64) == buckets.GPU_EVAL_BATCH


def test_cpu_records_exact_widths_and_torchs_sdpa_choice():
    info = device_info("cpu")
    assert info["batch_widths"] == "exact" and info["sdpa_backends"] == "torch default"


def _toy(tok, n: int = 96, longest: int = 14):
    rng = np.random.default_rng(0)
    words = ["ba", "mo", "ti", "ke", "so", "pe"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, longest)))) for _ in range(n)]
    labels = ["a" if "ba" in t else "b" for t in texts]
    return encode(tok, Split("toy", texts, None, labels), 16, ["a", "b"])


def test_bucketed_batches_are_padded_and_masked(tiny_tokenizers):
    tok = tiny_tokenizers["bert"]
    data = _toy(tok)
    lengths = lengths_of(data)
    idx = np.flatnonzero(lengths == 5)[:3]
    batch = collate(data, idx, tok.pad_token_id, False, "cpu", shapes=buckets.Buckets(4, 16))
    assert batch["input_ids"].shape == (3, 8)
    assert batch["attention_mask"].sum(1).tolist() == [5, 5, 5]  # equal lengths, yet padded: masked
    assert "attention_mask" not in collate(data, idx, tok.pad_token_id, False, "cpu")  # exact widths


def test_bucketed_eval_batches_keep_the_token_budget():
    lengths = np.random.default_rng(1).integers(3, 60, size=500)
    shapes = buckets.Buckets(16, 64)
    batches = eval_batches(lengths, 40, shapes.width)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    budget = 40 * lengths.mean()
    assert all(len(b) * shapes.width(lengths[b].max()) <= budget for b in batches if len(b) > 1)
    assert len({(len(b), shapes.width(lengths[b].max())) for b in batches}) <= 2 * len(shapes.widths())


def test_bucketed_prediction_gives_the_same_classes(tiny_profile, tiny_tokenizers, monkeypatch):
    tok = tiny_tokenizers["roberta"]
    data = _toy(tok, 64)
    model = build_model(tiny_profile.models["roberta"], tok, 2, 16, 0)
    exact = predict(model, data, 16, "cpu", tok.pad_token_id, False)
    monkeypatch.setenv("TRANSFER_BENCH_BUCKETS", "8")
    assert np.array_equal(predict(model, data, 16, "cpu", tok.pad_token_id, False), exact)


def test_probe_picks_the_fastest_set_and_skips_sets_that_cannot_run():
    cost = {"flash,efficient,cudnn,math": 5.0, "flash,efficient,math": 2.0, "efficient,math": 3.0, "math": 9.0}
    clock = [0.0]

    def run(candidate, width):
        if candidate == "cudnn,math":
            raise RuntimeError("No available kernel")
        clock[0] += cost[candidate] * width

    best, seconds = attention.fastest(attention.CANDIDATES, [16, 32], run, clock=lambda: clock[0], repeats=2)
    assert best == "flash,efficient,math"
    assert seconds == {k: v * 2 * 48 for k, v in cost.items()}
    with pytest.raises(RuntimeError, match="no SDPA backend set"):
        attention.fastest(["cudnn,math"], [16], run, clock=lambda: clock[0])


def test_probe_widths_are_few_and_include_the_widest():
    assert attention.probe_widths([16, 32, 48]) == [16, 32, 48]
    few = attention.probe_widths(list(range(1, 129)))
    assert len(few) <= attention.PROBE_WIDTHS and few[-1] == 128


def test_probe_runs_real_attention_on_cpu():
    """The real workload on CPU: the sets CPU has kernels for run, cuDNN- and efficient-only sets are skipped."""
    run = attention.attention_step("cpu", torch.float32, 2, 2, 8, [8, 16])
    best, seconds = attention.fastest(["cudnn", "efficient", "flash,math", "math"], [8, 16], run, repeats=1)
    assert set(seconds) == {"flash,math", "math"} and best in seconds


def test_probe_on_cuda_is_run_once_and_noted(tiny_profile, tiny_tokenizers, monkeypatch):
    """for_model on a "cuda" device (the probe's work itself on CPU): it probes once per head shape, also when
    prediction (under inference_mode) asks first, and the record's env names the choice."""
    tok = tiny_tokenizers["bert"]
    model = build_model(tiny_profile.models["bert"], tok, 2, 16, 0)
    calls, real_step = [], attention.attention_step

    def step(device, dtype, batch, heads, head_dim, widths):
        calls.append(widths)
        return real_step("cpu", dtype, batch, heads, head_dim, widths)

    monkeypatch.setattr(attention, "attention_step", step)
    monkeypatch.setattr(attention, "_chosen", {})
    with torch.inference_mode():
        chosen = attention.for_model(model, "cuda:7", list(range(4, 68, 4)), 4, {})
    assert chosen.names in attention.CANDIDATES
    assert calls == [attention.probe_widths(list(range(4, 68, 4)))] and len(calls[0]) <= attention.PROBE_WIDTHS
    assert attention.for_model(model, "cuda:7", [16], 64, {}).names == chosen.names and len(calls) == 1
    assert attention.describe("cuda:7", {}) == chosen.names and attention.describe("cuda:0", {}) == "torch default"


def test_sdpa_choice_by_device_model_and_override(tiny_profile, tiny_tokenizers):
    tok = tiny_tokenizers["bert"]
    model = build_model(tiny_profile.models["bert"], tok, 2, 16, 0)
    assert isinstance(attention.for_model(model, "cpu", [8, 16], 4, {}), type(attention.contextlib.nullcontext()))
    chosen = attention.for_model(model, "cpu", [8, 16], 4, {"TRANSFER_BENCH_SDPA": "flash, math"})
    assert chosen.names == "flash,math"
    with chosen, chosen:  # reusable and re-entrant, as the training loop enters it every step
        model(input_ids=torch.tensor([[2, 7, 9, 3]]))
    with pytest.raises(ValueError, match="'fast'"):
        attention.Backends("fast")
    assert attention.describe("cpu", {"TRANSFER_BENCH_SDPA": "efficient,math"}) == "efficient,math"


@pytest.mark.slow
def test_compiled_steps_compile_once_per_bucket(tiny_profile, tiny_tokenizers, monkeypatch):
    """With buckets of 4 tokens up to 16, full batches take at most 4 shapes: at most 4 graphs over two epochs
    (the short last batch runs eagerly), none when training again; the compiled loop still learns."""
    monkeypatch.setenv("TRANSFER_BENCH_BUCKETS", "4")
    tok = tiny_tokenizers["bert"]
    data = _toy(tok, 60)
    cfg = TrainConfig(lr=2e-3, epochs=2, batch_size=8, max_length=16)
    model = build_model(tiny_profile.models["bert"], tok, 2, 16, 0)
    info = train(model, data, cfg, 0, "cpu", tok.pad_token_id, False, compile="eager")
    widths = {buckets.Buckets(4, 16).width(n) for n in lengths_of(data)}
    assert 1 < info["compiles"] <= len(buckets.Buckets(4, 16).widths()) and info["compiles"] <= len(widths)
    assert info["loss_last"] < info["loss_first"]
    assert train(model, data, cfg, 1, "cpu", tok.pad_token_id, False, compile="eager")["compiles"] == 0
    assert train(model, data, cfg, 1, "cpu", tok.pad_token_id, False)["compiles"] == 0  # not compiled


@pytest.mark.slow
@pytest.mark.subprocess
def test_gpu_benchmark_smoke_run_without_datasets(tmp_path):
    """bench/gpu_throughput.py on CPU (tiny shapes), in an environment without `datasets` like the GPU machine's:
    one table with every setting, batch size and epoch, and the Trainer ratio."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['datasets'] = None\n")  # not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)])}
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--settings", "exact,b16,trainer",
                          "--out", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    assert result["smoke"] and result["device"] == "cpu"
    rows = result["rows"]
    settings_run = {r["setting"] for r in rows}
    assert settings_run == {"exact widths", "buckets of 16 (default)", "Trainer"}
    assert {(r["batch_size"], r["epoch"]) for r in rows} == {(8, 1), (8, 2), (16, 1), (16, 2)}
    for r in rows:
        assert r["examples_per_s"] > 0 and r["mfu"] > 0
        assert r["ratio_to_trainer"] == pytest.approx(r["examples_per_s"] / r["trainer_examples_per_s"])
    assert "ratio to Trainer" in run.stdout and "buckets of 16 (default)" in run.stdout
    assert [r["compiles"] for r in rows if r["setting"] == "Trainer"] == [None] * 4
    assert result["kernels"] and 0 < sum(k["share"] for k in result["kernels"]) <= 1.0 + 1e-9
