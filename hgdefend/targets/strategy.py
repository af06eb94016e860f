"""How K member networks are evaluated: the strategy vocabulary and the automatic choice.

A strategy is ``"auto"`` or ``"kernel[+modifier...]"`` (:func:`parse_strategy`). Every kernel
computes the same function; the per-network ``"loop"`` is the reference the batched kernels are
tested against, and ``"auto"`` (:func:`choose_strategy`) picks it on CPU for calls of at least
:data:`CPU_LOOP_MIN_WORK` activations per network, the measured default for the device and mode
(:data:`DEFAULT_STRATEGIES`) otherwise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .layers import Params
from .precision import matmul_precision

KERNELS = ("grouped", "fused", "unfold", "vmap", "loop")
STRATEGIES = ("auto", *KERNELS)

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

    * kernel ``grouped`` — grouped convolutions; ``fused`` — ``grouped`` with each ``conv → act →
      2×2 max-pool`` block as one Triton kernel that writes only the pooled map (CUDA; its backward
      routes through each window's saved argmax; :mod:`.fused`); ``unfold`` —
      members folded into the batch, convs as im2col + batched matmul; ``vmap`` —
      ``torch.func.vmap`` over the single-network forward; ``loop`` — one network at a time (the
      reference; ``auto`` picks it on CPU for large calls, see :func:`choose_strategy`).
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
    if kernel == "fused" and set(mods) & {"compile", "graph"}:
        raise ValueError("strategy: 'fused' is already one kernel per block; it takes 'cl', 'tf32' or 'bf16'")
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
# faster still for scoring but stay opt-in (error bound / compile time per new shape). Scoring on CUDA
# uses the fused Triton kernel with TF32 (benchmarks/fused_kernel.py: 7.79 M member-images/s against
# grouped+tf32's 3.75 M in the same run on an H200, 2026-11-27; grouped+tf32 without Triton). CPU: grouped
# for small per-network calls, the loop above CPU_LOOP_MIN_WORK (see choose_strategy).
DEFAULT_STRATEGIES: dict[tuple[str, str], str] = {
    ("cpu", "train"): "grouped",
    ("cpu", "score"): "grouped",
    ("cpu", "attack"): "grouped",
    ("cuda", "train"): "grouped+tf32",
    ("cuda", "score"): "fused+tf32",
    ("cuda", "attack"): "grouped+tf32",
}


# On CPU, oneDNN's grouped convolution beats K separate calls only while each network's call is
# small: per-call overhead dominates there, memory traffic above. Measured with batch sizes 1-256 on
# the 8×8-digits and MNIST nets (1,546 and 20,490 activations per input, 1 thread; benchmarks/RESULTS.md
# "CPU: grouped or loop"), the loop caught up between 1e5 and 4e5 activations per network call for
# both nets, in all three modes.
CPU_LOOP_MIN_WORK = 1 << 18


def choose_strategy(device: torch.device | str, mode: str = "score", work: int | None = None) -> str:
    """The default member-evaluation strategy for a device and mode.

    ``work`` is the number of activations one network writes for the call (batch × the target's
    ``activations_per_input``); on CPU, calls at or above :data:`CPU_LOOP_MIN_WORK` run as the
    per-network loop. ``HGDEFEND_STRATEGY`` overrides it all: one strategy for every mode
    (``"unfold+tf32"``) or per mode (``"train=grouped,score=unfold"``).
    """
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
    choice = DEFAULT_STRATEGIES.get((dev, mode), "grouped")
    if choice.startswith("fused"):
        from .fused import available, usable

        # no Triton, or one that cannot compile here: the fastest strategy without it
        if not available() or (dev == "cuda" and torch.cuda.is_available() and not usable(device)):
            return choice.replace("fused", "grouped", 1)
    return choice


def resolve_strategy(
    strategy: str, device: torch.device | str, mode: str, work: int | None = None
) -> StrategyPlan:
    """``"auto"`` → the measured default; then parse and check the plan fits the device."""
    if strategy is None or strategy == "auto":
        strategy = choose_strategy(device, mode, work)
        if strategy == "auto":
            raise ValueError(f"{STRATEGY_ENV}: must name a strategy, not 'auto'")
    plan = parse_strategy(strategy)
    dev = torch.device(device).type
    if plan.cuda_graph and dev != "cuda":
        raise ValueError("strategy: '+graph' (CUDA graphs) needs a CUDA device")
    if plan.kernel == "fused":
        from .fused import available

        # TRITON_INTERPRET=1 runs Triton kernels on CPU tensors (slowly): how the tests check it here
        if dev != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"strategy: 'fused' needs a CUDA device (got {dev}); use 'grouped'")
        if not available():
            raise ValueError("strategy: 'fused' needs Triton (it ships with CUDA builds of torch)")
    return plan


@contextlib.contextmanager
def _precision(plan: StrategyPlan, device: torch.device) -> Iterator[None]:
    """The plan's float32 precision on CUDA for the call (:func:`.precision.matmul_precision`)."""
    with matmul_precision(plan.precision, device):
        yield
