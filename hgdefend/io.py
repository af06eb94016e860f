"""Safe model files: safetensors weights with a JSON config in the header. Nothing is unpickled.

A model file is ONE ``.safetensors`` file. Its header metadata holds ``hgdefend_config`` (format
version, target spec, hyper-parameters, dataset and class labels, training recipe, library version)
and ``content_sha256``, one digest over that config (as canonical JSON) and every tensor's name,
dtype, shape and bytes (:func:`content_sha256`). On load the header is checked against its schema
(:mod:`hgdefend.schema`: types, ranges, nesting depth, sizes), the declared tensor shapes against
the config (on the ``meta`` device: nothing is allocated), the file's size against the memory
limit (:mod:`hgdefend.resources`), then the digest, and only then is anything built. Checkpoints
use the same envelope and also cover the optimizer, scheduler and trainer state. Writes go to a
temporary file that replaces the target only when complete: a failed run never clobbers a good model.

The digest catches accidental and careless edits; whoever can rewrite a file can recompute it, so
the defence against a deliberate edit is pinning the file's SHA-256 (``expected_sha256=``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from . import __version__
from .envelope import (
    CHECKPOINT_FORMAT,
    DIGEST_KEY,
    DTYPES,
    FORMAT,
    FORMAT_VERSION,
    ModelFileError,
    Shapes,
    canonical_json,
    check_shapes,
    content_sha256,
    read_envelope,
    tensors_sha256,
    write_envelope,
)
from .fileio import file_sha256
from .hypergan import HyperGAN
from .resources import check_memory
from .schema import SchemaError, check_checkpoint_config, check_model_config, parse_json
from .targets import target_from_config
from .validation import HgdefendError

__all__ = [
    "CHECKPOINT_FORMAT",
    "DIGEST_KEY",
    "FORMAT",
    "FORMAT_VERSION",
    "LoadedModel",
    "ModelFileError",
    "content_sha256",
    "file_sha256",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "save_model",
    "tensors_sha256",
    "upgrade_model_file",
]


def _build(config: Mapping[str, Any], module: nn.Module | None, where: str, *, meta: bool) -> HyperGAN:
    """The HyperGAN a config describes (on the ``meta`` device: shapes only, nothing allocated)."""
    try:
        target = target_from_config(config["target"], module)
        if meta:
            with torch.device("meta"):
                return HyperGAN(target, **config["hypergan"])
        return HyperGAN(target, **config["hypergan"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, HgdefendError) and not isinstance(exc, SchemaError):
            raise
        raise ModelFileError(f"{where}: has an inconsistent config ({exc})") from exc


def _state_shapes(hg: HyperGAN, prefix: str = "") -> Shapes:
    sd = hg.state_dict()
    check_memory(
        sum(t.numel() * t.element_size() for t in sd.values()), "model: the networks its config declares"
    )
    return {prefix + k: (tuple(t.shape), DTYPES.get(t.dtype, "")) for k, t in sd.items()}


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
    """Write ``hypergan`` to ``path`` atomically; return the file's SHA-256.

    ``dataset`` and ``training`` are stored in the config (covered by the digest); keep them free
    of wall-clock times so that identical runs give byte-identical files.
    """
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "target": hypergan.target.config(),
        "hypergan": hypergan.hparams(),
        "dataset": dict(dataset or {}),
        "training": dict(training or {}),
    }
    try:
        config = check_model_config(json.loads(canonical_json(config)), FORMAT, FORMAT_VERSION)
    except (SchemaError, ValueError, TypeError) as exc:
        raise ModelFileError(f"save_model: the config would not load back: {exc}") from exc
    p = Path(path)
    write_envelope(dict(hypergan.state_dict()), config, p)
    return file_sha256(p)


def load_model(
    path: str | os.PathLike,
    *,
    module: nn.Module | None = None,
    expected_sha256: str | None = None,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Load a model file, checking format, version, header schema, integrity, key names and shapes.

    ``module`` is needed only for models trained on a user ``nn.Module`` target;
    ``expected_sha256`` pins the exact file (e.g. a hash published with the model).
    """
    sha = file_sha256(path) if Path(path).is_file() else None
    if expected_sha256 is not None and sha != expected_sha256.lower():
        raise ModelFileError(f"expected_sha256: the file's SHA-256 is {sha}, not {expected_sha256}")
    where = f"model: {str(path)!r}"

    def check_declared(config: dict[str, Any], declared: Shapes) -> None:
        check_shapes(Path(path), declared, _state_shapes(_build(config, module, where, meta=True)))

    tensors, config = read_envelope(path, FORMAT, check_model_config, check_declared)
    hg = _build(config, module, where, meta=False)
    _check_classes(config, hg, where)
    hg.load_state_dict(dict(tensors))
    return LoadedModel(hg.to(device), config, sha or "", str(path))


