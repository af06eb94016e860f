"""A fixed sampled ensemble as ONE ONNX graph, checked against torch before it is kept.

The graph holds K frozen weight sets as constants and runs the library's own batched member
forward (``target.forward(..., strategy="grouped")``) followed by the score functions of
:mod:`hgdefend.detectors.scores`, so there is no second implementation of either to drift. Its
input is ``x`` ``[B, *input_shape]`` float32 with a dynamic batch axis; its outputs are listed in
:data:`OUTPUTS` (``is_adversarial`` only when a threshold was baked in).

Files carry hgdefend metadata (format, library version, source model SHA-256, K, seed, score,
threshold, target FPR, input shape and range, class labels) plus a SHA-256 of the serialised graph,
so a file altered after export is refused on load. A file is written only after onnxruntime's CPU
provider reproduced the torch ensemble on random and real inputs at batch 1 and batch N.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..detectors.detector import ScoreDetector
from ..detectors.scores import SCORE_FUNCTIONS, SCORES, check_score_name, compute_scores
from ..ensemble import SampledEnsemble
from ..hypergan import HyperGAN
from ..io import LoadedModel, load_model, tensors_sha256
from ..targets import TargetSpec
from ..validation import HgdefendError, as_inputs, check_fraction, check_k

FORMAT = "hgdefend-onnx"
FORMAT_VERSION = 1
INPUT_NAME = "x"
SCORE_OUTPUTS = tuple(f"score_{s}" for s in SCORES)
OUTPUTS = ("member_logits", "probabilities", "predicted_class", *SCORE_OUTPUTS, "is_adversarial")
"""Graph outputs: member logits ``[K, B, C]``, mean member probabilities ``[B, C]``, predicted class
``[B]`` (int64, an index into the model's classes), one ``[B]`` float32 per detector score (higher =
more suspicious) and ``is_adversarial`` ``[B]`` bool (``score > threshold``) when a threshold is set."""
OUTPUT_DESCRIPTIONS = {
    "member_logits": "[K, B, C] float32 logits of each sampled network",
    "probabilities": "[B, C] float32 mean of member softmax probabilities (the ensemble prediction)",
    "predicted_class": "[B] int64 argmax of probabilities (index into class_labels)",
    "score_entropy": "[B] float32 predictive entropy H[mean p] (the paper's score)",
    "score_mutual_information": "[B] float32 H[mean p] - mean H[p]: member disagreement",
    "score_max_prob": "[B] float32 1 - max mean probability",
    "score_variance": "[B] float32 summed variance of member probabilities",
    "is_adversarial": "[B] bool: the chosen score exceeds the baked-in threshold",
}
DEFAULT_OPSET = 18
Exporter = Literal["dynamo", "legacy"]


class OnnxFileError(HgdefendError):
    """An ONNX file that is missing, corrupt, altered, or not written by ``hgdefend export``."""


class ParityError(HgdefendError):
    """onnxruntime did not reproduce the torch ensemble; no file was left behind."""


# --------------------------------------------------------------------------- the graph
class EnsembleGraph(nn.Module):
    """What gets exported: frozen member weights as buffers, the one batched forward, the scores.

    Buffers (not parameters) so the exporter stores them as constant initialisers.
    """

    def __init__(self, ensemble: SampledEnsemble, score: str = "entropy", threshold: float | None = None):
        super().__init__()
        if ensemble.mc_dropout:
            raise HgdefendError(
                "ensemble: MC-dropout ensembles are stochastic and cannot be frozen into ONNX"
            )
        self.target = ensemble.target
        self.names = list(ensemble.params)
        for i, name in enumerate(self.names):
            self.register_buffer(f"w{i}", ensemble.params[name].detach().float().cpu().contiguous())
        self.score = check_score_name(score)
        self.has_threshold = threshold is not None
        if threshold is not None:
            self.register_buffer("threshold", torch.tensor(float(threshold), dtype=torch.float32))

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        params = {name: getattr(self, f"w{i}") for i, name in enumerate(self.names)}
        logits = self.target.forward(params, x, strategy="grouped")
        probs = torch.softmax(logits, -1).mean(0)
        scores = [SCORE_FUNCTIONS[s](logits) for s in SCORES]
        out = [logits, probs, probs.argmax(-1), *scores]
        if self.has_threshold:
            out.append(scores[SCORES.index(self.score)] > self.threshold)
        return tuple(out)


def graph_sha256(model: Any) -> str:
    """Digest of the graph (nodes + weights), excluding the model-level metadata that stores it."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


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
    export_seconds: float
    size_bytes: int
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
    """
    if k is not None:
        k = check_k(k, "k")
    score = check_score_name(score)
    tolerance = float(tolerance)
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise HgdefendError(f"tolerance: expected a positive number, got {tolerance!r}")
    parity_batch = check_k(parity_batch, "parity_batch")
    if exporter not in ("dynamo", "legacy"):
        raise HgdefendError(f"exporter: expected 'dynamo' or 'legacy', got {exporter!r}")
    if threshold is not None and calibration is not None:
        raise HgdefendError("threshold: give either a threshold or calibration inputs, not both")
    if threshold is not None and not math.isfinite(float(threshold)):
        raise HgdefendError(f"threshold: expected a finite number, got {threshold!r}")
    out_path = Path(out)
    if out_path.is_dir():
        raise HgdefendError(f"out: {str(out_path)!r} is a folder; give a file name such as ensemble.onnx")

    ens, source_info, dataset_cfg = _resolve_source(source, k, seed, module)
    if ens.target.task != "classification":
        raise HgdefendError(
            "model: only classification targets can be exported (detector scores need classes)"
        )
    ens = ens.to("cpu")

    fpr: float | None = None
    threshold_source = "none"
    n_calib = 0
    calib_x: Tensor | None = None
    if calibration is not None:
        fpr = check_fraction(target_fpr, "target_fpr")
        calib_x, calib_desc = _calibration_inputs(calibration, ens, dataset_cfg, data_root)
        det = ScoreDetector(ens, score, fpr).fit(calib_x)
        threshold = det.threshold_
        n_calib = det.n_calibration_
        threshold_source = f"fit on {calib_desc} ({n_calib} clean inputs, split-conformal at FPR {fpr:g})"
    elif threshold is not None:
        threshold_source = "given"
    # The graph compares in float32; record exactly the value it uses.
    thr32 = None if threshold is None else float(np.float32(threshold))

    graph = EnsembleGraph(ens, score, thr32).eval()
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
        "num_classes": str(ens.num_classes),
        "class_labels": json.dumps(_class_labels(dataset_cfg, ens.num_classes)),
        "score": score,
        "threshold": "" if thr32 is None else repr(thr32),
        "target_fpr": "" if fpr is None else repr(fpr),
        "threshold_source": threshold_source,
        "n_calibration": str(n_calib),
        "outputs": json.dumps([o for o in OUTPUTS if o != "is_adversarial" or thr32 is not None]),
        "exporter": exporter,
        "opset": str(opset),
        "torch_version": torch.__version__,
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.metadata_props.add(key="graph_sha256", value=graph_sha256(proto))
    data = proto.SerializeToString()

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        real = _parity_real_inputs(parity_inputs, calib_x, ens, dataset_cfg, data_root)
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
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return ExportResult(
        path=str(out_path),
        members=ens.k,
        seed=ens.seed,
        score=score,
        threshold=thr32,
        target_fpr=fpr,
        threshold_source=threshold_source,
        exporter=exporter,
        export_seconds=round(export_seconds, 3),
        size_bytes=out_path.stat().st_size,
        parity=parity,
        max_abs_prob_diff=max(r["max_abs_prob_diff"] for r in parity),
        metadata=meta,
    )


def _resolve_source(
    source: object, k: int | None, seed: int | None, module: nn.Module | None
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
        ens = source.hypergan.ensemble(k, seed=seed)
        info = {"sha256": source.sha256, "of": "model_file", "path": Path(source.path).name}
        return ens, info, dict(source.config.get("dataset") or {})
    if isinstance(source, HyperGAN):
        digest = tensors_sha256(source.state_dict())
        return source.ensemble(k, seed=seed), {"sha256": digest, "of": "hypergan_state_dict"}, {}
    raise HgdefendError(
        "source: expected a model file path, LoadedModel, HyperGAN or SampledEnsemble, "
        f"got {type(source).__name__}"
    )


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


# --------------------------------------------------------------------------- inputs
def load_inputs(path: str | os.PathLike, name: str = "input") -> np.ndarray:
    """An array from ``.npy`` or ``.npz`` (key ``x``, or its only array). Never unpickles."""
    p = Path(path)
    if not p.is_file():
        raise HgdefendError(f"{name}: file {str(p)!r} does not exist")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as f:
                if "x" in f.files:
                    return f["x"]
                if len(f.files) == 1:
                    return f[f.files[0]]
                raise HgdefendError(
                    f"{name}: {str(p)!r} must hold an array 'x' (or one array), has {f.files}"
                )
    except HgdefendError:
        raise
    except (OSError, ValueError) as exc:
        raise HgdefendError(f"{name}: cannot read {str(p)!r} as a numpy array ({exc})") from exc
    raise HgdefendError(f"{name}: expected a .npy or .npz file, got {str(p)!r}")


def _dataset_inputs(
    name: str, ens: SampledEnsemble, dataset_cfg: Mapping[str, Any], data_root: str | os.PathLike | None
) -> Tensor:
    """The calibration split of a named dataset, restricted to the classes the model was trained on."""
    from ..data import load_data

    classes = dataset_cfg.get("classes")
    n_all = dataset_cfg.get("num_classes_all")
    subset = classes if classes and n_all and len(classes) < n_all else None
    data = load_data(name, root=data_root, in_classes=subset)
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
) -> tuple[Tensor, str]:
    if isinstance(calibration, (str, os.PathLike)):
        text = str(calibration)
        if text.endswith((".npy", ".npz")):
            x = ens.check_inputs(load_inputs(text, "calibration"), name="calibration")
            return x, f"{Path(text).name}"
        return _dataset_inputs(text, ens, dataset_cfg, data_root), f"the {text!r} calibration split"
    return ens.check_inputs(calibration, name="calibration"), "the given calibration inputs"


def _parity_real_inputs(
    parity_inputs: object,
    calib_x: Tensor | None,
    ens: SampledEnsemble,
    dataset_cfg: Mapping[str, Any],
    data_root: str | os.PathLike | None,
) -> Tensor | None:
    if parity_inputs is not None:
        if isinstance(parity_inputs, (str, os.PathLike)):
            text = str(parity_inputs)
            if text.endswith((".npy", ".npz")):
                return ens.check_inputs(load_inputs(text, "parity_inputs"), name="parity_inputs")
            return _dataset_inputs(text, ens, dataset_cfg, data_root)
        return ens.check_inputs(parity_inputs, name="parity_inputs")
    if calib_x is not None:
        return calib_x
    name = dataset_cfg.get("name")
    if name:
        try:
            return _dataset_inputs(name, ens, dataset_cfg, data_root)
        except (HgdefendError, OSError):
            return None  # e.g. MNIST without a data root: parity then runs on random inputs only
    return None


# --------------------------------------------------------------------------- parity
def check_parity(
    path: str | os.PathLike,
    ensemble: SampledEnsemble,
    score: str,
    threshold: float | None,
    *,
    real_inputs: Tensor | None = None,
    batch: int = 7,
    tolerance: float = 1e-4,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Compare onnxruntime (CPU provider) with the torch ensemble; raise :class:`ParityError` on failure.

    Cases: random inputs in the input range and real inputs, each at batch 1 and ``batch``.
    Passing needs max |Δ probability| <= ``tolerance`` and identical argmax and flags, except where
    the torch value sits on the decision boundary within the measured numeric difference (a tie:
    reported in ``boundary_ties``, e.g. the calibration input whose score *is* the threshold).
    """
    det = OnnxDetector(path, device="cpu")
    lo, hi = ensemble.value_range
    gen = torch.Generator().manual_seed(seed)
    shape = ensemble.target.input_shape
    cases: list[tuple[str, Tensor]] = []
    rand = torch.rand(batch, *shape, generator=gen) * (hi - lo) + lo
    cases += [("random", rand[:1]), ("random", rand)]
    if real_inputs is not None and len(real_inputs):
        cases += [("real", real_inputs[:1]), ("real", real_inputs[:batch])]
    rows, failures = [], []
    for kind, x in cases:
        got = det.run(x.numpy())
        with torch.no_grad():
            logits = ensemble.member_logits(x)
        probs = torch.softmax(logits, -1).mean(0).numpy()
        scores = {k: v.numpy() for k, v in compute_scores(logits).items()}
        dprob = float(np.abs(got["probabilities"].astype(np.float64) - probs).max())
        dlogit = float(np.abs(got["member_logits"].astype(np.float64) - logits.numpy()).max())
        dscore = max(float(np.abs(got[f"score_{s}"].astype(np.float64) - scores[s]).max()) for s in SCORES)
        pred = probs.argmax(-1)
        top2 = np.sort(probs, -1)[:, -2:] if probs.shape[1] > 1 else np.zeros((len(probs), 2))
        arg_bad = got["predicted_class"] != pred
        arg_tie = arg_bad & (top2[:, 1] - top2[:, 0] <= 2 * dprob + 1e-7)
        flag_bad = np.zeros(len(x), bool)
        flag_tie = np.zeros(len(x), bool)
        if threshold is not None:
            s = scores[score]
            flags = s > np.float32(threshold)
            flag_bad = got["is_adversarial"] != flags
            ds = np.abs(got[f"score_{score}"].astype(np.float64) - s)
            flag_tie = flag_bad & (np.abs(s.astype(np.float64) - threshold) <= ds + 1e-7)
        row = {
            "inputs": kind,
            "batch": int(len(x)),
            "max_abs_prob_diff": dprob,
            "max_abs_logit_diff": dlogit,
            "max_abs_score_diff": dscore,
            "argmax_mismatches": int(arg_bad.sum()),
            "flag_mismatches": int(flag_bad.sum()),
            "boundary_ties": int(arg_tie.sum() + flag_tie.sum()),
        }
        rows.append(row)
        if dprob > tolerance or (arg_bad & ~arg_tie).any() or (flag_bad & ~flag_tie).any():
            failures.append(row)
    if failures:
        raise ParityError(
            f"parity: onnxruntime disagrees with the torch ensemble (tolerance {tolerance:g} on "
            f"probabilities, identical argmax and flags); no file was written: {failures}"
        )
    return rows


