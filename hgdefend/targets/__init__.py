"""Target networks: what the HyperGAN generates weights for, and the ONE batched member forward.

A *target* knows its input shape, its parameter shapes (grouped into the layers that get one
generator each) and how to evaluate K weight sets on a batch at once, returning logits shaped
``[K, B, C]``. Two kinds exist:

* :class:`TargetSpec` — a small declarative list of conv / linear / pool / activation layers that
  can be written to JSON (model files carry it) and evaluated with grouped convolutions.
* :class:`ModuleTarget` — any user ``torch.nn.Module`` classifier, evaluated for K members with
  ``torch.func.functional_call`` + ``vmap``.
* :class:`HeadTarget` — a user's pretrained classifier, frozen, whose head alone is generated
  (as offsets around the pretrained head); the frozen part runs once per input.

Everything that evaluates members (training, ensembles, attacks, detectors, export) goes through
``target.forward(params, x)``. How the K members are evaluated is a strategy
(:func:`parse_strategy`); ``"auto"`` takes the measured default per device and mode, and on CPU
switches to the per-network ``"loop"`` for calls of at least :data:`CPU_LOOP_MIN_WORK` activations
per network (:func:`choose_strategy`). The loop is also the reference every other strategy is
tested against.

Modules: :mod:`.layers` (layer vocabulary, parameter groups and keys, the ``Target`` protocol),
:mod:`.strategy` (strategy names and the automatic choice), :mod:`.precision` (TF32 or IEEE float32
for a call), :mod:`.spec` (``TargetSpec`` and its batched kernels), :mod:`.fused` (the Triton
``conv → act → max-pool`` kernel of the ``fused`` strategy, in :mod:`._triton_conv`),
:mod:`.builtin` (the built-in nets), :mod:`.module` (``ModuleTarget`` and :func:`target_from_config`),
:mod:`.head` (``HeadTarget``).
"""

from .builtin import (
    BUILTIN_SPECS,
    cifar10_paper,
    digits_small,
    mc_dropout_variant,
    mnist_paper,
    regression_1d,
)
from .head import HeadTarget, backbone_sha256
from .layers import (
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
    check_params,
    num_members,
    param_key,
)
from .module import ModuleTarget, target_from_config
from .spec import TargetSpec, activation_bytes
from .strategy import (
    CPU_LOOP_MIN_WORK,
    DEFAULT_STRATEGIES,
    GRAD_PRECISION_BOUNDS,
    KERNELS,
    MODES,
    MODIFIERS,
    PRECISION_BOUNDS,
    STRATEGIES,
    STRATEGY_ENV,
    StrategyPlan,
    choose_strategy,
    mode_of,
    parse_strategy,
    resolve_strategy,
)

__all__ = [
    "BUILTIN_SPECS",
    "CPU_LOOP_MIN_WORK",
    "DEFAULT_STRATEGIES",
    "GRAD_PRECISION_BOUNDS",
    "KERNELS",
    "MODES",
    "MODIFIERS",
    "PRECISION_BOUNDS",
    "STRATEGIES",
    "STRATEGY_ENV",
    "Act",
    "Conv",
    "Dropout",
    "Flatten",
    "HeadTarget",
    "Layer",
    "Linear",
    "MaxPool",
    "ModuleTarget",
    "ParamGroup",
    "Params",
    "Strategy",
    "StrategyPlan",
    "Target",
    "TargetSpec",
    "activation_bytes",
    "backbone_sha256",
    "check_params",
    "choose_strategy",
    "cifar10_paper",
    "digits_small",
    "mc_dropout_variant",
    "mnist_paper",
    "mode_of",
    "num_members",
    "param_key",
    "parse_strategy",
    "regression_1d",
    "resolve_strategy",
    "target_from_config",
]