def _check_classes(config: Mapping[str, Any], hg: HyperGAN, where: str) -> None:
    classes = config["dataset"].get("classes")
    n = hg.target.num_outputs if hg.target.task == "classification" else None
    if classes is not None and n is not None and len(classes) != n:
        raise ModelFileError(
            f"{where}: has an inconsistent config (dataset.classes lists {len(classes)} labels, "
            f"the network has {n} outputs)"
        )


def upgrade_model_file(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """Re-save a format-1 model file you trust in the current format; return the new file's SHA-256.

    Format 1 covered only the tensors by its digest, so this checks the tensors and the header's
    schema but cannot prove the header (config, class labels) is what was saved: use it only on
    files from a source you trust, and prefer retraining.
    """
    p = Path(src)
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT or meta.get("format_version") != "1":
        raise ModelFileError(f"model: {str(p)!r} is not a format-1 {FORMAT} file")
    if meta.get("tensors_sha256") != tensors_sha256(tensors):
        raise ModelFileError(f"model: {str(p)!r} failed its integrity check (tensors were altered)")
    try:
        config = parse_json(meta.get("hgdefend_config"), "config")
        config = check_model_config({**config, "format_version": FORMAT_VERSION}, FORMAT, FORMAT_VERSION)
    except (SchemaError, TypeError) as exc:
        raise ModelFileError(f"model: {str(p)!r} has a malformed header: {exc}") from exc
    config["training"].pop("seconds", None)
    hg = _build(config, None, f"model: {str(p)!r}", meta=False)
    check_shapes(
        p, {k: (tuple(v.shape), DTYPES.get(v.dtype, "")) for k, v in tensors.items()}, _state_shapes(hg)
    )
    hg.load_state_dict(tensors)
    return save_model(dst, hg, dataset=config["dataset"], training=config["training"])


# --------------------------------------------------------------------------- checkpoints
_OPTIM_KEYS = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def save_checkpoint(
    path: str | os.PathLike,
    hypergan: HyperGAN,
    optimizers: Mapping[str, torch.optim.Optimizer],
    state: Mapping[str, Any],
    schedulers: Mapping[str, Any] | None = None,
) -> None:
    """Model + optimizer moments + trainer state, for ``--resume`` after an interruption.

    One envelope: the digest covers the tensors and the config (step, optimizer param groups,
    scheduler state, trainer state).
    """
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
        "format_version": FORMAT_VERSION,
        "target": hypergan.target.config(),
        "hypergan": hypergan.hparams(),
        "optimizers": opt_meta,
        "schedulers": {k: s.state_dict() for k, s in (schedulers or {}).items()},
        "state": dict(state),
    }
    write_envelope(tensors, json.loads(canonical_json(config)), Path(path))


