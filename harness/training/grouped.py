"""k models of one architecture as one model: the members folded into the batch (--train-together).

`group(models, family)` copies the first model and replaces each module that holds parameters by a grouped one
whose parameters are the members' stacked on a new first dimension (member m's weights at index m):
- nn.Linear -> GroupedLinear: one batched matmul (baddbmm) over the members;
- nn.LayerNorm -> GroupedLayerNorm: the shared normalisation, then each member's scale and shift;
- nn.Embedding -> GroupedEmbedding: one lookup in the members' tables laid end to end;
- XLNet's relative attention (raw parameters used in einsums) -> GroupedXLNetAttention;
- nn.Dropout (and the dropout of BERT's and RoBERTa's attention probabilities) -> GroupedDropout: on CPU its keep
  masks come from a numpy generator seeded by the group (`seed`), about 3x faster to draw than torch's `bernoulli_`
  on one core (dropout was about a sixth of a grouped tiny step); on other devices torch's own dropout.
Every other operation of the transformers model (attention, softmax, activations, dropout, masks, reshapes) acts
on each row of the batch alone, so it runs unchanged on a batch of k x B rows whose first B rows belong to member 0,
the next B to member 1, and so on. Where a family's layers keep the batch on dimension 1 (XLNet: [length, batch,
hidden]), the grouped modules are told so (`batch_dim`).

Compared with vmap over functional_call (torch.func), this does the same arithmetic in about as many kernel calls
as one model, with no batching-rule overhead (bench/test_speed.py::test_ensemble_speed measures the gain).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _Rows:
    """The batch layout shared by a grouped model's modules: rows per member (set per forward)."""

    per_member: int | None = None


