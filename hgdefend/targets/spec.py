"""A target network as data (:class:`TargetSpec`) and its batched member forwards.

A spec is a small declarative list of conv / linear / pool / activation layers that can be written
to JSON (model files carry it). It evaluates K weight sets at once with one of the kernels in
:mod:`hgdefend.targets.strategy`: grouped convolutions, members folded into the batch (unfold),
``vmap`` over the single-network forward, or the per-network loop.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from .fused import ACTIVATIONS, block
from .layers import (
    _LAYER_TYPES,
    _TYPE_NAMES,
    Act,
    Conv,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool,
    ParamGroup,
    Params,
    Strategy,
    Target,
    _kaiming_init,
    num_members,
)
from .strategy import StrategyPlan, _precision, mode_of, resolve_strategy


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
        ``maxpool → act`` where the activation is non-decreasing (:func:`_non_decreasing`).

        Exact: max and a non-decreasing activation commute; pooling first
        makes the activation touch a quarter of the values (the MNIST net's largest tensor is the
        first conv's output, and memory traffic, not arithmetic, limits the batched forward).
        """
        order = list(enumerate(self.layers))
        i = 0
        while i + 1 < len(order):
            if _non_decreasing(order[i][1]) and isinstance(order[i + 1][1], MaxPool):
                order[i], order[i + 1] = order[i + 1], order[i]
                i += 2
            else:
                i += 1
        return order

    def _forward_grouped(
        self, params: Params, x: Tensor, dropout: bool, channels_last: bool = False, fused: str | None = None
    ) -> Tensor:
        """All K members at once: grouped convolutions on ``[B, K*C, H, W]``, ``bmm`` for linears.

        The first layer sees the *shared* input, so it runs as one ordinary conv / matmul with the
        K weight sets stacked along the output axis — no K-fold copy of the input. With ``fused``
        (the ``fused`` kernel: ``"tf32"`` or ``"ieee"`` matmul precision) every ``conv → act → 2×2
        max-pool`` block runs as one Triton kernel (:mod:`.fused`) that writes only the pooled map.
        """
        k = num_members(params)
        b = x.shape[0]
        h = x
        layout = "shared"  # "shared": [B, ...]; "grouped": [B, K*C, H, W]; "members": [K, B, F]
        order = self._fast_order()
        skip = 0
        for j, (i, layer) in enumerate(order):
            if skip:
                skip -= 1
                continue
            act = _fusable_block(order, j) if fused is not None else None
            if act is not None:  # conv → max-pool 2 → activation as one Triton kernel
                h = block(h, params[f"{i}.weight"], params[f"{i}.bias"], shared=layout == "shared",
                          padding=layer.padding, activation=act.fn, negative_slope=act.negative_slope,
                          precision=fused)  # fmt: skip
                layout, skip = "grouped", 2
                continue
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


def _non_decreasing(layer: Layer) -> bool:
    """An activation that commutes with max-pooling (a leaky ReLU with a negative slope does not)."""
    if not isinstance(layer, Act):
        return False
    return layer.fn != "leaky_relu" or layer.negative_slope >= 0


def _fusable_block(order: list[tuple[int, Layer]], j: int) -> Act | None:
    """The activation of a ``conv → max-pool 2 → act`` block starting at ``order[j]`` (in
    :meth:`TargetSpec._fast_order`'s order) that the fused kernel computes, else None."""
    if j + 2 >= len(order) or not isinstance(order[j][1], Conv):
        return None
    pool, act = order[j + 1][1], order[j + 2][1]
    if isinstance(pool, MaxPool) and pool.kernel_size == 2 and _non_decreasing(act) and act.fn in ACTIVATIONS:
        return act
    return None


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


_COMPILED: dict[tuple[Any, ...], Callable[..., Tensor]] = {}


def _kernel_fn(spec: TargetSpec, plan: StrategyPlan) -> Callable[[Params, Tensor, bool], Tensor]:
    """The kernel as a callable, compiled (once per spec and plan) when the plan asks for it."""
    if plan.kernel == "grouped":
        fn = functools.partial(spec._forward_grouped, channels_last=plan.channels_last)
    elif plan.kernel == "fused":
        fn = functools.partial(spec._forward_grouped, channels_last=plan.channels_last,
                               fused="ieee" if plan.precision == "fp32" else "tf32")  # fmt: skip
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
