"""Target networks: what the HyperGAN generates weights for, and the ONE batched member forward.

A *target* knows its input shape, its parameter shapes (grouped into the layers that get one
generator each) and how to evaluate K weight sets on a batch at once, returning logits shaped
``[K, B, C]``. Two kinds exist:

* :class:`TargetSpec` — a small declarative list of conv / linear / pool / activation layers that
  can be written to JSON (model files carry it) and evaluated with grouped convolutions.
* :class:`ModuleTarget` — any user ``torch.nn.Module`` classifier, evaluated for K members with
  ``torch.func.functional_call`` + ``vmap``.

Everything that evaluates members (training, ensembles, attacks, detectors, export) goes through
``target.forward(params, x)``; the per-network ``"loop"`` strategy exists only as the reference that
tests and benchmarks compare against.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Params = dict[str, Tensor]
"""Member weights: parameter name -> tensor with a leading member axis ``[K, *shape]``."""

STRATEGIES = ("auto", "grouped", "vmap", "loop")
Strategy = Literal["auto", "grouped", "vmap", "loop"]


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
    expected = {
        f"{g.name}.{p}" if g.name else p: shape for g in target.param_groups for p, shape in g.shapes.items()
    }
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


# --------------------------------------------------------------------------- declarative spec
@dataclass(frozen=True)
class TargetSpec:
    """A target network as data: JSON-serialisable, shape-checked at construction."""

    name: str
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]
    task: Literal["classification", "regression"] = "classification"

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(s) for s in self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task: expected 'classification' or 'regression', got {self.task!r}")
        self._output_shape()  # raises on an inconsistent stack

    # shape bookkeeping ------------------------------------------------------------------
    def _output_shape(self) -> tuple[int, ...]:
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            where = f"layers[{i}] ({type(layer).__name__})"
            if isinstance(layer, Conv):
                if len(shape) != 3 or shape[0] != layer.in_channels:
                    raise ValueError(f"{where}: expects [{layer.in_channels}, H, W], gets {shape}")
                h = shape[1] + 2 * layer.padding - layer.kernel_size + 1
                w = shape[2] + 2 * layer.padding - layer.kernel_size + 1
                if h < 1 or w < 1:
                    raise ValueError(f"{where}: kernel larger than input {shape}")
                shape = (layer.out_channels, h, w)
            elif isinstance(layer, MaxPool):
                if len(shape) != 3:
                    raise ValueError(f"{where}: expects [C, H, W], gets {shape}")
                shape = (shape[0], shape[1] // layer.kernel_size, shape[2] // layer.kernel_size)
                if shape[1] < 1 or shape[2] < 1:
                    raise ValueError(f"{where}: pooling leaves an empty map")
            elif isinstance(layer, Flatten):
                shape = (math.prod(shape),)
            elif isinstance(layer, Linear):
                if len(shape) != 1 or shape[0] != layer.in_features:
                    raise ValueError(f"{where}: expects [{layer.in_features}], gets {shape}")
                shape = (layer.out_features,)
            elif isinstance(layer, Dropout):
                if not 0.0 <= layer.p < 1.0:
                    raise ValueError(f"{where}: p must be in [0, 1)")
            elif not isinstance(layer, Act):
                raise ValueError(f"{where}: unknown layer type")
        if len(shape) != 1:
            raise ValueError(f"the last layer must output a vector, got shape {shape}")
        return shape

    @property
    def num_outputs(self) -> int:
        return self._output_shape()[0]

    @property
    def param_groups(self) -> list[ParamGroup]:
        groups = []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Conv):
                w = (layer.out_channels, layer.in_channels, layer.kernel_size, layer.kernel_size)
                groups.append(ParamGroup(str(i), {"weight": w, "bias": (layer.out_channels,)}))
            elif isinstance(layer, Linear):
                w = (layer.out_features, layer.in_features)
                groups.append(ParamGroup(str(i), {"weight": w, "bias": (layer.out_features,)}))
        return groups

    # serialisation ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "kind": "spec",
            "name": self.name,
            "input_shape": list(self.input_shape),
            "task": self.task,
            "layers": [
                {"type": _TYPE_NAMES[type(layer)], **dataclasses.asdict(layer)} for layer in self.layers
            ],
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TargetSpec:
        try:
            layers = []
            for entry in cfg["layers"]:
                entry = dict(entry)
                typ = _LAYER_TYPES[entry.pop("type")]
                layers.append(typ(**entry))
            return cls(cfg["name"], tuple(cfg["input_shape"]), tuple(layers), cfg["task"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"target config: malformed ({exc!r})") from exc

    # weights ----------------------------------------------------------------------------
    def init_params(self, k: int, generator: torch.Generator | None = None) -> Params:
        """K independent initialisations (Kaiming-uniform, as torch's defaults)."""
        return _kaiming_init(self.param_groups, k, generator)

    # the batched forward ----------------------------------------------------------------
    def forward(
        self, params: Params, x: Tensor, *, strategy: Strategy = "auto", dropout: bool = False
    ) -> Tensor:
        """Logits ``[K, B, C]`` of K members on a shared batch ``x`` of shape ``[B, *input]``."""
        if strategy == "auto":
            strategy = choose_strategy(x.device, torch.is_grad_enabled())
        if strategy == "grouped":
            return self._forward_grouped(params, x, dropout)
        if strategy == "vmap":
            return torch.func.vmap(
                lambda p: self._forward_single(p, x, dropout),
                randomness="different" if dropout else "error",
            )(params)
        if strategy == "loop":
            k = num_members(params)
            return torch.stack(
                [self._forward_single({n: t[i] for n, t in params.items()}, x, dropout) for i in range(k)]
            )
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")

    def _forward_single(self, p: Params, x: Tensor, dropout: bool) -> Tensor:
        """One network, plain torch ops: the reference every strategy is tested against."""
        h = x
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Conv):
                h = F.conv2d(h, p[f"{i}.weight"], p[f"{i}.bias"], padding=layer.padding)
            elif isinstance(layer, Linear):
                h = F.linear(h, p[f"{i}.weight"], p[f"{i}.bias"])
            else:
                h = _apply_stateless(layer, h, dropout)
        return h

    def _forward_grouped(self, params: Params, x: Tensor, dropout: bool) -> Tensor:
        """All K members at once: grouped convolutions on ``[B, K*C, H, W]``, ``bmm`` for linears.

        The first layer sees the *shared* input, so it runs as one ordinary conv / matmul with the
        K weight sets stacked along the output axis — no K-fold copy of the input.
        """
        k = num_members(params)
        b = x.shape[0]
        h = x
        layout = "shared"  # "shared": [B, ...]; "grouped": [B, K*C, H, W]; "members": [K, B, F]
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Conv):
                w, bias = params[f"{i}.weight"], params[f"{i}.bias"]
                w = w.reshape(k * layer.out_channels, *w.shape[2:])
                if layout == "shared":
                    h = F.conv2d(h, w, bias.reshape(-1), padding=layer.padding)
                else:
                    h = F.conv2d(h, w, bias.reshape(-1), padding=layer.padding, groups=k)
                layout = "grouped"
            elif isinstance(layer, Linear):
                w, bias = params[f"{i}.weight"], params[f"{i}.bias"]
                if layout == "shared":
                    h = F.linear(h, w.reshape(k * layer.out_features, -1), bias.reshape(-1))
                    h = h.reshape(b, k, layer.out_features).transpose(0, 1)
                else:
                    if layout == "grouped":
                        h = h.reshape(b, k, -1).transpose(0, 1)
                    h = torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
                layout = "members"
            elif isinstance(layer, Flatten):
                if layout == "grouped":
                    h = h.reshape(b, k, -1).transpose(0, 1)
                    layout = "members"
                elif layout == "shared":
                    h = h.reshape(b, -1)
            else:
                h = _apply_stateless(layer, h, dropout)
        if layout == "shared":  # a spec with no parameters: every member is the same function
            h = h.unsqueeze(0).expand(k, *h.shape)
        return h


