"""The built-in target networks (the paper's MNIST / CIFAR-10 / regression nets, a small CPU net) and
the MC-dropout variant of any spec."""

from __future__ import annotations

from collections.abc import Sequence

from .layers import Act, Conv, Dropout, Flatten, Layer, Linear, MaxPool
from .spec import TargetSpec


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
