"""The HyperGAN: noise → mixer → per-layer codes → one generator per target layer → weights.

A discriminator (or an MMD penalty) keeps the per-layer codes close to a Gaussian prior, so that
sampling the noise gives *different* networks rather than one point estimate.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import rng
from .resources import check_memory
from .targets import Params, Target, activation_bytes, param_key
from .vocab import REGULARISERS

if TYPE_CHECKING:
    from .ensemble import SampledEnsemble

Regulariser = Literal["gan", "mmd", "none"]


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """The paper's 2-layer MLP (mixer, generators and discriminator all use it)."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, n_out))


def _hypergan_params(noise: int, code: int, hidden: int, groups: list, mixer: bool, disc: bool) -> int:
    """Parameters of the MLPs a HyperGAN builds (counted before building them)."""

    def mlp(n_in: int, n_out: int) -> int:
        return n_in * hidden + hidden + hidden * n_out + n_out

    total = sum(mlp(code, g.numel) for g in groups)
    total += mlp(noise, len(groups) * code) if mixer else 0
    return total + (mlp(code, 1) if disc else 0)


def ensemble_bytes(
    target: Target, k: int, *, hidden: int = 0, noise_dim: int = 0, batch: int = 0, training: bool = False
) -> int:
    """A lower bound of the memory (bytes, float32) that K networks of ``target`` need at once.

    Per network: its weights, the noise and generator hidden outputs that make them and, with
    ``batch``, the layer outputs of ``batch`` inputs (:func:`~hgdefend.targets.activation_bytes`;
    0 for user modules, whose size is unknown). ``training`` doubles it (gradients of the same size).
    """
    groups = list(target.param_groups)
    per = 4 * (sum(g.numel for g in groups) + int(hidden) * max(1, len(groups)) + int(noise_dim))
    per += (activation_bytes(target) or 0) * int(batch)
    return int(k) * per * (2 if training else 1)


def check_ensemble_memory(
    target: Target,
    k: int,
    what: str,
    *,
    hidden: int = 0,
    noise_dim: int = 0,
    batch: int = 0,
    training: bool = False,
    copies: int = 1,
    extra: int = 0,
) -> None:
    """Refuse (:class:`~hgdefend.resources.ResourceLimitError`, naming ``what``, the estimate and the
    limit) K networks that would not fit in memory: ``copies`` × :func:`ensemble_bytes` + ``extra``."""
    est = copies * ensemble_bytes(target, k, hidden=hidden, noise_dim=noise_dim, batch=batch,
                                  training=training) + int(extra)  # fmt: skip
    check_memory(est, what)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


