"""Random draws made on the CPU and sent to the model's device without stopping the host.

Every draw in training comes from a CPU ``torch.Generator`` seeded by ``(seed, step)``, so a seed
gives the same networks and minibatches on any device. A plain ``tensor.to("cuda")`` from pageable
memory waits for the copy (a host synchronisation per draw, several per training step); copying
from pinned memory with ``non_blocking=True`` lets the host queue the next kernels while the GPU
works. The caching host allocator keeps a pinned block alive until its copy has finished.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """``t`` (on the CPU) on ``device``; asynchronous for CUDA, a no-op for the CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def randn(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    return to_device(torch.randn(tuple(shape), generator=generator), device)


def rand(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, device: torch.device | str
) -> Tensor:
    return to_device(torch.rand(tuple(shape), generator=generator), device)


def randint(high: int, size: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
    """``size`` indices in ``[0, high)``: a minibatch drawn with replacement."""
    return to_device(torch.randint(int(high), (int(size),), generator=generator), device)
