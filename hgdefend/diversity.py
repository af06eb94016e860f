"""Diversity objectives: terms added to the HyperGAN's training loss so that sampled networks
differ where it matters, not only in their latent codes.

The paper keeps codes near a Gaussian prior (GAN or MMD regulariser) and hopes the generators turn
different codes into different functions; measured on MNIST the sampled networks end up as near
copies. Each objective here acts on the networks' *functions* instead, and every one is computed
through the one batched member forward (``target.forward(params, x)``):

* ``repulsion`` — function-space repulsion between the members sampled in a step: an RBF kernel
  over their predicted probabilities on the batch, whose mean off-diagonal value is minimised
  (the repulsive term of Stein variational gradient descent applied to network outputs, as in
  function-space particle VI — the direction the HyperGAN authors took after this paper).
* ``offdata`` — agree on the data, disagree elsewhere: the cross-entropy keeps members agreeing on
  training inputs while the mutual information of their predictions (the disagreement score the
  detector reads) is *maximised* on inputs made off the data manifold from the batch — mixtures of
  two images, heavy noise, and pixel permutations (in the spirit of "agree to disagree" and
  outlier-exposure methods).
* ``gradient`` — input-gradient diversity: the squared cosine similarity between members' input
  gradients of their loss is penalised, pushing the gradients towards orthogonal, so that an
  attack on one member transfers less to the others (as in gradient-alignment / DVERGE-style
  ensemble training).

Randomness comes from the training step's generator, so resumed runs stay exact; with ``"none"``
nothing is drawn and training is bit-identical to the paper's objective.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import rng
from .detectors.scores import mutual_information
from .errors import HgdefendError
from .targets import Params, Target
from .vocab import DIVERSITY_OBJECTIVES

GRADIENT_MEMBERS = 8
"""Members whose input gradients are compared per step (double backprop costs; a few suffice)."""
GRADIENT_INPUTS = 16


def check_diversity(name: str, weight: float) -> tuple[str, float]:
    if name not in DIVERSITY_OBJECTIVES:
        raise HgdefendError(f"diversity: expected one of {', '.join(DIVERSITY_OBJECTIVES)}, got {name!r}")
    w = float(weight)
    if not (math.isfinite(w) and w >= 0):
        raise HgdefendError(f"diversity_weight: expected a finite number >= 0, got {weight!r}")
    if name != "none" and w == 0:
        raise HgdefendError(f"diversity_weight: diversity {name!r} needs a weight > 0")
    return name, w


# --------------------------------------------------------------------------- repulsion
def repulsion_loss(member_logits: Tensor) -> Tensor:
    """Mean off-diagonal RBF kernel between members' predicted probabilities ``[K, B*C]``.

    The bandwidth is SVGD's median heuristic (median squared distance / log(K + 1), detached), so
    the term keeps pushing whatever the current spread. 0 for a single member.
    """
    k = member_logits.shape[0]
    if k < 2:
        return member_logits.sum() * 0.0
    f = torch.softmax(member_logits, -1).flatten(1)
    d2 = torch.cdist(f, f).pow(2)
    off = ~torch.eye(k, dtype=torch.bool, device=f.device)
    h = (d2.detach()[off].median() / math.log(k + 1)).clamp_min(1e-8)
    return torch.exp(-d2 / h)[off].mean()


# --------------------------------------------------------------------------- off-data disagreement
def off_data_inputs(
    x: Tensor, generator: torch.Generator, value_range: tuple[float, float] = (0.0, 1.0)
) -> Tensor:
    """Inputs near but off the data, from a batch: a third mixtures of two images (λ ~ U(0.3, 0.7)),
    a third the image plus N(0, 0.5²) noise, a third with its pixels permuted (same intensities,
    no shape). Clipped to the input range."""
    b = x.shape[0]
    flat = x.detach().flatten(1)
    n1, n2 = b // 3, 2 * b // 3
    perm = rng.to_device(torch.randperm(b, generator=generator), x.device)
    lam = rng.rand((b, 1), generator, x.device) * 0.4 + 0.3
    noise = rng.randn(flat.shape, generator, x.device) * 0.5
    pix = rng.to_device(torch.argsort(torch.rand(flat.shape, generator=generator), dim=1), x.device)
    mixed = lam * flat + (1 - lam) * flat[perm]
    noised = flat + noise
    shuffled = torch.gather(flat, 1, pix)
    out = torch.cat([mixed[:n1], noised[n1:n2], shuffled[n2:]])
    return out.clamp(*value_range).view_as(x)


def offdata_loss(target: Target, params: Params, x: Tensor, generator: torch.Generator, *,
                 strategy: str = "auto") -> Tensor:  # fmt: skip
    """Negative mean mutual information of the members on off-data inputs made from ``x``."""
    logits = target.forward(params, off_data_inputs(x, generator), strategy=strategy)
    return -mutual_information(logits).mean()


# --------------------------------------------------------------------------- input gradients
def member_input_gradients(target: Target, params: Params, x: Tensor, y: Tensor, *,
                           strategy: str = "auto", create_graph: bool = True) -> Tensor:  # fmt: skip
    """Each member's gradient of its own cross-entropy w.r.t. the input: ``[K, B, *input]``.

    One batched call: the inputs are repeated once per member and member k reads only its own copy
    (the other blocks are computed and discarded), so the gradients of different members do not mix.
    """
    k, b = next(iter(params.values())).shape[0], x.shape[0]
    xr = x.detach().repeat(k, *([1] * (x.dim() - 1))).requires_grad_(True)
    logits = target.forward(params, xr, strategy=strategy)  # [K, K*B, C]
    own = torch.stack([logits[i, i * b : (i + 1) * b] for i in range(k)])  # [K, B, C]
    loss = F.cross_entropy(own.reshape(k * b, -1), y.repeat(k), reduction="sum")
    (grad,) = torch.autograd.grad(loss, xr, create_graph=create_graph)
    return grad.view(k, b, *x.shape[1:])


def gradient_alignment(grads: Tensor) -> Tensor:
    """Mean squared cosine similarity between different members' input gradients, per input."""
    k = grads.shape[0]
    if k < 2:
        return grads.sum() * 0.0
    g = F.normalize(grads.flatten(2), dim=-1, eps=1e-12)  # [K, B, D]
    cos = torch.einsum("ibd,jbd->bij", g, g)  # [B, K, K]
    off = ~torch.eye(k, dtype=torch.bool, device=g.device)
    return cos[:, off].pow(2).mean()


def gradient_loss(target: Target, params: Params, x: Tensor, y: Tensor, *, strategy: str = "auto",
                  members: int = GRADIENT_MEMBERS, inputs: int = GRADIENT_INPUTS) -> Tensor:  # fmt: skip
    sub = {n: t[:members] for n, t in params.items()}
    grads = member_input_gradients(target, sub, x[:inputs], y[:inputs], strategy=strategy)
    return gradient_alignment(grads)


# --------------------------------------------------------------------------- dispatch
def diversity_loss(name: str, target: Target, params: Params, x: Tensor, y: Tensor, logits: Tensor,
                   generator: torch.Generator, *, strategy: str = "auto") -> Tensor:  # fmt: skip
    """The named objective's loss for one training step (to be minimised, scaled by its weight)."""
    if name == "repulsion":
        return repulsion_loss(logits)
    if name == "offdata":
        return offdata_loss(target, params, x, generator, strategy=strategy)
    if name == "gradient":
        return gradient_loss(target, params, x, y, strategy=strategy)
    raise HgdefendError(f"diversity: expected one of {', '.join(DIVERSITY_OBJECTIVES[1:])}, got {name!r}")