class HyperGAN(nn.Module):
    """Generates whole weight sets of ``target``.

    Generated weights are scaled per layer by ``1/sqrt(fan_in)`` (as torch initialises layers), so
    a freshly built HyperGAN already emits sensibly scaled networks and the generators learn O(1)
    values whatever the layer size.
    """

    def __init__(
        self,
        target: Target,
        *,
        noise_dim: int = 256,
        code_dim: int = 128,
        hidden: int = 512,
        regulariser: Regulariser = "gan",
        beta: float = 1.0,
        mixer: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("noise_dim", noise_dim), ("code_dim", code_dim), ("hidden", hidden)):
            if int(value) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value}")
        if regulariser not in REGULARISERS:
            raise ValueError(f"regulariser: expected one of {REGULARISERS}, got {regulariser!r}")
        if not math.isfinite(beta) or beta < 0:
            raise ValueError(f"beta: expected a finite number >= 0, got {beta}")
        self.target = target
        self.noise_dim, self.code_dim, self.hidden = int(noise_dim), int(code_dim), int(hidden)
        self.regulariser, self.beta = regulariser, float(beta)
        self.groups = list(target.param_groups)
        # Without a mixer (the paper's ablation) each generator reads its own slice of the noise:
        # the layers' codes are then independent, so noise_dim must be layers × code_dim. The codes
        # are the noise itself, so the regulariser (GAN or MMD on the codes) gets no gradient into
        # any trained weight: without a mixer the paper's latent regulariser does nothing.
        self.use_mixer = bool(mixer)
        n_codes = len(self.groups) * self.code_dim
        if not self.use_mixer and self.noise_dim != n_codes:
            raise ValueError(
                f"noise_dim: without a mixer it must equal layers × code_dim = {n_codes}, "
                f"got {self.noise_dim}"
            )
        check_memory(4 * _hypergan_params(self.noise_dim, self.code_dim, self.hidden, self.groups,
                                          self.use_mixer, regulariser == "gan"),
                     f"hidden: a HyperGAN with hidden={self.hidden}, code_dim={self.code_dim}, "
                     f"noise_dim={self.noise_dim}")  # fmt: skip
        self.mixer = _mlp(self.noise_dim, self.hidden, n_codes) if self.use_mixer else None
        self.generators = nn.ModuleList(_mlp(self.code_dim, self.hidden, g.numel) for g in self.groups)
        self.discriminator = _mlp(self.code_dim, self.hidden, 1) if regulariser == "gan" else None
        scales = [torch.full((1,), 1.0 / math.sqrt(g.fan_in())) for g in self.groups]
        self.register_buffer("_scales", torch.cat(scales), persistent=False)

    # ------------------------------------------------------------------ config
    def hparams(self) -> dict:
        return {
            "noise_dim": self.noise_dim,
            "code_dim": self.code_dim,
            "hidden": self.hidden,
            "regulariser": self.regulariser,
            "beta": self.beta,
            "mixer": self.use_mixer,
        }

    @property
    def device(self) -> torch.device:
        return self._scales.device

    def check_memory(self, k: int, what: str, **kw: int) -> None:
        """:func:`check_ensemble_memory` for K networks of this HyperGAN (``batch``, ``training``,
        ``copies``, ``extra`` as there); every sample is checked with the defaults first."""
        check_ensemble_memory(self.target, k, what, hidden=self.hidden, noise_dim=self.noise_dim, **kw)

    def generator_parameters(self) -> list[nn.Parameter]:
        return list(self.generators.parameters())

    # ------------------------------------------------------------------ sampling
    def sample_noise(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``s ~ N(0, I)``; drawn on the CPU so a seed gives the same networks on any device."""
        if int(k) < 1:
            raise ValueError(f"k: ensemble size must be >= 1, got {k}")
        self.check_memory(k, f"k: {int(k)} networks")
        return rng.randn((int(k), self.noise_dim), generator, self.device)

    def codes(self, noise: Tensor) -> Tensor:
        """Per-layer latent codes ``[K, N_layers, code_dim]``."""
        flat = self.mixer(noise) if self.mixer is not None else noise
        return flat.view(noise.shape[0], len(self.groups), self.code_dim)

    def weights(self, codes: Tensor) -> Params:
        """Turn codes into member weights ``{name: [K, *shape]}``."""
        k = codes.shape[0]
        out: Params = {}
        for i, (group, gen) in enumerate(zip(self.groups, self.generators, strict=True)):
            flat = gen(codes[:, i]) * self._scales[i]
            offset = 0
            for pname, shape in group.shapes.items():
                n = math.prod(shape)
                key = param_key(group.name, pname)
                out[key] = flat[:, offset : offset + n].reshape(k, *shape)
                offset += n
        return out

    def sample(self, k: int, generator: torch.Generator | None = None, *, seed: int | None = None) -> Params:
        """K weight sets (differentiable, for training; :meth:`sample_frozen` for everything else)."""
        if generator is None and seed is not None:
            generator = make_generator(seed)
        return self.weights(self.codes(self.sample_noise(k, generator)))

    def sample_frozen(
        self, k: int, generator: torch.Generator | None = None, *, seed: int | None = None
    ) -> Params:
        """K weight sets as plain detached tensors: sampled in eval mode without autograd (attacks,
        detectors and banks differentiate through the networks, never through the HyperGAN), then the
        train/eval mode is restored. Same noise draws as :meth:`sample`, so the same seed or generator
        state gives the same weights. The tensors may share storage (views of one generator output)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                params = self.sample(k, generator, seed=seed)
        finally:
            self.train(was_training)
        return {n: t.detach() for n, t in params.items()}

    def ensemble(
        self, k: int, seed: int | None = 0, *, value_range: tuple[float, float] = (0.0, 1.0)
    ) -> SampledEnsemble:
        """A frozen ensemble of K sampled networks: the unit attacks, detectors, ART and ONNX use.
        ``value_range``: the inputs it accepts (the data's; images in [0, 1] by default)."""
        from .ensemble import SampledEnsemble

        params = {n: t.clone() for n, t in self.sample_frozen(k, seed=seed).items()}
        return SampledEnsemble(self.target, params, seed=seed, kind="hypergan", value_range=value_range)

    # ------------------------------------------------------------------ regularisers
    def prior_like(self, codes: Tensor, generator: torch.Generator | None = None) -> Tensor:
        flat = codes.reshape(-1, self.code_dim)
        return rng.randn(flat.shape, generator, flat.device)

    def regulariser_loss(
        self, codes: Tensor, generator: torch.Generator | None = None, *, prior: Tensor | None = None
    ) -> Tensor:
        """The mixer's penalty for codes that do not look like the N(0, I) prior.
        ``prior``: the MMD's prior sample, when drawn beforehand (drawn from ``generator`` otherwise)."""
        flat = codes.reshape(-1, self.code_dim)
        if self.regulariser == "gan":
            logits = self.discriminator(flat)
            return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        if self.regulariser == "mmd":
            return mmd_rbf(flat, self.prior_like(codes, generator) if prior is None else prior)
        return flat.new_zeros(())

    def discriminator_loss(
        self, codes: Tensor, generator: torch.Generator | None = None, *, prior: Tensor | None = None
    ) -> Tensor:
        """Standard GAN loss on logits: prior samples are real, mixer codes are fake.
        ``prior``: the real sample, when drawn beforehand (drawn from ``generator`` otherwise)."""
        if self.discriminator is None:
            raise ValueError("discriminator_loss: this HyperGAN has no discriminator")
        flat = codes.detach().reshape(-1, self.code_dim)
        real = self.discriminator(self.prior_like(codes, generator) if prior is None else prior)
        fake = self.discriminator(flat)
        return F.binary_cross_entropy_with_logits(
            real, torch.ones_like(real)
        ) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))

    def pretrain_mixer(
        self,
        *,
        max_steps: int = 500,
        samples: int = 1000,
        tol: float = 0.1,
        lr: float = 5e-4,
        generator: torch.Generator | None = None,
    ) -> tuple[int, float]:
        """Fit the mixer so its codes have mean 0 and identity covariance (official recipe).

        Returns (steps taken, final loss); stops as soon as the loss falls under ``tol``.
        """
        if self.mixer is None:
            return 0, 0.0
        opt = torch.optim.Adam(self.mixer.parameters(), lr=lr, betas=(0.5, 0.9))
        loss_value = float("inf")
        step = 0
        for step in range(1, max_steps + 1):  # noqa: B007 (returned)
            flat = self.codes(self.sample_noise(samples, generator)).reshape(-1, self.code_dim)
            mean = flat.mean(0)
            cov = torch.cov(flat.T)
            eye = torch.eye(self.code_dim, device=flat.device)
            loss = mean.pow(2).mean() + (cov - eye).pow(2).mean() * self.code_dim
            loss_value = float(loss.detach())
            if loss_value < tol:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step, loss_value


def mmd_rbf(a: Tensor, b: Tensor, bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> Tensor:
    """Biased MMD² between two samples with a sum of RBF kernels (scale-robust)."""
    x = torch.cat([a, b])
    d2 = torch.cdist(x, x).pow(2)
    dim = a.shape[1]
    k = sum(torch.exp(-d2 / (2 * bw * bw * dim)) for bw in bandwidths)
    n = a.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()
