"""Running an exported ensemble file: devices and the onnxruntime detector.

This is all ``hgdefend detect`` needs, and it needs only numpy and onnxruntime: the file is read
and checked by :mod:`.fileformat` (its own protobuf reader, no ``onnx`` package), inputs and labels
by :mod:`.inputs` (numpy, no torch), and a GPU is found without asking torch. Its imports beyond
those two are the dependency-free :mod:`hgdefend.errors` and :mod:`hgdefend.vocab`.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import HgdefendError
from ..vocab import SCORES
from .fileformat import DIGEST_KEY, INPUT_NAME, OnnxFileError, read_file
from .inputs import check_array, check_labels, label_summary

# --------------------------------------------------------------------------- devices
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def _parse_device(device: object) -> tuple[str, int]:
    text = str(device).strip().lower() if isinstance(device, str) else ""
    if text in ("auto", "cpu", "cuda"):
        return text, 0
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise HgdefendError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _gpu_present() -> bool:
    """Whether an NVIDIA GPU is visible, asked without torch (Linux: its device nodes)."""
    if sys.platform.startswith("linux"):
        return bool(glob.glob("/dev/nvidia[0-9]*"))
    return True  # elsewhere let onnxruntime try (it falls back to the CPU on its own)


def _providers(kind: str, device_id: int) -> list[Any]:
    import onnxruntime as ort

    has_provider = CUDA_PROVIDER in ort.get_available_providers()
    if kind == "cuda":
        if not has_provider:
            raise HgdefendError(
                "device: 'cuda' requested but this onnxruntime has no CUDA provider (install onnxruntime-gpu)"
            )
        if not _gpu_present():
            raise HgdefendError("device: 'cuda' requested but no NVIDIA GPU is visible on this machine")
    if kind == "cuda" or (kind == "auto" and has_provider and _gpu_present()):
        return [(CUDA_PROVIDER, {"device_id": device_id}), CPU_PROVIDER]
    return [CPU_PROVIDER]


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise HgdefendError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


class OnnxDetector:
    """An exported ensemble run with onnxruntime: ``run(x)`` returns every output as numpy arrays.

    The file is checked on load: ``expected_sha256`` (the file's SHA-256, e.g. published with it)
    pins the exact bytes; the hgdefend format, the metadata and the ``content_sha256`` digest over
    graph and metadata are always checked. Inputs are checked against the metadata (shape, floating
    dtype; with ``invalid="error"``, the default, also finite values inside the range) before
    onnxruntime sees them. ``device``: 'auto' (CUDA provider when usable, else CPU), 'cpu', 'cuda',
    'cuda:N' ('cuda' raises when onnxruntime cannot run on a GPU here). ``io_binding`` (default: on
    for CUDA) binds the input and outputs to the device with onnxruntime's I/O binding, so each batch
    crosses to the GPU once and the outputs are allocated there. ``threads``: onnxruntime intra-op
    threads (default: its own choice).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        threads: int | None = None,
        expected_sha256: str | None = None,
        io_binding: bool | None = None,
    ) -> None:
        import onnxruntime as ort

        kind, device_id = _parse_device(device)
        if threads is not None:
            threads = _positive_int(threads, "threads")
        data, meta, sha = read_file(path, expected_sha256)
        self.path = str(path)
        self.sha256 = sha
        self.content_sha256 = meta[DIGEST_KEY]
        self.metadata = meta
        try:
            self.k = int(meta["members"])
            self.seed = int(meta["seed"]) if meta.get("seed") else None
            self.input_shape = tuple(int(s) for s in json.loads(meta["input_shape"]))
            self.value_range = tuple(float(v) for v in json.loads(meta["input_range"]))
            self.num_classes = int(meta["num_classes"])
            labels = json.loads(meta.get("class_labels") or "null")
            self.class_labels = [int(c) for c in labels] if labels else list(range(self.num_classes))
            self.score = meta["score"]
            self.threshold = float(meta["threshold"]) if meta["threshold"] else None
            self.target_fpr = float(meta["target_fpr"]) if meta.get("target_fpr") else None
            self.outputs = list(json.loads(meta["outputs"]))
        except (ValueError, TypeError) as exc:
            raise OnnxFileError(f"onnx: {self.path!r} has malformed hgdefend metadata ({exc})") from exc
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, opts, providers=_providers(kind, device_id))
        except HgdefendError:
            raise
        except Exception as exc:  # onnxruntime's own error types
            raise OnnxFileError(f"onnx: onnxruntime cannot load {self.path!r}: {exc}") from exc
        self.providers = self.session.get_providers()
        on_gpu = self.providers[0] == CUDA_PROVIDER
        if kind == "cuda" and not on_gpu:
            raise HgdefendError(
                "device: 'cuda' requested but onnxruntime could not start its CUDA provider "
                "(CUDA / cuDNN libraries missing or not matching this onnxruntime build)"
            )
        self.device = f"cuda:{device_id}" if on_gpu else "cpu"
        self.io_binding = on_gpu if io_binding is None else bool(io_binding)
        names = [o.name for o in self.session.get_outputs()]
        inputs = self.session.get_inputs()
        if names != self.outputs or len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise OnnxFileError(
                f"onnx: {self.path!r} graph inputs/outputs do not match its hgdefend metadata"
            )

    def check_inputs(self, x: object, name: str = "x", *, invalid: str = "error") -> np.ndarray:
        """float32 ``[B, *input_shape]`` (and, with ``invalid="error"``, finite and in the input
        range) — else a clear :class:`HgdefendError`."""
        return check_array(x, self.input_shape, self.value_range, name=name, invalid=invalid)

    def _run_batch(self, arr: np.ndarray) -> list[np.ndarray]:
        if not self.io_binding:
            return self.session.run(None, {INPUT_NAME: arr})
        import onnxruntime as ort

        kind, _, index = self.device.partition(":")
        device_id = int(index or 0)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(arr, kind, device_id))
        for name in self.outputs:
            binding.bind_output(name, kind, device_id)
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    def run(self, x: object, *, batch_size: int = 256, invalid: str = "error") -> dict[str, np.ndarray]:
        """All graph outputs for ``x``, evaluated in batches of ``batch_size``.

        ``invalid="flag"`` passes NaN, ±inf and out-of-range inputs to the graph, which marks them
        ``input_valid`` false and ``is_adversarial`` true; ``"error"`` (default) refuses them.
        """
        arr = self.check_inputs(x, invalid=invalid)
        batch_size = _positive_int(batch_size, "batch_size")
        parts = [self._run_batch(arr[i : i + batch_size]) for i in range(0, len(arr), batch_size)]
        out = {}
        for j, name in enumerate(self.outputs):
            axis = 1 if name == "member_logits" else 0
            out[name] = parts[0][j] if len(parts) == 1 else np.concatenate([p[j] for p in parts], axis=axis)
        return out

    def flag(self, x: object, *, invalid: str = "error") -> np.ndarray:
        """``is_adversarial`` for ``x`` (needs a file exported with a threshold); named like
        :meth:`hgdefend.detectors.ScoreDetector.flag`, True = flagged."""
        if self.threshold is None:
            raise HgdefendError(
                f"onnx: {self.path!r} was exported without a threshold; re-export with --threshold-from"
            )
        return self.run(x, invalid=invalid)["is_adversarial"]

    def records_from(self, out: Mapping[str, np.ndarray], labels: object = None) -> list[dict[str, Any]]:
        """One dict per input from :meth:`run`'s outputs; with ``labels`` also the true label and
        whether the prediction is correct."""
        n = len(out["predicted_class"])
        y = None if labels is None else check_labels(labels, n)
        rows = []
        for i in range(n):
            c = int(out["predicted_class"][i])
            row: dict[str, Any] = {
                "index": i,
                "predicted_class": c,
                "label": self.class_labels[c],
                "probability": float(out["probabilities"][i, c]),
                **{s: float(out[f"score_{s}"][i]) for s in SCORES},
                "is_adversarial": bool(out["is_adversarial"][i]) if "is_adversarial" in out else None,
                "input_valid": bool(out["input_valid"][i]),
            }
            if y is not None:
                row["true_label"] = int(y[i])
                row["correct"] = bool(self.class_labels[c] == y[i])
            rows.append(row)
        return rows

    def records(
        self, x: object, *, batch_size: int = 256, invalid: str = "error", labels: object = None
    ) -> list[dict[str, Any]]:
        """One dict per input: class index and label, mean probability, scores, flag, validity."""
        return self.records_from(self.run(x, batch_size=batch_size, invalid=invalid), labels)

    def summary(self, out: Mapping[str, np.ndarray], labels: object = None) -> dict[str, Any]:
        """:func:`label_summary` for :meth:`run`'s outputs (accuracy and flag rates with labels)."""
        return label_summary(out, self.class_labels, None if labels is None else check_labels(
            labels, len(out["input_valid"])))  # fmt: skip

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.sha256,
            "content_sha256": self.content_sha256,
            "device": self.device,
            "providers": self.providers,
            "io_binding": self.io_binding,
            "metadata": self.metadata,
        }


def run_onnx(
    path: str | os.PathLike,
    x: object,
    *,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int = 256,
    expected_sha256: str | None = None,
    invalid: str = "error",
) -> dict[str, np.ndarray]:
    """One-shot: load an exported ensemble and return all its outputs for ``x``."""
    det = OnnxDetector(path, device=device, threads=threads, expected_sha256=expected_sha256)
    return det.run(x, batch_size=batch_size, invalid=invalid)
