"""The one report writer: ``report.json`` (machine-readable) and ``report.md`` (for people).

A report is a dict of sections. ``meta`` records versions, seeds, device and the model's SHA-256 so
every figure can be traced to a run. Each other section has a renderer in ``SECTION_RENDERERS``
that turns it into Markdown; a module adding a section registers its renderer with
:func:`register_section`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import __version__

SCHEMA_VERSION = 1

Renderer = Callable[[dict[str, Any]], list[str]]
SECTION_RENDERERS: dict[str, tuple[str, Renderer]] = {}
SECTION_ORDER: list[str] = []


def register_section(key: str, title: str, renderer: Renderer) -> None:
    if key not in SECTION_RENDERERS:
        SECTION_ORDER.append(key)
    SECTION_RENDERERS[key] = (title, renderer)


def environment(*, seed: int | None, device: torch.device | str, model_sha256: str | None,
                command: str | None = None) -> dict[str, Any]:  # fmt: skip
    """What a reader needs to reproduce a run."""
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


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for people: fixed decimals, percentages where asked, '—' for missing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{100 * value:.{digits}f} %"


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in r) + " |"
              for r in rows]  # fmt: skip
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    meta = report.get("meta", {})
    lines = [f"# hgdefend report — {report.get('title', 'evaluation')}", ""]
    for finding in report.get("findings", []):
        lines.append(f"> **{finding}**")
    if report.get("findings"):
        lines.append("")
    for key in SECTION_ORDER:
        if key in report:
            title, renderer = SECTION_RENDERERS[key]
            lines += [f"## {title}", "", *renderer(report[key]), ""]
    lines += ["## Run", ""]
    lines += table(["field", "value"], [[k, str(v)] for k, v in meta.items()])
    return "\n".join(lines) + "\n"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_report(out_dir: str | os.PathLike, report: dict[str, Any]) -> dict[str, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` (atomically each)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = {"schema_version": SCHEMA_VERSION, **report}
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    _atomic_write(paths["json"], json.dumps(report, indent=2, default=_json_default,
                                            allow_nan=True) + "\n")  # fmt: skip
    _atomic_write(paths["markdown"], render_markdown(report))
    return paths


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- built-in sections
def _render_model(sec: dict[str, Any]) -> list[str]:
    rows = [[k, str(v)] for k, v in sec.items() if not isinstance(v, dict)]
    return table(["field", "value"], rows)


def _render_accuracy(sec: dict[str, Any]) -> list[str]:
    if "single_network_mse" in sec:
        return table(["what", "mse"], [["single network (mean)", sec["single_network_mse"]],
                                       ["ensemble", sec["ensemble_mse"]]])  # fmt: skip
    s = sec["single_networks"]
    lines = [f"Test split: {sec['test_size']:,} inputs. Single networks: {s['count']} sampled.", ""]
    rows = [["single network (mean)", pct(s["mean"], 2)], ["single network (min)", pct(s["min"], 2)],
            ["single network (max)", pct(s["max"], 2)]]  # fmt: skip
    rows += [[f"ensemble of {k}", pct(v, 2)] for k, v in sec["ensembles"].items()]
    lines += table(["classifier", "test accuracy"], rows)
    if "pairwise_disagreement" in sec:
        lines += ["", f"Mean pairwise disagreement between members on the test split: "
                      f"{pct(sec['pairwise_disagreement'], 2)}."]  # fmt: skip
    return lines


def _render_diversity(sec: dict[str, Any]) -> list[str]:
    lines = ["Per-layer 2-norms of member weights (the paper's Table 1). A relative std near 0 means "
             "the sampled networks are near copies and will make the same mistakes.", ""]  # fmt: skip
    rows = [[name, d["mean_norm"], d["std_norm"], pct(d["rel_std"], 1)]
            for name, d in sec["layers"].items()]  # fmt: skip
    return lines + table(["layer", "mean 2-norm", "std", "relative std"], rows)


def _render_training(sec: dict[str, Any]) -> list[str]:
    return table(
        ["field", "value"],
        [
            [k, fmt(v) if not isinstance(v, str) else v]
            for k, v in sec.items()
            if not isinstance(v, (dict, list))
        ],
    )


register_section("model", "Model", _render_model)
register_section("training", "Training", _render_training)
register_section("accuracy", "Clean accuracy", _render_accuracy)
register_section("diversity", "Diversity of sampled networks", _render_diversity)
