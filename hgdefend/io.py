"""Safe model files: safetensors weights with a JSON config in the header. Nothing is unpickled.

A model file is ONE ``.safetensors`` file. Its header metadata holds ``hgdefend_config`` (format
version, target spec, hyper-parameters, dataset, library version) and a SHA-256 of the tensor
contents, so a file altered after saving is rejected on load. Writes go to a temporary file that
replaces the target only when complete: a failed run never clobbers a good model.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from . import __version__
from .fileio import atomic_path
from .hypergan import HyperGAN
from .targets import target_from_config
from .validation import HgdefendError

FORMAT = "hgdefend-model"
FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "hgdefend-checkpoint"


class ModelFileError(HgdefendError):
    """A model file that is missing, corrupt, tampered with or of another format."""


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha256(tensors: Mapping[str, Tensor]) -> str:
    """A digest of names, dtypes, shapes and bytes, independent of header layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _atomic_save(tensors: dict[str, Tensor], metadata: dict[str, str], path: Path) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata)


def _read(path: str | os.PathLike, expected_format: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"model: file {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers/data
        raise ModelFileError(
            f"model: {str(p)!r} is not a readable safetensors file (corrupt or truncated: {exc})"
        ) from exc
    if meta.get("format") != expected_format:
        raise ModelFileError(
            f"model: {str(p)!r} is not an {expected_format} file (format={meta.get('format')!r})"
        )
    try:
        version = int(meta.get("format_version", "-1"))
        config = json.loads(meta["hgdefend_config"])
    except (KeyError, ValueError) as exc:
        raise ModelFileError(f"model: {str(p)!r} has a malformed hgdefend header") from exc
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"model: {str(p)!r} has format version {version}; this hgdefend reads {FORMAT_VERSION}"
        )
    digest = meta.get("tensors_sha256")
    if digest != tensors_sha256(tensors):
        raise ModelFileError(
            f"model: {str(p)!r} failed its integrity check (tensor contents do not match the "
            "SHA-256 recorded at save time): the file was altered or damaged"
        )
    return tensors, config


@dataclass
class LoadedModel:
    hypergan: HyperGAN
    config: dict[str, Any]
    sha256: str
    path: str


def save_model(
    path: str | os.PathLike,
    hypergan: HyperGAN,
    *,
    dataset: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> str:
    """Write ``hypergan`` to ``path`` atomically; return the file's SHA-256."""
    tensors = {k: v for k, v in hypergan.state_dict().items()}
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "target": hypergan.target.config(),
        "hypergan": hypergan.hparams(),
        "dataset": dict(dataset or {}),
        "training": dict(training or {}),
    }
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "hgdefend_config": json.dumps(config, sort_keys=True),
        "tensors_sha256": tensors_sha256(tensors),
    }
    p = Path(path)
    _atomic_save(tensors, meta, p)
    return file_sha256(p)


def load_model(
    path: str | os.PathLike,
    *,
    module: nn.Module | None = None,
    expected_sha256: str | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Load a model file, checking format, version, integrity, key names and shapes.

    ``module`` is needed only for models trained on a user ``nn.Module`` target;
    ``expected_sha256`` pins the exact file (e.g. a hash published with the model).
    """
    sha = file_sha256(path) if Path(path).is_file() else None
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise ModelFileError(f"expected_sha256: the file's SHA-256 is {sha}, not {expected_sha256}")
    tensors, config = _read(path, FORMAT)
    try:
        target = target_from_config(config["target"], module)
        hg = HyperGAN(target, **config["hypergan"])
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"model: {str(path)!r} has an incomplete config ({exc!r})") from exc
    _load_state(hg, tensors, path)
    return LoadedModel(hg.to(device), config, sha or "", str(path))


def _load_state(module: nn.Module, tensors: Mapping[str, Tensor], path: object) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelFileError(
            f"model: {str(path)!r} does not match its config: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    for name, t in expected.items():
        if tuple(tensors[name].shape) != tuple(t.shape) or tensors[name].dtype != t.dtype:
            raise ModelFileError(
                f"model: tensor {name!r} in {str(path)!r} has shape {list(tensors[name].shape)} "
                f"{tensors[name].dtype}, the config implies {list(t.shape)} {t.dtype}"
            )
    module.load_state_dict(dict(tensors))


# --------------------------------------------------------------------------- checkpoints
def save_checkpoint(
    path: str | os.PathLike,
    hypergan: HyperGAN,
    optimizers: Mapping[str, torch.optim.Optimizer],
    state: Mapping[str, Any],
    schedulers: Mapping[str, Any] | None = None,
) -> None:
    """Model + optimizer moments + trainer state, for ``--resume`` after an interruption."""
    tensors = {f"model/{k}": v for k, v in hypergan.state_dict().items()}
    opt_meta: dict[str, Any] = {}
    for oname, opt in optimizers.items():
        sd = opt.state_dict()
        for pid, pstate in sd["state"].items():
            for key, value in pstate.items():
                tensors[f"optim/{oname}/{pid}/{key}"] = torch.as_tensor(value)
        opt_meta[oname] = sd["param_groups"]
    config = {
        "format": CHECKPOINT_FORMAT,
        "target": hypergan.target.config(),
        "hypergan": hypergan.hparams(),
        "optimizers": opt_meta,
        "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
        "state": dict(state),
    }
    meta = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "hgdefend_config": json.dumps(config),
        "tensors_sha256": tensors_sha256(tensors),
    }
    _atomic_save(tensors, meta, Path(path))


def load_checkpoint(
    path: str | os.PathLike,
    hypergan: HyperGAN,
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into existing objects; return trainer state."""
    tensors, config = _read(path, CHECKPOINT_FORMAT)
    if config["target"] != hypergan.target.config() or config["hypergan"] != hypergan.hparams():
        raise ModelFileError(
            f"resume: checkpoint {str(path)!r} was written for another target or hyper-parameters"
        )
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    _load_state(hypergan, model, path)
    device = hypergan.device
    for oname, opt in optimizers.items():
        state: dict[int, dict[str, Tensor]] = {}
        prefix = f"optim/{oname}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, skey = key[len(prefix) :].split("/", 1)
                state.setdefault(int(pid), {})[skey] = value if skey == "step" else value.to(device)
        opt.load_state_dict({"state": state, "param_groups": config["optimizers"][oname]})
    for sname, sched in (schedulers or {}).items():
        sched.load_state_dict(config["schedulers"][sname])
    return config["state"]
