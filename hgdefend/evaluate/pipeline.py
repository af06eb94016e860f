"""``hgdefend evaluate`` as a library call: get a model, run ONE ordered list of sections, write.

Each :class:`Section` computes its part of the report and renders it; the list below is both the
order of computation and the order of the report (the summary, built last from the sections, is
shown first). The CLI only parses flags into :class:`~.options.EvaluateOptions`.

The source is a model file (or a model trained now) or, with ``onnx``, an exported file
(:mod:`.onnx_source`): the same sections run on either context; those that do not apply to a source
return None, and the exported file has its own detection section (its baked-in threshold) and a
transfer-attack section in place of the attack suite.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..data import DataSplits, load_data
from ..errors import HgdefendError
from ..fileio import FolderLock, check_output
from ..hypergan import check_ensemble_memory
from ..io import LoadedModel, load_model, save_model
from ..recipes import default_recipe, default_spec, train_model
from ..training import resolve_device
from .accuracy import (
    accuracy_section,
    calibration_section,
    diversity_section,
    render_accuracy,
    render_calibration,
    render_diversity,
)
from .attacks import attacks_section, render_attacks
from .context import EvalContext, collect_ood_sets
from .detection import detection_section, render_detection
from .gate import apply_gate, parse_fail_under, render_gate
from .onnx_detection import onnx_detection_section, render_onnx_detection
from .onnx_source import onnx_context
from .onnx_transfer import render_transfer, transfer_section
from .options import EvaluateOptions, resolve_in_classes
from .plots import pictures_section, render_pictures
from .progress import progress_enabled
from .provenance import data_section, model_section, render_data, render_model, render_training
from .render import render_html, render_markdown
from .report import REPORT_FILES, write_report
from .summary import summarise


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    compute: Callable[[EvalContext, dict[str, Any]], dict[str, Any] | None]
    """(context, report so far) → the section's dict, or None when it does not apply."""
    render: Callable[[dict[str, Any]], list[str]]


SECTIONS: tuple[Section, ...] = (
    Section("model", "Model", lambda ctx, _: model_section(ctx), render_model),
    Section("data", "Data", lambda ctx, _: data_section(ctx), render_data),
    Section("training", "Training", lambda ctx, _: ctx.training or None, render_training),
    Section("accuracy", "Clean accuracy", lambda ctx, _: accuracy_section(ctx), render_accuracy),
    Section("calibration", "Calibration", lambda ctx, _: calibration_section(ctx), render_calibration),
    Section(
        "diversity",
        "Diversity of sampled networks",
        lambda ctx, _: None if ctx.onnx is not None else diversity_section(ctx),
        render_diversity,
    ),
    Section(
        "detection",
        "Detection (threshold at a target FPR; OOD)",
        lambda ctx, _: onnx_detection_section(ctx) if ctx.onnx is not None else detection_section(ctx),
        lambda sec: render_onnx_detection(sec) if sec.get("source") == "onnx" else render_detection(sec),
    ),
    Section(
        "pictures",
        "Pictures (the paper's appendix A.1-A.2)",
        lambda ctx, _: pictures_section(ctx),
        render_pictures,
    ),
    Section(
        "attacks",
        "Attacks (adversarial inputs)",
        lambda ctx, _: None if ctx.onnx is not None else attacks_section(ctx),
        render_attacks,
    ),
    Section(
        "transfer",
        "Transfer attacks on the exported file",
        lambda ctx, _: transfer_section(ctx),
        render_transfer,
    ),
    Section("gate", "Gate", lambda ctx, report: _gate(ctx, report), render_gate),
)


def _gate(ctx: EvalContext, report: dict[str, Any]) -> dict[str, Any] | None:
    limits = parse_fail_under(ctx.options.fail_under)
    return apply_gate(report, limits) if limits else None


