"""Tokenizers: a checkpoint's own, or for the `tiny` profile one trained in each family's own style on the
profile corpora (WordPiece for BERT, byte-level BPE for RoBERTa, Unigram for XLNet), cached under the cache
directory by a key of the recipe, the family, the vocabulary size and the corpus files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.definitions.config import ModelConfig
from harness.fileio import atomic_dir, file_digest, fingerprint
from harness.training.models import from_pretrained

TOKENIZER_RECIPE = 2  # bump when tokenizer training changes: part of the tokenizer cache key

# family -> (special tokens, template single, template pair, padding side)
_SPECIALS = {
    "bert": dict(pad="[PAD]", unk="[UNK]", cls="[CLS]", sep="[SEP]", mask="[MASK]"),
    "roberta": dict(pad="<pad>", unk="<unk>", cls="<s>", sep="</s>", mask="<mask>", bos="<s>", eos="</s>"),
    "xlnet": dict(pad="<pad>", unk="<unk>", cls="<cls>", sep="<sep>", mask="<mask>", bos="<s>", eos="</s>"),
}


def train_tokenizer(family: str, files: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sp = _SPECIALS[family]
    specials = list(dict.fromkeys([sp["pad"], sp["unk"], sp["cls"], sp["sep"], sp["mask"], sp.get("bos", sp["cls"])]))
    if family == "bert":
        tok = Tokenizer(models.WordPiece(unk_token=sp["unk"]))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        # The "##x" pieces are otherwise created in hash-map order, so their ids, the merge tie-breaks and
        # the vocabulary differ from run to run (huggingface/tokenizers#1794); declared up front they get fixed
        # ids. They are kept out of the final tokenizer's special tokens (see _rebuild_wordpiece).
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size,
                                            special_tokens=specials + _continuations(tok.normalizer, files))
    elif family == "roberta":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif family == "xlnet":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=sp["unk"])
    else:
        raise ValueError(f"unknown model family {family!r}; valid: {', '.join(_SPECIALS)}")
    tok.train(files, trainer)
    if family == "bert":
        tok = _rebuild_wordpiece(tok, specials, sp["unk"])
    elif family == "xlnet":
        tok = _rescore_unigram(tok, files, specials, sp["unk"])
    cls, sep = sp["cls"], sp["sep"]
    ids = [(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))]
    if family == "bert":
        single, pair = f"{cls}:0 $A:0 {sep}:0", f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1"
    elif family == "roberta":
        single, pair = f"{cls}:0 $A:0 {sep}:0", f"{cls}:0 $A:0 {sep}:0 {sep}:0 $B:0 {sep}:0"
    else:  # XLNet puts the summary token last and pads on the left
        single, pair = f"$A:0 {sep}:0 {cls}:2", f"$A:0 {sep}:0 $B:1 {sep}:1 {cls}:2"
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if family != "roberta" else [])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=sp["pad"], unk_token=sp["unk"], cls_token=cls, sep_token=sep,
        mask_token=sp["mask"], padding_side="left" if family == "xlnet" else "right", model_input_names=names)


def _continuations(normalizer, files: list[str]) -> list[str]:
    chars = set()
    for file in files:
        chars |= set(normalizer.normalize_str(Path(file).read_text(encoding="utf-8")))
    return [f"##{c}" for c in sorted(chars) if not c.isspace()]


def _rebuild_wordpiece(trained, specials: list[str], unk: str):
    """The trained WordPiece vocabulary in a fresh tokenizer whose only special tokens are the real ones."""
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordPiece(json.loads(trained.to_str())["model"]["vocab"], unk_token=unk))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = trained.normalizer, trained.pre_tokenizer, trained.decoder
    tok.add_special_tokens(specials)
    return tok


def _rescore_unigram(trained, files: list[str], specials: list[str], unk: str):
    """Deterministic scores for the trained Unigram pieces.

    UnigramTrainer's EM sums over a hash map, so its scores vary in the last digits from run to run and the
    ids (ordered by score) with them. Its pieces are kept; each is scored by its smoothed log frequency when
    the corpus is segmented with all pieces equally likely (fewest pieces), and ids follow (score, piece).
    """
    from tokenizers import models

    trained_vocab = json.loads(trained.to_str())["model"]["vocab"]
    pieces = sorted(p for p, _ in trained_vocab if p not in specials)
    head = [(p, 0.0) for p, _ in trained_vocab if p in specials]
    trained.model = models.Unigram(head + [(p, -1.0) for p in pieces], [p for p, _ in head].index(unk), False)
    counts = np.zeros(len(head) + len(pieces))
    for file in files:
        for enc in trained.encode_batch(Path(file).read_text(encoding="utf-8").splitlines(), add_special_tokens=False):
            np.add.at(counts, enc.ids, 1)
    scores = np.log((counts[len(head):] + 1) / (counts[len(head):].sum() + len(pieces)))
    ranked = sorted(zip(pieces, scores.tolist()), key=lambda ps: (-ps[1], ps[0]))
    trained.model = models.Unigram(head + ranked, [p for p, _ in head].index(unk), False)
    return trained


def load_tokenizer(row: ModelConfig, corpus: list[Path], cache_dir: Path):
    """The tokenizer of a model: trained and cached for tiny configs, else the checkpoint's own."""
    from transformers import AutoTokenizer

    if row.source != "tiny":
        return from_pretrained(AutoTokenizer, row)
    vocab = row.size.get("vocab", 2000)
    key = fingerprint("tokenizer", TOKENIZER_RECIPE, row.family, vocab, [file_digest(p) for p in corpus])
    folder = atomic_dir(Path(cache_dir) / "tokenizers" / f"{row.family}-{key}",
                        lambda tmp: train_tokenizer(row.family, [str(p) for p in corpus], vocab).save_pretrained(tmp))
    return AutoTokenizer.from_pretrained(str(folder))
