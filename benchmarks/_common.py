"""Helpers every benchmark script shares (imported as a sibling module: run scripts from any folder
with ``python benchmarks/NAME.py``)."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from hgdefend.fileio import atomic_write


def device_name(dev: torch.device) -> str:
    """The GPU's name, or the CPU with the torch thread count (timings depend on both)."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} torch threads)"


def sync(dev: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings are real (no-op on CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_calls(
    fn: Callable[[], Any], dev: torch.device, *, min_time: float = 0.0, min_reps: int = 3, max_reps: int = 50
) -> dict:
    """Seconds of ``fn``'s first call (compiling and autotuning happen there), then the median of
    repeated calls: at least ``min_reps`` and ``min_time`` seconds in all, at most ``max_reps``."""
    sync(dev)
    t0 = time.perf_counter()
    fn()
    sync(dev)
    first = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < max_reps and (sum(times) < min_time or len(times) < min_reps):
        sync(dev)
        t0 = time.perf_counter()
        fn()
        sync(dev)
        times.append(time.perf_counter() - t0)
    return {"median_s": sorted(times)[len(times) // 2], "first_s": first, "reps": len(times), "times": times}


def print_table(render: Callable[[dict], str]) -> bool:
    """``NAME.py --table RUN.json``: print the RESULTS.md table of a run; True when that was asked."""
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        print(render(json.loads(Path(sys.argv[2]).read_text())))
        return True
    return False


def run_record(benchmark: str, args: Any, dev: torch.device, started: float) -> dict:
    """What every result records about its run: name, arguments, device, versions, date, seconds."""
    return {
        "benchmark": benchmark,
        "args": vars(args),
        "device": str(dev),
        "device_name": device_name(dev),
        "torch": torch.__version__,
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def emit(result: dict, out: str | None) -> None:
    """Print the result as JSON on stdout, and write it to ``out`` (atomically) when given."""
    text = json.dumps(result, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
    if out:
        atomic_write(out, text + "\n")
    print(text)