# --------------------------------------------------------------------------- running
def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    # onnxruntime-gpu lists the CUDA provider even on machines without a GPU; ask torch too.
    has_cuda = "CUDAExecutionProvider" in available and torch.cuda.is_available()
    if device == "auto":
        return (["CUDAExecutionProvider"] if has_cuda else []) + ["CPUExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if not has_cuda:
            raise HgdefendError("device: 'cuda' requested but onnxruntime has no usable CUDA provider here")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise HgdefendError(f"device: expected 'auto', 'cpu' or 'cuda', got {device!r}")


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The hgdefend metadata of an exported file, after format and integrity checks."""
    return _load_checked(path)[1]


def _load_checked(path: str | os.PathLike) -> tuple[bytes, dict[str, str]]:
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise OnnxFileError(f"onnx: file {str(p)!r} does not exist")
    data = p.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise OnnxFileError(
            f"onnx: {str(p)!r} is not a readable ONNX file (corrupt or truncated: {exc})"
        ) from exc
    meta = {prop.key: prop.value for prop in model.metadata_props}
    if meta.get("hgdefend_format") != FORMAT:
        raise OnnxFileError(
            f"onnx: {str(p)!r} has no hgdefend metadata (hgdefend_format={meta.get('hgdefend_format')!r}); "
            "only files written by `hgdefend export` / export_onnx can be run here"
        )
    if meta.get("hgdefend_format_version") != str(FORMAT_VERSION):
        raise OnnxFileError(
            f"onnx: {str(p)!r} has hgdefend format version {meta.get('hgdefend_format_version')!r}; "
            f"this hgdefend reads {FORMAT_VERSION}"
        )
    if meta.get("graph_sha256") != graph_sha256(model):
        raise OnnxFileError(
            f"onnx: {str(p)!r} failed its integrity check (the graph does not match the SHA-256 "
            "recorded at export): the file was altered or damaged"
        )
    required = ("members", "input_shape", "input_range", "num_classes", "score", "threshold", "outputs")
    missing = [key for key in required if key not in meta]
    if missing:
        raise OnnxFileError(f"onnx: {str(p)!r} has incomplete hgdefend metadata (missing {missing})")
    return data, meta


class OnnxDetector:
    """An exported ensemble run with onnxruntime: ``run(x)`` returns every output as numpy arrays.

    Inputs are checked against the file's metadata (shape, floating dtype, finite values, range)
    before onnxruntime sees them. ``device``: 'auto' (CUDA provider when usable, else CPU), 'cpu',
    'cuda'. ``threads``: onnxruntime intra-op threads (default: its own choice).
    """

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", threads: int | None = None) -> None:
        import onnxruntime as ort

        data, meta = _load_checked(path)
        self.path = str(path)
        self.metadata = meta
        self.k = int(meta["members"])
        self.input_shape = tuple(json.loads(meta["input_shape"]))
        self.value_range = tuple(json.loads(meta["input_range"]))
        self.num_classes = int(meta["num_classes"])
        self.class_labels = json.loads(meta.get("class_labels") or "null") or list(range(self.num_classes))
        self.score = meta["score"]
        self.threshold = float(meta["threshold"]) if meta["threshold"] else None
        self.target_fpr = float(meta["target_fpr"]) if meta.get("target_fpr") else None
        self.outputs = json.loads(meta["outputs"])
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = check_k(threads, "threads")
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, opts, providers=_providers(device))
        except HgdefendError:
            raise
        except Exception as exc:  # onnxruntime's own error types
            raise OnnxFileError(f"onnx: onnxruntime cannot load {self.path!r}: {exc}") from exc
        self.providers = self.session.get_providers()
        names = [o.name for o in self.session.get_outputs()]
        inputs = self.session.get_inputs()
        if names != self.outputs or len(inputs) != 1 or inputs[0].name != INPUT_NAME:
            raise OnnxFileError(
                f"onnx: {self.path!r} graph inputs/outputs do not match its hgdefend metadata"
            )

    def check_inputs(self, x: object, name: str = "x") -> np.ndarray:
        """float32 ``[B, *input_shape]``, finite, in the input range — else a clear HgdefendError."""
        return as_inputs(x, self.input_shape, name=name, value_range=self.value_range).numpy()

    def run(self, x: object, *, batch_size: int = 256) -> dict[str, np.ndarray]:
        """All graph outputs for ``x``, evaluated in batches of ``batch_size``."""
        arr = self.check_inputs(x)
        batch_size = check_k(batch_size, "batch_size")
        parts = [
            self.session.run(None, {INPUT_NAME: arr[i : i + batch_size]})
            for i in range(0, len(arr), batch_size)
        ]
        out = {}
        for j, name in enumerate(self.outputs):
            axis = 1 if name == "member_logits" else 0
            out[name] = parts[0][j] if len(parts) == 1 else np.concatenate([p[j] for p in parts], axis=axis)
        return out

    def predict(self, x: object) -> np.ndarray:
        """``is_adversarial`` for ``x`` (needs a file exported with a threshold)."""
        if self.threshold is None:
            raise HgdefendError(
                f"onnx: {self.path!r} was exported without a threshold; re-export with --threshold-from"
            )
        return self.run(x)["is_adversarial"]

    def records(self, x: object, *, batch_size: int = 256) -> list[dict[str, Any]]:
        """One dict per input: class index and label, mean probabilities, scores, flag."""
        out = self.run(x, batch_size=batch_size)
        rows = []
        for i in range(len(out["predicted_class"])):
            c = int(out["predicted_class"][i])
            row: dict[str, Any] = {
                "index": i,
                "predicted_class": c,
                "label": self.class_labels[c],
                "probability": float(out["probabilities"][i, c]),
                **{s: float(out[f"score_{s}"][i]) for s in SCORES},
                "is_adversarial": bool(out["is_adversarial"][i]) if "is_adversarial" in out else None,
            }
            rows.append(row)
        return rows

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "providers": self.providers, "metadata": self.metadata}


def run_onnx(
    path: str | os.PathLike,
    x: object,
    *,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int = 256,
) -> dict[str, np.ndarray]:
    """One-shot: load an exported ensemble and return all its outputs for ``x``."""
    return OnnxDetector(path, device=device, threads=threads).run(x, batch_size=batch_size)


__all__: Sequence[str] = (
    "OUTPUTS",
    "EnsembleGraph",
    "ExportResult",
    "OnnxDetector",
    "OnnxFileError",
    "ParityError",
    "check_parity",
    "export_onnx",
    "load_inputs",
    "read_metadata",
    "run_onnx",
)
