"""How a checkpoint turns token states into one embedding per text: its pooling, read from the checkpoint.

A sentence-transformers folder declares it (`modules.json` names a `Pooling` module whose `config.json` sets
`pooling_mode_mean_tokens` / `pooling_mode_cls_token`, and maybe a `Normalize` module): all-MiniLM-L6-v2 was
trained with mean pooling, and reading its [CLS] pooler instead throws away what it learnt. Every other
checkpoint (tiny configs, hub ids, plain transformers folders) pools as transformers' sequence-classification
head does: the [CLS] token (`cls`). A model row, `--spec` [models] entry or profile may override it
(`pooling = "cls" | "mean"`, checked in harness/definitions/specfile.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.definitions.config import POOLINGS, ModelConfig

_POOLING_MODULE = "sentence_transformers.models.Pooling"
_NORMALIZE_MODULE = "sentence_transformers.models.Normalize"


class PoolingError(ValueError):
    """A checkpoint whose pooling declaration cannot be read; str() is one line naming the file
    (harness.training.models turns it into a ModelError, the error a cell fails with)."""


def _modules(source: str) -> list | None:
    """The sentence-transformers module list of a local checkpoint folder, or None when it is none."""
    file = Path(source) / "modules.json"
    if not file.is_file():
        return None
    modules = _read(file)
    if not isinstance(modules, list) or not all(isinstance(m, dict) and isinstance(m.get("type"), str)
                                                for m in modules):
        raise PoolingError(f"{file}: cannot read the checkpoint's pooling (expected a list of modules with a 'type')")
    return modules


def _read(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PoolingError(f"{file}: cannot read the checkpoint's pooling config ({type(err).__name__}: {err})") from None


def declared_pooling(source: str) -> str | None:
    """`mean` / `cls` as a sentence-transformers folder declares it; None for any other checkpoint. An unreadable
    or unsupported declaration is a PoolingError naming the file."""
    modules = _modules(source) if source != "tiny" else None
    pooling = next((m for m in modules or [] if m["type"] == _POOLING_MODULE), None)
    if pooling is None:
        return None
    file = Path(source) / str(pooling.get("path", "")) / "config.json"
    config = _read(file)
    modes = [mode for mode, key in (("mean", "pooling_mode_mean_tokens"), ("cls", "pooling_mode_cls_token"))
             if isinstance(config, dict) and config.get(key) is True]
    others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True
              and k not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token")] if isinstance(config, dict) else []
    if len(modes) != 1 or others:
        raise PoolingError(f"{file}: cannot read the checkpoint's pooling: expected exactly one of "
                         f"pooling_mode_mean_tokens / pooling_mode_cls_token true (supported: {', '.join(POOLINGS)})"
                         + (f", got {', '.join(others)}" if others else ""))
    return modes[0]


def checkpoint_pooling(model_config: ModelConfig) -> str:
    """The pooling a model row uses: its `pooling` override, else what the checkpoint declares, else `cls`."""
    if model_config.pooling:
        return model_config.pooling
    return declared_pooling(model_config.source) or "cls"


def normalizes(model_config: ModelConfig) -> bool:
    """Whether the checkpoint's embeddings are L2-normalised after pooling (a sentence-transformers Normalize
    module): the frozen floor's probe reads them as the checkpoint's users do."""
    if model_config.source == "tiny":
        return False
    return any(m["type"] == _NORMALIZE_MODULE for m in _modules(model_config.source) or [])


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, mode: str, cls_last: bool = False) -> torch.Tensor:
    """One embedding per row of `hidden` (batch, tokens, dim): `mean` over the tokens the mask keeps, or the `cls`
    token's state (the first token; the last with `cls_last`, XLNet's left-padded <cls> at the end)."""
    if mode == "cls":
        return hidden[:, -1] if cls_last else hidden[:, 0]
    if mode != "mean":
        raise ValueError(f"unknown pooling {mode!r}; valid: {', '.join(POOLINGS)}")
    if attention_mask is None:
        return hidden.mean(dim=1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def pooled(output, attention_mask: torch.Tensor | None, mode: str, cls_last: bool = False) -> torch.Tensor:
    """The pooled embedding of an encoder's output. `cls` reads what transformers' sequence-classification head
    reads: the pooler's output where the encoder has one (BERT), else the [CLS] token's state (RoBERTa's <s>,
    XLNet's final <cls>); `mean` averages the last hidden states over the mask."""
    pooler = getattr(output, "pooler_output", None)
    if mode == "cls" and pooler is not None:
        return pooler
    return pool(output.last_hidden_state, attention_mask, mode, cls_last)

