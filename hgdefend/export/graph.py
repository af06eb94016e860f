"""A fixed sampled ensemble as ONE ONNX graph, checked against torch before it is kept.

The graph holds K frozen weight sets as constants and runs the library's own batched member
forward (``target.forward(..., strategy=kernel)``) followed by the score functions of
:mod:`hgdefend.detectors.scores`, so there is no second implementation of either to drift. Its
input is ``x`` ``[B, *input_shape]`` float32 with a dynamic batch axis; its outputs are listed in
:data:`~hgdefend.export.fileformat.OUTPUTS` (``is_adversarial`` only when a threshold was baked in).

The graph fails closed: ``input_valid`` is false for an input with any NaN, ±inf or value outside
the declared input range, and ``is_adversarial`` is true for every such input (and for a NaN
score), so a stack that reads only ``is_adversarial`` never passes a broken input as clean.

``kernel`` picks how the members are laid out in the graph: ``"grouped"`` (default; one
convolution per layer with one group per member), ``"unfold"`` (members folded into the batch,
convolutions after the first as im2col + batched matmul) or ``"loop"`` (members unrolled: K plain
convolutions per layer). The last two contain no grouped convolution, which some runtimes run
slowly or cannot convert. On onnxruntime's CPU provider ``loop`` ran about as fast as ``grouped``
and ``unfold`` ~9x slower, with an im2col matrix that grows with K x batch (benchmarks/RESULTS.md).

The metadata written here, and the ``content_sha256`` digest over graph and metadata that guards
it, are read back by :mod:`hgdefend.export.fileformat`. A file is written only after onnxruntime's CPU
provider reproduced the torch ensemble on random and real inputs at batch 1 and batch N, and
flagged invalid inputs (:mod:`hgdefend.export.parity`).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..detectors.detector import ScoreDetector
from ..detectors.scores import SCORE_FUNCTIONS, SCORES, check_score_name
from ..ensemble import SampledEnsemble
from ..fileio import atomic_path, check_output
from ..hypergan import HyperGAN
from ..io import LoadedModel, load_model, tensors_sha256
from ..probabilities import mean_probs
from ..targets import TargetSpec, activation_bytes
from ..validation import HgdefendError, check_fraction, check_k
from .fileformat import (
    DIGEST_KEY,
    FORMAT,
    FORMAT_VERSION,
    INPUT_NAME,
    MAX_MEMBERS,
    OUTPUTS,
    content_sha256,
    file_sha256,
)
from .inputs import RANGE_SLACK, _bounds, load_inputs
from .parity import check_parity

DEFAULT_OPSET = 18
Exporter = Literal["dynamo", "legacy"]
EXPORT_KERNELS = ("grouped", "unfold", "loop")
"""How members are laid out in the graph (see the module docstring); the last two have no grouped
convolution."""


# --------------------------------------------------------------------------- the graph
class EnsembleGraph(nn.Module):
    """What gets exported: frozen member weights as buffers, the one batched forward, the scores.

    Buffers (not parameters) so the exporter stores them as constant initialisers.
    """

    def __init__(
        self,
        ensemble: SampledEnsemble,
        score: str = "entropy",
        threshold: float | None = None,
        kernel: str = "grouped",
    ):
        super().__init__()
        if kernel not in EXPORT_KERNELS:
            raise HgdefendError(f"kernel: expected one of {EXPORT_KERNELS}, got {kernel!r}")
        if ensemble.mc_dropout:
            raise HgdefendError(
                "ensemble: MC-dropout ensembles are stochastic and cannot be frozen into ONNX"
            )
        self.target = ensemble.target
        self.names = list(ensemble.params)
        for i, name in enumerate(self.names):
            self.register_buffer(f"w{i}", ensemble.params[name].detach().float().cpu().contiguous())
        self.score = check_score_name(score)
        self.kernel = kernel
        lo, hi = _bounds(ensemble.value_range)  # float32 values: the comparison is exact
        self.lo, self.hi = float(lo), float(hi)
        self.has_threshold = threshold is not None
        if threshold is not None:
            self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        params = {name: getattr(self, f"w{i}") for i, name in enumerate(self.names)}
        # One constant in-range input rides along and every output is sliced back to the batch:
        # the graph declares a dynamic batch axis, and on an empty batch onnxruntime's kernels
        # failed (a floating-point exception that killed the host process with the grouped kernel,
        # a broadcast error with the others, reductions that kept the class axis). With the pad no
        # kernel ever sees an empty tensor, and batch 0 gives empty outputs. Cost: one input more.
        n = x.shape[0]
        pad = torch.full((1, *x.shape[1:]), min(max(0.0, self.lo), self.hi), dtype=x.dtype)
        xp = torch.cat([x, pad])
        logits = self.target.forward(params, xp, strategy=self.kernel)
        probs = mean_probs(logits)
        scores = [SCORE_FUNCTIONS[s](logits) for s in SCORES]
        # NaN compares false and ±inf lies outside the finite bounds: one test covers all three.
        valid = ((xp >= self.lo) & (xp <= self.hi)).flatten(1).all(1)
        out = [logits[:, :n], probs[:n], probs.argmax(-1)[:n], *(s[:n] for s in scores), valid[:n]]
        if self.has_threshold:
            # not (score <= t): a NaN score is flagged too; an invalid input always is.
            out.append((~(scores[SCORES.index(self.score)] <= self.threshold) | ~valid)[:n])
        return tuple(out)


# --------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    path: str
    members: int
    seed: int | None
    score: str
    threshold: float | None
    target_fpr: float | None
    threshold_source: str
    exporter: str
    kernel: str
    export_seconds: float
    size_bytes: int
    sha256: str
    content_sha256: str
    parity: list[dict[str, Any]]
    max_abs_prob_diff: float
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_onnx(
    source: HyperGAN | LoadedModel | SampledEnsemble | str | os.PathLike,
    k: int | None,
    out: str | os.PathLike,
    *,
    seed: int | None = 0,
    threshold: float | None = None,
    calibration: object = None,
    score: str = "entropy",
    target_fpr: float = 0.05,
    parity_inputs: object = None,
    parity_batch: int = 7,
    tolerance: float = 1e-4,
    exporter: Exporter = "dynamo",
    opset: int = DEFAULT_OPSET,
    data_root: str | os.PathLike | None = None,
    module: nn.Module | None = None,
    kernel: str = "grouped",
    trust_data_root: bool | None = None,
) -> ExportResult:
    """Freeze K sampled networks into one ONNX file at ``out`` and prove it matches torch.

    ``source``: a model file path, a :class:`LoadedModel`, a :class:`HyperGAN` (K networks are drawn
    with ``seed``) or an existing :class:`SampledEnsemble` (``k`` None or equal to its size).
    Threshold: ``threshold`` given, or fit at ``target_fpr`` on clean ``calibration`` inputs
    (a dataset name — its calibration split, restricted to the model's classes — an ``.npy`` /
    ``.npz`` file, or an array), or none (then the graph has no ``is_adversarial`` output).
    Parity: onnxruntime (CPU) vs the torch ensemble on random inputs and on real ones
    (``parity_inputs``, else the calibration inputs, else the model's dataset when loadable) at
    batch 1 and ``parity_batch``; a failure raises :class:`ParityError` and leaves nothing at
    ``out`` (a file already there stays untouched).

    ``exporter``: "dynamo" (default; torch's maintained exporter, ~4 s for the MNIST net on 2 CPU
    cores) or "legacy" (the deprecated TorchScript exporter, ~0.3 s). Both matched torch to ~1e-7
    here; dynamo is the default because the legacy path is scheduled for removal from torch.
    ``kernel``: "grouped" (default), or "unfold" / "loop" for a graph without grouped convolutions
    (see the module docstring); every kernel passes the same parity check.

    The result carries the file's SHA-256 (``sha256``: pin it with ``expected_sha256=`` /
    ``--expected-sha256`` where the file is used) and the embedded ``content_sha256`` digest.
    """
    if k is not None:
        k = check_k(k, "k")
        if k > MAX_MEMBERS:
            raise HgdefendError(f"k: at most {MAX_MEMBERS} networks fit an exported file, got {k}")
    score = check_score_name(score)
    tolerance = float(tolerance)
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise HgdefendError(f"tolerance: expected a positive number, got {tolerance!r}")
    parity_batch = check_k(parity_batch, "parity_batch")
    if exporter not in ("dynamo", "legacy"):
        raise HgdefendError(f"exporter: expected 'dynamo' or 'legacy', got {exporter!r}")
    if kernel not in EXPORT_KERNELS:
        raise HgdefendError(f"kernel: expected one of {EXPORT_KERNELS}, got {kernel!r}")
    if threshold is not None and calibration is not None:
        raise HgdefendError("threshold: give either a threshold or calibration inputs, not both")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise HgdefendError(f"threshold: expected a finite number, got {threshold!r}")
    inputs = [v for v in (source, calibration, parity_inputs) if isinstance(v, (str, os.PathLike))]
    out_path = check_output(out, refuse=inputs)
    if out_path.is_dir():
        raise HgdefendError(f"out: {str(out_path)!r} is a folder; give a file name such as ensemble.onnx")

    ens, source_info, dataset_cfg = _resolve_source(source, k, seed, module, parity_batch)
    if ens.target.task != "classification":
        raise HgdefendError(
            "model: only classification targets can be exported (detector scores need classes)"
        )
    ens = ens.to("cpu")
    bad = [n for n, t in ens.params.items() if not bool(torch.isfinite(t).all())]
    if bad:  # its scores would be NaN: a detector that never flags (parity compares NaN as equal)
        raise HgdefendError(
            f"model: the sampled networks have NaN or infinite weights ({', '.join(bad[:3])}); "
            "refusing to export them"
        )

    fpr: float | None = None
    threshold_source = "none"
    n_calib = 0
    calib_x: Tensor | None = None
    if calibration is not None:
        fpr = check_fraction(target_fpr, "target_fpr")
        calib_x, calib_desc = _calibration_inputs(calibration, ens, dataset_cfg, data_root, trust_data_root)
        det = ScoreDetector(ens, score, fpr).fit(calib_x)
        threshold = det.threshold_
        n_calib = det.n_calibration_
        threshold_source = f"fit on {calib_desc} ({n_calib} clean inputs, split-conformal at FPR {fpr:g})"
    elif threshold is not None:
        threshold_source = "given"
    # The graph compares in float32; record exactly the value it uses.
    thr32 = None if threshold is None else float(np.float32(threshold))

    graph = EnsembleGraph(ens, score, thr32, kernel).eval()
    t0 = time.perf_counter()
    proto = _export(graph, ens, exporter, opset)
    export_seconds = time.perf_counter() - t0

    meta = {
        "hgdefend_format": FORMAT,
        "hgdefend_format_version": str(FORMAT_VERSION),
        "library_version": __version__,
        "source_model_sha256": source_info["sha256"],
        "source_model_sha256_of": source_info["of"],
        "source_model_path": source_info.get("path", ""),
        "members": str(ens.k),
        "seed": "" if ens.seed is None else str(ens.seed),
        "target": ens.target.name,
        "input_name": INPUT_NAME,
        "input_shape": json.dumps(list(ens.target.input_shape)),
        "input_dtype": "float32",
        "input_range": json.dumps(list(ens.value_range)),
        "input_range_slack": repr(RANGE_SLACK),
        "invalid_inputs": "flagged",
        "num_classes": str(ens.num_classes),
        "class_labels": json.dumps(_class_labels(dataset_cfg, ens.num_classes)),
        "dataset": json.dumps(_dataset_record(dataset_cfg), sort_keys=True),
        "score": score,
        "threshold": "" if thr32 is None else repr(thr32),
        "target_fpr": "" if fpr is None else repr(fpr),
        "threshold_source": threshold_source,
        "n_calibration": str(n_calib),
        "outputs": json.dumps([o for o in OUTPUTS if o != "is_adversarial" or thr32 is not None]),
        "exporter": exporter,
        "kernel": kernel,
        "opset": str(opset),
        "torch_version": torch.__version__,
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    digest = content_sha256(proto.SerializeToString())
    proto.metadata_props.add(key=DIGEST_KEY, value=digest)
    data = proto.SerializeToString()
    if content_sha256(data) != digest:  # the digest must not depend on where the entry sits
        raise HgdefendError("export: the file's digest changed when it was recorded (protobuf bug?)")

    # Parity runs on the temporary file; atomic_path renames it onto out_path only when parity
    # passed and deletes it otherwise (a file already at out_path stays untouched).
    with atomic_path(out_path, refuse=inputs) as tmp:
        tmp.write_bytes(data)
        real = _parity_real_inputs(parity_inputs, calib_x, ens, dataset_cfg, data_root, trust_data_root)
        parity = check_parity(
            tmp,
            ens,
            score,
            thr32,
            real_inputs=real,
            batch=parity_batch,
            tolerance=tolerance,
            seed=0 if ens.seed is None else ens.seed,
        )
    return ExportResult(
        path=str(out_path),
        members=ens.k,
        seed=ens.seed,
        score=score,
        threshold=thr32,
        target_fpr=fpr,
        threshold_source=threshold_source,
        exporter=exporter,
        kernel=kernel,
        export_seconds=round(export_seconds, 3),
        size_bytes=out_path.stat().st_size,
        sha256=file_sha256(out_path),
        content_sha256=digest,
        parity=parity,
        max_abs_prob_diff=max(r["max_abs_prob_diff"] for r in parity if r["max_abs_prob_diff"] is not None),
        metadata={**meta, DIGEST_KEY: digest},
    )


def _check_export_memory(hg: HyperGAN, k: int, batch: int) -> None:
    """Refuse K before sampling when the networks (held by torch, the ONNX file and onnxruntime)
    and onnxruntime's forward of a parity batch (all members at once) would not fit."""
    hg.check_memory(
        k, f"k: {k} networks in the graph (torch, ONNX and onnxruntime copies) and a parity batch of {batch}",
        copies=3, extra=k * batch * (activation_bytes(hg.target) or 0),
    )  # fmt: skip


