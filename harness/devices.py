"""Device placement per pytest-xdist worker (imported by the root conftest before torch touches CUDA)."""
from __future__ import annotations

import os
import re
import subprocess


def visible_gpus(env=os.environ) -> list[str]:
    """The GPUs this process may use: the user's CUDA_VISIBLE_DEVICES list, else what nvidia-smi lists."""
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [x.strip() for x in listed.split(",") if x.strip() and x.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


def worker_index(env=os.environ) -> int | None:
    match = re.fullmatch(r"gw(\d+)", env.get("PYTEST_XDIST_WORKER", ""))
    return int(match.group(1)) if match else None


def assign_device(env=os.environ) -> str | None:
    """The CUDA_VISIBLE_DEVICES value for this worker (one GPU), or None to leave the environment as it is."""
    index = worker_index(env)
    gpus = visible_gpus(env)
    if index is None or not gpus:
        return None
    return gpus[index % len(gpus)]


def pin_worker_device(env=os.environ) -> None:
    device = assign_device(env)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
