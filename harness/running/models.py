"""Checkpoints, tiny configs and tokenizers.

The `tiny` profile trains each family's tokenizer in that family's own style on the profile corpora
(WordPiece for BERT, byte-level BPE for RoBERTa, Unigram for XLNet) and builds small random configs.
Other profiles load checkpoints (a local folder or a hub id) with transformers' Auto classes.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from harness.definitions.config import ModelConfig
from harness.running.cache import atomic_dir, file_digest, fingerprint
from harness.running.pooling import PoolingError, checkpoint_pooling, pooled

log = logging.getLogger(__name__)


class ModelError(Exception):
    """A checkpoint that cannot be loaded; str() is one line naming the model and how to work offline."""


def from_pretrained(loader, spec: ModelConfig, **kwargs):
    """`loader.from_pretrained` for a hub id or local folder; failures (offline, no such model) in one line."""
    try:
        return loader.from_pretrained(spec.source, revision=spec.revision, **kwargs)
    except OSError as exc:  # hub unreachable, unknown id, missing files: all OSError subclasses
        raise ModelError(f"{spec.describe}: cannot load model {spec.name!r} ({type(exc).__name__}); offline, use "
                         f"--profile minilm or a local checkpoint folder in a --spec [models] table") from None


TOKENIZER_RECIPE = 2  # bump when tokenizer training changes: part of the tokenizer cache key

# family -> (special tokens, template single, template pair, padding side)
_SPECIALS = {
    "bert": dict(pad="[PAD]", unk="[UNK]", cls="[CLS]", sep="[SEP]", mask="[MASK]"),
    "roberta": dict(pad="<pad>", unk="<unk>", cls="<s>", sep="</s>", mask="<mask>", bos="<s>", eos="</s>"),
    "xlnet": dict(pad="<pad>", unk="<unk>", cls="<cls>", sep="<sep>", mask="<mask>", bos="<s>", eos="</s>"),
}


def _train_tokenizer(family: str, files: list[str], vocab_size: int):
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


def load_tokenizer(spec: ModelConfig, corpus: list[Path], cache_dir: Path):
    """The tokenizer of a model: trained and cached for tiny configs, else the checkpoint's own."""
    from transformers import AutoTokenizer

    if spec.source != "tiny":
        return from_pretrained(AutoTokenizer, spec)
    vocab = spec.size.get("vocab", 2000)
    key = fingerprint("tokenizer", TOKENIZER_RECIPE, spec.family, vocab, [file_digest(p) for p in corpus])
    folder = atomic_dir(Path(cache_dir) / "tokenizers" / f"{spec.family}-{key}",
                        lambda tmp: _train_tokenizer(spec.family, [str(p) for p in corpus], vocab).save_pretrained(tmp))
    return AutoTokenizer.from_pretrained(str(folder))


def tiny_config(spec: ModelConfig, tokenizer, num_labels: int, max_length: int):
    from transformers import BertConfig, RobertaConfig, XLNetConfig

    s = spec.size
    common = dict(vocab_size=len(tokenizer), num_labels=num_labels, pad_token_id=tokenizer.pad_token_id)
    if spec.family == "bert":
        return BertConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                          intermediate_size=s["ffn"], max_position_embeddings=max_length + 2, **common)
    if spec.family == "roberta":
        return RobertaConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                             intermediate_size=s["ffn"], max_position_embeddings=max_length + 4, type_vocab_size=1,
                             **common)
    if spec.family == "xlnet":
        return XLNetConfig(d_model=s["hidden"], n_layer=s["layers"], n_head=s["heads"], d_inner=s["ffn"], **common)
    raise ValueError(f"unknown model family {spec.family!r}; valid: bert, roberta, xlnet")


# Families whose transformers implementation has fused scaled-dot-product attention (XLNet's relative attention
# has none); asked for explicitly so an older transformers does not fall back to the eager implementation.
SDPA_FAMILIES = ("bert", "roberta")


def model_pooling(spec: ModelConfig) -> str:
    """harness.running.pooling.checkpoint_pooling, its unreadable-config error as a ModelError (one line)."""
    try:
        return checkpoint_pooling(spec)
    except PoolingError as err:
        raise ModelError(str(err)) from None


def cell_heads(profile, cell) -> tuple[str, str]:
    """(pooling, similarity head) of a cell: pooling from its model row, else the profile, else the checkpoint;
    the head of a pair regression task (similarity) from its target data set, else its model row, else the
    profile ('cross' for every other task). Both arms and the intermediate model use them."""
    from harness.definitions.tasks import task_type

    row = profile.models[cell.model]
    pooling = row.pooling or profile.pooling or model_pooling(row)
    kind = task_type(cell.task)
    if not (kind.pair and kind.regression):
        return pooling, "cross"
    target = profile.targets.get((cell.task, cell.domain))
    return pooling, (target.similarity_head if target else None) or row.similarity_head or profile.similarity_head


def cell_head_init(profile, cell) -> str:
    """How a cell's classification head starts (one of HEAD_INITS): its model row's `head_init`, else the
    profile's. A regression task's head (similarity) always starts at random: there is no probe to start from."""
    from harness.definitions.tasks import task_type

    if task_type(cell.task).regression:
        return "random"
    return profile.models[cell.model].head_init or profile.head_init


