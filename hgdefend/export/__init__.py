"""Export a sampled ensemble to ONNX and run exported files.

* :mod:`.graph` — :func:`export_onnx`: freeze K sampled networks and the detector scores into one
  ONNX graph, with hgdefend metadata.
* :mod:`.parity` — :func:`check_parity`: onnxruntime against the torch ensemble before a file is kept.
* :mod:`.runtime` — :class:`OnnxDetector` / :func:`run_onnx`: run an exported file (what
  ``hgdefend detect`` needs, with numpy and onnxruntime only), on the CPU or a GPU.
* :mod:`.fileformat` — the file format: output names, required metadata, the integrity digest
  (:func:`content_sha256`), reading a file (:func:`read_metadata`) and SHA-256 pinning.
* :mod:`.inputs` — inputs and labels checked with numpy (:func:`load_inputs`), and a run's counts
  and rates (:func:`label_summary`).

The names below are imported on first use, so ``import hgdefend.export`` loads none of these
modules (running a file does not need the exporter).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fileformat import OUTPUTS, OnnxFileError, content_sha256, file_sha256, read_metadata
    from .graph import EXPORT_KERNELS, EnsembleGraph, ExportResult, export_onnx
    from .inputs import label_summary, load_inputs
    from .parity import ParityError, check_parity
    from .runtime import OnnxDetector, run_onnx

_MODULE_OF = {
    "EXPORT_KERNELS": "graph",
    "EnsembleGraph": "graph",
    "ExportResult": "graph",
    "export_onnx": "graph",
    "ParityError": "parity",
    "check_parity": "parity",
    "OUTPUTS": "fileformat",
    "OnnxFileError": "fileformat",
    "content_sha256": "fileformat",
    "file_sha256": "fileformat",
    "read_metadata": "fileformat",
    "label_summary": "inputs",
    "load_inputs": "inputs",
    "OnnxDetector": "runtime",
    "run_onnx": "runtime",
}

__all__ = [
    "EXPORT_KERNELS",
    "OUTPUTS",
    "EnsembleGraph",
    "ExportResult",
    "OnnxDetector",
    "OnnxFileError",
    "ParityError",
    "check_parity",
    "content_sha256",
    "export_onnx",
    "file_sha256",
    "label_summary",
    "load_inputs",
    "read_metadata",
    "run_onnx",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
