"""Models: checkpoints (a local folder or a hub id, with transformers' Auto classes), the small random configs of
the `tiny` profile, heads on pooled embeddings and the encoder weights an intermediate model passes on.
(Tokenizers: harness.training.tokenizers.)
"""
from __future__ import annotations

import logging

import torch

from harness.definitions.config import SPLIT_SOURCES, ModelConfig
from harness.training import e5, mpnet
from harness.training.pooling import PoolingError, checkpoint_pooling, pooled

log = logging.getLogger(__name__)


class ModelError(Exception):
    """A checkpoint that cannot be loaded; str() is one line naming the model and how to work offline."""


def materialise(row: ModelConfig) -> None:
    """The folder of a row built from a package (`row.build`: harness.training.e5, or harness.training.mpnet for the
    split zips of SPLIT_SOURCES), built now if this is its first use; a missing package or a file not in its format
    is a ModelError (one line)."""
    if row.build:
        try:
            (mpnet.build if row.build in SPLIT_SOURCES else e5.build)(row)
        except (e5.E5Error, mpnet.MpnetError) as err:
            raise ModelError(str(err)) from None


def from_pretrained(loader, row: ModelConfig, **kwargs):
    """`loader.from_pretrained` for a hub id or local folder; failures (offline, no such model) in one line."""
    materialise(row)
    try:
        return loader.from_pretrained(row.source, revision=row.revision, **kwargs)
    except OSError as exc:  # hub unreachable, unknown id, missing files: all OSError subclasses
        raise ModelError(f"{row.describe}: cannot load model {row.name!r} ({type(exc).__name__}); offline, use "
                         f"--profile offline or a local checkpoint folder in a --spec [models] table") from None


def tiny_config(row: ModelConfig, tokenizer, num_labels: int, max_length: int):
    from transformers import BertConfig, RobertaConfig, XLNetConfig

    s = row.size
    common = dict(vocab_size=len(tokenizer), num_labels=num_labels, pad_token_id=tokenizer.pad_token_id)
    if row.family == "bert":
        return BertConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                          intermediate_size=s["ffn"], max_position_embeddings=max_length + 2, **common)
    if row.family == "roberta":
        return RobertaConfig(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                             intermediate_size=s["ffn"], max_position_embeddings=max_length + 4, type_vocab_size=1,
                             **common)
    if row.family == "xlnet":
        return XLNetConfig(d_model=s["hidden"], n_layer=s["layers"], n_head=s["heads"], d_inner=s["ffn"], **common)
    raise ValueError(f"unknown model family {row.family!r}; valid: bert, roberta, xlnet")


# Families whose transformers implementation has fused scaled-dot-product attention (XLNet's relative attention
# has none); asked for explicitly so an older transformers does not fall back to the eager implementation.
SDPA_FAMILIES = ("bert", "roberta")


def model_pooling(row: ModelConfig) -> str:
    """harness.training.pooling.checkpoint_pooling, its unreadable-config error as a ModelError (one line)."""
    materialise(row)
    try:
        return checkpoint_pooling(row)
    except PoolingError as err:
        raise ModelError(str(err)) from None


def build_model(row: ModelConfig, tokenizer, num_labels: int, max_length: int, seed: int,
                pooling: str | None = None, head: str = "cross"):
    """A sequence classification / regression (num_labels=1) model with every weight trainable.

    The seed fixes the random parts (the whole tiny model; the head of a pretrained one), so the two arms of
    a cell start from the same head initialisation. `pooling` (None: the checkpoint's) and `head` (a pair
    regression task's `cross` or `bi`) choose the head: [CLS] pooling with a cross head is transformers' own
    sequence-classification model (the seed recipe); anything else is a PooledModel on the bare encoder.
    """
    from transformers import AutoModel, AutoModelForSequenceClassification

    pooling = pooling or model_pooling(row)
    torch.manual_seed(seed)
    extra = {"problem_type": "regression"} if num_labels == 1 else {"problem_type": "single_label_classification"}
    attention = {"attn_implementation": "sdpa"} if row.family in SDPA_FAMILIES else {}
    if pooling != "cls" or head != "cross":
        encoder = (AutoModel.from_config(tiny_config(row, tokenizer, num_labels, max_length), **attention)
                   if row.source == "tiny" else from_pretrained(AutoModel, row, **attention))
        model = PooledModel(encoder, num_labels, pooling, head == "bi", tokenizer.pad_token_id,
                            cls_last=tokenizer.padding_side == "left")
    elif row.source == "tiny":
        config = tiny_config(row, tokenizer, num_labels, max_length)
        for key, value in extra.items():
            setattr(config, key, value)
        model = AutoModelForSequenceClassification.from_config(config, **attention)
    else:
        model = from_pretrained(AutoModelForSequenceClassification, row, num_labels=num_labels,
                                ignore_mismatched_sizes=True, **extra, **attention)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


class PooledModel(torch.nn.Module):
    """An encoder and a head on its pooled embeddings (harness.training.pooling), with the forward and output of
    transformers' sequence-classification models (batches of harness.training.loop.collate; `.loss`, `.logits`).

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
