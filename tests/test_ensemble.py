"""harness.training.together: members keep their own initialisation, data order and clipping, evaluation matches
the per-model predict, and the same group gives the same numbers in every run and process."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from harness.definitions.config import TrainConfig
from harness.definitions.data import Encoded
from harness.training import together as ensemble
from harness.training.loop import predict

CFG = TrainConfig(lr=1e-3, epochs=2, batch_size=8, max_length=16)


def data(n=44, seed=0, regression=False) -> Encoded:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 12, size=n)
    ids = [np.concatenate([[2], rng.integers(5, 100, size=t - 2), [3]]).astype(np.int64) for t in lengths]
    targets = rng.random(n).astype(np.float32) if regression else (lengths % 2).astype(np.int64)
    return Encoded(ids, [np.zeros(t, dtype=np.int64) for t in lengths], targets)


def model(family: str, seed: int, num_labels: int = 2):
    from transformers import AutoModelForSequenceClassification, BertConfig, RobertaConfig, XLNetConfig

    torch.manual_seed(seed)
    if family == "bert":
        config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=20, num_labels=num_labels)
    elif family == "roberta":
        config = RobertaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=22, num_labels=num_labels,
                               pad_token_id=0)
    else:
        config = XLNetConfig(vocab_size=100, d_model=16, n_layer=1, n_head=2, d_inner=32, num_labels=num_labels)
    config.problem_type = "regression" if num_labels == 1 else "single_label_classification"
    return AutoModelForSequenceClassification.from_config(
        config, **({"attn_implementation": "sdpa"} if family != "xlnet" else {}))


def trained(family="bert", seeds=(0, 1, 2), regression=False):
    models = [model(family, s, 1 if regression else 2) for s in seeds]
    infos = ensemble.train_together(models, family, data(regression=regression), CFG, list(seeds), "cpu", 0,
                                    family == "xlnet")
    return models, infos


def weights(models) -> list[np.ndarray]:
    return [torch.cat([p.detach().flatten() for p in m.parameters()]).numpy() for m in models]


@pytest.mark.parametrize("family", ["bert", "xlnet"])
def test_the_same_group_gives_the_same_numbers(family):
    first, infos = trained(family)
    again, _ = trained(family)
    assert all(np.array_equal(a, b) for a, b in zip(weights(first), weights(again)))
    assert len({i["loss_last"] for i in infos}) == 3  # members differ: own init, data order, dropout
    assert all(np.isfinite(i["loss_last"]) and i["steps"] == 2 * 6 for i in infos)


def test_members_start_from_their_own_initialisation():
    models = [model("bert", s) for s in (0, 1)]
    before = weights(models)
    stack = ensemble.Stacked(models, "cpu", "bert")
    stacked = torch.cat([p[1].detach().flatten() for p in stack.params.values()]).numpy()
    assert np.array_equal(stacked, before[1]) and not np.array_equal(before[0], before[1])


def test_clipping_is_per_member():
    grads = [torch.randn(3, 4, 5) * torch.tensor([0.01, 1.0, 100.0]).view(3, 1, 1), torch.randn(3, 7)]
    params = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    ensemble._clip(params, 1.0)
    for m in range(3):
        alone = [torch.zeros_like(g[m], requires_grad=True) for g in grads]
        for p, g in zip(alone, grads):
            p.grad = g[m].clone()
        torch.nn.utils.clip_grad_norm_(alone, 1.0)
        for p, q in zip(params, alone):
            torch.testing.assert_close(p.grad[m], q.grad)


@pytest.mark.parametrize("family,regression", [("bert", False), ("bert", True), ("roberta", False),
                                               ("xlnet", False), ("xlnet", True)])
def test_evaluation_together_matches_each_model_alone(family, regression):
    models, _ = trained(family, regression=regression)
    test = data(30, seed=1, regression=regression)
    together = ensemble.predict_together(models, family, test, 8, "cpu", 0, family == "xlnet")
    for m, preds in zip(models, together):
        np.testing.assert_allclose(preds, predict(m, test, 8, "cpu", 0, family == "xlnet"), atol=1e-5)


@pytest.mark.slow
@pytest.mark.subprocess
def test_another_process_gives_the_same_numbers():
    code = ("import json, sys; sys.path.insert(0, 'tests'); import test_ensemble as t; "
            "print(json.dumps([float(w.sum()) for w in t.weights(t.trained()[0])]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [float(w.sum()) for w in weights(trained()[0])]


def test_group_seed_depends_on_the_members_seeds():
    assert ensemble.group_seed([0, 0, 1, 1]) == ensemble.group_seed([0, 0, 1, 1]) != ensemble.group_seed([0, 1])


def visit_times(steps: list, n: int) -> np.ndarray:
    """(members, n): the step at which each member sees each example."""
    times = np.zeros((len(steps[0]), n))
    for k, step in enumerate(steps):
        for m, idx in enumerate(step):
            times[m, idx] = k
    return times


@pytest.mark.parametrize("n, batch", [(256, 16), (1000, 32)])
def test_paired_steps_give_each_member_its_own_data_order(n, batch):
    """Every batch of a member once a epoch; a step's batches from one width bucket (little padding); the step at
    which two members see an example unrelated (|r| <= 0.1; pairing by exact width rank gave 0.8), as in
    sequential training, where members' orders are independent."""
    corr, spread = [], []
    for rep in range(20):
        lengths = np.random.default_rng(rep).integers(3, 60, size=n)
        rngs = [np.random.default_rng(100 * rep + s) for s in (0, 1, 2)]
        plans = [ensemble.length_grouped_batches(lengths, batch, r) for r in rngs]
        steps = ensemble.paired_steps(plans, lengths, np.random.default_rng(9 + rep), rngs)
        assert len(steps) == len(plans[0])
        for m, plan in enumerate(plans):  # every batch of the member once, none of another member's
            assert sorted(tuple(b) for b in plan) == sorted(tuple(step[m]) for step in steps)
        times = visit_times(steps, n)
        corr.append(np.corrcoef(times[0], times[1])[0, 1])
        widths = np.array([[lengths[b].max() for b in step] for step in steps])
        spread.append(np.mean(np.ptp(widths, axis=1)) / lengths.max())
    assert abs(np.mean(corr)) <= 0.1, np.mean(corr)
    assert np.mean(spread) < 0.3  # one bucket a step: widths within it, not across the whole range


