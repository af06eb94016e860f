"""The resource guard: sizes that files and arguments declare are checked against a memory limit
before anything is allocated.

The limit is, in order: :func:`set_memory_limit` (the CLI's ``--max-memory``), the environment
variable ``HGDEFEND_MAX_MEMORY``, else 80 % of the memory this process may use: the machine's
physical memory, or less where the process runs under an address-space limit (``ulimit -v``,
RLIMIT_AS) or a container's cgroup memory limit (v2 ``memory.max``, v1
``memory.limit_in_bytes``) — a guard that read only the machine's RAM let a 1 MB file that inflates
to 1 GiB past it into a numpy allocation failure under such a limit. A refusal names the
estimate, the limit and how to raise it. Estimates are lower bounds of what an operation needs
(the bytes of the arrays it must hold), so a refusal is never a false alarm about a small job.
Standard library only: the CLI checks arguments before importing torch.
"""

from __future__ import annotations

import os
import re

from .errors import HgdefendError

ENV_VAR = "HGDEFEND_MAX_MEMORY"
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_override: int | None = None


class ResourceLimitError(HgdefendError):
    """An operation would need more memory than the limit allows."""


def parse_size(text: object, name: str = "max_memory") -> int:
    """'512M', '8G', '1.5T', '1000000' (bytes) -> bytes."""
    if isinstance(text, bool):
        raise HgdefendError(f"{name}: expected a size such as 512M or 8G, got {text!r}")
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([bkmgt]?)(?:i?b)?\s*", str(text).lower())
        if not m:
            raise HgdefendError(f"{name}: expected a size such as 512M or 8G, got {text!r}")
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 1:
        raise HgdefendError(f"{name}: expected a positive size, got {text!r}")
    return value


def physical_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        return 8 << 30


CGROUP_FILES = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def process_limits() -> list[int]:
    """The limits below physical memory that apply to this process (bytes): RLIMIT_AS's soft
    limit and the cgroup's memory limit, where set."""
    out = []
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
            out.append(int(soft))
    except (ImportError, OSError, ValueError):  # not POSIX
        pass
    for path in CGROUP_FILES:
        try:
            text = open(path).read().strip()  # noqa: SIM115 - a one-line pseudo-file
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (1 << 60):  # "max" or v1's huge sentinel: no limit
            out.append(int(text))
    return out


def memory_limit() -> int:
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR)
    if env:
        return parse_size(env, ENV_VAR)
    return int(min([physical_memory(), *process_limits()]) * 0.8)


def set_memory_limit(value: object | None) -> None:
    """Set (or with ``None`` clear) the process-wide limit; ``--max-memory`` calls this."""
    global _override
    _override = None if value is None else parse_size(value)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_memory(estimate: float, what: str) -> None:
    """Refuse ``what`` if it needs more than the limit (``estimate`` in bytes)."""
    limit = memory_limit()
    if estimate > limit:
        raise ResourceLimitError(
            f"{what}: needs about {fmt_bytes(estimate)}, more than the memory limit of "
            f"{fmt_bytes(limit)} (raise it with --max-memory or {ENV_VAR} if the machine can hold it)"
        )
