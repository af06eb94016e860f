"""What every report section reads: the data, the model, the two ensembles and a scored-splits cache.

The cache is why ``evaluate`` runs each ensemble over each split once: member logits ``[K, B, C]``
are computed on first use and kept; predictions and all four scores are derived from them. The
fixed ensemble (``seed``) and the fresh one (``seed + 1``, the paper's "test with new networks")
are each sampled once, here.

An exported ONNX file is evaluated through the same cache (``evaluate --onnx``): it is registered
as a graph-backed ensemble whose every output is computed once per split by onnxruntime; its member
logits, scores, flags and validity are read from those outputs (see :mod:`.onnx_source`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import DataSplits, Split, load_ood
from ..detectors.scores import compute_scores
from ..ensemble import SampledEnsemble
from ..hypergan import HyperGAN
from ..probabilities import EnsemblePrediction, ensemble_prediction
from ..vocab import SCORES
from .options import AttackOptions, EvaluateOptions
from .progress import bar


def collect_ood_sets(options: EvaluateOptions, data: DataSplits) -> list[tuple[str, Split]]:
    """The OOD sets a report scores: the held-out classes, then ``--ood DATASET``."""
    oods = []
    if data.ood is not None and len(data.ood):
        oods.append((data.ood_name or "held-out classes", data.ood))
    if options.ood:
        other = load_ood(options.ood, data, root=options.data_root, download=options.download,
                         trust_data_root=options.trust_data_root)  # fmt: skip
        oods.append((options.ood, other))
    return oods


SCORING_BATCH = 512
"""Inputs per batched forward when scoring a split (every member at once)."""


class ScoredSplits:
    """Member logits computed once per (ensemble, split); predictions and scores read from them.

    Ensembles and splits are registered under names (``"fixed"``, ``"fresh"``, a baseline's name;
    ``"calib"``, ``"test"``, ``"ood0"``, ...). Nothing is computed until asked for.
    """

    def __init__(self, *, batch_size: int = SCORING_BATCH, progress: bool = False) -> None:
        self.batch_size = batch_size
        self.progress = progress
        self.ensembles: dict[str, SampledEnsemble] = {}
        self.splits: dict[str, Split] = {}
        self._logits: dict[tuple[str, str], Tensor] = {}
        self._pred: dict[tuple[str, str], EnsemblePrediction] = {}
        self._scores: dict[tuple[str, str], dict[str, np.ndarray]] = {}
        self._outputs: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def add_ensemble(self, name: str, ensemble: Any) -> None:
        """A :class:`SampledEnsemble`, or a graph-backed one (``graph_outputs(x)`` → every output
        of an exported file, ``member_logits`` among them)."""
        if name in self.ensembles and self.ensembles[name] is not ensemble:
            raise ValueError(f"ensemble {name!r} is already registered with other networks")
        self.ensembles[name] = ensemble

    def add_split(self, name: str, split: Split) -> None:
        self.splits[name] = split

    def logits(self, ensemble: str, split: str) -> Tensor:
        """Member logits ``[K, B, C]`` of one ensemble on one split (computed once, no gradients)."""
        key = (ensemble, split)
        if key not in self._logits:
            self.precompute([key])
        return self._logits[key]

    def precompute(self, keys: list[tuple[str, str]]) -> None:
        """Compute the missing (ensemble, split) pairs, with one progress bar for all of them."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._logits]
        if not todo:
            return
        with bar(sum(len(self.splits[s]) for _, s in todo), "scoring", self.progress) as b:
            for ens_name, split_name in todo:
                ens, x = self.ensembles[ens_name], self.splits[split_name].x
                if hasattr(ens, "graph_outputs"):
                    out = ens.graph_outputs(x)
                    self._outputs[(ens_name, split_name)] = out
                    self._logits[(ens_name, split_name)] = torch.from_numpy(out["member_logits"])
                    b.update(len(x))
                    continue
                parts = []
                for i in range(0, len(x), self.batch_size):
                    parts.append(ens.member_logits(x[i : i + self.batch_size]))
                    b.update(min(self.batch_size, len(x) - i))
                self._logits[(ens_name, split_name)] = torch.cat(parts, dim=1)

    def prediction(self, ensemble: str, split: str) -> EnsemblePrediction:
        key = (ensemble, split)
        if key not in self._pred:
            self._pred[key] = ensemble_prediction(self.logits(ensemble, split))
        return self._pred[key]

    def scores(self, ensemble: str, split: str) -> dict[str, np.ndarray]:
        """All four detector scores (float64 numpy, higher = more suspicious); a graph-backed
        ensemble's are the graph's own score outputs."""
        key = (ensemble, split)
        if key not in self._scores:
            logits = self.logits(ensemble, split)
            if key in self._outputs:
                out = self._outputs[key]
                self._scores[key] = {s: out[f"score_{s}"].astype(np.float64) for s in SCORES}
            else:
                self._scores[key] = {
                    k: v.cpu().numpy().astype(np.float64) for k, v in compute_scores(logits).items()
                }
        return self._scores[key]

    def outputs(self, ensemble: str, split: str) -> dict[str, np.ndarray]:
        """Every output of a graph-backed ensemble on a split (flags, validity, ...)."""
        self.logits(ensemble, split)
        if (ensemble, split) not in self._outputs:
            raise ValueError(f"ensemble {ensemble!r} is not graph-backed: it has no graph outputs")
        return self._outputs[(ensemble, split)]


@dataclass
class EvalContext:
    """What every report section can read.

    ``primary`` names the evaluated ensemble in the cache: ``"fixed"`` (a sampled ensemble) or
    ``"onnx"`` (an exported file, described by ``onnx``). With an exported file, ``hypergan``,
    ``ensemble`` (the exported networks resampled from the source model) and ``fresh`` are there
    only when the source model file was found; sections that need them check.
    """

    options: EvaluateOptions
    data: DataSplits
    hypergan: HyperGAN | None
    ensemble: SampledEnsemble | None
    fresh: SampledEnsemble | None
    device: torch.device
    out_dir: Path
    model: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    ood_sets: list[tuple[str, Split]] = field(default_factory=list)
    attack: AttackOptions | None = None
    progress: bool = False
    scored: ScoredSplits = field(default_factory=ScoredSplits)
    onnx: Any = None  # an onnx_source.OnnxSource with ``evaluate --onnx``
    primary: str = "fixed"

    @classmethod
    def build(
        cls,
        options: EvaluateOptions,
        data: DataSplits,
        hypergan: HyperGAN,
        *,
        device: torch.device | str = "cpu",
        ood_sets: list[tuple[str, Split]] | None = None,
        model: dict[str, Any] | None = None,
        training: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> EvalContext:
        """Sample the fixed (seed) and fresh (seed + 1) ensembles once and register the splits."""
        dev = torch.device(device)
        k, seed = options.members, options.seed
        vr = tuple(data.value_range)
        fixed = hypergan.ensemble(k, seed=seed, value_range=vr).to(dev)
        fresh = hypergan.ensemble(k, seed=seed + 1, value_range=vr).to(dev)
        scored = ScoredSplits(progress=progress)
        scored.add_ensemble("fixed", fixed)
        scored.add_ensemble("fresh", fresh)
        scored.add_split("calib", data.calib)
        scored.add_split("test", data.test)
        oods = list(ood_sets or [])
        for i, (_, split) in enumerate(oods):
            scored.add_split(f"ood{i}", split)
        return cls(
            options,
            data,
            hypergan,
            fixed,
            fresh,
            dev,
            Path(options.out),
            dict(model or {}),
            dict(training or {}),
            oods,
            options.attack_options(),
            progress,
            scored,
        )
