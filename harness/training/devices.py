"""Device placement per pytest-xdist worker, and what a record says about the device it ran on.

The root conftest.py calls `pin_worker_device()` before anything imports torch, so this module imports torch
only inside the functions that need it.
"""
from __future__ import annotations

import logging
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
    """I of the xdist worker gwI running this process; None outside xdist workers."""
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
    """Worker gwI sees only GPU (I mod G); the parent process and CPU-only machines are left alone."""
    device = assign_device(env)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask a scheduler such as Slurm sets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(fixed: int | None, cores: int, env=os.environ) -> int:
    """Torch threads for this process: the profile's fixed count (tiny fixes 1 for determinism), else the cores
    split among the xdist workers (PYTEST_XDIST_WORKER_COUNT, 1 without xdist), at least 1."""
    if fixed:
        return fixed
    workers = int(env.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    return max(1, cores // max(1, workers))


def default_device() -> str:
    """The first GPU this process sees (its own one under xdist), else the CPU; TRANSFER_BENCH_DEVICE overrides."""
    import torch

    return os.environ.get("TRANSFER_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "fp32", "bf16")
PRECISION_ENV = "TRANSFER_BENCH_PRECISION"  # what `--precision` sets; workers and subprocesses inherit it


def requested_precision(env=os.environ) -> str:
    """The precision asked for (`--precision`, through TRANSFER_BENCH_PRECISION): auto, fp32 or bf16.
    ValueError for anything else."""
    value = (env.get(PRECISION_ENV) or "auto").strip().lower() or "auto"
    if value not in PRECISIONS:
        raise ValueError(f"--precision {value!r} ({PRECISION_ENV}): expected one of {', '.join(PRECISIONS)}")
    return value


def set_precision(value: str, env=os.environ):
    """Check `value` (`--precision`) and set it in `env`, which the training code reads and xdist workers inherit;
    returns a function that puts back what `env` held before. ValueError for an unknown value."""
    requested_precision({PRECISION_ENV: value})
    before = env.get(PRECISION_ENV)
    env[PRECISION_ENV] = value.strip().lower()

    def restore():
        if before is None:
            env.pop(PRECISION_ENV, None)
        else:
            env[PRECISION_ENV] = before
    return restore


def checked_precision(device: str) -> str:
    """precision(device), with a warning where bf16 is asked for on a CPU that only emulates it."""
    arithmetic = precision(device)
    if arithmetic == "bf16" and not str(device).startswith("cuda") and not cpu_has_bf16():
        logging.getLogger("harness").warning("--precision bf16 on a CPU without AMX or AVX512-BF16 (%s): emulated, "
                                             "slower than fp32", cpu_name())
    return arithmetic


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU computes bf16 natively (AMX or AVX512-BF16 in its flags), where bf16 autocast pays off;
    elsewhere bf16 on the CPU is emulated and slower than fp32. False when the flags cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def precision(device: str, env=os.environ) -> str:
    """The arithmetic of training and prediction on `device`: `--precision` when set; `auto` (the default):
    `bf16` autocast on CUDA with bf16 support, else `fp32` (the CPU's default: the same numbers every run,
    and on any CPU). `bf16` on a GPU without bf16 support raises ValueError."""
    import torch

    wanted = requested_precision(env)
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    if wanted == "fp32":
        return "fp32"
    if wanted == "bf16":
        if cuda and not torch.cuda.is_bf16_supported():
            raise ValueError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                             f"use --precision fp32 or auto")
        return "bf16"
    return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"


def cpu_name() -> str:
    """The CPU model (`model name` in /proc/cpuinfo on Linux), else what `platform` knows."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