def test_paired_steps_are_the_groups_and_members_own():
    lengths = np.random.default_rng(5).integers(3, 30, size=203)
    plans = lambda: [ensemble.length_grouped_batches(lengths, 16, np.random.default_rng(s)) for s in (0, 1)]  # noqa: E731
    own = lambda: [np.random.default_rng(s) for s in (0, 1)]  # noqa: E731
    steps = ensemble.paired_steps(plans(), lengths, np.random.default_rng(9), own())
    again = ensemble.paired_steps(plans(), lengths, np.random.default_rng(9), own())
    other = ensemble.paired_steps(plans(), lengths, np.random.default_rng(10), own())
    same = lambda x, y: all(all(np.array_equal(a, b) for a, b in zip(s, t)) for s, t in zip(x, y))  # noqa: E731
    assert same(steps, again) and not same(steps, other)


@pytest.mark.parametrize("family", ["bert", "roberta", "xlnet"])
def test_grouped_model_computes_what_each_member_computes(family):
    """In training mode without dropout, the grouped forward gives each member's own logits and gradients."""
    from harness.training.grouped import group

    members = [model(family, s) for s in (0, 1, 2)]
    for m in members:
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
        m.train()
    grouped = group(members, family).train()
    rng = np.random.default_rng(3)
    ids = torch.from_numpy(rng.integers(5, 100, size=(3, 4, 9)))
    types = torch.from_numpy(rng.integers(0, 2, size=(3, 4, 9)))
    kwargs = {} if family == "roberta" else {"token_type_ids": types.flatten(0, 1)}
    out = grouped(ids.flatten(0, 1), **kwargs).logits.view(3, 4, -1)
    out.sum().backward()
    stacked = grouped.stacked()
    assert len(stacked) == len([p for p in members[0].parameters() if p.requires_grad]) - (family == "xlnet")
    for m, member in enumerate(members):
        own = member(ids[m], **({} if family == "roberta" else {"token_type_ids": types[m]})).logits
        torch.testing.assert_close(out[m], own, atol=1e-5, rtol=1e-4)
        own.sum().backward()
        for name, p in stacked.items():
            torch.testing.assert_close(p.grad[m], member.get_parameter(name).grad, atol=1e-5, rtol=1e-4)


def test_the_profile_table_sets_it_and_a_non_boolean_is_refused(tmp_path):
    from harness.definitions import profiles
    from harness.definitions.specfile import SpecError, read_profile

    rows = '\n[models]\nbert = "x"\nroberta = "y"\nxlnet = "z"\n'
    path = tmp_path / "mine.toml"
    path.write_text("[profile]\ntrain_together = true\n" + rows)
    assert read_profile(path, "mine", None, tmp_path).train_together is True
    path.write_text("[profile]\nensemble = true\n" + rows)  # the deprecated name still reads
    assert read_profile(path, "mine", None, tmp_path).train_together is True
    path.write_text(rows)
    assert read_profile(path, "mine", None, tmp_path).train_together is False
    path.write_text('[profile]\ntrain_together = "yes"\n' + rows)
    with pytest.raises(SpecError) as err:
        read_profile(path, "mine", None, tmp_path)
    assert str(err.value) == f"{path}: [profile] key 'train_together': must be a non-empty bool, got 'yes'"
    assert profiles.tiny(None, tmp_path).train_together is True  # the tiny default (docs/performance.md)


