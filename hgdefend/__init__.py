"""hgdefend: detect adversarial and out-of-distribution inputs with HyperGAN-sampled ensembles.

Data flows one way: data → HyperGAN → sampled ensemble → scores → detector → report / export.

The public names below are loaded on first use (PEP 562), so ``import hgdefend`` — and with it
``hgdefend --help`` — does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import HgdefendError

__version__ = "0.1.0"

_LAZY = {
    "DataSplits": ".data",
    "Split": ".data",
    "load_data": ".data",
    "SampledEnsemble": ".ensemble",
    "diversity": ".ensemble",
    "HyperGAN": ".hypergan",
    "load_model": ".io",
    "save_model": ".io",
    "ModuleTarget": ".targets",
    "TargetSpec": ".targets",
    "TrainConfig": ".training",
    "Trainer": ".training",
}
"""Public name → the module that defines it."""

__all__ = [
    "DataSplits",
    "HgdefendError",
    "HyperGAN",
    "ModuleTarget",
    "SampledEnsemble",
    "Split",
    "TargetSpec",
    "TrainConfig",
    "Trainer",
    "__version__",
    "diversity",
    "load_data",
    "load_model",
    "save_model",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