def _apply_stateless(layer: Layer, h: Tensor, dropout: bool) -> Tensor:
    if isinstance(layer, Act):
        if layer.fn == "leaky_relu":
            return F.leaky_relu(h, layer.negative_slope)
        if layer.fn == "relu":
            return F.relu(h)
        if layer.fn == "tanh":
            return torch.tanh(h)
        raise ValueError(f"activation {layer.fn!r} is not supported")
    if isinstance(layer, MaxPool):
        return F.max_pool2d(h, layer.kernel_size)
    if isinstance(layer, Flatten):
        return h.flatten(-3) if h.dim() >= 3 else h
    if isinstance(layer, Dropout):
        return F.dropout(h, layer.p, training=True) if dropout else h
    raise ValueError(f"layer {layer!r} has no stateless form")


def choose_strategy(device: torch.device, grad: bool) -> str:
    """The default member-evaluation strategy for a device and mode.

    Grouped convolution is the measured winner for training steps on GPU and for every mode on CPU
    (benchmarks/members.py); change this one function when a measurement says otherwise.
    """
    return "grouped"


def _kaiming_init(groups: Sequence[ParamGroup], k: int, generator: torch.Generator | None) -> Params:
    if k < 1:
        raise ValueError(f"k: ensemble size must be >= 1, got {k}")
    out: Params = {}
    for g in groups:
        bound = 1.0 / math.sqrt(g.fan_in())
        for pname, shape in g.shapes.items():
            # torch's default for conv/linear: weight U(-b, b) with b = 1/sqrt(fan_in) (kaiming_uniform
            # with a=sqrt(5)), bias U(-b, b).
            t = torch.rand((k, *shape), generator=generator) * 2 - 1
            out[f"{g.name}.{pname}" if g.name else pname] = t * bound
    return out


