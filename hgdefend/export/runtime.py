"""Running an exported ensemble file: the file format, integrity checks and the onnxruntime detector.

This is all ``hgdefend detect`` needs. Files carry hgdefend metadata (format, library version,
source model SHA-256, K, seed, score, threshold, target FPR, input shape and range, class labels)
plus a SHA-256 of the serialised graph (:func:`graph_sha256`), so a file altered after export is
refused on load. This module's own top-level imports are numpy and the torch-free
:mod:`hgdefend.errors` / :mod:`hgdefend.vocab`; onnx, onnxruntime and torch are imported where used.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HgdefendError
from ..vocab import SCORES

FORMAT = "hgdefend-onnx"
FORMAT_VERSION = 1
INPUT_NAME = "x"
SCORE_OUTPUTS = tuple(f"score_{s}" for s in SCORES)
OUTPUTS = ("member_logits", "probabilities", "predicted_class", *SCORE_OUTPUTS, "is_adversarial")
"""Graph outputs: member logits ``[K, B, C]``, mean member probabilities ``[B, C]``, predicted class
``[B]`` (int64, an index into the model's classes), one ``[B]`` float32 per detector score (higher =
more suspicious) and ``is_adversarial`` ``[B]`` bool (``score > threshold``) when a threshold is set."""
OUTPUT_DESCRIPTIONS = {
    "member_logits": "[K, B, C] float32 logits of each sampled network",
    "probabilities": "[B, C] float32 mean of member softmax probabilities (the ensemble prediction)",
    "predicted_class": "[B] int64 argmax of probabilities (index into class_labels)",
    "score_entropy": "[B] float32 predictive entropy H[mean p] (the paper's score)",
    "score_mutual_information": "[B] float32 H[mean p] - mean H[p]: member disagreement",
    "score_max_prob": "[B] float32 1 - max mean probability",
    "score_variance": "[B] float32 summed variance of member probabilities",
    "is_adversarial": "[B] bool: the chosen score exceeds the baked-in threshold",
}


class OnnxFileError(HgdefendError):
    """An ONNX file that is missing, corrupt, altered, or not written by ``hgdefend export``."""


def graph_sha256(model: Any) -> str:
    """Digest of the graph (nodes + weights), excluding the model-level metadata that stores it."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def load_inputs(path: str | os.PathLike, name: str = "input") -> np.ndarray:
    """An array from ``.npy`` or ``.npz`` (key ``x``, or its only array). Never unpickles."""
    p = Path(path)
    if not p.is_file():
        raise HgdefendError(f"{name}: file {str(p)!r} does not exist")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                if "x" in f.files:
                    return f["x"]
                if len(f.files) == 1:
                    return f[f.files[0]]
                raise HgdefendError(
                    f"{name}: {str(p)!r} must hold an array 'x' (or one array), has {f.files}"
                )
    except HgdefendError:
        raise
    except (OSError, ValueError) as exc:
        raise HgdefendError(f"{name}: cannot read {str(p)!r} as a numpy array ({exc})") from exc
    raise HgdefendError(f"{name}: expected a .npy or .npz file, got {str(p)!r}")