def load_checkpoint(
    path: str | os.PathLike,
    hypergan: HyperGAN,
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote into existing objects; return trainer state.

    Everything is checked before anything is restored: envelope, schema, tensor shapes against the
    model and its optimizers, param groups and scheduler state against the ones being resumed.
    """
    p = Path(path)
    params = {oname: [q for g in opt.param_groups for q in g["params"]] for oname, opt in optimizers.items()}

    def check_declared(config: dict[str, Any], declared: Shapes) -> None:
        if config["target"] != hypergan.target.config() or config["hypergan"] != hypergan.hparams():
            raise ModelFileError(
                f"resume: checkpoint {str(p)!r} was written for another target or hyper-parameters"
            )
        model = {k: v for k, v in declared.items() if k.startswith("model/")}
        check_shapes(p, model, _state_shapes(hypergan, "model/"))
        for key, (shape, _) in declared.items():
            if key.startswith("model/"):
                continue
            parts = key.split("/")
            ok = len(parts) == 4 and parts[0] == "optim" and parts[1] in params and parts[3] in _OPTIM_KEYS
            pid = int(parts[2]) if ok and parts[2].isdigit() else -1
            if not 0 <= pid < len(params.get(parts[1], [])):
                raise ModelFileError(f"resume: checkpoint {str(p)!r} has an unexpected tensor {key[:80]!r}")
            want = () if parts[3] == "step" else tuple(params[parts[1]][pid].shape)
            if shape != want:
                raise ModelFileError(
                    f"resume: checkpoint {str(p)!r}: tensor {key!r} has shape {list(shape)}, "
                    f"expected {list(want)}"
                )

    tensors, config = read_envelope(p, CHECKPOINT_FORMAT, check_checkpoint_config, check_declared)
    _check_optimizer_state(p, config, optimizers, schedulers or {}, tensors)
    model = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    hypergan.load_state_dict(model)
    device = hypergan.device
    for oname, opt in optimizers.items():
        state: dict[int, dict[str, Tensor]] = {}
        prefix = f"optim/{oname}/"
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, skey = key[len(prefix) :].split("/", 1)
                state.setdefault(int(pid), {})[skey] = value if skey == "step" else value.to(device)
        # how this run's optimizer computes (fused, foreach, ...) stays this run's: a checkpoint
        # written on a GPU resumes on a CPU and the other way round
        current = opt.state_dict()["param_groups"]
        groups = [
            {**saved, **{k: g[k] for k in IMPLEMENTATION_KEYS if k in g}}
            for saved, g in zip(config["optimizers"][oname], current, strict=True)
        ]
        opt.load_state_dict({"state": state, "param_groups": groups})
    for sname, sched in (schedulers or {}).items():
        sched.load_state_dict(config["schedulers"][sname])
    return config["state"]


def _check_optimizer_state(
    p: Path,
    config: Mapping[str, Any],
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
) -> None:
    """Param groups and schedulers must be those being resumed (only ``lr`` moves, within its
    initial value); every optimizer tensor must be finite."""
    where = f"resume: checkpoint {str(p)!r}"
    if set(config["optimizers"]) != set(optimizers) or set(config["schedulers"]) != set(schedulers):
        raise ModelFileError(f"{where} has other optimizers or schedulers than this run")
    for oname, opt in optimizers.items():
        current = opt.state_dict()["param_groups"]
        saved = config["optimizers"][oname]
        if len(saved) != len(current):
            raise ModelFileError(
                f"{where}: optimizer {oname!r} has {len(saved)} param groups, expected {len(current)}"
            )
        for i, (old, new) in enumerate(zip(saved, current, strict=True)):
            fixed = {k: v for k, v in new.items() if k != "lr" and k not in IMPLEMENTATION_KEYS}
            if set(old) != set(new) or any(_jsonish(old[k]) != _jsonish(v) for k, v in fixed.items()):
                raise ModelFileError(
                    f"{where} was written with another training config (optimizer {oname!r} "
                    f"group {i} differs; only the learning rate may)"
                )
            top = float(new.get("initial_lr", new["lr"]))
            if not (math.isfinite(old["lr"]) and 0.0 <= old["lr"] <= top * (1 + 1e-6)):
                raise ModelFileError(
                    f"{where}: optimizer {oname!r} learning rate {old['lr']!r} is outside [0, {top:g}]"
                )
    for sname, sched in schedulers.items():
        saved, current = config["schedulers"][sname], sched.state_dict()
        if set(saved) != set(current) or _jsonish(saved.get("base_lrs")) != _jsonish(current.get("base_lrs")):
            raise ModelFileError(f"{where} was written with another training config (scheduler {sname!r})")
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelFileError(f"{where}: tensor {key!r} holds NaN or infinite values")


IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")
"""Optimizer options that change how an update is computed on a device, not what it computes."""


def _jsonish(value: Any) -> Any:
    return json.loads(canonical_json(value))
