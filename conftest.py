"""Root conftest: runs before torch is imported by any test module.

Pins each pytest-xdist worker to one device: worker gwI sees GPU (I mod G) of the G GPUs this process may
use (indexing into a CUDA_VISIBLE_DEVICES list the user already set). Must happen before CUDA initialises.
"""
from harness.training.devices import pin_worker_device

pin_worker_device()
