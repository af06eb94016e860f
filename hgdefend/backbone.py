"""A pretrained model named on the command line: ``--backbone FILE.py:FUNCTION --backbone-weights W``.

**This runs code.** ``--backbone path/to/module.py:build`` imports the Python file you name and calls
``build()``, exactly as ``python path/to/module.py`` would run it (and ``package.module:build`` imports
an installed module): name only code you trust. Nothing else hgdefend reads executes code: model
files (``--model``) are safetensors with a JSON header and are never unpickled, and the backbone's
weights are read without pickle, ``.safetensors`` by safetensors and ``.pt`` / ``.pth`` by
``torch.load(weights_only=True)`` (tensors and plain containers only; any other object is refused).

:func:`check_backbone_for` compares a model file's header with the module before it is loaded, so
that a missing, superfluous or different backbone is one error that names the option to fix.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import pickle
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import HgdefendError
from .resources import check_memory

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def load_backbone(spec: str, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build the user's model from ``spec`` and load ``weights`` into it; return it in eval mode.

    ``spec``: ``path/to/module.py:function`` (the file is imported, with its folder on ``sys.path``
    while it loads and builds, as ``python file.py`` would have it) or ``package.module:function``
    (imported). The function is called with no arguments and must return an ``nn.Module``. **The
    named file runs**: it is the user's own code, named on the command line.

    ``weights``: a ``state_dict`` as ``.safetensors`` or ``.pt`` / ``.pth`` (``torch.load`` with
    ``weights_only=True``: no pickled objects; a ``{"state_dict": {...}}`` wrapper is unwrapped). It
    must fit the module exactly (same names and shapes). Without weights, the module keeps the
    weights ``function`` gave it. Errors name ``--backbone`` or ``--backbone-weights``.
    """
    module = _build(spec)
    if weights is not None:
        state = _read_state_dict(Path(weights))
        _fit(module, state)
    return module.eval()


