"""A sampled ensemble: K frozen weight sets of one target, evaluated through the one batched path.

HyperGAN samples, deep ensembles and MC-dropout all become a :class:`SampledEnsemble`, so scores,
attacks, ART and ONNX export treat them the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from .probabilities import mean_probs
from .targets import Params, Strategy, Target, activation_bytes, check_params
from .validation import as_inputs, check_k

# Member-images evaluated in one call before inputs are chunked, for targets whose activation size
# is unknown (user modules). Spec targets get a chunk from their activation size and the memory
# budget below instead (see :func:`auto_member_images_per_chunk`).
DEFAULT_MEMBER_IMAGES_PER_CHUNK = 2**12
# Activation memory one forward chunk may use: 512 MiB on CPU (other processes share the RAM), a
# quarter of the card on CUDA (large chunks keep the GPU busy).
CPU_CHUNK_BYTES = 512 * 2**20
CUDA_CHUNK_FRACTION = 0.25


def auto_member_images_per_chunk(target: Target, device: torch.device) -> int:
    """How many member-images fit the activation-memory budget of ``device`` in one forward."""
    per = activation_bytes(target)
    if per is None:
        return DEFAULT_MEMBER_IMAGES_PER_CHUNK
    if device.type == "cuda":
        budget = torch.cuda.get_device_properties(device).total_memory * CUDA_CHUNK_FRACTION
    else:
        budget = CPU_CHUNK_BYTES
    return max(1, int(budget // per))


class SampledEnsemble:
    """K frozen networks. ``member_logits(x) -> [K, B, C]``; ``predict_proba`` averages probabilities.

    ``mc_dropout=True`` turns dropout on in every forward, so K copies of one network become K
    dropout samples (the MC-dropout baseline). ``strategy`` (default ``"auto"``) picks how members
    are evaluated (:func:`hgdefend.targets.parse_strategy`); ``member_images_per_chunk`` (default
    ``None``: from the device's memory) caps K × B per call so K = 1,000 or big batches just work.
    """

    def __init__(
        self,
        target: Target,
        params: Params,
        *,
        seed: int | None = None,
        kind: str = "hypergan",
        mc_dropout: bool = False,
        value_range: tuple[float, float] = (0.0, 1.0),
        strategy: Strategy = "auto",
    ) -> None:
        self.k = check_params(target, params)
        self.target = target
        self.params = params
        self.seed = seed
        self.kind = kind
        self.mc_dropout = mc_dropout
        self.value_range = value_range
        self.strategy = strategy
        self.member_images_per_chunk: int | None = None

    # ------------------------------------------------------------------ housekeeping
    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def num_classes(self) -> int:
        return self.target.num_outputs

    def to(self, device: torch.device | str) -> SampledEnsemble:
        params = {n: t.to(device) for n, t in self.params.items()}
        if hasattr(self.target, "to"):
            self.target.to(device)
        return self._replace(params)

    def subset(self, k: int) -> SampledEnsemble:
        """The first ``k`` members (ensembles of 5/10/100 from one draw of 100)."""
        k = check_k(k)
        if k > self.k:
            raise ValueError(f"k: this ensemble has {self.k} members, asked for {k}")
        return self._replace({n: t[:k] for n, t in self.params.items()})

    def member(self, i: int) -> SampledEnsemble:
        return self._replace({n: t[i : i + 1] for n, t in self.params.items()})

    def _replace(self, params: Params) -> SampledEnsemble:
        ens = SampledEnsemble(
            self.target,
            params,
            seed=self.seed,
            kind=self.kind,
            mc_dropout=self.mc_dropout,
            value_range=self.value_range,
            strategy=self.strategy,
        )
        ens.member_images_per_chunk = self.member_images_per_chunk
        return ens

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "members": self.k, "seed": self.seed, "target": self.target.name}

    # ------------------------------------------------------------------ evaluation
    def check_inputs(self, x: object, name: str = "x") -> Tensor:
        return as_inputs(
            x, self.target.input_shape, name=name, value_range=self.value_range, device=self.device
        )

    def forward_logits(self, x: Tensor, *, strategy: Strategy | None = None) -> Tensor:
        """Differentiable member logits ``[K, B, C]`` for an already-checked tensor (attacks use it).

        Splits large K × B products into chunks so big ensembles and batches fit in memory.
        """
        strategy = strategy or self.strategy
        outs = []
        for ks, bs in self._chunks(x.shape[0]):
            p = {n: t[ks] for n, t in self.params.items()} if ks != slice(None) else self.params
            outs.append((ks, bs, self.target.forward(p, x[bs], strategy=strategy, dropout=self.mc_dropout)))
        if len(outs) == 1:
            return outs[0][2]
        rows: dict[int, list[Tensor]] = {}
        for ks, _bs, out in outs:
            rows.setdefault(ks.start or 0, []).append(out)
        return torch.cat([torch.cat(rows[s], dim=1) for s in sorted(rows)], dim=0)

    def chunk_size(self) -> int:
        """Member-images per forward call: the explicit setting, else the device's memory budget."""
        if self.member_images_per_chunk is not None:
            return max(1, int(self.member_images_per_chunk))
        return auto_member_images_per_chunk(self.target, self.device)

    def _chunks(self, b: int) -> Iterator[tuple[slice, slice]]:
        budget = self.chunk_size()
        if self.k * b <= budget:
            yield slice(None), slice(None)
            return
        k_step = min(self.k, budget)
        b_step = max(1, budget // k_step)
        for k0 in range(0, self.k, k_step):
            for b0 in range(0, b, b_step):
                yield slice(k0, min(self.k, k0 + k_step)), slice(b0, min(b, b0 + b_step))

    def member_logits(self, x: object, *, batch_size: int | None = None) -> Tensor:
        """Member logits ``[K, B, C]`` without gradients, for checked inputs."""
        t = self.check_inputs(x)
        with torch.no_grad():
            if batch_size is None:
                return self.forward_logits(t)
            return torch.cat(
                [self.forward_logits(t[i : i + batch_size]) for i in range(0, len(t), batch_size)],
                dim=1,
            )

    def predict_proba(self, x: object, *, batch_size: int | None = None) -> Tensor:
        """Mean of member probabilities ``[B, C]`` (the paper's ensemble prediction)."""
        return mean_probs(self.member_logits(x, batch_size=batch_size))

    def predict(self, x: object, *, batch_size: int | None = None) -> Tensor:
        """The ensemble's predicted class ``[B]``."""
        return self.predict_proba(x, batch_size=batch_size).argmax(-1)


def diversity(ensemble: SampledEnsemble) -> dict[str, dict[str, float]]:
    """Per-layer mean and relative std of member weight 2-norms (the paper's Table 1)."""
    out = {}
    for name, t in ensemble.params.items():
        if not name.endswith("weight"):
            continue
        norms = t.detach().flatten(1).norm(dim=1).double().cpu()
        mean = float(norms.mean())
        std = float(norms.std()) if len(norms) > 1 else 0.0
        out[name] = {"mean_norm": mean, "std_norm": std, "rel_std": std / mean if mean else 0.0}
    return out


def pairwise_disagreement(member_logits: Tensor) -> float:
    """Mean fraction of inputs on which two distinct members predict different classes."""
    pred = member_logits.argmax(-1)  # [K, B]
    k = pred.shape[0]
    if k < 2:
        return 0.0
    same = (pred.unsqueeze(0) == pred.unsqueeze(1)).float().mean(-1)  # [K, K]
    return float((1 - same).sum() / (k * (k - 1)))
