"""Float32 matmul / convolution precision on CUDA for one call: IEEE float32 or TF32.

Its own module because both the strategy vocabulary and the fused kernel's backward need it (the
backward runs after the forward's call has returned, so it sets the forward's precision again).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """On CUDA, pin float32 matmul/conv precision to TF32 (``"tf32"``) or IEEE (anything else) for the
    block; a no-op elsewhere. (cuDNN convolutions default to TF32 on recent GPUs, so IEEE must be
    asked for explicitly.)"""
    if device.type != "cuda":
        yield
        return
    mm, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    want = "tf32" if precision == "tf32" else "ieee"
    if hasattr(mm, "fp32_precision") and hasattr(conv, "fp32_precision"):
        old = (mm.fp32_precision, conv.fp32_precision)
        mm.fp32_precision = conv.fp32_precision = want
        try:
            yield
        finally:
            mm.fp32_precision, conv.fp32_precision = old
        return
    old_flags = (mm.allow_tf32, torch.backends.cudnn.allow_tf32)  # torch before the fp32_precision API
    mm.allow_tf32 = torch.backends.cudnn.allow_tf32 = want == "tf32"
    try:
        yield
    finally:
        mm.allow_tf32, torch.backends.cudnn.allow_tf32 = old_flags
