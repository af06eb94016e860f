"""Reading ``.npz`` archives by declared size: each member's ``.npy`` header (shape, dtype) is read
first and checked against the memory limit and the archive's own sizes before anything is inflated.

A zip bomb or a header declaring a 233-TiB array is refused with the estimate and the limit; an
``.npy`` renamed ``.npz``, a pickled (object) array, a truncated member or a member whose size does
not match its header is one :class:`HgdefendError`. Nothing is unpickled.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HgdefendError
from .resources import check_memory

WORKING_COPIES = 3
"""Arrays are converted (uint8 -> float32, shuffled, split): a lower bound of the copies held."""


def _read_header(f: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from an ``.npy`` header (versions 1.0 and 2.0), reading nothing else."""
    version = np.lib.format.read_magic(f)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy version {version}")
    shape, _, dtype = readers[version](f)
    return tuple(shape), dtype


def declared(
    path: str | os.PathLike, keys: tuple[str, ...], what: str
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """The shape and dtype each member declares, from the ``.npy`` headers alone."""
    p = Path(path)
    try:
        zf = zipfile.ZipFile(p)
    except zipfile.BadZipFile as exc:
        hint = " (an .npy file renamed .npz? save with np.savez(path, x=..., y=...))" if _is_npy(p) else ""
        raise HgdefendError(f"{what}: {str(p)!r} is not an .npz (zip) archive{hint}") from exc
    out = {}
    with zf:
        names = {n.removesuffix(".npy"): n for n in zf.namelist()}
        missing = [k for k in keys if k not in names]
        if missing:
            raise HgdefendError(
                f"{what}: {str(p)!r} must hold arrays {' and '.join(map(repr, keys))}, "
                f"has {sorted(names)[:10]}"
            )
        for key in keys:
            info = zf.getinfo(names[key])
            try:
                with zf.open(info) as member:
                    shape, dtype = _read_header(member)
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                raise HgdefendError(
                    f"{what}: array {key!r} in {str(p)!r} has a malformed .npy header ({exc})"
                ) from exc
            if dtype.hasobject:
                raise HgdefendError(
                    f"{what}: array {key!r} in {str(p)!r} holds Python objects (pickles); refused"
                )
            nbytes = math.prod(shape) * dtype.itemsize
            check_memory(nbytes * WORKING_COPIES, f"{what}: array {key!r} of shape {list(shape)} {dtype}")
            if info.file_size < nbytes:
                raise HgdefendError(
                    f"{what}: array {key!r} in {str(p)!r} declares {nbytes} bytes but its member holds "
                    f"{info.file_size}: truncated or altered"
                )
            check_memory(info.file_size, f"{what}: member {key!r} of {str(p)!r} (inflated size)")
            out[key] = (tuple(shape), dtype)
    return out


def read_npz(path: str | os.PathLike, keys: tuple[str, ...], what: str = "dataset") -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` file, after :func:`declared` passed them."""
    shapes = declared(path, keys, what)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise HgdefendError(f"{what}: cannot read {str(path)!r} as npz ({exc})") from exc
    for k, (shape, dtype) in shapes.items():
        if arrays[k].shape != shape or arrays[k].dtype != dtype:
            raise HgdefendError(f"{what}: array {k!r} in {str(path)!r} does not match its header")
    return arrays


def npz_keys(path: str | os.PathLike, what: str) -> list[str]:
    """The array names in an ``.npz`` archive (without reading any array)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n.removesuffix(".npy") for n in zf.namelist()]
    except (zipfile.BadZipFile, OSError) as exc:
        hint = " (an .npy file renamed .npz?)" if _is_npy(Path(path)) else ""
        raise HgdefendError(f"{what}: {str(path)!r} is not an .npz (zip) archive{hint}") from exc


def read_npy(path: str | os.PathLike, what: str) -> np.ndarray:
    """An ``.npy`` file, its header (shape, dtype) checked against the memory limit and the file's
    size before the array is read; object (pickled) arrays refused."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            shape, dtype = _read_header(f)
            offset = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise HgdefendError(f"{what}: {str(p)!r} has a malformed .npy header ({exc})") from exc
    if dtype.hasobject:
        raise HgdefendError(f"{what}: {str(p)!r} holds Python objects (pickles); refused")
    nbytes = math.prod(shape) * dtype.itemsize
    check_memory(nbytes * WORKING_COPIES, f"{what}: array of shape {list(shape)} {dtype}")
    if p.stat().st_size - offset < nbytes:
        raise HgdefendError(f"{what}: {str(p)!r} declares {nbytes} bytes of data but holds fewer: truncated")
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise HgdefendError(f"{what}: cannot read {str(p)!r} as a numpy array ({exc})") from exc


def _is_npy(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(6) == b"\x93NUMPY"
    except OSError:
        return False
