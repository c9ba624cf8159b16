"""Tokenizers (each family's own style and special-token layout) and model building for the tiny profile."""
from __future__ import annotations

import pytest
import torch

from harness.definitions.data import Split, encode
from harness.training.loop import collate
from harness.training.models import body_state, build_model
from harness.training.tokenizers import load_tokenizer

FAMILIES = ("bert", "roberta", "xlnet")
STYLE = {"bert": "WordPiece", "roberta": "BPE", "xlnet": "Unigram"}
MODEL_CLASS = {"bert": "BertForSequenceClassification", "roberta": "RobertaForSequenceClassification",
               "xlnet": "XLNetForSequenceClassification"}
SENTENCE = "ba be bi bo"


def _tokens(tok, *texts) -> list[str]:
    return tok.convert_ids_to_tokens(tok(*texts)["input_ids"])


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_is_the_family_style(tiny_tokenizers, family):
    tok = tiny_tokenizers[family]
    assert type(tok.backend_tokenizer.model).__name__ == STYLE[family]
    assert tok.is_fast and 500 < len(tok) <= 2000


def test_byte_level_bpe_has_no_unknown_tokens(tiny_tokenizers):
    """Byte-level BPE maps any Unicode text to known pieces; WordPiece falls back to [UNK]."""
    tok = tiny_tokenizers["roberta"]
    ids = tok("ünïcødé ✓ 中文")["input_ids"]
    assert tok.unk_token_id not in ids
    assert type(tok.backend_tokenizer.pre_tokenizer).__name__ == "ByteLevel"
    assert tiny_tokenizers["bert"].unk_token_id in tiny_tokenizers["bert"]("中")["input_ids"]