def test_the_old_flag_is_an_alias_that_says_it_is_deprecated():
    from harness.pytest.options import deprecated_flags

    assert deprecated_flags(["bench", "--ensemble", "-n", "2", "--no-ensemble", "--ensemble"]) == [
        "--ensemble is deprecated: use --train-together", "--no-ensemble is deprecated: use --no-train-together"]
    assert deprecated_flags(["--train-together", "--no-train-together"]) == []


def test_grouped_dropout_draws_its_own_reproducible_masks():
    """GroupedDropout (CPU): keep masks from the group's numpy stream, scaled by 1/(1-p) as F.dropout; the same
    seed gives the same masks, another seed others; eval mode and p=0 leave the input as it is."""
    from harness.training.grouped import GroupedDropout, _Masks

    x = torch.ones(64, 50, requires_grad=True)
    drop = GroupedDropout(0.25, _Masks(7)).train()
    y = drop(x)
    kept = y.detach() != 0
    assert 0.70 < kept.float().mean().item() < 0.80  # 3,200 draws at p = 0.25
    torch.testing.assert_close(y.detach()[kept], torch.full((int(kept.sum()),), 1 / 0.75))
    y.sum().backward()  # the gradient goes through the kept elements only, scaled
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert torch.equal(GroupedDropout(0.25, _Masks(7)).train()(x.detach()), y.detach())
    assert not torch.equal(GroupedDropout(0.25, _Masks(8)).train()(x.detach()), y.detach())
    assert drop.eval()(x) is x and GroupedDropout(0.0, _Masks(7)).train()(x) is x


@pytest.mark.parametrize("masked", [False, True])
def test_grouped_attention_is_sdpa_with_the_streams_probability_dropout(masked):
    """The attention of a grouped BERT/RoBERTa (training, CPU): SDPA's arithmetic with the probabilities dropped by
    the group's stream. With a stream that keeps everything it equals transformers' SDPA attention (no dropout),
    with and without a padding mask; with nothing to drop it is SDPA itself and draws nothing from the stream."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from harness.training.grouped import GroupedDropout, _attention, _Masks

    class KeepAll(_Masks):
        def drop(self, x, p):
            self.seen = tuple(x.shape)
            return x

    rng = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 7, 8, generator=rng) for _ in range(3))
    mask = None
    if masked:
        mask = torch.ones(3, 1, 7, 7, dtype=torch.bool)
        mask[0, ..., 5:] = False  # padding: the last two keys of the first row
    module = torch.nn.Module()
    module.is_causal, module.dropout = False, GroupedDropout(0.1, KeepAll(0))
    ours, _ = _attention(module, q, k, v, mask, dropout=0.1, scaling=0.3)
    assert module.dropout.masks.seen == (3, 2, 7, 7)  # the probabilities went through the stream
    reference, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    idle = torch.nn.Module()  # eval mode or p = 0: the attention passes dropout=0.0
    idle.is_causal, idle.dropout = False, GroupedDropout(0.1, KeepAll(0))
    torch.testing.assert_close(_attention(idle, q, k, v, mask, dropout=0.0, scaling=0.3)[0], reference)
    assert not hasattr(idle.dropout.masks, "seen")


def test_grouped_bert_trains_with_the_streams_dropout():
    """A grouped BERT copy uses the grouped attention and GroupedDropout for every dropout of the members."""
    from harness.training.grouped import ATTENTION, GroupedDropout, group

    members = [model("bert", s) for s in (0, 1)]
    grouped = group(members, "bert", seed=5)
    assert grouped.model.config._attn_implementation == ATTENTION
    assert all(m.config._attn_implementation == "sdpa" for m in members)  # the members themselves unchanged
    assert not any(type(m) is torch.nn.Dropout for m in grouped.modules())
    assert sum(isinstance(m, GroupedDropout) for m in grouped.modules()) >= 4


def test_a_layer_norm_without_scale_or_shift_is_refused_in_one_line():
    from harness.training.grouped import GroupedLayerNorm

    with pytest.raises(NotImplementedError, match="without a scale or shift.*--no-train-together"):
        GroupedLayerNorm([torch.nn.LayerNorm(4, elementwise_affine=False) for _ in range(2)])
