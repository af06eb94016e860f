"""Options every command shares, and the one place bad input becomes a one-line error."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from ..errors import HgdefendError
from ..text import printable

EXIT_USAGE = 2


class CLIError(click.ClickException):
    """A one-line error and exit code 2 (bad input), never a traceback."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        echo(f"error: {self.format_message()}", err=True)


def echo(text: object, *, err: bool = False) -> None:
    """``click.echo`` of text for people, control characters escaped (strings from files may carry
    terminal escape sequences: :func:`hgdefend.text.printable`)."""
    click.echo(printable(text), err=err)


def friendly_errors(fn: Callable) -> Callable:
    """Turn the library's ValueError-family errors and missing files into CLIError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (HgdefendError, ValueError, FileNotFoundError, IsADirectoryError,
                PermissionError) as exc:  # fmt: skip
            raise CLIError(str(exc)) from exc
        except MemoryError as exc:  # an allocation the guard's estimate did not foresee: one line, exit 2
            raise CLIError(
                f"out of memory: {exc or 'an allocation failed'} (lower the sizes involved, or raise the "
                "process's memory limit; --max-memory sets the limit hgdefend checks sizes against)"
            ) from exc

    return wrapper


def default_threads() -> int:
    """One thread per core (at most 8) on an idle machine; one thread when the cores are already busy.

    Measured on 2 cores (benchmarks/RESULTS.md): idle, ``hgdefend evaluate`` took 25.7 s with 2 threads
    vs 31.6 s with 1; with other jobs running, 2 threads made a training step 3-4× slower than 1
    thread and single-image calls hundreds of times slower (OpenMP threads wait on descheduled peers).
    """
    cores = max(1, min(os.cpu_count() or 1, 8))
    try:
        busy = os.getloadavg()[0] >= cores
    except OSError:  # not available on this platform
        busy = False
    return 1 if busy else cores


def set_threads(threads: int | None) -> None:
    """Pick torch's CPU threads deliberately: oversubscription was measured to slow PGD ~30×."""
    import torch

    check_threads(threads)
    torch.set_num_threads(default_threads() if threads is None else threads)


def seed_option(help: str = "Seed for training, sampling and attacks.") -> Callable:
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def device_option(help: str = "'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...") -> Callable:
    # checked where it is used (hgdefend.training.resolve_device, the ONNX runtime's device parser),
    # with one clear error for 'bogus' or 'meta'
    return click.option("--device", default="auto", show_default=True, help=help)


def threads_option(help: str = "torch CPU threads (default: cores up to 8; 1 if busy).") -> Callable:
    return click.option("--threads", type=int, default=None, help=help)


def quiet_option(help: str = "No progress bars or summaries.") -> Callable:
    return click.option("--quiet", "-q", is_flag=True, help=help)


def _set_max_memory(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from ..resources import parse_size, set_memory_limit

    try:
        set_memory_limit(None if value is None else parse_size(value, "--max-memory"))
    except HgdefendError as exc:
        raise CLIError(str(exc)) from exc
    return value


def max_memory_option() -> Callable:
    return click.option(
        "--max-memory", default=None, callback=_set_max_memory, expose_value=False, is_eager=True,
        help="Memory limit for sizes declared by files and arguments, e.g. 8G "
        "(default: HGDEFEND_MAX_MEMORY, else 80 % of physical memory).",
    )  # fmt: skip


def trust_data_root_option() -> Callable:
    return click.option(
        "--trust-data-root", is_flag=True,
        help="Read CIFAR-10 from --data-root: its batch files are Python pickles that torchvision "
        "unpickles, so the folder runs code; only for a folder you control (SECURITY.md).",
    )  # fmt: skip


def common_options(fn: Callable) -> Callable:
    """--seed, --device, --threads, --quiet, --max-memory (train and evaluate; export and detect
    take a subset)."""
    for option in (max_memory_option(), quiet_option(), threads_option(), device_option(), seed_option()):
        fn = option(fn)
    return fn


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise CLIError("--threads: expected an integer >= 1")


def command_line() -> str:
    return " ".join(["hgdefend", *sys.argv[1:]])


def backbone_options(*, generate: bool = False) -> Callable:
    """--backbone FILE.py:FUNCTION and --backbone-weights (and, for train, --generate)."""

    def deco(fn: Callable) -> Callable:
        opts = [
            click.option(
                "--backbone", default=None, metavar="FILE.py:FUNCTION",
                help="Your pretrained model: FUNCTION() in FILE.py (or package.module:FUNCTION) "
                "returns it. This RUNS that file, as `python FILE.py` would; name only your own code "
                "(model files never run code).",
            ),
            click.option(
                "--backbone-weights", default=None, type=click.Path(dir_okay=False),
                help="Its state_dict: .safetensors, or .pt/.pth read with torch.load(weights_only=True) "
                "(no pickled objects).",
            ),
        ]  # fmt: skip
        if generate:
            opts.append(click.option(
                "--generate", default=None, metavar="NAMES",
                help="With --backbone: comma list of its last submodules to generate, e.g. fc "
                "(the rest stays frozen).",
            ))  # fmt: skip
        for option in reversed(opts):
            fn = option(fn)
        return fn

    return deco


def get_backbone(backbone: str | None, weights: str | None) -> Any:
    """The module ``--backbone`` builds with ``--backbone-weights`` loaded, or None without it."""
    if backbone is None:
        if weights is not None:
            raise CLIError("--backbone-weights: needs --backbone (the model the weights are for)")
        return None
    from ..backbone import load_backbone

    return load_backbone(backbone, weights)


def load_cli_model(path: str, backbone: str | None, weights: str | None, device: Any = "cpu") -> Any:
    """``load_model`` for a command: a model over your own module needs ``--backbone``."""
    from ..backbone import check_backbone_for
    from ..io import load_model

    module = get_backbone(backbone, weights)
    check_backbone_for(path, module)
    return load_model(path, module=module, device=device)