def environment(
    *, seed: int | None, device: torch.device | str, model_sha256: str | None, command: str | None = None
) -> dict[str, Any]:
    """What a reader needs to reproduce a run: versions, device, seed, model hash, command."""
    import numpy
    import sklearn

    dev = torch.device(device)
    return {
        "hgdefend": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit_learn": sklearn.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "model_sha256": model_sha256,
        "command": command,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _dataset_name(opts: EvaluateOptions, loaded: LoadedModel | None) -> str:
    """``--dataset``, else the dataset recorded in the model file, else the embedded digits."""
    if opts.dataset:
        return opts.dataset
    name = (loaded.config.get("dataset") or {}).get("name") if loaded else None
    return name if isinstance(name, str) and name else "digits"


def _check_model_fits(loaded: LoadedModel, data: DataSplits) -> None:
    want, got = list(data.input_shape), loaded.config["target"]["input_shape"]
    if got != want:
        raise HgdefendError(f"model: trained on input shape {got}, dataset {data.name!r} gives {want}")
    if loaded.hypergan.target.num_outputs != data.num_classes and data.task != "regression":
        raise HgdefendError(
            f"model: has {loaded.hypergan.target.num_outputs} classes, dataset (with "
            f"in_classes) has {data.num_classes}"
        )


def _check_outputs(opts: EvaluateOptions) -> None:
    """Before any work: the output folder and the names written in it are not symbolic links and
    not the command's inputs (plots are checked as they are written)."""
    out = check_output(opts.out, name="out")
    inputs = [opts.model, opts.onnx, opts.dataset]
    for name in (*REPORT_FILES.values(), "model.safetensors"):
        check_output(out / name, refuse=inputs, name="out")


def _check_members_fit(opts: EvaluateOptions, data: DataSplits, loaded: LoadedModel | None) -> None:
    """Refuse ``members`` before any training or sampling when the two ensembles (fixed and fresh)
    and their member logits on the scored splits would not fit the memory limit."""
    if loaded is not None:
        target, hp = loaded.hypergan.target, loaded.hypergan.hparams()
    else:
        target, hp = default_spec(data), default_recipe(data)[0]
    k = opts.members
    n = len(data.calib) + len(data.test) + (len(data.ood) if data.ood is not None else 0)
    check_ensemble_memory(
        target, k, f"members: 2 ensembles of {k} networks and their logits on {n} inputs",
        hidden=hp["hidden"], noise_dim=hp["noise_dim"], copies=2, extra=4 * k * n * target.num_outputs,
    )  # fmt: skip


def _obtain_model(
    opts: EvaluateOptions,
    data: DataSplits,
    device: torch.device,
    progress: bool,
    loaded: LoadedModel | None,
    lock: FolderLock,
) -> tuple[LoadedModel, dict[str, Any]]:
    """The ``--model`` file, or the dataset's default HyperGAN trained now and saved beside the report."""
    if loaded is not None:
        _check_model_fits(loaded, data)
        return loaded, {"source": "file", "path": loaded.path, **(loaded.config.get("training") or {})}
    lock.acquire()  # before training: a second run into the same folder is refused now, not after it
    trained = train_model(
        data,
        seed=opts.seed,
        device=device,
        steps=opts.train_steps,
        time_budget=opts.time_budget,
        regulariser=opts.regulariser,
        beta=opts.beta,
        progress=progress,
    )
    path = Path(opts.out) / "model.safetensors"
    save_model(path, trained.hypergan, dataset=data.describe(), training=trained.file_record)
    return load_model(path, device=device), {"source": "trained", "path": str(path), **trained.training}


def run_evaluate(
    opts: EvaluateOptions, command: str | None = None, *, module: nn.Module | None = None
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run the evaluation and write the report; return (report, written paths by kind).

    ``module``: the user's model that ``opts.model`` was trained on (a model over a pretrained
    backbone, or a user ``nn.Module`` target), passed to :func:`~hgdefend.io.load_model`; with
    ``opts.onnx``, the one the exported file's source model was trained on."""
    t0 = time.perf_counter()
    opts = opts.checked()
    parse_fail_under(opts.fail_under)  # bad syntax fails before any training
    _check_outputs(opts)
    progress = progress_enabled(opts.quiet, opts.progress)
    device = resolve_device(opts.device)
    with FolderLock(opts.out) as lock:
        return _run(opts, command, device, progress, lock, t0, module)


def _run(opts: EvaluateOptions, command: str | None, device: torch.device, progress: bool, lock: FolderLock,
         t0: float, module: nn.Module | None = None) -> tuple[dict[str, Any], dict[str, Path]]:  # fmt: skip
    if opts.onnx is not None:
        ctx, head = onnx_context(opts, device, progress, module)
    else:
        ctx, head = _model_context(opts, device, progress, lock, module)
    lock.acquire()  # plots and the report are written from here on
    meta = environment(seed=head["seed"], device=device, model_sha256=head["model_sha256"], command=command)
    meta.update(head.get("meta", {}))
    report: dict[str, Any] = {"title": head["title"], "summary": {}, "findings": [], "meta": meta}
    for section in SECTIONS:
        result = section.compute(ctx, report)
        if result is None:
            continue
        report[section.key] = result
        for finding in result.get("findings", []) if isinstance(result, dict) else []:
            if finding not in report["findings"]:
                report["findings"].append(finding)
    report["summary"] = summarise(report)
    report["meta"]["seconds"] = round(time.perf_counter() - t0, 2)
    md = render_markdown(report, SECTIONS)
    html = render_html(md, ctx.out_dir, title=f"hgdefend report — {report['title']}")
    return report, write_report(ctx.out_dir, report, md, html)


def _model_context(
    opts: EvaluateOptions, device: torch.device, progress: bool, lock: FolderLock,
    module: nn.Module | None = None,
) -> tuple[EvalContext, dict[str, Any]]:  # fmt: skip
    """The context of a model file (or of the model trained now), and the report's title, seed and
    model hash."""
    pre = load_model(opts.model, module=module, device=device) if opts.model else None
    dataset = _dataset_name(opts, pre)
    data = load_data(
        dataset,
        root=opts.data_root,
        download=opts.download,
        trust_data_root=opts.trust_data_root,
        in_classes=resolve_in_classes(opts, dataset, pre.config if pre else None),
    )
    _check_members_fit(opts, data, pre)
    loaded, training = _obtain_model(opts, data, device, progress, pre, lock)
    oods = collect_ood_sets(opts, data)
    hg = loaded.hypergan
    model = {
        "path": loaded.path,
        "sha256": loaded.sha256,
        "target": loaded.config["target"]["name"],
        **{k: loaded.config["hypergan"].get(k) for k in ("regulariser", "beta")},
    }
    ctx = EvalContext.build(
        opts, data, hg, device=device, ood_sets=oods, model=model, training=training, progress=progress
    )
    held = f" (classes {data.classes} in-distribution, the rest held out as OOD)" if data.ood else ""
    return ctx, {
        "title": f"{data.name}{held}, {opts.members}-network HyperGAN ensemble",
        "seed": opts.seed,
        "model_sha256": loaded.sha256,
    }