def _resolve_source(
    source: object, k: int | None, seed: int | None, module: nn.Module | None, parity_batch: int = 1
) -> tuple[SampledEnsemble, dict[str, str], dict[str, Any]]:
    """Ensemble + where it came from (for the metadata) + the dataset config when known."""
    if isinstance(source, SampledEnsemble):
        if k is not None and k != source.k:
            raise HgdefendError(f"k: the given ensemble has {source.k} members, asked for {k}")
        digest = tensors_sha256({n: t for n, t in source.params.items()})
        return source, {"sha256": digest, "of": "ensemble_params"}, {}
    if k is None:
        raise HgdefendError("k: the number of networks to draw is required (an integer >= 1)")
    if isinstance(source, (str, os.PathLike)):
        source = load_model(source, module=module, device="cpu")
    if isinstance(source, LoadedModel):
        _check_export_memory(source.hypergan, k, parity_batch)
        ens = source.hypergan.ensemble(k, seed=seed)
        info = {"sha256": source.sha256, "of": "model_file", "path": Path(source.path).name}
        return ens, info, dict(source.config.get("dataset") or {})
    if isinstance(source, HyperGAN):
        digest = tensors_sha256(source.state_dict())
        _check_export_memory(source, k, parity_batch)
        return source.ensemble(k, seed=seed), {"sha256": digest, "of": "hypergan_state_dict"}, {}
    raise HgdefendError(
        "source: expected a model file path, LoadedModel, HyperGAN or SampledEnsemble, "
        f"got {type(source).__name__}"
    )