def _build(spec: str) -> nn.Module:
    where, sep, fn_name = str(spec).rpartition(":")
    if not sep or not where or not fn_name:
        raise HgdefendError(f"--backbone: expected FILE.py:FUNCTION or package.module:FUNCTION, got {spec!r}")
    if not fn_name.isidentifier():
        raise HgdefendError(f"--backbone: {fn_name!r} (after the last ':') is not a Python function name")
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    folder = str(Path(where).resolve().parent) if is_file else None
    if folder is not None:
        sys.path.insert(0, folder)
    try:
        mod = _import_file(Path(where)) if is_file else _import_module(where)
        fn = getattr(mod, fn_name, None)
        if fn is None:
            raise HgdefendError(f"--backbone: {where!r} has no function {fn_name!r}")
        if not callable(fn):
            raise HgdefendError(f"--backbone: {where}:{fn_name} is not a function")
        try:
            module = fn()
        except Exception as exc:
            raise HgdefendError(
                f"--backbone: {where}:{fn_name}() failed ({type(exc).__name__}: {exc})"
            ) from exc
    finally:
        if folder is not None and folder in sys.path:
            sys.path.remove(folder)
    if not isinstance(module, nn.Module):
        raise HgdefendError(
            f"--backbone: {where}:{fn_name}() must return a torch.nn.Module, got {type(module).__name__}"
        )
    return module


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise HgdefendError(f"--backbone: file {str(path)!r} does not exist")
    if path.suffix != ".py":
        raise HgdefendError(f"--backbone: {str(path)!r} is not a .py file")
    resolved = path.resolve()
    name = "hgdefend_backbone_" + hashlib.sha256(str(resolved).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise HgdefendError(f"--backbone: cannot import {str(path)!r}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # as an import would (dataclasses and pickling look modules up there)
    try:
        spec.loader.exec_module(mod)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise HgdefendError(
            f"--backbone: running {str(path)!r} failed ({type(exc).__name__}: {exc})"
        ) from exc
    return mod


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise HgdefendError(
            f"--backbone: no module {name!r} to import ({exc}); name a file as path/to/file.py:FUNCTION"
        ) from exc
    except Exception as exc:
        raise HgdefendError(f"--backbone: importing {name!r} failed ({type(exc).__name__}: {exc})") from exc


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    where = f"--backbone-weights: {str(path)!r}"
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise HgdefendError(f"{where}: expected a .safetensors, .pt or .pth file of a state_dict")
    if not path.is_file():
        raise HgdefendError(f"{where} does not exist")
    check_memory(path.stat().st_size, f"--backbone-weights: reading {str(path)!r}")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise many types for damaged files
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if isinstance(exc, pickle.UnpicklingError) and found:
            raise HgdefendError(
                f"{where} holds a pickled object other than tensors ({found.group(1)[:80]}), which "
                "torch.load(weights_only=True) refuses (no code from a weights file runs): save "
                "model.state_dict(), or convert it to .safetensors where you trust the file"
            ) from exc
        lines = str(exc).strip().splitlines()
        why = lines[0][:200] if lines else type(exc).__name__
        raise HgdefendError(f"{where} could not be read ({type(exc).__name__}: {why})") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise HgdefendError(f"{where}: expected a state_dict (names → tensors), got {type(obj).__name__}")
    return dict(obj)


def _fit(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Load ``state`` into ``module`` only if names and shapes fit exactly; else one error."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} vs {list(v.shape)}"
              for k, v in own.items() if k in state and state[k].shape != v.shape]  # fmt: skip
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)):
        if items:
            more = f" and {len(items) - 4} more" if len(items) > 4 else ""
            problems.append(f"{label}: {', '.join(items[:4])}{more}")
    if problems:
        raise HgdefendError(
            "--backbone-weights: do not fit the model --backbone builds (" + "; ".join(problems) + ")"
        )
    try:
        module.load_state_dict(state, strict=True)
    except Exception as exc:  # e.g. a dtype that cannot be copied
        raise HgdefendError(f"--backbone-weights: could not be loaded ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------- model files
def peek_target(path: str | os.PathLike) -> dict[str, Any] | None:
    """The target config in a model file's header, *unverified* (for choosing which option an error
    names; :func:`hgdefend.io.load_model` checks the header's digest); None when it cannot be read."""
    from safetensors import safe_open

    from .schema import parse_json

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        target = parse_json(meta.get("hgdefend_config"), "config").get("target")
    except Exception:  # load_model reports unreadable files with its own errors
        return None
    return target if isinstance(target, dict) else None


def check_backbone_for(path: str | os.PathLike, module: nn.Module | None) -> None:
    """Before ``load_model(path, module=module)``: one error naming ``--backbone`` when the file
    needs a module and none is given or one is given that it does not take, and naming
    ``--backbone-weights`` when the module's weights are not the ones the file was trained on."""
    from .targets.head import backbone_sha256

    target = peek_target(path)
    if target is None:
        return
    kind, name = target.get("kind"), str(target.get("name"))[:60]
    p = str(path)
    if kind == "head" and module is None:
        raise HgdefendError(
            f"--backbone: {p!r} protects a pretrained model ({name!r}, generating "
            f"{str(target.get('generate'))[:80]}); pass it with --backbone FILE.py:FUNCTION and its "
            "weights with --backbone-weights"
        )
    if kind == "module" and module is None:
        raise HgdefendError(
            f"--backbone: {p!r} was trained on a user nn.Module ({name!r}); pass it with --backbone "
            "FILE.py:FUNCTION"
        )
    if kind not in ("head", "module") and module is not None:
        raise HgdefendError(
            f"--backbone: {p!r} has a built-in target ({name!r}), not a model of yours; leave out "
            "--backbone and --backbone-weights"
        )
    if kind == "head" and module is not None:
        got, want = backbone_sha256(module), str(target.get("backbone_sha256"))
        if got != want:
            raise HgdefendError(
                f"--backbone-weights: the model --backbone builds is not the pretrained model {p!r} "
                f"was trained on (weights SHA-256 {got[:16]}…, the file's {want[:16]}…); its heads are "
                "offsets of those weights, so pass the same model with the same weights"
            )
