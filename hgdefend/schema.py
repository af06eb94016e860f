"""Schemas for the JSON headers of model files and checkpoints, checked before anything is built.

:func:`parse_json` bounds size and nesting depth before parsing (no ``RecursionError``) and refuses
NaN/Infinity; :func:`check_model_config` and :func:`check_checkpoint_config` check types, ranges and
sizes of every field that changes behaviour. Every failure is one :class:`SchemaError` naming the
field (``target.layers[1].negative_slope``) and what was expected. Standard library only.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from .errors import HgdefendError
from .vocab import REGULARISERS

MAX_HEADER_CHARS = 1 << 20
MAX_DEPTH = 24
MAX_NAME = 200
MAX_LAYERS = 128
MAX_WIDTH = 1 << 20
"""Largest hidden size, channel or feature count a header may declare (memory is checked apart)."""
MAX_STEPS = 10**9
TASKS = ("classification", "regression")
LAYER_FIELDS: dict[str, dict[str, tuple[str, float, float]]] = {
    "conv": {
        "in_channels": ("int", 1, MAX_WIDTH),
        "out_channels": ("int", 1, MAX_WIDTH),
        "kernel_size": ("int", 1, 64),
        "padding": ("int", 0, 64),
    },
    "linear": {"in_features": ("int", 1, MAX_WIDTH), "out_features": ("int", 1, MAX_WIDTH)},
    "maxpool": {"kernel_size": ("int", 1, 64)},
    "act": {"fn": ("str", 0, 0), "negative_slope": ("float", 0.0, 1.0)},
    "flatten": {},
    "dropout": {"p": ("float", 0.0, 0.999)},
}
ACTIVATIONS = ("leaky_relu", "relu", "tanh")


class SchemaError(HgdefendError):
    """A header that does not match its schema."""


def _strip_strings(text: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)


def parse_json(
    text: object, what: str, *, max_chars: int = MAX_HEADER_CHARS, max_depth: int = MAX_DEPTH
) -> Any:
    """Parse JSON from an untrusted header, refusing oversized, too deeply nested or non-finite input."""
    if not isinstance(text, str):
        raise SchemaError(f"{what}: expected JSON text, got {type(text).__name__}")
    if len(text) > max_chars:
        raise SchemaError(f"{what}: is {len(text)} characters long, the limit is {max_chars}")
    depth = deepest = 0
    for m in re.finditer(r"[\[\]{}]", _strip_strings(text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
        if deepest > max_depth:
            raise SchemaError(f"{what}: JSON nested deeper than {max_depth} levels")

    def no_constant(name: str) -> float:
        raise ValueError(f"{name} is not allowed")

    try:
        return json.loads(text, parse_constant=no_constant)
    except (ValueError, RecursionError) as exc:
        raise SchemaError(f"{what}: is not valid JSON ({exc})") from exc


# --------------------------------------------------------------------------- field checks
def obj(
    value: object, where: str, *, required: tuple[str, ...] = (), allowed: tuple[str, ...] | None = None
) -> dict:
    if not isinstance(value, dict):
        raise SchemaError(f"{where}: expected a JSON object, got {_kind(value)}")
    missing = [k for k in required if k not in value]
    if missing:
        raise SchemaError(f"{where}: missing key(s) {missing}")
    if allowed is not None:
        extra = sorted(set(value) - set(allowed) - set(required))
        if extra:
            raise SchemaError(f"{where}: unexpected key(s) {[k[:40] for k in extra[:5]]}")
    return value


def integer(value: object, where: str, lo: float, hi: float) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SchemaError(f"{where}: expected an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise SchemaError(f"{where}: expected an integer in [{lo:g}, {hi:g}], got {value}")
    return value


def number(value: object, where: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SchemaError(f"{where}: expected a number, got {_kind(value)}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise SchemaError(f"{where}: expected a finite number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def string(
    value: object, where: str, *, choices: tuple[str, ...] | None = None, max_len: int = MAX_NAME
) -> str:
    if not isinstance(value, str):
        raise SchemaError(f"{where}: expected a string, got {_kind(value)}")
    if choices is not None and value not in choices:
        raise SchemaError(f"{where}: expected one of {list(choices)}, got {value[:60]!r}")
    if len(value) > max_len:
        raise SchemaError(f"{where}: longer than {max_len} characters")
    return value


def boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise SchemaError(f"{where}: expected true or false, got {_kind(value)}")
    return value


def int_list(
    value: object, where: str, lo: float, hi: float, *, min_len: int = 0, max_len: int = 1 << 16
) -> list[int]:
    if not isinstance(value, list):
        raise SchemaError(f"{where}: expected a list, got {_kind(value)}")
    if not min_len <= len(value) <= max_len:
        raise SchemaError(f"{where}: expected {min_len} to {max_len} entries, got {len(value)}")
    return [integer(v, f"{where}[{i}]", lo, hi) for i, v in enumerate(value)]


def optional(value: object, where: str, check: Callable[[object, str], object]) -> object:
    return None if value is None else check(value, where)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"a {type(value).__name__}")


# --------------------------------------------------------------------------- model files
def check_target(cfg: object, where: str = "target") -> dict:
    t = obj(cfg, where, required=("kind", "name", "input_shape", "task"))
    kind = string(t["kind"], f"{where}.kind", choices=("spec", "module", "head"))
    string(t["name"], f"{where}.name")
    int_list(t["input_shape"], f"{where}.input_shape", 1, MAX_WIDTH, min_len=1, max_len=4)
    string(t["task"], f"{where}.task", choices=TASKS)
    if kind == "spec":
        obj(t, where, required=("layers",), allowed=("kind", "name", "input_shape", "task"))
        layers = t["layers"]
        if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
            raise SchemaError(f"{where}.layers: expected a list of 1 to {MAX_LAYERS} layers")
        for i, layer in enumerate(layers):
            _check_layer(layer, f"{where}.layers[{i}]")
    else:
        head = ("generate", "backbone_sha256") if kind == "head" else ()
        obj(
            t,
            where,
            required=("num_outputs", "param_shapes", *head),
            allowed=("kind", "name", "input_shape", "task", *(("compact",) if kind == "head" else ())),
        )
        if kind == "head":
            _check_head(t, where)
        integer(t["num_outputs"], f"{where}.num_outputs", 1, MAX_WIDTH)
        shapes = obj(t["param_shapes"], f"{where}.param_shapes")
        if not 1 <= len(shapes) <= 4 * MAX_LAYERS:
            raise SchemaError(f"{where}.param_shapes: expected 1 to {4 * MAX_LAYERS} entries")
        for key, shape in shapes.items():
            string(key, f"{where}.param_shapes key")
            int_list(shape, f"{where}.param_shapes[{key[:40]!r}]", 1, MAX_WIDTH, max_len=6)
    return t


def _check_head(t: dict, where: str) -> None:
    """The fields a head target (a generated head over a frozen pretrained model) adds."""
    names = t["generate"]
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_LAYERS:
        raise SchemaError(f"{where}.generate: expected a list of 1 to {MAX_LAYERS} submodule names")
    for i, n in enumerate(names):
        string(n, f"{where}.generate[{i}]")
    if "compact" in t:  # how each generated name is parametrised (HeadTarget's compact=)
        compact = obj(t["compact"], f"{where}.compact")
        if set(compact) != set(names):
            raise SchemaError(f"{where}.compact: expected one mode per generated name")
        for n, mode in compact.items():
            string(mode, f"{where}.compact[{str(n)[:40]!r}]", max_len=16)
            if not re.fullmatch(r"full|scales|lowrank:[1-9][0-9]{0,3}", mode):
                raise SchemaError(f"{where}.compact[{str(n)[:40]!r}]: expected full, scales or lowrank:R")
    sha = string(t["backbone_sha256"], f"{where}.backbone_sha256", max_len=64)
    if not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise SchemaError(f"{where}.backbone_sha256: expected 64 lowercase hex digits")


def _check_layer(layer: object, where: str) -> None:
    entry = obj(layer, where, required=("type",))
    typ = string(entry["type"], f"{where}.type", choices=tuple(LAYER_FIELDS))
    fields = LAYER_FIELDS[typ]
    obj(entry, where, allowed=("type", *fields))
    for name, (kind, lo, hi) in fields.items():
        if name not in entry:
            continue
        if kind == "int":
            integer(entry[name], f"{where}.{name}", lo, hi)
        elif kind == "float":
            number(entry[name], f"{where}.{name}", lo, hi)
        else:
            string(entry[name], f"{where}.{name}", choices=ACTIVATIONS)


def check_hparams(cfg: object, where: str = "hypergan") -> dict:
    keys = ("noise_dim", "code_dim", "hidden", "regulariser", "beta", "mixer")
    h = obj(cfg, where, required=keys, allowed=keys)
    for key in ("noise_dim", "code_dim", "hidden"):
        integer(h[key], f"{where}.{key}", 1, MAX_WIDTH)
    string(h["regulariser"], f"{where}.regulariser", choices=REGULARISERS)
    number(h["beta"], f"{where}.beta", 0.0, 1e6)
    boolean(h["mixer"], f"{where}.mixer")
    return h


def check_dataset(cfg: object, where: str = "dataset") -> dict:
    d = obj(cfg, where)
    if "name" in d:
        string(d["name"], f"{where}.name", max_len=4096)
    if "classes" in d:
        classes = int_list(d["classes"], f"{where}.classes", 0, MAX_WIDTH, min_len=1)
        if len(set(classes)) != len(classes):
            raise SchemaError(f"{where}.classes: class labels must be distinct")
    if "input_shape" in d:
        int_list(d["input_shape"], f"{where}.input_shape", 1, MAX_WIDTH, min_len=1, max_len=4)
    for key in ("num_classes_all", "train", "calibration", "test"):
        if key in d:
            integer(d[key], f"{where}.{key}", 0, 1 << 40)
    if "split_seed" in d:
        optional(d["split_seed"], f"{where}.split_seed", lambda v, w: integer(v, w, -(1 << 63), 1 << 64))
    return d


def check_training(cfg: object, where: str = "training") -> dict:
    t = obj(cfg, where)
    if "steps" in t:
        integer(t["steps"], f"{where}.steps", 0, MAX_STEPS)
    if "seed" in t:
        integer(t["seed"], f"{where}.seed", -(1 << 63), 1 << 64)
    for key in ("recipe", "final"):
        if key in t:
            obj(t[key], f"{where}.{key}")
    return t


def check_model_config(cfg: object, fmt: str, version: int) -> dict:
    keys = ("format", "format_version", "library_version", "target", "hypergan", "dataset", "training")
    c = obj(cfg, "config", required=keys, allowed=keys)
    string(c["format"], "config.format", choices=(fmt,))
    integer(c["format_version"], "config.format_version", version, version)
    string(c["library_version"], "config.library_version", max_len=64)
    check_target(c["target"])
    check_hparams(c["hypergan"])
    check_dataset(c["dataset"])
    check_training(c["training"])
    return c


# --------------------------------------------------------------------------- checkpoints
def check_checkpoint_config(cfg: object, fmt: str, version: int) -> dict:
    keys = ("format", "format_version", "target", "hypergan", "optimizers", "schedulers", "state")
    c = obj(cfg, "checkpoint", required=keys, allowed=keys)
    string(c["format"], "checkpoint.format", choices=(fmt,))
    integer(c["format_version"], "checkpoint.format_version", version, version)
    check_target(c["target"], "checkpoint.target")
    check_hparams(c["hypergan"], "checkpoint.hypergan")
    for name, groups in obj(c["optimizers"], "checkpoint.optimizers").items():
        if not isinstance(groups, list) or not 1 <= len(groups) <= 16:
            raise SchemaError(
                f"checkpoint.optimizers[{name[:40]!r}]: expected a list of 1 to 16 param groups"
            )
        for i, group in enumerate(groups):
            g = obj(group, f"checkpoint.optimizers[{name[:40]!r}][{i}]", required=("lr", "params"))
            for key in ("lr", "initial_lr"):
                if key in g:
                    number(g[key], f"checkpoint.optimizers[{name[:40]!r}][{i}].{key}", 0.0, 1e6)
    for name, sched in obj(c["schedulers"], "checkpoint.schedulers").items():
        s = obj(sched, f"checkpoint.schedulers[{name[:40]!r}]")
        if "last_epoch" in s:
            integer(s["last_epoch"], f"checkpoint.schedulers[{name[:40]!r}].last_epoch", -1, MAX_STEPS)
    state = obj(c["state"], "checkpoint.state", required=("step", "history", "mixer_pretrain"))
    step = integer(state["step"], "checkpoint.state.step", 0, MAX_STEPS)
    if not isinstance(state["history"], list):
        raise SchemaError("checkpoint.state.history: expected a list")
    obj(state["mixer_pretrain"], "checkpoint.state.mixer_pretrain")
    if "seconds" in state:
        number(state["seconds"], "checkpoint.state.seconds", 0.0, 1e9)
    if "config" in state:
        conf = obj(state["config"], "checkpoint.state.config")
        if "steps" in conf:
            steps = integer(conf["steps"], "checkpoint.state.config.steps", 1, MAX_STEPS)
            if step > steps:
                raise SchemaError(f"checkpoint.state.step: {step} is past the run's {steps} steps")
    return c