def test_bert_special_tokens_and_segments(tiny_tokenizers):
    tok = tiny_tokenizers["bert"]
    single = _tokens(tok, SENTENCE)
    assert single[0] == "[CLS]" and single[-1] == "[SEP]" and single.count("[SEP]") == 1
    enc = tok(SENTENCE, "da de")
    pair = tok.convert_ids_to_tokens(enc["input_ids"])
    assert pair[0] == "[CLS]" and pair.count("[SEP]") == 2 and pair[-1] == "[SEP]"
    second = pair.index("[SEP]") + 1
    assert set(enc["token_type_ids"][:second]) == {0} and set(enc["token_type_ids"][second:]) == {1}
    assert tok.padding_side == "right"
    assert set(tok.all_special_tokens) == {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for word in ("bababa", "zuzuzu"):  # WordPiece: a word's later pieces carry the ## continuation prefix
        pieces = tok.tokenize(word)
        assert len(pieces) > 1 and not pieces[0].startswith("##") and all(p.startswith("##") for p in pieces[1:])


def test_roberta_special_tokens(tiny_tokenizers):
    tok = tiny_tokenizers["roberta"]
    single = _tokens(tok, SENTENCE)
    assert single[0] == "<s>" and single[-1] == "</s>"
    pair = _tokens(tok, SENTENCE, "da de")
    assert pair[0] == "<s>" and pair[-1] == "</s>" and pair.count("</s>") == 3  # <s> A </s></s> B </s>
    assert tok.padding_side == "right"


def test_xlnet_summary_token_last_and_left_padding(tiny_tokenizers):
    tok = tiny_tokenizers["xlnet"]
    single = _tokens(tok, SENTENCE)
    assert single[-2:] == ["<sep>", "<cls>"]
    enc = tok(SENTENCE, "da de")
    pair = tok.convert_ids_to_tokens(enc["input_ids"])
    assert pair[-1] == "<cls>" and pair.count("<sep>") == 2
    assert enc["token_type_ids"][-1] == 2, "XLNet's <cls> has its own segment id"
    assert tok.padding_side == "left"
    padded = tok(["ba", SENTENCE], padding=True)["input_ids"]
    assert padded[0][0] == tok.pad_token_id and padded[0][-1] == tok.cls_token_id


def test_tokenizer_is_cached_not_retrained(tiny_profile, tmp_path):
    corpus = [tiny_profile.data_root / f for f in tiny_profile.tokenizer_corpus]
    spec = tiny_profile.models["bert"]
    first = load_tokenizer(spec, corpus, tmp_path)
    folders = sorted((tmp_path / "tokenizers").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in folders}
    second = load_tokenizer(spec, corpus, tmp_path)
    assert sorted((tmp_path / "tokenizers").iterdir()) == folders
    assert {p: p.stat().st_mtime_ns for p in folders} == stamps
    assert first.get_vocab() == second.get_vocab()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("num_labels", [1, 3])
def test_build_model_heads_and_trainable(tiny_profile, tiny_tokenizers, family, num_labels):
    tok = tiny_tokenizers[family]
    model = build_model(tiny_profile.models[family], tok, num_labels, max_length=48, seed=0)
    assert type(model).__name__ == MODEL_CLASS[family]
    assert model.config.num_labels == num_labels
    assert model.config.problem_type == ("regression" if num_labels == 1 else "single_label_classification")
    assert all(p.requires_grad for p in model.parameters())
    assert model.get_input_embeddings().num_embeddings >= len(tok)
    split = Split("mem", ["ba be", "bi bo ca co da"], None, ["a", "b"])
    batch = collate(encode(tok, split, 48, ["a", "b"]), [0, 1], tok.pad_token_id, tok.padding_side == "left", "cpu")
    with torch.no_grad():
        assert model.eval()(**batch).logits.shape == (2, num_labels)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights_other_seed_other_weights(tiny_profile, tiny_tokenizers, family):
    spec, tok = tiny_profile.models[family], tiny_tokenizers[family]
    a, b = (build_model(spec, tok, 3, 48, seed=7).state_dict() for _ in range(2))
    c = build_model(spec, tok, 3, 48, seed=8).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_does_not_change_predictions(tiny_profile, tiny_tokenizers, family):
    """Padded on the family's side with the attention mask, an example scores as it does alone."""
    tok = tiny_tokenizers[family]
    model = build_model(tiny_profile.models[family], tok, 2, 48, seed=0).eval()
    enc = encode(tok, Split("mem", ["ba be", "bi bo ca co da de di do"], ["fa", "ga"], ["a", "b"]), 48, ["a", "b"])
    left = tok.padding_side == "left"
    with torch.no_grad():
        alone = model(**collate(enc, [0], tok.pad_token_id, left, "cpu")).logits[0]
        padded = model(**collate(enc, [0, 1], tok.pad_token_id, left, "cpu")).logits[0]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_body_state_excludes_the_head_and_loads_into_a_new_head(tiny_profile, tiny_tokenizers, family):
    spec, tok = tiny_profile.models[family], tiny_tokenizers[family]
    source = build_model(spec, tok, 1, 48, seed=1)
    body = body_state(source)
    head = set(source.state_dict()) - {f"{source.base_model_prefix}.{k}" for k in body}
    assert head and all(not k.startswith(source.base_model_prefix + ".") for k in head)
    target = build_model(spec, tok, 4, 48, seed=2)
    target.base_model.load_state_dict(body)
    assert all(torch.equal(v, target.base_model.state_dict()[k]) for k, v in body.items())


_TRAIN_AND_HASH = """
import hashlib, json, sys
from pathlib import Path
from harness.training.tokenizers import train_tokenizer
files = sys.argv[1:]
print(json.dumps({f: hashlib.sha256(train_tokenizer(f, files, 2000).backend_tokenizer.to_str().encode()).hexdigest()
                  for f in ("bert", "roberta", "xlnet")}))
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_tokenizer_training_is_deterministic_across_processes(tiny_profile):
    """Fresh caches (a CI machine, a second run) must train the same tokenizers: the tokenizers library's
    trainers iterate hash maps seeded per process (huggingface/tokenizers#1794), which the harness works around."""
    import subprocess
    import sys

    corpus = [str(tiny_profile.data_root / f) for f in tiny_profile.tokenizer_corpus]
    runs = [subprocess.Popen([sys.executable, "-c", _TRAIN_AND_HASH, *corpus], stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    first, second = (run.communicate(timeout=300)[0] for run in runs)
    assert all(run.returncode == 0 for run in runs)
    assert first == second and first.strip()