# --------------------------------------------------------------------------- built-in specs
def mnist_paper(num_classes: int = 10) -> TargetSpec:
    """The paper's MNIST net (A.4): conv 1→32 5×5, pool, conv 32→32 5×5, pool, linear 512→C."""
    return TargetSpec(
        "mnist_paper",
        (1, 28, 28),
        (
            Conv(1, 32, 5), Act(), MaxPool(2),
            Conv(32, 32, 5), Act(), MaxPool(2),
            Flatten(), Linear(512, num_classes),
        ),
    )  # fmt: skip


def cifar10_paper(num_classes: int = 10, channels: Sequence[int] = (16, 32, 32)) -> TargetSpec:
    """The paper's CIFAR-10 net: three 3×3 convs + leaky ReLU + pool, linear →128→C.

    The paper's table is inconsistent about the linear input size; it is derived from the conv
    stack here (3 pools of 2 on 32×32 leave 4×4 maps).
    """
    c1, c2, c3 = channels
    return TargetSpec(
        "cifar10_paper",
        (3, 32, 32),
        (
            Conv(3, c1, 3, padding=1), Act(), MaxPool(2),
            Conv(c1, c2, 3, padding=1), Act(), MaxPool(2),
            Conv(c2, c3, 3, padding=1), Act(), MaxPool(2),
            Flatten(), Linear(c3 * 16, 128), Act(), Linear(128, num_classes),
        ),
    )  # fmt: skip


def digits_small(num_classes: int = 10) -> TargetSpec:
    """A small conv net for scikit-learn's 8×8 digits: fast enough to train in seconds on a CPU."""
    return TargetSpec(
        "digits_small",
        (1, 8, 8),
        (
            Conv(1, 16, 3, padding=1), Act(), MaxPool(2),
            Conv(16, 32, 3, padding=1), Act(), MaxPool(2),
            Flatten(), Linear(128, num_classes),
        ),
    )  # fmt: skip


def regression_1d(hidden: int = 100) -> TargetSpec:
    """The paper's 1-D regression MLP: 1 → 100 ReLU → 1."""
    return TargetSpec(
        "regression_1d",
        (1,),
        (Linear(1, hidden), Act("relu"), Linear(hidden, 1)),
        task="regression",
    )


