"""The vocabulary every target shares: layer types, parameter groups and keys, the ``Target`` protocol.

A *target* knows its input shape, its parameter shapes (grouped into the layers that get one
generator each) and how to evaluate K weight sets on a batch at once, returning logits shaped
``[K, B, C]``. Member weights are a :data:`Params` dict whose keys :func:`param_key` names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

Params = dict[str, Tensor]
"""Member weights: parameter name -> tensor with a leading member axis ``[K, *shape]``."""

Strategy = str
"""``"auto"`` or ``"kernel[+modifier...]"``, e.g. ``"unfold+tf32"`` (see
:func:`hgdefend.targets.strategy.parse_strategy`)."""


# --------------------------------------------------------------------------- layer vocabulary
@dataclass(frozen=True)
class Conv:
    in_channels: int
    out_channels: int
    kernel_size: int
    padding: int = 0


@dataclass(frozen=True)
class Linear:
    in_features: int
    out_features: int


@dataclass(frozen=True)
class MaxPool:
    kernel_size: int = 2


@dataclass(frozen=True)
class Act:
    fn: Literal["leaky_relu", "relu", "tanh"] = "leaky_relu"
    negative_slope: float = 0.01


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class Dropout:
    """Active only when the forward is called with ``dropout=True`` (MC-dropout baseline)."""

    p: float = 0.5


Layer = Conv | Linear | MaxPool | Act | Flatten | Dropout
_LAYER_TYPES: dict[str, type] = {
    "conv": Conv,
    "linear": Linear,
    "maxpool": MaxPool,
    "act": Act,
    "flatten": Flatten,
    "dropout": Dropout,
}
_TYPE_NAMES = {v: k for k, v in _LAYER_TYPES.items()}


@dataclass(frozen=True)
class ParamGroup:
    """The parameters one generator produces (one target layer): name -> shape."""

    name: str
    shapes: dict[str, tuple[int, ...]]

    @property
    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def fan_in(self) -> int:
        w = self.shapes.get("weight") or next(iter(self.shapes.values()))
        return max(1, math.prod(w[1:])) if len(w) > 1 else max(1, w[0])


def param_key(group_name: str, param_name: str) -> str:
    """The key of one parameter in a :data:`Params` dict: ``"group.param"``, or ``"param"`` for a
    group with an empty name (the parameters a module owns directly)."""
    return f"{group_name}.{param_name}" if group_name else param_name


class Target(Protocol):
    """What the rest of the library needs from a target network."""

    name: str
    input_shape: tuple[int, ...]
    num_outputs: int
    task: str

    @property
    def param_groups(self) -> list[ParamGroup]: ...

    def forward(
        self, params: Params, x: Tensor, *, strategy: Strategy = "auto", dropout: bool = False
    ) -> Tensor: ...

    def init_params(self, k: int, generator: torch.Generator | None = None) -> Params: ...

    def config(self) -> dict[str, Any]: ...


def num_members(params: Params) -> int:
    return next(iter(params.values())).shape[0]


def check_params(target: Target, params: Params) -> int:
    """Validate a member-weight dict against the target's shapes; return K."""
    expected = {param_key(g.name, p): shape for g in target.param_groups for p, shape in g.shapes.items()}
    if set(params) != set(expected):
        missing = sorted(set(expected) - set(params))
        extra = sorted(set(params) - set(expected))
        raise ValueError(f"params: missing keys {missing}, unexpected keys {extra}")
    ks = {t.shape[0] for t in params.values()}
    if len(ks) != 1:
        raise ValueError(f"params: all tensors need the same member count, got {sorted(ks)}")
    k = ks.pop()
    if k < 1:
        raise ValueError("params: ensemble size K must be >= 1")
    for name, shape in expected.items():
        if tuple(params[name].shape[1:]) != tuple(shape):
            raise ValueError(
                f"params[{name!r}]: expected shape [K, {', '.join(map(str, shape))}], "
                f"got {list(params[name].shape)}"
            )
    return k


def _kaiming_init(groups: Sequence[ParamGroup], k: int, generator: torch.Generator | None) -> Params:
    """K independent initialisations of the groups' parameters, as torch's defaults for conv / linear."""
    if k < 1:
        raise ValueError(f"k: ensemble size must be >= 1, got {k}")
    out: Params = {}
    for g in groups:
        bound = 1.0 / math.sqrt(g.fan_in())
        for pname, shape in g.shapes.items():
            # torch's default for conv/linear: weight U(-b, b) with b = 1/sqrt(fan_in) (kaiming_uniform
            # with a=sqrt(5)), bias U(-b, b).
            t = torch.rand((k, *shape), generator=generator) * 2 - 1
            out[param_key(g.name, pname)] = t * bound
    return out
