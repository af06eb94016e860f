"""``evaluate --onnx``: the exported file under evaluation, the thing that ships, as a report context.

:func:`onnx_context` registers the file as a graph-backed ensemble (:class:`GraphEnsemble`) in the
scored-splits cache, so the accuracy and calibration sections read the graph's own member logits,
and finds its source model (:func:`_find_source`): ``--model``, else the file named in the ONNX
metadata beside the ONNX file, whose SHA-256 must match the one recorded at export. Two sections
replace their torch counterparts: detection (:mod:`.onnx_detection`, the file's baked-in threshold)
and transfer attacks from the source model (:mod:`.onnx_transfer`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..backbone import check_backbone_for, peek_target
from ..data import load_data
from ..errors import HgdefendError
from ..export.fileformat import DIGEST_KEY
from ..export.runtime import OnnxDetector
from ..io import LoadedModel, load_model
from .context import SCORING_BATCH, EvalContext, ScoredSplits, collect_ood_sets
from .options import EvaluateOptions, resolve_in_classes

NAME = "onnx"
"""The exported file's name in the scored-splits cache."""


class GraphEnsemble:
    """An exported file as an entry of the scored-splits cache: every graph output per split."""

    def __init__(self, detector: OnnxDetector) -> None:
        self.detector = detector
        self.k = detector.k
        self.seed = detector.seed

    def graph_outputs(self, x: Tensor) -> dict[str, np.ndarray]:
        return self.detector.run(x.detach().cpu().numpy(), batch_size=SCORING_BATCH)

    def describe(self) -> dict[str, Any]:
        return {"kind": "onnx", "members": self.k, "seed": self.seed, "sha256": self.detector.sha256}


@dataclass
class OnnxSource:
    """The exported file under evaluation and what was found of its source model."""

    detector: OnnxDetector
    source_path: str | None = None
    source_note: str = ""
    same_weights_max_diff: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- context
def _find_source(opts: EvaluateOptions, det: OnnxDetector, device: torch.device,
                 module: nn.Module | None = None) -> tuple[LoadedModel | None, str]:  # fmt: skip
    """The source model file and a sentence on how it was found (or why not). ``module``: the
    pretrained model (``--backbone``) a source model over a backbone needs to load."""
    meta = det.metadata
    recorded, of = meta.get("source_model_sha256"), meta.get("source_model_sha256_of")
    if opts.model:
        check_backbone_for(opts.model, module)
        loaded = load_model(opts.model, module=module, device=device)
        if of == "model_file" and loaded.sha256 != recorded:
            raise HgdefendError(
                f"model: {opts.model!r} has SHA-256 {loaded.sha256}, but {det.path!r} was exported from a "
                f"model file with SHA-256 {recorded}"
            )
        return loaded, f"given with --model ({loaded.path})" + ("" if of == "model_file" else (
            f"; the file records the SHA-256 of its {of}, so the match could not be checked"))  # fmt: skip
    name = meta.get("source_model_path") or ""
    if of != "model_file" or not name:
        return None, (
            "not available: the file was exported from an in-memory model, not a model file; pass "
            "--model to run transfer attacks"
        )
    candidates = [Path(det.path).parent / name, Path(name)]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        return None, (
            f"not found: {name!r} (named in the file's metadata) is not beside {det.path!r} nor in the "
            "working folder; pass --model to run transfer attacks"
        )
    target = peek_target(found) or {}
    if target.get("kind") in ("head", "module") and module is None:
        return None, (
            f"not used: {str(found)!r} was trained over your own model ({str(target.get('name'))[:60]!r}); "
            "pass it with --backbone FILE.py:FUNCTION and --backbone-weights to run transfer attacks"
        )
    check_backbone_for(found, module)  # a --backbone it does not take, or other weights: an error
    try:
        loaded = load_model(found, module=module, device=device)
    except HgdefendError as e:
        return None, f"not used: {str(found)!r} could not be loaded here ({e})"
    if loaded.sha256 != recorded:
        return None, (
            f"not used: {str(found)!r} has SHA-256 {loaded.sha256}, not the {recorded} recorded at export"
        )
    return loaded, f"found beside the ONNX file ({found}), SHA-256 matches the metadata"