# --------------------------------------------------------------------------- running
def _providers(device: str) -> list[str]:
    import onnxruntime as ort
    import torch

    available = ort.get_available_providers()
    # onnxruntime-gpu lists the CUDA provider even on machines without a GPU; ask torch too.
    has_cuda = "CUDAExecutionProvider" in available and torch.cuda.is_available()
    if device == "auto":
        return (["CUDAExecutionProvider"] if has_cuda else []) + ["CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if not has_cuda:
            raise HgdefendError("device: 'cuda' requested but onnxruntime has no usable CUDA provider here")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise HgdefendError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The hgdefend metadata of an exported file, after format and integrity checks."""
    return _load_checked(path)[1]


def _load_checked(path: str | os.PathLike) -> tuple[bytes, dict[str, str]]:
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise OnnxFileError(f"onnx: file {str(p)!r} does not exist")
    data = p.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxFileError(
            f"onnx: {str(p)!r} is not a readable ONNX file (corrupt or truncated: {exc})"
        ) from exc
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if meta.get("hgdefend_format") != FORMAT:
        raise OnnxFileError(
            f"onnx: {str(p)!r} has no hgdefend metadata (hgdefend_format={meta.get('hgdefend_format')!r}); "
            "only files written by `hgdefend export` / export_onnx can be run here"
        )
    if meta.get("hgdefend_format_version") != str(FORMAT_VERSION):
        raise OnnxFileError(
            f"onnx: {str(p)!r} has hgdefend format version {meta.get('hgdefend_format_version')!r}; "
            f"this hgdefend reads {FORMAT_VERSION}"
        )
    if meta.get("graph_sha256") != graph_sha256(model):
        raise OnnxFileError(
            f"onnx: {str(p)!r} failed its integrity check (the graph does not match the SHA-256 "
            "recorded at export): the file was altered or damaged"
        )
    required = ("members", "input_shape", "input_range", "num_classes", "score", "threshold", "outputs")
    missing = [key for key in required if key not in meta]
    if missing:
        raise OnnxFileError(f"onnx: {str(p)!r} has incomplete hgdefend metadata (missing {missing})")
    return data, meta


class OnnxDetector:
    """An exported ensemble run with onnxruntime: ``run(x)`` returns every output as numpy arrays.

    Inputs are checked against the file's metadata (shape, floating dtype, finite values, range)
    before onnxruntime sees them. ``device``: 'auto' (CUDA provider when usable, else CPU), 'cpu',
    'cuda'. ``threads``: onnxruntime intra-op threads (default: its own choice).
    """

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", threads: int | None = None) -> None:
        import onnxruntime as ort

        from ..validation import check_k

        data, meta = _load_checked(path)
        self.path = str(path)
        self.metadata = meta
        self.k = int(meta["members"])
        self.input_shape = tuple(json.loads(meta["input_shape"]))
        self.value_range = tuple(json.loads(meta["input_range"]))
        self.num_classes = int(meta["num_classes"])
        self.class_labels = json.loads(meta.get("class_labels") or "null") or list(range(self.num_classes))
        self.score = meta["score"]
        self.threshold = float(meta["threshold"]) if meta["threshold"] else None
        self.target_fpr = float(meta["target_fpr"]) if meta.get("target_fpr") else None
        self.outputs = json.loads(meta["outputs"])
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = check_k(threads, "threads")
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, opts, providers=_providers(device))
        except HgdefendError:
            raise
        except Exception as exc:  # onnxruntime's own error types
            raise OnnxFileError(f"onnx: onnxruntime cannot load {self.path!r}: {exc}") from exc
        self.providers = self.session.get_providers()
        names = [o.name for o in self.session.get_outputs()]
        inputs = self.session.get_inputs()
        if names != self.outputs or len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise OnnxFileError(
                f"onnx: {self.path!r} graph inputs/outputs do not match its hgdefend metadata"
            )

    def check_inputs(self, x: object, name: str = "x") -> np.ndarray:
        """float32 ``[B, *input_shape]``, finite, in the input range — else a clear HgdefendError."""
        from ..validation import as_inputs

        return as_inputs(x, self.input_shape, name=name, value_range=self.value_range).numpy()

    def run(self, x: object, *, batch_size: int = 256) -> dict[str, np.ndarray]:
        """All graph outputs for ``x``, evaluated in batches of ``batch_size``."""
        from ..validation import check_k

        arr = self.check_inputs(x)
        batch_size = check_k(batch_size, "batch_size")
        parts = [
            self.session.run(None, {INPUT_NAME: arr[i : i + batch_size]})
            for i in range(0, len(arr), batch_size)
        ]
        out = {}
        for j, name in enumerate(self.outputs):
            axis = 1 if name == "member_logits" else 0
            out[name] = parts[0][j] if len(parts) == 1 else np.concatenate([p[j] for p in parts], axis=axis)
        return out

    def flag(self, x: object) -> np.ndarray:
        """``is_adversarial`` for ``x`` (needs a file exported with a threshold); named like
        :meth:`hgdefend.detectors.ScoreDetector.flag`, True = flagged."""
        if self.threshold is None:
            raise HgdefendError(
                f"onnx: {self.path!r} was exported without a threshold; re-export with --threshold-from"
            )
        return self.run(x)["is_adversarial"]

    def records(self, x: object, *, batch_size: int = 256) -> list[dict[str, Any]]:
        """One dict per input: class index and label, mean probabilities, scores, flag."""
        out = self.run(x, batch_size=batch_size)
        rows = []
        for i in range(len(out["predicted_class"])):
            c = int(out["predicted_class"][i])
            row: dict[str, Any] = {
                "index": i,
                "predicted_class": c,
                "label": self.class_labels[c],
                "probability": float(out["probabilities"][i, c]),
                **{s: float(out[f"score_{s}"][i]) for s in SCORES},
                "is_adversarial": bool(out["is_adversarial"][i]) if "is_adversarial" in out else None,
            }
            rows.append(row)
        return rows

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "providers": self.providers, "metadata": self.metadata}


def run_onnx(
    path: str | os.PathLike,
    x: object,
    *,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """One-shot: load an exported ensemble and return all its outputs for ``x``."""
    return OnnxDetector(path, device=device, threads=threads).run(x, batch_size=batch_size)
