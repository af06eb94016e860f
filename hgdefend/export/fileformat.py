"""The exported file's format: names, required metadata, the integrity digest and SHA-256 pinning.

The file's top-level protobuf fields are read by a small reader here (no ``onnx`` package), so
reading a file needs only the standard library and the dependency-free :mod:`hgdefend.errors`
and :mod:`hgdefend.vocab`.

Integrity (format version 2): one digest, ``content_sha256`` (:func:`content_sha256`), covers
everything that changes behaviour — every top-level field of the ONNX model (graph, weights,
opsets, functions, ...) byte for byte, and every metadata entry except the digest itself as
canonical JSON. A file whose digest does not match is refused, so is one with a repeated metadata
key. The digest catches accidental and careless changes; whoever can rewrite a file can recompute
it, so the defence against a deliberate edit is pinning the file's own SHA-256
(``expected_sha256=`` / ``hgdefend detect --expected-sha256``), see SECURITY.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import HgdefendError
from ..fileio import file_sha256  # noqa: F401 (part of this module's API: what a pin is checked against)
from ..schema import MAX_WIDTH, SchemaError, int_list, integer, parse_json, string
from ..schema import number as _number
from ..vocab import SCORES

FORMAT = "hgdefend-onnx"
FORMAT_VERSION = 2
"""2: ``input_valid`` output and fail-closed ``is_adversarial``; ``content_sha256`` over graph and
metadata (1 had ``graph_sha256`` over the graph only and is refused)."""
DIGEST_KEY = "content_sha256"
DIGEST_DOMAIN = b"hgdefend-onnx-content\x00v2\x00"
INPUT_NAME = "x"
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
    try:
        check_metadata(meta)
    except SchemaError as exc:
        raise OnnxFileError(f"onnx: {str(p)!r} has malformed hgdefend metadata: {exc}") from exc
    return data, meta, sha


MAX_MEMBERS = 1_000_000


def check_metadata(meta: dict[str, str]) -> None:
    """The schema of the hgdefend metadata (values are strings, several hold JSON): types, ranges,
    sizes and consistency of members, input shape and range, classes and labels, score, threshold."""
    integer(_int(meta["members"], "members"), "members", 1, MAX_MEMBERS)
    int_list(
        parse_json(meta["input_shape"], "input_shape"), "input_shape", 1, MAX_WIDTH, min_len=1, max_len=4
    )
    lo, hi = (
        _number(v, "input_range", -1e30, 1e30) for v in _pair(parse_json(meta["input_range"], "input_range"))
    )
    if not lo < hi:
        raise SchemaError(f"input_range: expected [lo, hi] with lo < hi, got [{lo:g}, {hi:g}]")
    n = integer(_int(meta["num_classes"], "num_classes"), "num_classes", 2, MAX_WIDTH)
    if meta.get("class_labels"):
        labels = parse_json(meta["class_labels"], "class_labels")
        if labels is not None:
            labels = int_list(labels, "class_labels", 0, MAX_WIDTH, min_len=n, max_len=n)
            if len(set(labels)) != n:
                raise SchemaError("class_labels: labels must be distinct")
    string(meta["score"], "score", choices=SCORES)
    if meta["threshold"]:
        _number(_float(meta["threshold"], "threshold"), "threshold", -1e30, 1e30)
    if meta.get("target_fpr"):
        _number(_float(meta["target_fpr"], "target_fpr"), "target_fpr", 0.0, 1.0)
    if meta.get("seed"):
        integer(_int(meta["seed"], "seed"), "seed", -(1 << 63), 1 << 64)
    outputs = parse_json(meta["outputs"], "outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, str) and o in OUTPUTS for o in outputs):
        raise SchemaError(f"outputs: expected a list of names from {list(OUTPUTS)}")


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SchemaError(f"{name}: expected an integer, got {text[:40]!r}") from None


def _float(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise SchemaError(f"{name}: expected a number, got {text[:40]!r}") from None


def _pair(value: object) -> list:
    if not isinstance(value, list) or len(value) != 2:
        raise SchemaError("input_range: expected [lo, hi]")
    return value


def read_metadata(path: str | os.PathLike, *, expected_sha256: str | None = None) -> dict[str, str]:
    """The hgdefend metadata of an exported file, after the pin, format and integrity checks."""
    return read_file(path, expected_sha256)[1]
