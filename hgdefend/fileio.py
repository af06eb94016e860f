"""The one atomic-write helper: model files, checkpoints, reports and ONNX files all go through it.

A file is written to a temporary name in the destination folder and renamed over the target only
when complete, so an interrupted or failed write never leaves a half-written file and never
clobbers a good one. The finished file gets the permissions the user's umask gives a new file
(``mkstemp`` alone would leave 0600).

Outputs never clobber inputs and never follow links: a destination that is a symbolic link (one
planted in an output folder at a name we write, or an ``--out`` given as a link) or that is the
same file as one of the command's inputs (``refuse=``) is refused before anything is written
(:func:`check_output`). The temporary file is created with ``O_EXCL`` (never through a link) and
the rename replaces a name, never a link's target. :func:`install_signal_cleanup` (the CLI calls
it) turns SIGTERM and SIGHUP into an exception, so an interrupted write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import HgdefendError

PathLike = str | os.PathLike


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (what ``expected_sha256`` pins)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, RuntimeError):  # a link loop, a vanished file: not provably the same
        return False


def check_output(path: PathLike, *, refuse: Iterable[PathLike | None] = (), name: str = "out") -> Path:
    """Refuse an output path that is a symbolic link or the same file as one of ``refuse`` (the
    command's inputs); return it as a Path. Folders (``train --out``) are checked the same way."""
    dest = Path(path)
    if os.path.islink(dest):
        raise HgdefendError(
            f"{name}: {str(dest)!r} is a symbolic link (to {os.readlink(dest)!r}); refusing to write "
            "through it (remove the link or choose another path)"
        )
    for src in refuse:
        if src is not None and _same_file(dest, Path(src)):
            raise HgdefendError(
                f"{name}: {str(dest)!r} is an input of this command ({str(src)!r}); refusing to "
                "overwrite it (choose another path)"
            )
    return dest


@contextlib.contextmanager
def atomic_path(
    path: PathLike, *, suffix: str = ".tmp", refuse: Iterable[PathLike | None] = (), name: str = "out"
) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    ``path`` is checked first (:func:`check_output`: not a symbolic link, not one of ``refuse``)
    and again just before the rename. For writers that want a file name (safetensors, onnx);
    :func:`atomic_write` wraps it for bytes and text.
    """
    refuse = list(refuse)
    dest = check_output(path, refuse=refuse, name=name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        check_output(dest, refuse=refuse, name=name)  # a link planted while we wrote
        os.replace(tmp_path, dest)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write(
    path: PathLike, data: bytes | str, *, refuse: Iterable[PathLike | None] = (), name: str = "out"
) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; return the path."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, refuse=refuse, name=name) as tmp:
        tmp.write_bytes(raw)
    return Path(path)


class Terminated(SystemExit):
    """Raised in the main thread on SIGTERM/SIGHUP so that ``atomic_path`` removes its temporary
    file; exits with 128 + the signal number, as the default action would."""


def _on_signal(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second signal ends the process at once
    raise Terminated(128 + signum)


def install_signal_cleanup() -> None:
    """SIGTERM and SIGHUP raise :class:`Terminated` (the CLI installs this; library callers may).
    SIGKILL cannot be caught: its temporary file (``.NAME.*.tmp`` beside the target) stays, and the
    file at the target is the old one, untouched."""
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _on_signal)


LOCK_NAME = ".hgdefend.lock"


class FolderLock:
    """An exclusive lock on an output folder, taken at a run's first write and held until it ends.

    Two runs writing one folder would otherwise interleave their files (one run's model beside the
    other's report); with the lock the second is refused with one clear error. Taken lazily
    (:meth:`acquire`), so a run refused before writing anything leaves no folder behind. Advisory
    (``flock``); a no-op where the platform has no ``fcntl``.
    """

    def __init__(self, folder: PathLike, name: str = "out") -> None:
        self.folder, self.name = Path(folder), name
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise HgdefendError(
                f"{self.name}: another hgdefend run is writing to {str(self.folder)!r}; wait for it to "
                "finish or choose another folder"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
