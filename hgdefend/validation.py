"""Checks at the public boundary: every error names the argument and what was expected."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .errors import HgdefendError

__all__ = ["HgdefendError", "as_inputs", "as_labels", "check_fraction", "check_k"]


def as_inputs(
    x: object,
    input_shape: Sequence[int],
    *,
    name: str = "x",
    value_range: tuple[float, float] | None = (0.0, 1.0),
    device: torch.device | str | None = None,
) -> Tensor:
    """Return ``x`` as a float32 tensor ``[B, *input_shape]`` after checking it.

    Accepts numpy arrays and tensors of a floating dtype. Integer images are rejected rather than
    silently rescaled: whether 255 means 1.0 is the caller's decision.
    """
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise HgdefendError(
                f"{name}: expected floating-point values in {_fmt_range(value_range)}, "
                f"got dtype {x.dtype} (scale integer images yourself, e.g. x / 255)"
            )
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    elif isinstance(x, Tensor):
        if not x.is_floating_point():
            raise HgdefendError(
                f"{name}: expected a floating-point tensor in {_fmt_range(value_range)}, got dtype {x.dtype}"
            )
        t = x.float() if x.dtype != torch.float32 else x
    else:
        raise HgdefendError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    shape = tuple(int(s) for s in input_shape)
    if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
        raise HgdefendError(f"{name}: expected shape [B, {', '.join(map(str, shape))}], got {list(t.shape)}")
    if t.shape[0] == 0:
        raise HgdefendError(f"{name}: is empty (batch size 0)")
    if not bool(torch.isfinite(t).all()):
        raise HgdefendError(f"{name}: contains NaN or infinite values")
    if value_range is not None:
        lo, hi = value_range
        tmin, tmax = float(t.min()), float(t.max())
        if tmin < lo - 1e-6 or tmax > hi + 1e-6:
            raise HgdefendError(
                f"{name}: values must lie in {_fmt_range(value_range)}, got min {tmin:.4g}, max {tmax:.4g}"
            )
    if device is not None:
        t = t.to(device)
    return t


def as_labels(y: object, n: int, num_classes: int, *, name: str = "y") -> Tensor:
    """Integer class labels ``[n]`` in ``[0, num_classes)`` as an int64 tensor."""
    arr = y.detach().cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == num_classes and arr.shape[0] == n:
        raise HgdefendError(f"{name}: expected integer class indices of shape [{n}], got one-hot")
    if arr.ndim != 1 or arr.shape[0] != n:
        raise HgdefendError(f"{name}: expected shape [{n}], got {list(arr.shape)}")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise HgdefendError(f"{name}: expected integer class labels, got non-integer values")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise HgdefendError(f"{name}: expected integer class labels, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise HgdefendError(
            f"{name}: labels must lie in [0, {num_classes - 1}], got min {arr.min()}, max {arr.max()}"
        )
    return torch.as_tensor(arr.astype(np.int64))


def check_k(k: object, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or int(k) < 1:
        raise HgdefendError(f"{name}: ensemble size must be an integer >= 1, got {k!r}")
    return int(k)


def check_fraction(value: float, name: str, *, open_interval: bool = True) -> float:
    v = float(value)
    ok = (0.0 < v < 1.0) if open_interval else (0.0 <= v <= 1.0)
    if not (math.isfinite(v) and ok):
        bounds = "(0, 1)" if open_interval else "[0, 1]"
        raise HgdefendError(f"{name}: expected a value in {bounds}, got {value!r}")
    return v


def _fmt_range(r: tuple[float, float] | None) -> str:
    return "any range" if r is None else f"[{r[0]:g}, {r[1]:g}]"
