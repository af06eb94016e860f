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

import contextlib
import copy
import dataclasses
import functools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Params = dict[str, Tensor]
"""Member weights: parameter name -> tensor with a leading member axis ``[K, *shape]``."""

KERNELS = ("grouped", "unfold", "vmap", "loop")
STRATEGIES = ("auto", *KERNELS)
Strategy = str
"""``"auto"`` or ``"kernel[+modifier...]"``, e.g. ``"unfold+tf32"`` (see :func:`parse_strategy`)."""


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
    def _layer_shapes(self) -> list[tuple[int, ...]]:
        """The output shape of every layer for one input; raises on an inconsistent stack."""
        shape, shapes = self.input_shape, []
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
            shapes.append(shape)
        return shapes

    def _output_shape(self) -> tuple[int, ...]:
        shape = self._layer_shapes()[-1] if self.layers else self.input_shape
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

    @functools.cached_property
    def activations_per_input(self) -> int:
        """Values the conv and linear layers write per input: the per-network work measure the CPU
        strategy choice uses (memory traffic, not FLOPs, decides it; see :func:`choose_strategy`)."""
        return sum(
            math.prod(shape)
            for layer, shape in zip(self.layers, self._layer_shapes(), strict=True)
            if isinstance(layer, Conv | Linear)
        )

    # weights ----------------------------------------------------------------------------
    def init_params(self, k: int, generator: torch.Generator | None = None) -> Params:
        """K independent initialisations (Kaiming-uniform, as torch's defaults)."""
        return _kaiming_init(self.param_groups, k, generator)

    # the batched forward ----------------------------------------------------------------
    def forward(
        self, params: Params, x: Tensor, *, strategy: Strategy = "auto", dropout: bool = False
    ) -> Tensor:
        """Logits ``[K, B, C]`` of K members on a shared batch ``x`` of shape ``[B, *input]``.

        ``strategy`` picks how (see :func:`parse_strategy`); every strategy computes the same
        function, ``"auto"`` takes the measured default for this device and mode.
        """
        work = x.shape[0] * self.activations_per_input
        plan = resolve_strategy(strategy, x.device, mode_of(params), work)
        with _precision(plan, x.device):
            if plan.precision == "bf16":
                x = x.to(torch.bfloat16)
                params = {n: t.to(torch.bfloat16) for n, t in params.items()}
            if plan.kernel == "loop":
                k = num_members(params)
                out = torch.stack(
                    [self._forward_single({n: t[i] for n, t in params.items()}, x, dropout) for i in range(k)]
                )
            else:
                fn = _kernel_fn(self, plan)
                if plan.cuda_graph:
                    torch.compiler.cudagraph_mark_step_begin()
                out = fn(params, x, dropout)
                if plan.cuda_graph:  # the graph's output buffer is reused by the next replay
                    out = out.clone()
        return out.float() if plan.precision == "bf16" else out

    def _forward_vmap(self, params: Params, x: Tensor, dropout: bool) -> Tensor:
        return torch.func.vmap(
            lambda p: self._forward_single(p, x, dropout),
            randomness="different" if dropout else "error",
        )(params)

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

    def _fast_order(self) -> list[tuple[int, Layer]]:
        """Layers in execution order for the batched kernels, with ``act → maxpool`` run as
        ``maxpool → act``.

        Exact: the activations are non-decreasing, so max and activation commute; pooling first
        makes the activation touch a quarter of the values (the MNIST net's largest tensor is the
        first conv's output, and memory traffic, not arithmetic, limits the batched forward).
        """
        order = list(enumerate(self.layers))
        i = 0
        while i + 1 < len(order):
            if isinstance(order[i][1], Act) and isinstance(order[i + 1][1], MaxPool):
                order[i], order[i + 1] = order[i + 1], order[i]
                i += 2
            else:
                i += 1
        return order

    def _forward_grouped(
        self, params: Params, x: Tensor, dropout: bool, channels_last: bool = False
    ) -> Tensor:
        """All K members at once: grouped convolutions on ``[B, K*C, H, W]``, ``bmm`` for linears.

        The first layer sees the *shared* input, so it runs as one ordinary conv / matmul with the
        K weight sets stacked along the output axis — no K-fold copy of the input.
        """
        k = num_members(params)
        b = x.shape[0]
        h = x
        layout = "shared"  # "shared": [B, ...]; "grouped": [B, K*C, H, W]; "members": [K, B, F]
        for i, layer in self._fast_order():
            if isinstance(layer, Conv):
                w, bias = params[f"{i}.weight"], params[f"{i}.bias"]
                w = w.reshape(k * layer.out_channels, *w.shape[2:])
                if channels_last:
                    h = h.contiguous(memory_format=torch.channels_last)
                    w = w.contiguous(memory_format=torch.channels_last)
                if layout == "shared":
                    h = F.conv2d(h, w, bias.reshape(-1), padding=layer.padding)
                else:
                    h = F.conv2d(h, w, bias.reshape(-1), padding=layer.padding, groups=k)
                layout = "grouped"
            elif isinstance(layer, Linear):
                h = _members_linear(h, params[f"{i}.weight"], params[f"{i}.bias"], layout, k, b)
                layout = "members"
            elif isinstance(layer, Flatten):
                if layout == "shared":
                    h = h.reshape(b, -1)
                else:
                    h, layout = _as_members(h, layout, k, b), "members"
            else:
                h = _apply_stateless(layer, h, dropout)
        if layout == "shared":  # a spec with no parameters: every member is the same function
            h = h.unsqueeze(0).expand(k, *h.shape)
        return h

    def _forward_unfold(self, params: Params, x: Tensor, dropout: bool) -> Tensor:
        """Members folded into the batch (``[K*B, C, H, W]``); convs after the first as im2col + matmul.

        Trades the grouped convolution (slow in cuDNN for many small groups) for one batched
        matrix product per layer, which TF32 / bf16 tensor cores accelerate.
        """
        k = num_members(params)
        b = x.shape[0]
        h = x
        layout = "shared"  # "shared": [B, ...]; "folded": [K*B, C, H, W]; "members": [K, B, F]
        for i, layer in self._fast_order():
            if isinstance(layer, Conv):
                w, bias = params[f"{i}.weight"], params[f"{i}.bias"]
                if layout == "shared":
                    h = F.conv2d(h, w.reshape(k * layer.out_channels, *w.shape[2:]), bias.reshape(-1),
                                 padding=layer.padding)  # fmt: skip
                    hh, ww = h.shape[-2:]
                    h = h.view(b, k, layer.out_channels, hh, ww).transpose(0, 1)
                    h = h.reshape(k * b, layer.out_channels, hh, ww)
                else:
                    hh = h.shape[-2] + 2 * layer.padding - layer.kernel_size + 1
                    ww = h.shape[-1] + 2 * layer.padding - layer.kernel_size + 1
                    cols = F.unfold(h, layer.kernel_size, padding=layer.padding)  # [K*B, C*k*k, L]
                    ckk, n_pos = cols.shape[1], cols.shape[2]
                    cols = cols.view(k, b, ckk, n_pos).transpose(1, 2).reshape(k, ckk, b * n_pos)
                    out = torch.baddbmm(bias.unsqueeze(-1), w.reshape(k, layer.out_channels, ckk), cols)
                    out = out.view(k, layer.out_channels, b, n_pos).transpose(1, 2)  # [K, B, Cout, L]
                    h = out.reshape(k * b, layer.out_channels, hh, ww)
                layout = "folded"
            elif isinstance(layer, Linear):
                h = _members_linear(h, params[f"{i}.weight"], params[f"{i}.bias"], layout, k, b)
                layout = "members"
            elif isinstance(layer, Flatten):
                if layout == "shared":
                    h = h.reshape(b, -1)
                else:
                    h, layout = _as_members(h, layout, k, b), "members"
            else:
                h = _apply_stateless(layer, h, dropout)
        if layout == "shared":
            h = h.unsqueeze(0).expand(k, *h.shape)
        return h


