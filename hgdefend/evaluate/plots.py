"""PNG plots for the report: ROC and DET curves with the operating point, score ECDFs and
histograms, reliability diagrams, attack success per method.

Everything takes *named score groups* (``{"clean test": s0, "OOD": s1, "PGD eps=0.3": s2, ...}``)
so any caller — the OOD section, the attacks section — can add its own groups. The first group,
or the one named by ``clean``, is the clean reference the others are compared against. Uses
matplotlib's Agg backend (no display needed) and closes every figure it opens.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..validation import HgdefendError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _groups(groups: Mapping[str, object], clean: str | None) -> tuple[str, dict[str, np.ndarray]]:
    if not groups:
        raise HgdefendError("groups: expected at least one named score array")
    out = {}
    for name, s in groups.items():
        arr = np.asarray(s, dtype=np.float64)
        if arr.ndim != 1 or arr.size == 0:
            raise HgdefendError(
                f"groups[{name!r}]: expected a non-empty 1-D score array, got shape {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise HgdefendError(f"groups[{name!r}]: contains NaN or infinite scores")
        out[str(name)] = arr
    clean = next(iter(out)) if clean is None else clean
    if clean not in out:
        raise HgdefendError(f"clean: {clean!r} is not one of the groups {list(out)}")
    return clean, out


def _against_clean(groups: Mapping[str, object], clean: str | None, what: str):
    """(clean name, [(name, scores, labels, clean+suspect scores)]) for each non-clean group."""
    clean, g = _groups(groups, clean)
    if len(g) < 2:
        raise HgdefendError(f"groups: a {what} needs the clean group and at least one other")
    c = g[clean]
    pairs = [(name, s, np.r_[np.zeros(c.size), np.ones(s.size)], np.r_[c, s])
             for name, s in g.items() if name != clean]  # fmt: skip
    return clean, pairs


def plot_roc(
    groups: Mapping[str, object],
    path: str | os.PathLike,
    *,
    threshold: float | None = None,
    clean: str | None = None,
    title: str = "ROC",
) -> Path:
    """One ROC curve per non-clean group against the clean group; the threshold's (FPR, TPR) is marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    clean, pairs = _against_clean(groups, clean, "ROC curve")
    c = _groups(groups, clean)[1][clean]
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, s, y, sc in pairs:
        fpr, tpr, _ = roc_curve(y, sc)
        line = ax.plot(fpr, tpr, label=f"{name} (AUROC {roc_auc_score(y, sc):.3f})")[0]
        if threshold is not None:
            ax.plot(
                [np.mean(c > threshold)],
                [np.mean(s > threshold)],
                "o",
                color=line.get_color(),
                ms=7,
                markeredgecolor="black",
            )
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
    ax.set(
        xlabel=f"false-positive rate ({clean})",
        ylabel="true-positive rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    if threshold is not None:
        ax.plot([], [], "o", color="white", markeredgecolor="black", label="operating point (threshold)")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_det(
    groups: Mapping[str, object],
    path: str | os.PathLike,
    *,
    clean: str | None = None,
    title: str = "DET",
) -> Path:
    """Detection-error trade-off (miss rate vs false-positive rate on normal-deviate axes): the low
    false-positive region a deployment runs in is stretched out, where a linear ROC squeezes it."""
    from sklearn.metrics import DetCurveDisplay

    plt = _pyplot()
    clean, pairs = _against_clean(groups, clean, "DET curve")
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, _, y, sc in pairs:
        DetCurveDisplay.from_predictions(y, sc, ax=ax, name=name)
    ax.set(title=title, xlabel=f"false-positive rate ({clean})", ylabel="miss rate (not flagged)")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_ecdf(
    groups: Mapping[str, object],
    path: str | os.PathLike,
    *,
    threshold: float | None = None,
    score_name: str = "score",
    title: str | None = None,
) -> Path:
    """Empirical CDF of the score per group (the paper's Figure 3): a detector works where the
    clean curve rises early and the others late."""
    plt = _pyplot()
    _, g = _groups(groups, None)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in g.items():
        xs = np.sort(s)
        ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label=f"{name} (n={xs.size:,})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label="threshold")
    ax.set(
        xlabel=score_name,
        ylabel="fraction of inputs with score <= x",
        title=title or f"Empirical CDF of {score_name}",
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_histograms(
    groups: Mapping[str, object],
    path: str | os.PathLike,
    *,
    threshold: float | None = None,
    score_name: str = "score",
    bins: int = 40,
    title: str | None = None,
) -> Path:
    """Overlaid, density-normalised histograms of the score per group."""
    plt = _pyplot()
    _, g = _groups(groups, None)
    allv = np.concatenate(list(g.values()))
    lo, hi = float(allv.min()), float(allv.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in g.items():
        ax.hist(s, bins=edges, density=True, alpha=0.45, label=name)
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label="threshold")
    ax.set(xlabel=score_name, ylabel="density", title=title or f"Histogram of {score_name}")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_score_groups(
    groups: Mapping[str, object],
    out_dir: str | os.PathLike,
    *,
    score_name: str,
    threshold: float | None = None,
    clean: str | None = None,
    prefix: str = "detection",
) -> dict[str, str]:
    """ROC (when there is more than one group), ECDF and histogram PNGs for one score.

    Returns ``{"roc": name, "det": name, "ecdf": name, "histogram": name}`` with file names relative to
    ``out_dir``, as a report links them.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{prefix}_{score_name}"
    files: dict[str, str] = {}
    if len(groups) > 1:
        files["roc"] = plot_roc(
            groups, out / f"{stem}_roc.png", threshold=threshold, clean=clean, title=f"ROC, {score_name}"
        ).name
        files["det"] = plot_det(groups, out / f"{stem}_det.png", clean=clean, title=f"DET, {score_name}").name
    files["ecdf"] = plot_ecdf(
        groups, out / f"{stem}_ecdf.png", threshold=threshold, score_name=score_name
    ).name
    files["histogram"] = plot_histograms(
        groups, out / f"{stem}_hist.png", threshold=threshold, score_name=score_name
    ).name
    return files


def plot_reliability(curves: Mapping[str, Mapping[str, np.ndarray]], path: str | os.PathLike) -> Path:
    """Reliability diagram: accuracy against stated confidence per bin, one line per classifier;
    on the diagonal a classifier is calibrated, below it is over-confident."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, b in curves.items():
        used = b["count"] > 0
        ax.plot(b["confidence"][used], b["accuracy"][used], marker="o", ms=4, label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="perfectly calibrated")
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy", xlim=(0, 1.01), ylim=(0, 1.01),
           title="Reliability diagram (test split)")  # fmt: skip
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_attack_success(methods: list[Mapping], path: str | os.PathLike) -> Path:
    """Attack success and "misclassified and not flagged" vs eps, one panel per method so the plot
    stays readable with many (attack, protocol) rows."""
    plt = _pyplot()
    n = len(methods)
    fig, axes = plt.subplots(2, n, figsize=(4.2 * n, 6.5), squeeze=False, sharey=True)
    for j, m in enumerate(methods):
        keys = dict.fromkeys((r["attack"], r["protocol"]) for r in m["rows"])
        for attack, protocol in keys:
            rs = sorted((r for r in m["rows"] if (r["attack"], r["protocol"]) == (attack, protocol)),
                        key=lambda r: r["eps"])  # fmt: skip
            eps = [r["eps"] for r in rs]
            label = f"{attack} {protocol}"
            axes[0, j].plot(eps, [r["attack_success"] for r in rs], marker="o", label=label)
            axes[1, j].plot(eps, [r["missed_and_wrong"] for r in rs], marker="o", label=label)
        axes[0, j].set(title=m["name"], ylim=(-0.02, 1.02))
        axes[1, j].set(xlabel="eps (L∞)", ylim=(-0.02, 1.02))
        axes[0, j].legend(fontsize=7, loc="best")
    axes[0, 0].set_ylabel("attack success (attacked networks)")
    axes[1, 0].set_ylabel("misclassified and not flagged")
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    plt = _pyplot()
    from ..fileio import atomic_path

    p = Path(path)
    try:
        fig.tight_layout()
        with atomic_path(p, suffix=".png.tmp") as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return p