def mc_dropout_variant(spec: TargetSpec, p: float = 0.25) -> TargetSpec:
    """The same net with dropout before every linear layer (for the MC-dropout baseline)."""
    layers: list[Layer] = []
    for layer in spec.layers:
        if isinstance(layer, Linear):
            layers.append(Dropout(p))
        layers.append(layer)
    return TargetSpec(spec.name + "_mcdropout", spec.input_shape, tuple(layers), spec.task)


BUILTIN_SPECS = {
    "mnist_paper": mnist_paper,
    "cifar10_paper": cifar10_paper,
    "digits_small": digits_small,
    "regression_1d": regression_1d,
}


# --------------------------------------------------------------------------- user modules
class ModuleTarget:
    """Any ``nn.Module`` as a target: its parameters are generated, its buffers kept fixed.

    One generator per submodule that owns parameters. Evaluated for K members with
    ``torch.func.functional_call`` under ``vmap``. Model files store only the parameter shapes;
    loading needs the same module class from the user (no code is ever loaded from a file).
    """

    def __init__(
        self,
        module: nn.Module,
        input_shape: Sequence[int],
        task: Literal["classification", "regression"] = "classification",
        name: str | None = None,
    ) -> None:
        if not isinstance(module, nn.Module):
            raise ValueError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
        self.module = copy.deepcopy(module).eval()
        for prm in self.module.parameters():
            prm.requires_grad_(False)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.task = task
        self.name = name or type(module).__name__
        groups: dict[str, dict[str, tuple[int, ...]]] = {}
        for pname, prm in self.module.named_parameters():
            owner, _, leaf = pname.rpartition(".")
            groups.setdefault(owner, {})[leaf] = tuple(prm.shape)
        if not groups:
            raise ValueError("module: has no parameters to generate")
        self._groups = [ParamGroup(owner, shapes) for owner, shapes in groups.items()]
        with torch.no_grad():
            out = self.module(torch.zeros(1, *self.input_shape))
        if out.dim() != 2:
            raise ValueError(f"module: must return [B, C] outputs, got shape {list(out.shape)}")
        self.num_outputs = int(out.shape[1])

    @property
    def param_groups(self) -> list[ParamGroup]:
        return self._groups

    def config(self) -> dict[str, Any]:
        return {
            "kind": "module",
            "name": self.name,
            "input_shape": list(self.input_shape),
            "task": self.task,
            "num_outputs": self.num_outputs,
            "param_shapes": {
                f"{g.name}.{p}" if g.name else p: list(s) for g in self._groups for p, s in g.shapes.items()
            },
        }

    def init_params(self, k: int, generator: torch.Generator | None = None) -> Params:
        return _kaiming_init(self._groups, k, generator)

    def forward(
        self, params: Params, x: Tensor, *, strategy: Strategy = "auto", dropout: bool = False
    ) -> Tensor:
        self.module.train(dropout)
        try:
            buffers = dict(self.module.named_buffers())

            def one(p: Params) -> Tensor:
                return torch.func.functional_call(self.module, {**p, **buffers}, (x,))

            if strategy == "loop":
                k = num_members(params)
                return torch.stack([one({n: t[i] for n, t in params.items()}) for i in range(k)])
            if strategy not in ("auto", "vmap", "grouped"):
                raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
            return torch.func.vmap(one, randomness="different" if dropout else "error")(params)
        finally:
            self.module.eval()

    def to(self, device: torch.device | str) -> ModuleTarget:
        self.module.to(device)
        return self


def target_from_config(cfg: dict[str, Any], module: nn.Module | None = None) -> Target:
    """Rebuild a target from a model file's config; a module target needs the user's module."""
    kind = cfg.get("kind")
    if kind == "spec":
        return TargetSpec.from_config(cfg)
    if kind == "module":
        if module is None:
            raise ValueError(
                f"module: this model file was trained on a user module ({cfg.get('name')!r}); "
                "pass the same nn.Module class instance to load it"
            )
        target = ModuleTarget(module, cfg["input_shape"], cfg["task"], cfg["name"])
        got = target.config()["param_shapes"]
        if got != cfg["param_shapes"]:
            raise ValueError("module: its parameter shapes do not match the model file's")
        return target
    raise ValueError(f"target config: unknown kind {kind!r}")