def build_model(spec: ModelConfig, tokenizer, num_labels: int, max_length: int, seed: int,
                pooling: str | None = None, head: str = "cross"):
    """A sequence classification / regression (num_labels=1) model with every weight trainable.

    The seed fixes the random parts (the whole tiny model; the head of a pretrained one), so the two arms of
    a cell start from the same head initialisation. `pooling` (None: the checkpoint's) and `head` (a pair
    regression task's `cross` or `bi`) choose the head: [CLS] pooling with a cross head is transformers' own
    sequence-classification model (the seed recipe); anything else is a PooledModel on the bare encoder.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    pooling = pooling or model_pooling(spec)
    torch.manual_seed(seed)
    extra = {"problem_type": "regression"} if num_labels == 1 else {"problem_type": "single_label_classification"}
    attention = {"attn_implementation": "sdpa"} if spec.family in SDPA_FAMILIES else {}
    if pooling != "cls" or head != "cross":
        encoder = (AutoModel.from_config(tiny_config(spec, tokenizer, num_labels, max_length), **attention)
                   if spec.source == "tiny" else from_pretrained(AutoModel, spec, **attention))
        model = PooledModel(encoder, num_labels, pooling, head == "bi", tokenizer.pad_token_id,
                            cls_last=tokenizer.padding_side == "left")
    elif spec.source == "tiny":
        config = tiny_config(spec, tokenizer, num_labels, max_length)
        for key, value in extra.items():
            setattr(config, key, value)
        model = AutoModelForSequenceClassification.from_config(config, **attention)
    else:
        model = from_pretrained(AutoModelForSequenceClassification, spec, num_labels=num_labels,
                                ignore_mismatched_sizes=True, **extra, **attention)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


class PooledModel(torch.nn.Module):
    """An encoder and a head on its pooled embeddings (harness.running.pooling), with the forward and output of
    transformers' sequence-classification models (batches of harness.running.train.collate; `.loss`, `.logits`).

    - not `bi`: dropout and a linear layer `classifier` on the pooled embedding of the input (one text, or a
      pair encoded together: a cross-encoder); cross-entropy, or MSE for one output (regression);
    - `bi` (pair regression): each text of a pair encoded on its own (harness.definitions.data.encode with
      `separate`: the two texts packed in one row, told apart by token type 0 / 1), the score is the cosine of
      the two pooled embeddings, trained with the CoSENT loss (Su 2022; sentence-transformers' CoSENTLoss):
      it ranks the pairs of a batch by score, so the targets need no rescaling to the cosine's range.
    `base_model` is the encoder, as in transformers: the body the intermediate arm carries over."""

    COSENT_SCALE = 20.0

    def __init__(self, encoder, num_labels: int, pooling: str, bi: bool, pad_id: int, cls_last: bool = False):
        super().__init__()
        self.encoder, self.pooling, self.bi, self.pad_id, self.cls_last = encoder, pooling, bi, pad_id, cls_last
        self.config, self.num_labels = encoder.config, num_labels
        if not bi:
            config = encoder.config
            rate = getattr(config, "classifier_dropout", None) or getattr(config, "hidden_dropout_prob", 0.1)
            self.dropout = torch.nn.Dropout(rate)
            self.classifier = torch.nn.Linear(config.hidden_size, num_labels)

    @property
    def base_model(self):
        return self.encoder

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        head = sum(p.numel() for name, p in self.named_parameters() if not name.startswith("encoder."))
        return self.encoder.num_parameters(exclude_embeddings=exclude_embeddings) + head

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Pooled embeddings of the rows of a batch."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return pooled(out, attention_mask, self.pooling, self.cls_last)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        if self.bi:
            ids, mask = unpack_pairs(input_ids, attention_mask, token_type_ids, self.pad_id, self.cls_last)
            u, v = self.embed(ids, mask).chunk(2)
            logits = torch.nn.functional.cosine_similarity(u, v, dim=-1).unsqueeze(-1)
            loss = cosent(logits.squeeze(-1), labels, self.COSENT_SCALE) if labels is not None else None
        else:
            logits = self.classifier(self.dropout(self.embed(input_ids, attention_mask, token_type_ids)))
            loss = None
            if labels is not None:
                loss = (torch.nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
                        if self.num_labels == 1 else torch.nn.functional.cross_entropy(logits, labels))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def cosent(scores: torch.Tensor, labels: torch.Tensor, scale: float) -> torch.Tensor:
    """log(1 + sum over pairs (i, j) of the batch with labels_i < labels_j of exp(scale (s_i - s_j)))."""
    diff = scale * (scores[:, None] - scores[None, :]).float()
    diff = diff[labels[:, None] < labels[None, :]]
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff]), dim=0)


def unpack_pairs(input_ids, attention_mask, token_type_ids, pad_id: int, left_pad: bool):
    """Rows packed as `text a tokens, text b tokens` (token types 0 and 1, each with its own special tokens) ->
    (ids, mask) of 2B rows, the B first texts then the B second texts, each padded as the tokenizer pads."""
    if token_type_ids is None:
        raise ValueError("a bi-encoder batch needs token types telling its two texts apart (encode(separate=True))")
    real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    parts = [real & (token_type_ids == segment) for segment in (0, 1)]
    width = int(max(p.sum(1).max() for p in parts))
    ids = input_ids.new_full((2 * len(input_ids), width), pad_id)
    mask = torch.zeros_like(ids)
    for k, part in enumerate(parts):
        n = part.sum(1, keepdim=True)
        pos = part.cumsum(1) - 1 + ((width - n) if left_pad else 0)
        rows, cols = part.nonzero(as_tuple=True)
        ids[rows + k * len(input_ids), pos[rows, cols]] = input_ids[rows, cols]
        mask[rows + k * len(input_ids), pos[rows, cols]] = 1
    return ids, mask


def body_state(model) -> dict:
    """The encoder weights (no task head): what the intermediate arm carries over to the target task."""
    return {k: v.detach().cpu() for k, v in model.base_model.state_dict().items()}