def onnx_context(
    opts: EvaluateOptions, device: torch.device, progress: bool, module: nn.Module | None = None
) -> tuple[EvalContext, dict[str, Any]]:
    """The evaluation context of an exported file, and the report's title, seed, model hash and
    the file's SHA-256 for the run's record. ``module``: the pretrained model (``--backbone``) of a
    source model trained over it (the exported graph holds that model's frozen part already; the
    source model is what transfer attacks are crafted on)."""
    onnx_device = "cuda" if device.type == "cuda" else "cpu"
    det = OnnxDetector(opts.onnx, device=onnx_device, threads=torch.get_num_threads())
    meta = det.metadata
    dataset_cfg = json.loads(meta.get("dataset") or "{}")
    loaded, source_note = _find_source(opts, det, device, module)
    name = opts.dataset or dataset_cfg.get("name")
    if not name and loaded is not None:
        name = (loaded.config.get("dataset") or {}).get("name")
    if not name:
        raise HgdefendError(f"dataset: {opts.onnx!r} does not name its dataset; pass --dataset")
    data = load_data(
        name,
        root=opts.data_root,
        download=opts.download,
        trust_data_root=opts.trust_data_root,
        in_classes=resolve_in_classes(opts, name, {"dataset": dataset_cfg}),
    )
    if tuple(data.input_shape) != tuple(det.input_shape):
        raise HgdefendError(
            f"onnx: the file expects input shape {list(det.input_shape)}, dataset {data.name!r} gives "
            f"{list(data.input_shape)}"
        )
    if data.classes != det.class_labels:
        raise HgdefendError(
            f"onnx: the file's classes are {det.class_labels}, dataset {data.name!r} (with in_classes) "
            f"has {data.classes}"
        )
    oods = collect_ood_sets(opts, data)

    scored = ScoredSplits(progress=progress)
    scored.add_ensemble(NAME, GraphEnsemble(det))
    scored.add_split("calib", data.calib)
    scored.add_split("test", data.test)
    for i, (_, split) in enumerate(oods):
        scored.add_split(f"ood{i}", split)

    hg = fixed = fresh = None
    same_diff = None
    seed = det.seed if det.seed is not None else opts.seed
    if loaded is not None:
        hg = loaded.hypergan
        vr = tuple(data.value_range)
        fixed = hg.ensemble(det.k, seed=seed, value_range=vr).to(device)
        fresh = hg.ensemble(det.k, seed=seed + 1, value_range=vr).to(device)
        probe = data.test.x[:16]
        with torch.no_grad():
            ref = fixed.member_logits(probe.to(device)).cpu().numpy()
        got = det.run(probe.numpy())["member_logits"]
        same_diff = float(np.abs(got.astype(np.float64) - ref).max()) if got.shape == ref.shape else None
    source = OnnxSource(det, None if loaded is None else loaded.path, source_note, same_diff)
    model = {
        "onnx_path": det.path,
        "onnx_sha256": det.sha256,
        "content_sha256": meta[DIGEST_KEY],
        "members": det.k,
        "seed": det.seed,
        "score": det.score,
        "threshold": det.threshold,
        "target_fpr": det.target_fpr,
        "threshold_source": meta.get("threshold_source"),
        "kernel": meta.get("kernel"),
        "exporter": meta.get("exporter"),
        "exported_with": f"hgdefend {meta.get('library_version')}, torch {meta.get('torch_version')}",
        "source_model_recorded": f"{meta.get('source_model_path') or '—'} "
        f"({meta.get('source_model_sha256_of')} SHA-256 {meta.get('source_model_sha256')})",
        "source_model": source_note,
        "onnx_providers": ", ".join(det.providers),
    }
    if same_diff is not None:
        model["resampled_networks_max_abs_logit_diff"] = same_diff
    ctx = EvalContext(
        options=opts,
        data=data,
        hypergan=hg,
        ensemble=fixed,
        fresh=fresh,
        device=device,
        out_dir=Path(opts.out),
        model=model,
        training={},
        ood_sets=oods,
        attack=opts.attack_options(),
        progress=progress,
        scored=scored,
        onnx=source,
        primary=NAME,
    )
    held = f" (classes {data.classes} in-distribution, the rest held out as OOD)" if data.ood else ""
    return ctx, {
        "title": f"{data.name}{held}, exported {det.k}-network ensemble {Path(det.path).name}",
        "seed": det.seed,
        "model_sha256": meta.get("source_model_sha256"),
        "meta": {"onnx_sha256": det.sha256},
    }


__all__ = ["NAME", "GraphEnsemble", "OnnxSource", "onnx_context"]
