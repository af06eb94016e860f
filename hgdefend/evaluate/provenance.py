"""Report sections that say what was evaluated: the model, the data and how the model was trained."""

from __future__ import annotations

import json
from typing import Any

from .context import EvalContext
from .formatting import fmt, pct, table


def model_section(ctx: EvalContext) -> dict[str, Any]:
    if ctx.onnx is not None:  # an exported file: what the file says about itself (ctx.model)
        return dict(ctx.model)
    return {
        **ctx.model,
        "ensemble_members": ctx.ensemble.k,
        "ensemble_seed": ctx.ensemble.seed,
        "fresh_ensemble_seed": ctx.fresh.seed,
    }


def render_model(sec: dict[str, Any]) -> list[str]:
    return table(["field", "value"], [[k, str(v)] for k, v in sec.items() if not isinstance(v, dict)])


def data_section(ctx: EvalContext) -> dict[str, Any]:
    return {
        **ctx.data.describe(),
        "value_range": list(ctx.data.value_range),
        "task": ctx.data.task,
        "ood_sets": [{"name": n, "size": len(s)} for n, s in ctx.ood_sets],
    }


def render_data(sec: dict[str, Any]) -> list[str]:
    classes = sec.get("classes") or []
    n_all = sec.get("num_classes_all")
    held = f" of {n_all}" if n_all and n_all != len(classes) else ""
    rows = [
        ["dataset", sec["name"]],
        ["task", sec.get("task", "classification")],
        ["input shape", str(sec["input_shape"])],
        ["in-distribution classes", f"{classes}{held}" if classes else "—"],
        ["train / calibration / test", f"{sec['train']:,} / {sec['calibration']:,} / {sec['test']:,}"],
        ["split seed", str(sec.get("split_seed"))],
    ]
    rows += [[f"OOD set: {o['name']}", f"{o['size']:,} inputs"] for o in sec.get("ood_sets", [])]
    return [
        "The calibration split sets the detector thresholds; the test split, never seen in training or "
        "calibration, is where every rate below is measured.",
        "",
        *table(["field", "value"], rows),
    ]


def render_training(sec: dict[str, Any]) -> list[str]:
    """Where the model came from, how long it trained, with which recipe, and how well it ended."""
    src = sec.get("source", "file")
    lines = [
        ("Trained by this run" if src == "trained" else "Loaded from a model file")
        + f": `{sec.get('path', '—')}`.",
        "",
    ]
    rows = [[k, fmt(sec.get(k))] for k in ("steps", "seconds", "seed") if k in sec]
    final = sec.get("final") or {}
    for key, label in (
        ("ensemble_acc", "final accuracy, 10-network ensemble (calibration split)"),
        ("member_acc_mean", "final accuracy, single network mean (calibration split)"),
    ):
        if key in final:
            rows.append([label, pct(final[key], 2)])
    lines += table(["field", "value"], rows) if rows else ["No training record in the model file."]
    recipe = sec.get("recipe")
    if recipe:
        lines += ["", "Recipe: `" + json.dumps(recipe, sort_keys=True) + "`"]
    return lines
