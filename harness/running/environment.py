"""The record's `env` block: library versions, commit and where the cell ran (device, its name, precision,
batch widths, SDPA backends, xdist worker, visible GPUs), built in one place."""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

from harness.training import attention, buckets
from harness.training.devices import cpu_name, precision


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def env_info(device: str) -> dict:
    import datasets
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "datasets": datasets.__version__, "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(), "git_commit": git_commit(), **device_info(device)}


def model_build(row) -> dict:
    """A model row built on first use (ModelConfig.build, harness.training.e5): what its folder was converted from
    and the sha256 of that file and of every file written (the folder's build.json); nothing for other rows."""
    if not row.build:
        return {}
    return {"model_build": json.loads((Path(row.source) / "build.json").read_text(encoding="utf-8"))}


def device_info(device: str) -> dict:
    """What a record notes about where it ran: device, its name, precision, batch widths (shape buckets), SDPA
    backends, worker and visible GPUs."""
    import torch

    name = torch.cuda.get_device_name(torch.device(device)) if str(device).startswith("cuda") else cpu_name()
    return {"device": str(device), "device_name": name, "precision": precision(device),
            "batch_widths": buckets.for_device(device, None).describe(), "sdpa_backends": attention.describe(device),
            "xdist_worker": os.environ.get("PYTEST_XDIST_WORKER"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
