"""Helpers every benchmark script shares (imported as a sibling module: run scripts from any folder
with ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import platform

import torch


def device_name(dev: torch.device) -> str:
    """The GPU's name, or the CPU with the torch thread count (timings depend on both)."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} torch threads)"


def sync(dev: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are real (no-op on CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
