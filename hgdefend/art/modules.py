"""The torch modules ART wraps: the batched member forward (a frozen bank or fresh weights per call),
the ``log mean_k softmax`` head that makes the ensemble a logit vector, and the detector head that adds
an "adversarial" logit for adaptive attacks."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..detectors.scores import SCORE_FUNCTIONS, check_score_name
from ..ensemble import SampledEnsemble
from ..hypergan import HyperGAN, make_generator
from ..probabilities import log_mean_probs
from ..targets import Params, Target, check_params
from ..validation import HgdefendError, check_k

SAMPLE_MODES = ("fixed", "fresh")
DEFAULT_MEMBERS = 10


# --------------------------------------------------------------------------- torch modules
class MemberLogits(nn.Module):
    """``x [B, *input] -> member logits [B, K, C]`` through the one batched member forward.

    ``mode="fixed"`` evaluates a frozen bank of K weight sets (buffers, so ``.to(device)`` and
    ``state_dict`` carry them); ``mode="fresh"`` draws K new weight sets from the HyperGAN on every
    call (no gradient to the HyperGAN: attacks differentiate w.r.t. the input only). The batch axis
    comes first so ART's ``get_activations`` can return these per input.
    """

    def __init__(
        self,
        target: Target,
        bank: Params,
        hypergan: HyperGAN | None = None,
        *,
        seed: int | None = 0,
        mode: str = "fixed",
    ) -> None:
        super().__init__()
        self.target = target
        self.hypergan = hypergan
        self.members = check_params(target, bank)
        self.seed = seed
        self.mode = check_sample_mode(mode)
        if self.mode == "fresh" and hypergan is None:
            raise HgdefendError("sample_mode: 'fresh' needs a HyperGAN to draw weights from")
        self._names = list(bank)
        self._set_bank(bank)
        self._fresh = make_generator(seed)
        self.bank_version = 0  # bumped by every resample; detectors check it before trusting a threshold

    def _set_bank(self, bank: Params) -> None:
        for i, name in enumerate(self._names):
            self.register_buffer(f"bank_{i}", bank[name].detach().clone())

    @property
    def bank(self) -> Params:
        return {name: getattr(self, f"bank_{i}") for i, name in enumerate(self._names)}

    def resample(self, seed: int | None, members: int | None = None) -> None:
        """Draw a new frozen bank (and restart the fresh-mode stream) from ``seed``."""
        if self.hypergan is None:
            raise HgdefendError("resample: this model holds a fixed bank without a HyperGAN to sample from")
        k = self.members if members is None else check_k(members, "members")
        bank = self.hypergan.sample_frozen(k, seed=seed)
        device = self.bank_0.device
        self._set_bank({n: t.to(device) for n, t in bank.items()})
        self.members, self.seed = k, seed
        self._fresh = make_generator(seed)
        self.bank_version += 1

    def _apply(self, fn, recurse: bool = True):  # noqa: ANN001 (torch's signature)
        out = super()._apply(fn, recurse)
        module = getattr(self.target, "module", None)  # a ModuleTarget's buffers travel with us
        if isinstance(module, nn.Module):
            module._apply(fn)
        return out

    def ensemble(self) -> SampledEnsemble:
        """The frozen bank as a :class:`SampledEnsemble` (inputs unchecked for range: they may be
        preprocessed)."""
        return SampledEnsemble(
            self.target, dict(self.bank), seed=self.seed, kind="hypergan", value_range=None
        )

    def forward(self, x: Tensor) -> Tensor:
        shape = tuple(self.target.input_shape)
        if not isinstance(x, Tensor) or x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise HgdefendError(f"x: expected a tensor of shape [B, {', '.join(map(str, shape))}], got {got}")
        if x.dtype != torch.float32:
            x = x.float()
        if self.mode == "fresh":
            params = self.hypergan.sample_frozen(self.members, self._fresh)
        else:
            params = self.bank
        ens = SampledEnsemble(self.target, params, seed=self.seed, value_range=None)
        return ens.forward_logits(x).transpose(0, 1)


class LogMeanProb(nn.Module):
    """``[B, K, C] -> [B, C]``: log of the mean member probability (logits for ART)."""

    def forward(self, member_logits: Tensor) -> Tensor:
        return log_mean_probs(member_logits.transpose(0, 1))


class DetectorLogits(nn.Module):
    """``[B, K, C] -> [B, C + 1]``: class logits plus an "adversarial" logit.

    The extra logit is ``max_c z_c + sharpness · (score − threshold)``, so the adversarial class
    wins exactly when the detector would flag the input — ART's ``DetectorClassifier`` convention
    (argmax ``C`` = detected). ART's own formula, ``(d + 1) · max_c z_c``, assumes positive logits;
    ours are log-probabilities (always <= 0), so the margin is added instead of multiplied.
    """

    def __init__(self, score: str, threshold: float, sharpness: float = 1.0) -> None:
        super().__init__()
        self.score = check_score_name(score)
        if not (math.isfinite(sharpness) and sharpness > 0):
            raise HgdefendError(f"sharpness: expected a finite number > 0, got {sharpness!r}")
        self.sharpness = float(sharpness)
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, member_logits: Tensor) -> Tensor:
        m = member_logits.transpose(0, 1)
        z = log_mean_probs(m)
        s = SCORE_FUNCTIONS[self.score](m)
        adv = z.max(-1).values + self.sharpness * (s - self.threshold)
        return torch.cat([z, adv[:, None]], dim=1)


class EnsembleLogits(nn.Module):
    """The module ART wraps: ``member_logits`` then ``logits`` (both hookable by ``get_activations``)."""

    def __init__(self, member_logits: MemberLogits, head: nn.Module | None = None) -> None:
        super().__init__()
        self.member_logits = member_logits
        self.logits = head if head is not None else LogMeanProb()

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.member_logits(x))


def check_sample_mode(mode: str) -> str:
    if mode not in SAMPLE_MODES:
        raise HgdefendError(f"sample_mode: expected one of {SAMPLE_MODES}, got {mode!r}")
    return mode