def _split(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """[..., k*B, ...] -> [..., k, B, ...] at `dim`."""
    s = x.shape
    return x.view(*s[:dim], k, s[dim] // k, *s[dim + 1:])


STREAM = "numpy-pcg64"  # the grouped models' dropout stream on CPU: in the cell and intermediate cache keys


class _Masks:
    """A grouped model's dropout stream on CPU: keep masks drawn with numpy (PCG64) from the group's seed."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def drop(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, p, True)
        keep = torch.from_numpy(self.rng.random(x.shape, dtype=np.float32) >= p)
        return x.mul(keep).mul_(1.0 / (1.0 - p))  # what F.dropout computes, with this stream's mask


class GroupedDropout(nn.Module):
    """nn.Dropout drawing its masks from the grouped model's stream (`_Masks`); `p` as nn.Dropout's."""

    def __init__(self, p: float, masks: _Masks):
        super().__init__()
        self.p, self.masks = p, masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masks.drop(x, self.p) if self.training else x


ATTENTION = "transfer_bench_grouped"  # the attention implementation of a grouped BERT / RoBERTa copy


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, except where it would drop attention probabilities on CPU (training): the
    same arithmetic as SDPA's math path, with the probabilities dropped by the group's stream (GroupedDropout)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    masks = getattr(getattr(module, "dropout", None), "masks", None)
    if not dropout or masks is None or query.device.type != "cpu" or getattr(module, "is_causal", False) \
            or kwargs.get("position_bias") is not None or getattr(module, "num_key_value_groups", 1) > 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (query.shape[-1] ** -0.5 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min) \
            if attention_mask.dtype == torch.bool else scores + attention_mask
    probs = masks.drop(F.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the masks SDPA gets: boolean (True: attend) or None


class GroupedLinear(nn.Module):
    def __init__(self, mods: list, batch_dim: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]))  # [k, out, in]
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in mods])) if mods[0].bias is not None else None
        self.batch_dim = batch_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, out = self.weight.shape[0], self.weight.shape[1]
        if self.batch_dim:  # members to the front: [..., k*B, ...] -> [k, ..., B, ...]
            xs = _split(x, k, self.batch_dim).movedim(self.batch_dim, 0)
            inner = xs.shape
            y = self._mm(xs.reshape(k, -1, x.shape[-1]))
            return y.view(*inner[:-1], out).movedim(0, self.batch_dim).reshape(*x.shape[:-1], out)
        return self._mm(x.reshape(k, -1, x.shape[-1])).view(*x.shape[:-1], out)

    def _mm(self, x3: torch.Tensor) -> torch.Tensor:
        w = self.weight.transpose(1, 2)
        return torch.bmm(x3, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), x3, w)


class GroupedLayerNorm(nn.Module):
    def __init__(self, mods: list, batch_dim: int = 0):
        super().__init__()
        if any(m.weight is None or m.bias is None for m in mods):
            raise NotImplementedError("grouped LayerNorm: a layer norm without a scale or shift "
                                      "(elementwise_affine=False or bias=False); train this model with --no-train-together")
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]))  # [k, hidden]
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in mods]))
        self.eps, self.shape, self.batch_dim = mods[0].eps, tuple(mods[0].normalized_shape), batch_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, d = self.weight.shape[0], self.batch_dim
        y = F.layer_norm(x, self.shape, None, None, self.eps).view(*x.shape[:d], k, -1, x.shape[-1])
        shape = (1,) * d + (k, 1, x.shape[-1])
        return torch.addcmul(self.bias.view(shape), y, self.weight.view(shape)).view(x.shape)


class GroupedEmbedding(nn.Module):
    def __init__(self, mods: list, rows: _Rows, batch_dim: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]))  # [k, vocab, hidden]
        self.padding_idx, self.rows, self.batch_dim = mods[0].padding_idx, rows, batch_dim

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        k, vocab, hidden = self.weight.shape
        d = self.batch_dim
        table = self.weight.view(k * vocab, hidden)
        if ids.shape[d] != k * self.rows.per_member:  # one row of ids for every row (BERT's position ids)
            out = F.embedding(ids + vocab * torch.arange(k, device=ids.device).view((1,) * d + (k,)
                                                                                   + (1,) * (ids.dim() - d - 1)),
                              table)  # [.., k, ..., hidden]
            out = out.unsqueeze(d + 1).expand(*out.shape[:d + 1], self.rows.per_member, *out.shape[d + 1:])
            return out.reshape(*ids.shape[:d], k * self.rows.per_member, *ids.shape[d + 1:], hidden)
        offsets = vocab * torch.arange(k, device=ids.device).repeat_interleave(ids.shape[d] // k)
        return F.embedding(ids + offsets.view((1,) * d + (-1,) + (1,) * (ids.dim() - d - 1)), table)


class GroupedXLNetAttention(nn.Module):
    """transformers' XLNetRelativeAttention (content stream only: sequence classification, no memory, no target
    mapping) with each member's projections, biases and segment embeddings. Tensors are [length, k*B, ...]."""

    RAW = ("q", "k", "v", "o", "r", "r_r_bias", "r_s_bias", "r_w_bias", "seg_embed")

    def __init__(self, mods: list, rows: _Rows, masks: _Masks):
        super().__init__()
        first = mods[0]
        for name in self.RAW:
            setattr(self, name, nn.Parameter(torch.stack([getattr(m, name).detach() for m in mods])))
        self.layer_norm = GroupedLayerNorm([m.layer_norm for m in mods], batch_dim=1)
        self.dropout = GroupedDropout(first.dropout.p, masks)
        self.scale, self.rel_shift_bnij = first.scale, first.rel_shift_bnij
        self.rows = rows

    def _heads(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [i, kB, h] x [k, h, n, d] -> [i, kB, n, d]
        k = w.shape[0]
        return torch.einsum("ikbh,khnd->ikbnd", _split(x, k, 1), w).flatten(1, 2)

    def _per_row(self, p: torch.Tensor) -> torch.Tensor:  # [k, ...] -> [k*B, ...]
        return p.repeat_interleave(self.rows.per_member, dim=0)

    def forward(self, h, g, attn_mask_h, attn_mask_g, r, seg_mat, mems=None, target_mapping=None,
                output_attentions=False, **_):
        if g is not None or (mems is not None and mems.dim() > 1) or output_attentions:
            raise NotImplementedError("grouped XLNet attention: content stream only (no g, mems or attentions)")
        q, k_h, v_h = self._heads(h, self.q), self._heads(h, self.k), self._heads(h, self.v)
        k_r = self._heads(r.type(self.r.dtype), self.r)
        ac = torch.einsum("ibnd,jbnd->bnij", q + self._per_row(self.r_w_bias), k_h)
        bd = self.rel_shift_bnij(torch.einsum("ibnd,jbnd->bnij", q + self._per_row(self.r_r_bias), k_r),
                                 klen=ac.shape[3])
        score = ac + bd
        if seg_mat is not None:
            ef = torch.einsum("ibnd,bsnd->ibns", q + self._per_row(self.r_s_bias), self._per_row(self.seg_embed))
            score = score + torch.einsum("ijbs,ibns->bnij", seg_mat, ef)
        score = score * self.scale
        if attn_mask_h is not None:
            big = 65500 if attn_mask_h.dtype == torch.float16 else 1e30
            score = score - big * torch.einsum("ijbn->bnij", attn_mask_h)
        prob = self.dropout(F.softmax(score, dim=3))
        vec = torch.einsum("bnij,jbnd->ibnd", prob, v_h)
        kk = self.o.shape[0]
        out = torch.einsum("ikbnd,khnd->ikbh", _split(vec, kk, 1), self.o).flatten(1, 2)
        return self.layer_norm(self.dropout(out) + h), None


def _batch_dim(family: str, name: str) -> int:
    """Where the batch is in the inputs of module `name`: XLNet's encoder works on [length, batch, hidden]."""
    return 1 if family == "xlnet" and name.startswith(("transformer.layer.", "transformer.word_embedding")) else 0


class GroupedModel(nn.Module):
    """The grouped copy of k models (see the module docstring); call it with a batch of k x B rows, member-major."""

    def __init__(self, models: list, family: str, seed: int = 0):
        super().__init__()
        from transformers.models.xlnet.modeling_xlnet import XLNetRelativeAttention

        self.k = len(models)
        rows = self._rows = _Rows()
        masks = _Masks(seed)
        model = copy.deepcopy(models[0])
        kinds = (nn.Linear, nn.LayerNorm, nn.Embedding, XLNetRelativeAttention)
        names = [n for n, m in model.named_modules() if isinstance(m, kinds)]
        replaced = set()
        for name in names:
            if any(name.startswith(r + ".") for r in replaced):
                continue  # inside a replaced attention block
            mods = [m.get_submodule(name) for m in models]
            d = _batch_dim(family, name)
            first = mods[0]
            if isinstance(first, XLNetRelativeAttention):
                new = GroupedXLNetAttention(mods, rows, masks)
            elif isinstance(first, nn.Linear):
                new = GroupedLinear(mods, d)
            elif isinstance(first, nn.LayerNorm):
                new = GroupedLayerNorm(mods, d)
            else:
                new = GroupedEmbedding(mods, rows, d)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)
            replaced.add(name)
        for name, mod in list(model.named_modules()):
            if isinstance(mod, nn.Dropout):
                parent, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, leaf, GroupedDropout(mod.p, masks))
        if getattr(getattr(model, "config", None), "_attn_implementation", None) == "sdpa":
            _register_attention()
            model.config._attn_implementation = ATTENTION
        for name, p in model.named_parameters():
            owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            if not isinstance(owner, (GroupedLinear, GroupedLayerNorm, GroupedEmbedding, GroupedXLNetAttention)):
                if p.requires_grad and name != "transformer.mask_emb":  # XLNet's mask_emb: target mapping only
                    raise NotImplementedError(f"grouped {family}: parameter {name!r} has no grouped module")
                p.requires_grad_(False)
        self.model = model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]

    def forward(self, input_ids, **kwargs):
        self._rows.per_member = input_ids.shape[0] // self.k
        return self.model(input_ids=input_ids, **kwargs)

    def stacked(self) -> dict:
        """Parameter name (as in each member) -> the members' stacked tensor [k, ...]."""
        params = dict(self.model.named_parameters())
        return {n: params[n] for n in self.names}


def group(models: list, family: str, seed: int = 0) -> GroupedModel:
    """The grouped copy of `models`; `seed` seeds its dropout stream (on CPU)."""
    return GroupedModel(models, family, seed)