def _as_members(h: Tensor, layout: str, k: int, b: int) -> Tensor:
    """``[K, B, F]`` from a grouped (``[B, K*C, H, W]``) or folded (``[K*B, C, H, W]``) activation."""
    if layout == "grouped":
        return h.reshape(b, k, -1).transpose(0, 1)
    if layout == "folded":
        return h.reshape(k, b, -1)
    return h


def _members_linear(h: Tensor, w: Tensor, bias: Tensor, layout: str, k: int, b: int) -> Tensor:
    """K linear layers at once. On the shared input ``[B, F]`` one matmul with stacked weights;
    otherwise ``baddbmm`` over the member axis. Returns ``[K, B, out]``."""
    if layout == "shared":
        out = w.shape[1]
        return F.linear(h, w.reshape(k * out, -1), bias.reshape(-1)).reshape(b, k, out).transpose(0, 1)
    return torch.baddbmm(bias.unsqueeze(1), _as_members(h, layout, k, b), w.transpose(1, 2))


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


def activation_bytes(target: Target, dtype: torch.dtype = torch.float32) -> int | None:
    """Bytes of layer outputs one member-image writes in an unfused forward (None: unknown).

    Used to size chunks; the paper's MNIST net writes ~186 KB per member-image in float32.
    """
    if not isinstance(target, TargetSpec):
        return None
    shape, total = target.input_shape, 0
    for layer in target.layers:
        if isinstance(layer, Conv):
            shape = (layer.out_channels, shape[1] + 2 * layer.padding - layer.kernel_size + 1,
                     shape[2] + 2 * layer.padding - layer.kernel_size + 1)  # fmt: skip
        elif isinstance(layer, MaxPool):
            shape = (shape[0], shape[1] // layer.kernel_size, shape[2] // layer.kernel_size)
        elif isinstance(layer, Flatten):
            continue
        elif isinstance(layer, Linear):
            shape = (layer.out_features,)
        total += math.prod(shape)
    return total * torch.finfo(dtype).bits // 8


# --------------------------------------------------------------------------- strategies
MODES = ("train", "score", "attack")
"""``train``: gradients w.r.t. the weights; ``score``: no gradients; ``attack``: gradients w.r.t.
the inputs only (frozen weights)."""

MODIFIERS = ("cl", "tf32", "bf16", "compile", "graph")
STRATEGY_ENV = "HGDEFEND_STRATEGY"

# Documented error of reduced precision against float32 (tests/test_speed_strategies.py checks it):
# logits: max |logit error| / max |logit|. bfloat16 keeps 8 mantissa bits (round-off 2**-9 ≈ 2e-3);
# measured up to 7.5e-3 on the built-in nets (random weights, K=4, B=8; CPU). TF32 keeps 10 bits.
PRECISION_BOUNDS = {"fp32": 1e-5, "tf32": 1e-2, "bf16": 2e-2}
# gradients (weights and inputs): ||error|| / ||grad||. bfloat16 measured 0.08-0.20: a rounding flip
# moves a max-pool or leaky-ReLU decision, so bf16 is for scoring, never chosen for train / attack.
GRAD_PRECISION_BOUNDS = {"fp32": 1e-5, "tf32": 2e-2, "bf16": 0.3}


@dataclass(frozen=True)
class StrategyPlan:
    """How one forward is run: a kernel plus optional modifiers (``"grouped+cl+bf16"``).

    * kernel ``grouped`` — grouped convolutions; ``unfold`` — members folded into the batch, convs as
      im2col + batched matmul; ``vmap`` — ``torch.func.vmap`` over the single-network forward;
      ``loop`` — one network at a time (the reference; never chosen automatically).
    * ``cl`` channels-last memory format; ``tf32`` TF32 matmuls/convs on CUDA (plain float32
      elsewhere); ``bf16`` compute in bfloat16, logits returned as float32 (error bound in
      :data:`PRECISION_BOUNDS`); ``compile`` ``torch.compile`` (first call compiles: seconds to
      minutes); ``graph`` CUDA graphs through ``torch.compile(mode="reduce-overhead")`` (CUDA only).
    """

    kernel: str = "grouped"
    channels_last: bool = False
    precision: str = "fp32"
    compile: bool = False
    cuda_graph: bool = False

    @property
    def name(self) -> str:
        mods = [m for m, on in (("cl", self.channels_last), ("tf32", self.precision == "tf32"),
                                ("bf16", self.precision == "bf16"), ("compile", self.compile),
                                ("graph", self.cuda_graph)) if on]  # fmt: skip
        return "+".join([self.kernel, *mods])


def parse_strategy(strategy: str) -> StrategyPlan:
    """``"kernel[+modifier...]"`` → :class:`StrategyPlan`; a clear error names what is allowed."""
    if not isinstance(strategy, str) or not strategy:
        raise ValueError(f"strategy: expected a string like 'grouped' or 'unfold+bf16', got {strategy!r}")
    kernel, *mods = [part.strip() for part in strategy.split("+")]
    if kernel not in KERNELS:
        raise ValueError(f"strategy: kernel must be one of {KERNELS} (or 'auto'), got {kernel!r}")
    bad = [m for m in mods if m not in MODIFIERS]
    if bad:
        raise ValueError(f"strategy: unknown modifier(s) {bad}; allowed: {MODIFIERS}")
    if "tf32" in mods and "bf16" in mods:
        raise ValueError("strategy: choose at most one of 'tf32' and 'bf16'")
    if kernel == "loop" and set(mods) - {"tf32", "bf16"}:
        raise ValueError("strategy: 'loop' is the reference and only takes a precision modifier")
    precision = "bf16" if "bf16" in mods else "tf32" if "tf32" in mods else "fp32"
    graph = "graph" in mods
    return StrategyPlan(kernel, "cl" in mods, precision, "compile" in mods or graph, graph)


def mode_of(params: Params) -> str:
    """The evaluation mode, read from autograd state: train / score / attack (see :data:`MODES`)."""
    if not torch.is_grad_enabled():
        return "score"
    return "train" if any(t.requires_grad for t in params.values()) else "attack"


# The automatic choice per (device type, mode), from benchmarks/members.py and benchmarks/gpu_check.py
# (tables, commands, devices and dates in benchmarks/RESULTS.md). CUDA: grouped convolution with TF32
# was the fastest non-bf16 strategy in all three modes on an H100 (K=100, B=1,000), and TF32 stays
# inside PRECISION_BOUNDS (tests/test_speed_strategies.py, on that GPU); bf16 and torch.compile are
# faster still for scoring but stay opt-in (error bound / compile time per new shape). CPU: grouped
# for small per-network calls, the loop above CPU_LOOP_MIN_WORK (see choose_strategy).
DEFAULT_STRATEGIES: dict[tuple[str, str], str] = {
    ("cpu", "train"): "grouped",
    ("cpu", "score"): "grouped",
    ("cpu", "attack"): "grouped",
    ("cuda", "train"): "grouped+tf32",
    ("cuda", "score"): "grouped+tf32",
    ("cuda", "attack"): "grouped+tf32",
}


# On CPU, oneDNN's grouped convolution beats K separate calls only while each network's call is
# small: per-call overhead dominates there, memory traffic above. Measured with batch sizes 1-256 on
# the 8×8-digits and MNIST nets (1,546 and 20,490 activations per input, 1 thread; benchmarks/RESULTS.md
# "CPU: grouped or loop"), the loop caught up between 1e5 and 4e5 activations per network call for
# both nets, in all three modes.
CPU_LOOP_MIN_WORK = 1 << 18


def choose_strategy(device: torch.device | str, mode: str | bool = "score", work: int | None = None) -> str:
    """The default member-evaluation strategy for a device and mode.

    ``work`` is the number of activations one network writes for the call (batch × the target's
    ``activations_per_input``); on CPU, calls at or above :data:`CPU_LOOP_MIN_WORK` run as the
    per-network loop. ``HGDEFEND_STRATEGY`` overrides it all: one strategy for every mode
    (``"unfold+tf32"``) or per mode (``"train=grouped,score=unfold"``). ``mode`` may also be a bool
    (True = train, as before).
    """
    if isinstance(mode, bool):
        mode = "train" if mode else "score"
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    env = os.environ.get(STRATEGY_ENV, "").strip()
    if env:
        if "=" not in env:
            return env
        for part in env.split(","):
            key, _, value = part.partition("=")
            if key.strip() == mode:
                return value.strip()
    dev = torch.device(device).type
    if dev == "cpu" and work is not None and work >= CPU_LOOP_MIN_WORK:
        return "loop"
    return DEFAULT_STRATEGIES.get((dev, mode), "grouped")


def resolve_strategy(
    strategy: str, device: torch.device | str, mode: str, work: int | None = None
) -> StrategyPlan:
    """``"auto"`` → the measured default; then parse and check the plan fits the device."""
    if strategy is None or strategy == "auto":
        strategy = choose_strategy(device, mode, work)
        if strategy == "auto":
            raise ValueError(f"{STRATEGY_ENV}: must name a strategy, not 'auto'")
    plan = parse_strategy(strategy)
    if plan.cuda_graph and torch.device(device).type != "cuda":
        raise ValueError("strategy: '+graph' (CUDA graphs) needs a CUDA device")
    return plan


@contextlib.contextmanager
def _precision(plan: StrategyPlan, device: torch.device) -> Iterator[None]:
    """On CUDA, pin float32 matmul/conv precision to IEEE (fp32) or TF32 for the call; a no-op elsewhere.

    (cuDNN convolutions default to TF32 on recent GPUs, so "fp32" must say so explicitly.)
    """
    if device.type != "cuda":
        yield
        return
    mm, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    want = "tf32" if plan.precision == "tf32" else "ieee"
    if hasattr(mm, "fp32_precision") and hasattr(conv, "fp32_precision"):
        old = (mm.fp32_precision, conv.fp32_precision)
        mm.fp32_precision = conv.fp32_precision = want
        try:
            yield
        finally:
            mm.fp32_precision, conv.fp32_precision = old
        return
    old_flags = (mm.allow_tf32, torch.backends.cudnn.allow_tf32)  # torch before the fp32_precision API
    mm.allow_tf32 = torch.backends.cudnn.allow_tf32 = want == "tf32"
    try:
        yield
    finally:
        mm.allow_tf32, torch.backends.cudnn.allow_tf32 = old_flags


_COMPILED: dict[tuple[Any, ...], Callable[..., Tensor]] = {}


def _kernel_fn(spec: TargetSpec, plan: StrategyPlan) -> Callable[[Params, Tensor, bool], Tensor]:
    """The kernel as a callable, compiled (once per spec and plan) when the plan asks for it."""
    if plan.kernel == "grouped":
        fn = functools.partial(spec._forward_grouped, channels_last=plan.channels_last)
    elif plan.kernel == "unfold":
        fn = spec._forward_unfold
    else:
        fn = spec._forward_vmap
    if not plan.compile:
        return fn
    key = (spec, plan.kernel, plan.channels_last, plan.cuda_graph)
    if key not in _COMPILED:
        mode = "reduce-overhead" if plan.cuda_graph else None
        _COMPILED[key] = torch.compile(fn, mode=mode, dynamic=False)
    return _COMPILED[key]


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
        """Logits ``[K, B, C]``. Any kernel but ``loop`` runs as ``vmap`` (a module has no grouped
        form); precision modifiers apply, ``cl`` / ``compile`` / ``graph`` are ignored here."""
        plan = resolve_strategy(strategy, x.device, mode_of(params))
        self.module.train(dropout)
        try:
            buffers = dict(self.module.named_buffers())
            if plan.precision == "bf16":
                x = x.to(torch.bfloat16)
                params = {n: t.to(torch.bfloat16) for n, t in params.items()}
                buffers = {n: b.to(torch.bfloat16) if b.is_floating_point() else b
                           for n, b in buffers.items()}  # fmt: skip

            def one(p: Params) -> Tensor:
                return torch.func.functional_call(self.module, {**p, **buffers}, (x,))

            with _precision(plan, x.device):
                if plan.kernel == "loop":
                    k = num_members(params)
                    out = torch.stack([one({n: t[i] for n, t in params.items()}) for i in range(k)])
                else:
                    out = torch.func.vmap(one, randomness="different" if dropout else "error")(params)
            return out.float() if plan.precision == "bf16" else out
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
