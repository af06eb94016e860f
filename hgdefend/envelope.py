"""The verified envelope shared by model files and checkpoints (safetensors + a JSON config).

``content_sha256`` covers the config (as canonical JSON) and every tensor's name, dtype, shape and
bytes. :func:`read_envelope` checks, in order and before building anything: the file's size against
the memory limit, format and version, header keys, the config's schema, the tensor shapes the file
declares (the caller's check; nothing is read yet), then reads the tensors and checks the digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from .errors import HgdefendError
from .fileio import atomic_path
from .resources import check_memory
from .schema import SchemaError, parse_json

FORMAT = "hgdefend-model"
FORMAT_VERSION = 2
"""2: ``content_sha256`` covers the config and the tensors, the header is schema-checked, no
wall-clock times in the file (1 had ``tensors_sha256`` over the tensors only and is refused)."""
CHECKPOINT_FORMAT = "hgdefend-checkpoint"
DIGEST_KEY = "content_sha256"
HEADER_KEYS = ("format", "format_version", "hgdefend_config", DIGEST_KEY)


class ModelFileError(HgdefendError):
    """A model file that is missing, corrupt, tampered with or of another format."""


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """A digest of names, dtypes, shapes and bytes, independent of header layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def canonical_json(config: Any) -> str:
    return json.dumps(config, sort_keys=True, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def content_sha256(config: Mapping[str, Any], tensors: Mapping[str, Tensor]) -> str:
    """The envelope digest: the config as canonical JSON, then :func:`tensors_sha256`."""
    text = canonical_json(config).encode("ascii")
    h = hashlib.sha256(b"hgdefend-safetensors-content\x00v2\x00")
    h.update(len(text).to_bytes(8, "big"))
    h.update(text)
    h.update(tensors_sha256(tensors).encode("ascii"))
    return h.hexdigest()


def write_envelope(tensors: dict[str, Tensor], config: dict[str, Any], path: Path) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {
        "format": config["format"],
        "format_version": str(FORMAT_VERSION),
        "hgdefend_config": canonical_json(config),
        DIGEST_KEY: content_sha256(config, tensors),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), meta)


def save_file(tensors: Mapping[str, Tensor], filename: str, metadata: Mapping[str, str]) -> None:
    """Write a safetensors file byte-for-byte deterministically (the ``safetensors`` writer orders
    the metadata by a hash map, so equal models gave different bytes): tensors sorted by name,
    header JSON with sorted keys, padded with spaces to 8 bytes."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    names = sorted(tensors)
    for name in names:
        t = tensors[name]
        if t.dtype not in DTYPES:
            raise ModelFileError(f"save: tensor {name!r} has unsupported dtype {t.dtype}")
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    raw += b" " * (-len(raw) % 8)
    with open(filename, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in names:
            t = tensors[name].detach().cpu().contiguous()
            if t.numel():
                f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())


Shapes = dict[str, tuple[tuple[int, ...], str]]


def read_envelope(
    path: str | os.PathLike,
    expected_format: str,
    check: Callable[[Any, str, int], dict[str, Any]],
    check_declared: Callable[[dict[str, Any], Shapes], None],
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and config of a file after format, schema, shape, memory and digest checks."""
    p = Path(path)
    what = "model" if expected_format == FORMAT else "checkpoint"
    if not p.is_file():
        raise ModelFileError(f"{what}: file {str(p)!r} does not exist")
    check_memory(p.stat().st_size, f"{what}: reading {str(p)!r}")
    meta, declared = _safetensors(p, what, header_only=True)
    config = _check_header(p, meta, expected_format, check)
    check_declared(config, declared)
    tensors = _safetensors(p, what, header_only=False)[1]
    if meta.get(DIGEST_KEY) != content_sha256(config, tensors):
        raise ModelFileError(
            f"{what}: {str(p)!r} failed its integrity check (config or tensors differ from the "
            f"{DIGEST_KEY} recorded at save time): the file was altered or damaged"
        )
    return tensors, config


def _safetensors(p: Path, what: str, *, header_only: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """(metadata, declared shapes and dtypes) or (metadata, tensors); a corrupt file is one error."""
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            if header_only:
                slices = {k: f.get_slice(k) for k in f.keys()}
                return meta, {k: (tuple(v.get_shape()), str(v.get_dtype())) for k, v in slices.items()}
            return meta, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers/data
        raise ModelFileError(
            f"{what}: {str(p)!r} is not a readable safetensors file (corrupt or truncated: {exc})"
        ) from exc


def _check_header(p: Path, meta: Mapping[str, str], expected_format: str, check: Callable) -> dict[str, Any]:
    what = "model" if expected_format == FORMAT else "checkpoint"
    if meta.get("format") != expected_format:
        raise ModelFileError(
            f"{what}: {str(p)!r} is not an {expected_format} file (format={str(meta.get('format'))[:60]!r})"
        )
    version = meta.get("format_version")
    if version != str(FORMAT_VERSION):
        hint = (
            "its config and class labels are not covered by its digest; retrain it with this hgdefend, "
            "or re-save a file you trust with hgdefend.io.upgrade_model_file"
            if version == "1"
            else "re-save or retrain it with this hgdefend"
        )
        raise ModelFileError(
            f"{what}: {str(p)!r} has format version {str(version)[:20]!r}; this hgdefend reads "
            f"{FORMAT_VERSION} ({hint})"
        )
    extra = sorted(set(meta) - set(HEADER_KEYS))
    if extra:
        raise ModelFileError(f"{what}: {str(p)!r} has unexpected header keys {[k[:40] for k in extra[:5]]}")
    try:
        return check(parse_json(meta.get("hgdefend_config"), "config"), expected_format, FORMAT_VERSION)
    except SchemaError as exc:
        raise ModelFileError(f"{what}: {str(p)!r} has a malformed header: {exc}") from exc


def check_shapes(p: Path, declared: Shapes, expected: Shapes) -> None:
    missing = sorted(set(expected) - set(declared))
    extra = sorted(set(declared) - set(expected))
    if missing or extra:
        raise ModelFileError(
            f"model: {str(p)!r} does not match its config: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, (shape, dtype) in expected.items():
        if declared[name][0] != shape or (dtype and declared[name][1] != dtype):
            raise ModelFileError(
                f"model: tensor {name!r} in {str(p)!r} has shape {list(declared[name][0])} "
                f"{declared[name][1]}, the config implies {list(shape)} {dtype}"
            )


DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.bool: "BOOL", torch.uint8: "U8"}  # fmt: skip
