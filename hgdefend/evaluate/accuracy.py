"""Report sections about the networks themselves: clean accuracy, calibration, diversity."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..ensemble import diversity, pairwise_disagreement
from ..probabilities import mean_probs
from .context import EvalContext
from .formatting import fmt, pct, table
from .plots import plot_reliability

ENSEMBLE_SIZES = (5, 10, 100)
ECE_BINS = 15


# --------------------------------------------------------------------------- accuracy
def accuracy_section(ctx: EvalContext) -> dict[str, Any]:
    """Single sampled networks (mean/min/max) and ensembles of several sizes, from one scored pass."""
    logits = ctx.scored.logits(ctx.primary, "test")
    y = ctx.data.test.y.to(logits.device)
    if ctx.data.task == "regression":
        pred = logits.squeeze(-1)
        return {
            "test_size": len(y),
            "single_network_mse": float(((pred - y) ** 2).mean()),
            "ensemble_mse": float(((pred.mean(0) - y) ** 2).mean()),
        }
    member_acc = (logits.argmax(-1) == y).float().mean(1)
    k = logits.shape[0]
    sizes = sorted({s for s in ENSEMBLE_SIZES if s <= k} | {k})
    ens = {str(s): float((mean_probs(logits[:s]).argmax(-1) == y).float().mean()) for s in sizes}
    return {
        "test_size": len(y),
        "members": k,
        "single_networks": {
            "count": k,
            "mean": float(member_acc.mean()),
            "min": float(member_acc.min()),
            "max": float(member_acc.max()),
        },
        "ensembles": ens,
        "pairwise_disagreement": pairwise_disagreement(logits),
    }


def render_accuracy(sec: dict[str, Any]) -> list[str]:
    if "single_network_mse" in sec:
        return table(
            ["what", "mse"],
            [["single network (mean)", sec["single_network_mse"]], ["ensemble", sec["ensemble_mse"]]],
        )
    s = sec["single_networks"]
    lines = [f"Test split: {sec['test_size']:,} inputs. Single networks: {s['count']} sampled.", ""]
    rows = [
        ["single network (mean)", pct(s["mean"], 2)],
        ["single network (min)", pct(s["min"], 2)],
        ["single network (max)", pct(s["max"], 2)],
    ]
    k = str(sec.get("members", s["count"]))
    rows += [
        [f"ensemble of {n}" + (" (the one evaluated)" if n == k else ""), pct(v, 2)]
        for n, v in sec["ensembles"].items()
    ]
    lines += table(["classifier", "test accuracy"], rows)
    if "pairwise_disagreement" in sec:
        lines += [
            "",
            f"Mean pairwise disagreement between members on the test split: "
            f"{pct(sec['pairwise_disagreement'], 2)}.",
        ]
    return lines


# --------------------------------------------------------------------------- calibration
def calibration_bins(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Equal-width confidence bins: count, mean confidence and accuracy per bin (top-label)."""
    conf = probs.max(-1)
    correct = (probs.argmax(-1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        acc = np.bincount(idx, weights=correct, minlength=bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean |accuracy − confidence| over equal-width confidence bins."""
    b = calibration_bins(probs, y, bins)
    used = b["count"] > 0
    gap = np.abs(b["accuracy"][used] - b["confidence"][used])
    return float((b["count"][used] * gap).sum() / b["count"].sum())


def calibration_section(ctx: EvalContext) -> dict[str, Any] | None:
    """ECE and a reliability diagram for the ensemble and for single sampled networks."""
    if ctx.data.task != "classification":
        return None
    logits = ctx.scored.logits(ctx.primary, "test")
    y = ctx.data.test.y.cpu().numpy()
    ens_probs = ctx.scored.prediction(ctx.primary, "test").probs.cpu().numpy().astype(np.float64)
    member_probs = torch.softmax(logits, -1).cpu().numpy().astype(np.float64)  # [K, B, C]
    member_ece = np.array([expected_calibration_error(p, y) for p in member_probs])
    pooled = member_probs.reshape(-1, member_probs.shape[-1])
    curves = {
        f"ensemble of {logits.shape[0]}": calibration_bins(ens_probs, y),
        "single networks (pooled)": calibration_bins(pooled, np.tile(y, member_probs.shape[0])),
    }
    plot = plot_reliability(curves, ctx.out_dir / "calibration_reliability.png")
    return {
        "bins": ECE_BINS,
        "ensemble_ece": expected_calibration_error(ens_probs, y),
        "single_network_ece": {
            "mean": float(member_ece.mean()),
            "min": float(member_ece.min()),
            "max": float(member_ece.max()),
        },
        "members": int(logits.shape[0]),
        "plot": plot.name,
    }


def render_calibration(sec: dict[str, Any]) -> list[str]:
    s = sec["single_network_ece"]
    lines = [
        f"Expected calibration error (ECE, {sec['bins']} equal-width confidence bins, top label) on the "
        "test split: how far stated confidence is from observed accuracy. Lower is better; an ensemble "
        "of diverse networks is usually better calibrated than its members.",
        "",
    ]
    lines += table(
        ["classifier", "ECE"],
        [
            [f"ensemble of {sec['members']}", fmt(sec["ensemble_ece"], 4)],
            ["single network (mean over members)", fmt(s["mean"], 4)],
            ["single network (best / worst)", f"{fmt(s['min'], 4)} / {fmt(s['max'], 4)}"],
        ],
    )
    return lines + ["", f"![reliability diagram]({sec['plot']})"]


# --------------------------------------------------------------------------- diversity
def diversity_section(ctx: EvalContext) -> dict[str, Any]:
    return {"members": ctx.ensemble.k, "layers": diversity(ctx.ensemble)}


def render_diversity(sec: dict[str, Any]) -> list[str]:
    lines = [
        "Per-layer 2-norms of member weights (the paper's Table 1). A relative std near 0 means "
        "the sampled networks are near copies and will make the same mistakes.",
        "",
    ]
    rows = [[name, d["mean_norm"], d["std_norm"], pct(d["rel_std"], 1)] for name, d in sec["layers"].items()]
    return lines + table(["layer", "mean 2-norm", "std", "relative std"], rows)
