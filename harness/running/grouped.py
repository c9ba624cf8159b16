"""k models of one architecture as one model: the members folded into the batch (issue 22: seeds trained together).

`group(models, family)` copies the first model and replaces each module that holds parameters by a grouped one
whose parameters are the members' stacked on a new first dimension (member m's weights at index m):
- nn.Linear -> GroupedLinear: one batched matmul (baddbmm) over the members;
- nn.LayerNorm -> GroupedLayerNorm: the shared normalisation, then each member's scale and shift;
- nn.Embedding -> GroupedEmbedding: one lookup in the members' tables laid end to end;
- XLNet's relative attention (raw parameters used in einsums) -> GroupedXLNetAttention.
Every other operation of the transformers model (attention, softmax, activations, dropout, masks, reshapes) acts
on each row of the batch alone, so it runs unchanged on a batch of k x B rows whose first B rows belong to member 0,
the next B to member 1, and so on. Where a family's layers keep the batch on dimension 1 (XLNet: [length, batch,
hidden]), the grouped modules are told so (`batch_dim`).

Compared with vmap over functional_call (torch.func), this does the same arithmetic in about as many kernel calls
as one model, with no batching-rule overhead (bench/test_speed.py::test_ensemble_speed measures the gain).
"""
from __future__ import annotations

import copy

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

    def __init__(self, mods: list, rows: _Rows):
        super().__init__()
        first = mods[0]
        for name in self.RAW:
            setattr(self, name, nn.Parameter(torch.stack([getattr(m, name).detach() for m in mods])))
        self.layer_norm = GroupedLayerNorm([m.layer_norm for m in mods], batch_dim=1)
        self.dropout = copy.deepcopy(first.dropout)
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

    def __init__(self, models: list, family: str):
        super().__init__()
        from transformers.models.xlnet.modeling_xlnet import XLNetRelativeAttention

        self.k = len(models)
        rows = self._rows = _Rows()
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
                new = GroupedXLNetAttention(mods, rows)
            elif isinstance(first, nn.Linear):
                new = GroupedLinear(mods, d)
            elif isinstance(first, nn.LayerNorm):
                new = GroupedLayerNorm(mods, d)
            else:
                new = GroupedEmbedding(mods, rows, d)
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)
            replaced.add(name)
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


def group(models: list, family: str) -> GroupedModel:
    return GroupedModel(models, family)
