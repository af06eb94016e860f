"""Running an exported ensemble file: the file format, its integrity checks and the onnxruntime detector.

This is all ``hgdefend detect`` needs, and it needs only numpy and onnxruntime: the file's
top-level protobuf fields are read by a small reader here (no ``onnx`` package), inputs and labels
are checked with numpy (no torch), and a GPU is found without asking torch. Its imports beyond
those two are the dependency-free :mod:`hgdefend.errors` and :mod:`hgdefend.vocab`.

Integrity (format version 2): one digest, ``content_sha256`` (:func:`content_sha256`), covers
everything that changes behaviour — every top-level field of the ONNX model (graph, weights,
opsets, functions, ...) byte for byte, and every metadata entry except the digest itself as
canonical JSON. A file whose digest does not match is refused, so is one with a repeated metadata
key. The digest catches accidental and careless changes; whoever can rewrite a file can recompute
it, so the defence against a deliberate edit is pinning the file's own SHA-256
(``expected_sha256=`` / ``hgdefend detect --expected-sha256``), see SECURITY.md.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import HgdefendError
from ..vocab import SCORES

FORMAT = "hgdefend-onnx"
FORMAT_VERSION = 2
"""2: ``input_valid`` output and fail-closed ``is_adversarial``; ``content_sha256`` over graph and
metadata (1 had ``graph_sha256`` over the graph only and is refused)."""
DIGEST_KEY = "content_sha256"
DIGEST_DOMAIN = b"hgdefend-onnx-content\x00v2\x00"
INPUT_NAME = "x"
RANGE_SLACK = 1e-6
"""An input value counts as inside ``input_range`` [lo, hi] when lo - slack <= v <= hi + slack
(the same slack as the library's torch-side input checks); NaN and ±inf never do."""
SCORE_OUTPUTS = tuple(f"score_{s}" for s in SCORES)
OUTPUTS = (
    "member_logits",
    "probabilities",
    "predicted_class",
    *SCORE_OUTPUTS,
    "input_valid",
    "is_adversarial",
)
"""Graph outputs: member logits ``[K, B, C]``, mean member probabilities ``[B, C]``, predicted class
``[B]`` (int64, an index into the model's classes), one ``[B]`` float32 per detector score (higher =
more suspicious), ``input_valid`` ``[B]`` bool (every value finite and inside the input range) and
``is_adversarial`` ``[B]`` bool (``score > threshold`` or an invalid input) when a threshold is set."""
OUTPUT_DESCRIPTIONS = {
    "member_logits": "[K, B, C] float32 logits of each sampled network",
    "probabilities": "[B, C] float32 mean of member softmax probabilities (the ensemble prediction)",
    "predicted_class": "[B] int64 argmax of probabilities (index into class_labels)",
    "score_entropy": "[B] float32 predictive entropy H[mean p] (the paper's score)",
    "score_mutual_information": "[B] float32 H[mean p] - mean H[p]: member disagreement",
    "score_max_prob": "[B] float32 1 - max mean probability",
    "score_variance": "[B] float32 summed variance of member probabilities",
    "input_valid": "[B] bool: every value of the input is finite and inside input_range",
    "is_adversarial": "[B] bool: the chosen score exceeds the threshold, or the input is invalid "
    "(fails closed)",
}
INVALID_MODES = ("error", "flag")
"""What :meth:`OnnxDetector.run` does with NaN, ±inf or out-of-range inputs: raise before
onnxruntime sees them, or let the graph flag them (``input_valid`` false, ``is_adversarial`` true)."""
REQUIRED_METADATA = (
    "members",
    "input_shape",
    "input_range",
    "num_classes",
    "score",
    "threshold",
    "outputs",
)


class OnnxFileError(HgdefendError):
    """An ONNX file that is missing, corrupt, altered, or not written by ``hgdefend export``."""


# --------------------------------------------------------------------------- the file
class _WireError(ValueError):
    pass


_METADATA_FIELD = 14  # ModelProto.metadata_props in onnx.proto (StringStringEntryProto: key 1, value 2)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise _WireError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _WireError("varint longer than 10 bytes")


def _fields(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the field, start of its value, end) for each field."""
    end = len(data) if end is None else end
    pos = start
    while pos < end:
        field_start = pos
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise _WireError(f"field number 0 at byte {field_start}")
        if wire == 0:
            value_start = pos
            _, pos = _varint(data, pos)
        elif wire == 1:
            value_start, pos = pos, pos + 8
        elif wire == 2:
            size, value_start = _varint(data, pos)
            pos = value_start + size
        elif wire == 5:
            value_start, pos = pos, pos + 4
        else:
            raise _WireError(f"unsupported wire type {wire} at byte {field_start}")
        if pos > end:
            raise _WireError(f"field {number} at byte {field_start} runs past the end")
        yield number, wire, field_start, value_start, pos


def _parse(data: bytes) -> tuple[list[tuple[int, int]], list[tuple[str, str]]]:
    """Byte spans of every top-level field except the metadata, and the metadata entries in order."""
    spans: list[tuple[int, int]] = []
    entries: list[tuple[str, str]] = []
    for number, wire, field_start, value_start, end in _fields(data):
        if number != _METADATA_FIELD:
            spans.append((field_start, end))
            continue
        if wire != 2:
            raise _WireError("metadata_props is not a message")
        key = value = ""
        for sub, sub_wire, _, a, b in _fields(data, value_start, end):
            if sub in (1, 2) and sub_wire == 2:
                text = bytes(data[a:b]).decode("utf-8")
                key, value = (text, value) if sub == 1 else (key, text)
        entries.append((key, value))
    if not spans:
        raise _WireError("no model fields")
    return spans, entries


def _digest(data: bytes, spans: Sequence[tuple[int, int]], entries: Sequence[tuple[str, str]]) -> str:
    view = memoryview(data)
    h = hashlib.sha256(DIGEST_DOMAIN)
    h.update(sum(b - a for a, b in spans).to_bytes(8, "big"))
    for a, b in spans:
        h.update(view[a:b])
    meta = {k: v for k, v in entries if k != DIGEST_KEY}
    h.update(json.dumps(meta, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode("ascii"))
    return h.hexdigest()


def content_sha256(data: bytes | str | os.PathLike) -> str:
    """The hgdefend digest of an ONNX file (bytes or a path): SHA-256 over every top-level model
    field except the metadata, byte for byte in file order, then every metadata entry except
    ``content_sha256`` itself as canonical JSON (sorted keys, no spaces, ASCII)."""
    raw = Path(data).read_bytes() if isinstance(data, (str, os.PathLike)) else bytes(data)
    try:
        spans, entries = _parse(raw)
    except (_WireError, UnicodeDecodeError) as exc:
        raise OnnxFileError(f"onnx: not a readable ONNX file (corrupt or truncated: {exc})") from exc
    return _digest(raw, spans, entries)


def check_sha256_text(value: object, name: str = "expected_sha256") -> str:
    """A SHA-256 given as 64 hex digits (any case, optional 'sha256:' prefix) → lower-case hex."""
    text = str(value).strip().lower() if isinstance(value, str) else ""
    text = text.removeprefix("sha256:")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise HgdefendError(f"{name}: expected a SHA-256 as 64 hex digits, got {value!r}")
    return text


def read_file(
    path: str | os.PathLike, expected_sha256: str | None = None
) -> tuple[bytes, dict[str, str], str]:
    """(file bytes, hgdefend metadata, file SHA-256) after the pin, format and integrity checks."""
    p = Path(path)
    expected = None if expected_sha256 is None else check_sha256_text(expected_sha256)
    if not p.is_file():
        raise OnnxFileError(f"onnx: file {str(p)!r} does not exist")
    data = p.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if expected is not None and sha != expected:
        raise OnnxFileError(
            f"expected_sha256: {str(p)!r} has SHA-256 {sha}, not the pinned {expected}: refusing to use it"
        )
    try:
        spans, entries = _parse(data)
    except (_WireError, UnicodeDecodeError) as exc:
        raise OnnxFileError(
            f"onnx: {str(p)!r} is not a readable ONNX file (corrupt or truncated: {exc})"
        ) from exc
    meta = dict(entries)
    if meta.get("hgdefend_format") != FORMAT:
        raise OnnxFileError(
            f"onnx: {str(p)!r} has no hgdefend metadata (hgdefend_format={meta.get('hgdefend_format')!r}); "
            "only files written by `hgdefend export` / export_onnx can be run here"
        )
    if meta.get("hgdefend_format_version") != str(FORMAT_VERSION):
        raise OnnxFileError(
            f"onnx: {str(p)!r} has hgdefend format version {meta.get('hgdefend_format_version')!r}; "
            f"this hgdefend reads {FORMAT_VERSION} (re-export it with `hgdefend export`)"
        )
    repeated = sorted(k for k, count in Counter(k for k, _ in entries).items() if count > 1)
    if repeated:
        raise OnnxFileError(
            f"onnx: {str(p)!r} repeats metadata keys {repeated}: the file was altered after export"
        )
    if meta.get(DIGEST_KEY) != _digest(data, spans, entries):
        raise OnnxFileError(
            f"onnx: {str(p)!r} failed its integrity check (graph or metadata differ from the "
            f"{DIGEST_KEY} recorded at export): the file was altered or damaged"
        )
    missing = [key for key in REQUIRED_METADATA if key not in meta]
    if missing:
        raise OnnxFileError(f"onnx: {str(p)!r} has incomplete hgdefend metadata (missing {missing})")
    return data, meta, sha


def read_metadata(path: str | os.PathLike, *, expected_sha256: str | None = None) -> dict[str, str]:
    """The hgdefend metadata of an exported file, after the pin, format and integrity checks."""
    return read_file(path, expected_sha256)[1]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (what ``expected_sha256`` pins)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- inputs
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


def _fmt_range(r: Sequence[float]) -> str:
    return f"[{r[0]:g}, {r[1]:g}]"


def _to_numpy(x: object, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach"):
        return x.detach().cpu().numpy()  # a torch tensor, converted without importing torch
    raise HgdefendError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")


def valid_mask(x: np.ndarray, value_range: Sequence[float]) -> np.ndarray:
    """``[B]`` bool: every value finite and inside the range (the graph's ``input_valid``)."""
    lo, hi = _bounds(value_range)
    inside = (x >= lo) & (x <= hi)  # NaN compares false; ±inf falls outside the finite bounds
    return inside.reshape(len(x), -1).all(axis=1)


def _bounds(value_range: Sequence[float]) -> tuple[np.float32, np.float32]:
    big = np.finfo(np.float32).max
    lo, hi = float(value_range[0]), float(value_range[1])
    lo_b = np.float32(lo - RANGE_SLACK) if np.isfinite(lo) else -big
    hi_b = np.float32(hi + RANGE_SLACK) if np.isfinite(hi) else big
    return lo_b, hi_b


def check_array(
    x: object,
    input_shape: Sequence[int],
    value_range: Sequence[float],
    *,
    name: str = "x",
    invalid: str = "error",
) -> np.ndarray:
    """float32 ``[B, *input_shape]``; with ``invalid="error"`` also finite and inside the range."""
    if invalid not in INVALID_MODES:
        raise HgdefendError(f"invalid: expected one of {INVALID_MODES}, got {invalid!r}")
    arr = _to_numpy(x, name)
    if not np.issubdtype(arr.dtype, np.floating):
        raise HgdefendError(
            f"{name}: expected floating-point values in {_fmt_range(value_range)}, got dtype {arr.dtype} "
            "(scale integer images yourself, e.g. x / 255)"
        )
    shape = tuple(int(s) for s in input_shape)
    if arr.ndim != len(shape) + 1 or tuple(arr.shape[1:]) != shape:
        raise HgdefendError(
            f"{name}: expected shape [B, {', '.join(map(str, shape))}], got {list(arr.shape)}"
        )
    if arr.shape[0] == 0:
        raise HgdefendError(f"{name}: is empty (batch size 0)")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if invalid == "error":
        if not np.isfinite(arr).all():
            raise HgdefendError(f"{name}: contains NaN or infinite values")
        if not valid_mask(arr, value_range).all():
            raise HgdefendError(
                f"{name}: values must lie in {_fmt_range(value_range)}, got min {float(arr.min()):.4g}, "
                f"max {float(arr.max()):.4g}"
            )
    return arr


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise HgdefendError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def check_labels(labels: object, n: int, name: str = "labels") -> np.ndarray:
    """Integer class labels ``[n]`` (values as in the file's ``class_labels``) as int64."""
    arr = _to_numpy(labels, name) if not isinstance(labels, (list, tuple)) else np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise HgdefendError(f"{name}: expected one label per input, shape [{n}], got {list(arr.shape)}")
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise HgdefendError(f"{name}: expected integer class labels, got non-integer values")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise HgdefendError(f"{name}: expected integer class labels, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def label_summary(
    outputs: Mapping[str, np.ndarray], class_labels: Sequence[int], labels: np.ndarray | None = None
) -> dict[str, Any]:
    """Counts and rates for a run: invalid inputs, flags, and with ``labels`` accuracy and flag rates.

    ``labels`` are values of ``class_labels`` (what the records call ``label``). A label outside
    the file's classes (an out-of-distribution input) can never be classified correctly; it is
    counted apart (``unknown_class``) and its flag rate is reported on its own.
    """
    valid = np.asarray(outputs["input_valid"], bool)
    n = int(valid.size)
    flags = outputs.get("is_adversarial")
    flagged = None if flags is None else np.asarray(flags, bool)
    out: dict[str, Any] = {
        "inputs": n,
        "invalid": int((~valid).sum()),
        "flagged": None if flagged is None else int(flagged.sum()),
        "flag_rate": None if flagged is None else float(flagged.mean()),
    }
    if labels is None:
        return out

    def rate(mask: np.ndarray) -> float | None:
        return None if flagged is None or not mask.any() else float(flagged[mask].mean())

    y = check_labels(labels, n)
    classes = np.asarray(class_labels, np.int64)
    predicted = classes[np.asarray(outputs["predicted_class"], np.int64)]
    known = np.isin(y, classes)
    correct = known & (predicted == y)
    wrong = known & ~correct
    out.update(
        {
            "labelled": n,
            "unknown_class": int((~known).sum()),
            "accuracy": float(correct[known].mean()) if known.any() else None,
            "correct": int(correct.sum()),
            "flag_rate_correct": rate(correct),
            "flag_rate_wrong": rate(wrong),
            "flag_rate_unknown_class": rate(~known),
            "accuracy_unflagged": None
            if flagged is None or not (known & ~flagged).any()
            else float(correct[known & ~flagged].mean()),
            "missed_and_wrong": None if flagged is None else float((~correct & ~flagged).mean()),
        }
    )
    return out


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
