"""The training loop's speed paths: batches with labels, the CPU no-ops of the GPU paths, FLOP counts and MFU,
peak memory, torch.compile behind a flag, and the speed benchmarks kept out of the grid run."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from helpers import run_pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.definitions.config import TrainConfig
from harness.definitions.data import Split, encode
from harness.training import flops
from harness.training.loop import autocast, collate, eval_batches, lengths_of, predict, to_device, train
from harness.training.models import build_model


def _toy(tok, n: int = 48):
    rng = np.random.default_rng(0)
    words = ["ba", "mo", "ti", "ke", "so", "pe"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 9)))) for _ in range(n)]
    labels = ["a" if "ba" in t else "b" for t in texts]
    return encode(tok, Split("toy", texts, None, labels), 16, ["a", "b"])


@pytest.mark.parametrize("family", ["bert", "xlnet"])
def test_collate_pads_to_the_longest_and_carries_the_labels(tiny_tokenizers, family):
    tok = tiny_tokenizers[family]
    data = _toy(tok)
    idx = np.array([3, 0, 7])
    batch = collate(data, idx, tok.pad_token_id, tok.padding_side == "left", "cpu", with_labels=True)
    lengths = lengths_of(data)[idx]
    assert batch["input_ids"].shape == (3, lengths.max())
    assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()
    assert batch["labels"].tolist() == data.targets[idx].tolist()
    assert "labels" not in collate(data, idx, tok.pad_token_id, False, "cpu")
    real = batch["attention_mask"].bool()
    first_real = real.int().argmax(1)
    assert (first_real > 0).any() == (family == "xlnet")  # XLNet pads on the left


@pytest.mark.parametrize("family", ["bert", "roberta", "xlnet"])
def test_equal_lengths_go_without_a_mask_and_change_no_number(tiny_profile, tiny_tokenizers, family):
    tok = tiny_tokenizers[family]
    data = _toy(tok, 200)
    lengths = lengths_of(data)
    same = np.flatnonzero(lengths == np.bincount(lengths).argmax())[:6]
    assert len(same) == 6
    pad, left = tok.pad_token_id, tok.padding_side == "left"
    batch = collate(data, same, pad, left, "cpu")
    assert "attention_mask" not in batch
    other = np.flatnonzero(lengths != lengths[same[0]])[0]
    assert "attention_mask" in collate(data, np.append(same, other), pad, left, "cpu")
    model = build_model(tiny_profile.models[family], tok, 2, 16, 0).eval()
    with torch.no_grad():
        masked = model(**batch, attention_mask=torch.ones_like(batch["input_ids"])).logits
        assert torch.equal(model(**batch).logits, masked)


def test_gpu_paths_change_nothing_on_cpu():
    tensor = torch.ones(3)
    assert to_device(tensor, "cpu") is tensor  # no pinning, no copy
    with autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32  # CPU stays fp32


def test_forward_flops_follow_the_formula_and_agree_with_torchs_counter(tiny_profile, tiny_tokenizers):
    from torch.utils.flop_counter import FlopCounterMode

    tok = tiny_tokenizers["bert"]
    model = build_model(tiny_profile.models["bert"], tok, 2, 48, 0).eval()
    n, cfg = model.num_parameters(exclude_embeddings=True), model.config
    lengths = np.array([5, 12, 40])
    expected = 2 * n * lengths.sum() + 4 * cfg.num_hidden_layers * cfg.hidden_size * (lengths ** 2).sum()
    assert flops.forward_flops(model, lengths) == pytest.approx(expected)
    assert flops.train_flops(model, lengths, epochs=2) == pytest.approx(6 * expected)
    ids = torch.randint(5, len(tok), (1, 40))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids)
    # torch counts the matmuls only (the pooler too); the formula counts every non-embedding weight once
    assert 0.8 < flops.forward_flops(model, [40]) / counter.get_total_flops() < 1.25


def test_peak_flops_by_gpu_name_and_measured_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert flops.peak_flops("cuda:0", "bf16") == (989.4e12, "NVIDIA H100 80GB HBM3 data sheet, dense bf16")
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert flops.peak_flops("cuda", "fp32")[0] == 51.2e12
    peak, source = flops.peak_flops("cpu", "fp32")
    assert 1e8 < peak < 1e14 and source.startswith("measured fp32 matmul")


def test_throughput_block_and_peak_memory():
    block = flops.throughput(6e9, 2.0, 1e9, 0.5, "cpu", "fp32")
    peak = block["peak_flop_per_s"]
    assert block["train_flop_per_s"] == 3e9 and block["train_mfu"] == pytest.approx(3e9 / peak)
    assert block["eval_flop_per_s"] == 2e9 and block["eval_mfu"] == pytest.approx(2e9 / peak)
    assert flops.throughput(0.0, 0.0, 0.0, 0.0, "cpu", "fp32")["train_mfu"] is None
    memory = flops.peak_memory("cpu")
    assert memory["kind"] == "max_rss" and memory["bytes"] > 50 * 2**20  # python + torch alone exceed this


def test_a_cell_records_throughput(tiny_profile, tiny_tokenizers, tmp_path):
    from harness.running.cell import _throughput

    tok = tiny_tokenizers["roberta"]
    model = build_model(tiny_profile.models["roberta"], tok, 2, 16, 0)
    data = _toy(tok)
    block = _throughput(model, 4, 3, data, {"en": data, "de": data}, {"train_s": 4.0, "eval_s": 1.0}, "cpu")
    assert block["train_flops"] == pytest.approx(4 * flops.train_flops(model, lengths_of(data), 3))
    assert block["eval_flops"] == pytest.approx(4 * 2 * flops.forward_flops(model, lengths_of(data)))
    assert 0 < block["train_mfu"] and block["peak_memory_kind"] == "max_rss" and block["peak_memory_bytes"] > 0


def test_fused_optimizer_is_deterministic_and_learns(tiny_profile, tiny_tokenizers):
    tok = tiny_tokenizers["bert"]
    data = _toy(tok)
    cfg = TrainConfig(lr=2e-3, epochs=6, batch_size=8, max_length=16)
    runs = []
    for _ in range(2):
        model = build_model(tiny_profile.models["bert"], tok, 2, 16, 5)
        info = train(model, data, cfg, 5, "cpu", tok.pad_token_id, False)
        runs.append((info, {k: v.clone() for k, v in model.state_dict().items()}))
    (a, wa), (b, wb) = runs
    assert a["loss_last"] == b["loss_last"] and a["loss_last"] < a["loss_first"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compile is for GPUs: on 2 CPU cores it takes minutes")
def test_compiled_training_learns(tiny_profile, tiny_tokenizers):
    tok = tiny_tokenizers["bert"]
    data = _toy(tok, 32)
    model = build_model(tiny_profile.models["bert"], tok, 2, 16, 0)
    info = train(model, data, TrainConfig(lr=2e-3, epochs=6, batch_size=16, max_length=16), 0, "cuda",
                 tok.pad_token_id, False, compile=True)
    assert info["loss_last"] < info["loss_first"]
    assert predict(model, data, 64, "cuda", tok.pad_token_id, False).shape == (len(data),)


SPEED = re.compile(r"^bench/test_speed\.py::test_\w+\[[\w-]+\]$", re.M)
GRID = re.compile(r"^bench/test_transfer\.py::test_transfer\[[\w-]+\]$", re.M)


@pytest.mark.parametrize("args,speed,grid", [
    (("bench",), 0, 27),
    (("bench", "--benchmark-only"), 16, 27),  # training and prediction speed of 4 models, ensemble x 2 stages
    (("bench/test_speed.py",), 16, 0),
])
@pytest.mark.slow
@pytest.mark.subprocess
def test_speed_benchmarks_stay_out_of_the_grid_run(tiny_corpora, tmp_path, args, speed, grid):
    proc = run_pytest(*args, "--collect-only", "-q", "-p", "no:hypothesispytest", "--data-dir", str(tiny_corpora),
                      "--cache-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(SPEED.findall(proc.stdout)) == speed and len(GRID.findall(proc.stdout)) == grid, proc.stdout


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 64), min_size=0, max_size=300), st.integers(1, 64))
def test_eval_batches_cover_each_index_once_within_the_token_budget(lengths, batch_size):
    lengths = np.asarray(lengths, dtype=np.int64)
    batches = eval_batches(lengths, batch_size)
    flat = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert np.all(np.diff(lengths[flat]) >= 0)  # length-sorted throughout
    budget = batch_size * max(1.0, lengths.mean()) if len(lengths) else 0
    for b in batches:
        assert 1 <= len(b) <= batch_size
        assert len(b) == 1 or len(b) * lengths[b].max() <= budget