def _dataset_record(dataset_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What ``evaluate --onnx`` needs to load the model's data: name and in-distribution classes."""
    keys = ("name", "classes", "num_classes_all", "split_seed")
    return {k: dataset_cfg[k] for k in keys if k in dataset_cfg}


def _class_labels(dataset_cfg: Mapping[str, Any], num_classes: int) -> list[int]:
    classes = dataset_cfg.get("classes")
    if isinstance(classes, list) and len(classes) == num_classes:
        return [int(c) for c in classes]
    return list(range(num_classes))


def _export(graph: EnsembleGraph, ens: SampledEnsemble, exporter: str, opset: int) -> Any:
    """Run torch's exporter; return the ONNX ModelProto (never touching the output path)."""
    import io

    import onnx

    lo, hi = ens.value_range
    # Batch 3: not 0/1 (which export may specialise on) and unlikely to coincide with K or C.
    example = (
        torch.rand(3, *ens.target.input_shape, generator=torch.Generator().manual_seed(0)) * (hi - lo) + lo
    )
    names = [o for o in OUTPUTS if o != "is_adversarial" or graph.has_threshold]
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                prog = torch.onnx.export(
                    graph,
                    (example,),
                    None,
                    dynamo=True,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=names,
                    dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
                    verbose=False,
                )
                return prog.model_proto
            buf = io.BytesIO()
            axes = {
                INPUT_NAME: {0: "batch"},
                **{n: {0: "batch"} for n in names},
                "member_logits": {1: "batch"},
            }
            torch.onnx.export(
                graph,
                (example,),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes=axes,
            )
            return onnx.load_from_string(buf.getvalue())
    except Exception as exc:  # the exporters raise many unrelated types
        hint = "" if isinstance(ens.target, TargetSpec) else " (user nn.Module targets run through vmap)"
        raise HgdefendError(
            f"export: torch.onnx ({exporter}) could not export this ensemble{hint}: {exc}"
        ) from exc


def _dataset_inputs(
    name: str,
    ens: SampledEnsemble,
    dataset_cfg: Mapping[str, Any],
    data_root: str | os.PathLike | None,
    trust: bool | None = None,
) -> Tensor:
    """The calibration split of a named dataset, restricted to the classes the model was trained on."""
    from ..data import load_data

    classes = dataset_cfg.get("classes")
    n_all = dataset_cfg.get("num_classes_all")
    subset = classes if classes and n_all and len(classes) < n_all else None
    data = load_data(name, root=data_root, in_classes=subset, trust_data_root=trust)
    if tuple(data.input_shape) != tuple(ens.target.input_shape):
        raise HgdefendError(
            f"calibration: dataset {name!r} has input shape {list(data.input_shape)}, the model expects "
            f"{list(ens.target.input_shape)}"
        )
    return data.calib.x


def _calibration_inputs(
    calibration: object,
    ens: SampledEnsemble,
    dataset_cfg: Mapping[str, Any],
    data_root: str | os.PathLike | None,
    trust: bool | None = None,
) -> tuple[Tensor, str]:
    if isinstance(calibration, (str, os.PathLike)):
        text = str(calibration)
        if text.endswith((".npy", ".npz")):
            x = ens.check_inputs(load_inputs(text, "calibration"), name="calibration")
            return x, f"{Path(text).name}"
        return _dataset_inputs(text, ens, dataset_cfg, data_root, trust), f"the {text!r} calibration split"
    return ens.check_inputs(calibration, name="calibration"), "the given calibration inputs"


def _parity_real_inputs(
    parity_inputs: object,
    calib_x: Tensor | None,
    ens: SampledEnsemble,
    dataset_cfg: Mapping[str, Any],
    data_root: str | os.PathLike | None,
    trust: bool | None = None,
) -> Tensor | None:
    if parity_inputs is not None:
        if isinstance(parity_inputs, (str, os.PathLike)):
            text = str(parity_inputs)
            if text.endswith((".npy", ".npz")):
                return ens.check_inputs(load_inputs(text, "parity_inputs"), name="parity_inputs")
            return _dataset_inputs(text, ens, dataset_cfg, data_root, trust)
        return ens.check_inputs(parity_inputs, name="parity_inputs")
    if calib_x is not None:
        return calib_x
    name = dataset_cfg.get("name")
    if name:
        try:
            return _dataset_inputs(name, ens, dataset_cfg, data_root, trust)
        except (HgdefendError, OSError):
            return None  # e.g. MNIST without a data root: parity then runs on random inputs only
    return None
