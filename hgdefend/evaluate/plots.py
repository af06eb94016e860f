"""PNG plots for the report: ROC and DET curves with the operating point, score ECDFs and
histograms, reliability diagrams, attack success per method, and the paper's appendix pictures
(``evaluate --plots filters,entropy-images``: one first-layer filter from 25 sampled networks; the
highest-entropy test images and the lowest-entropy OOD images).

Everything takes *named score groups* (``{"clean test": s0, "OOD": s1, "PGD eps=0.3": s2, ...}``)
so any caller — the OOD section, the attacks section — can add its own groups. The first group,
or the one named by ``clean``, is the clean reference the others are compared against. Uses
matplotlib's Agg backend (no display needed) and closes every figure it opens.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..validation import HgdefendError

if TYPE_CHECKING:
    from .context import EvalContext


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Write ``fig`` as a PNG atomically (no half-written file under ``path``) and close it."""
    plt = _pyplot()
    from ..fileio import atomic_path

    p = Path(path)
    try:
        fig.tight_layout()
        with atomic_path(p, suffix=".png.tmp") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return p


# --------------------------------------------------------------------------- appendix pictures
PICTURE_NETWORKS = 25
"""Sampled networks whose first-layer filter ``--plots filters`` draws (the paper's 5×5 grid, A.1)."""
PICTURE_IMAGES = 16
"""Images per grid of ``--plots entropy-images`` (the paper's A.2)."""
FILTERS_PLOT = "appendix_filters.png"


def first_layer_filters(ensemble: Any, n: int = PICTURE_NETWORKS, index: int = 0) -> tuple[np.ndarray, dict]:
    """The same first-layer filter (output unit ``index``) of the first ``n`` networks of a sampled
    ensemble, shaped for drawing, and what it is.

    A convolution gives ``[n, C_in, kh, kw]``; a linear layer's weight row is reshaped to the input
    image when its length is the input's size (an MLP on images), else drawn as a ``[n, 1, 1, D]`` strip.
    """
    groups = list(ensemble.target.param_groups)
    if not groups:
        raise HgdefendError("plots: the target has no generated layer to draw a filter of")
    g = groups[0]
    pname = "weight" if "weight" in g.shapes else next(iter(g.shapes))
    key = f"{g.name}.{pname}" if g.name else pname
    w = ensemble.params[key].detach().float().cpu().numpy()  # [K, out, ...]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise HgdefendError(f"n: expected a number of networks >= 1, got {n!r}")
    n = min(n, w.shape[0])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < w.shape[1]:
        raise HgdefendError(f"index: expected a unit in [0, {w.shape[1]}), got {index!r}")
    f = w[:n, index]
    shape = tuple(int(v) for v in getattr(ensemble.target, "input_shape", ()) or ())
    if f.ndim == 4:  # [n, C_in, kh, kw]
        kind = "convolution filter"
    elif f.ndim == 2 and len(shape) in (2, 3) and math.prod(shape) == f.shape[1]:
        f = f.reshape(n, *((1, *shape) if len(shape) == 2 else shape))
        kind = "linear weight row, reshaped to the input image"
    else:
        f = f.reshape(n, 1, 1, -1)
        kind = "weight row (drawn as a strip)"
    info = {"param": key, "filter_index": index, "networks": n, "shape": list(f.shape[1:]), "kind": kind}
    return f, info


def _display(img: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, dict]:
    """[C, H, W] -> what imshow takes: RGB [H, W, 3] in [0, 1], or [H, W] with a grey colour map."""
    scaled = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    if img.shape[0] == 3:
        return scaled.transpose(1, 2, 0), {}
    return scaled[0], {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}


def plot_filters(filters: np.ndarray, path: str | os.PathLike, *, title: str) -> Path:
    """A grid (5×5 for 25) of filters ``[n, C, h, w]`` on ONE shared colour scale, so differences in
    magnitude between networks show as well as differences in pattern."""
    f = np.asarray(filters, dtype=np.float64)
    if f.ndim != 4 or f.shape[0] == 0 or not np.all(np.isfinite(f)):
        raise HgdefendError(f"filters: expected finite [n, C, h, w] weights, got shape {f.shape}")
    if f.shape[1] not in (1, 3):  # many input channels: draw the first one
        f = f[:, :1]
    m = float(np.abs(f).max()) or 1.0
    titles = [f"net {i}" for i in range(f.shape[0])]
    return plot_image_grid(f, titles, path, title=title, value_range=(-m, m))


def plot_image_grid(
    images: np.ndarray,
    titles: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str,
    value_range: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """Images ``[n, C, H, W]`` (C = 1 or 3; else the first channel) in a square grid, one title each."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[0] == 0 or len(titles) != x.shape[0]:
        raise HgdefendError(f"images: expected [n, C, H, W] with n titles, got {x.shape} and {len(titles)}")
    if x.shape[1] not in (1, 3):
        x = x[:, :1]
    plt = _pyplot()
    side = math.ceil(math.sqrt(x.shape[0]))
    fig, axes = plt.subplots(side, side, figsize=(1.5 * side, 1.6 * side + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < x.shape[0]:
            img, kw = _display(x[i], *value_range)
            ax.imshow(img, interpolation="nearest", **kw)
            ax.set_title(titles[i], fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def _entropy_pick(ctx: EvalContext, split: str, data_split: Any, highest: bool, label: str,
                  file_name: str, class_names: Sequence[int] | None) -> dict:  # fmt: skip
    """The images of one split with the highest (or lowest) predictive entropy, drawn and recorded."""
    h = ctx.scored.scores(ctx.primary, split)["entropy"]
    order = np.argsort(-h if highest else h, kind="stable")[:PICTURE_IMAGES]
    x = data_split.x[order].cpu().numpy()
    y = data_split.y[order].cpu().numpy()
    names = [int(class_names[v]) if class_names else int(v) for v in y]
    titles = [f"H={h[i]:.3f}\nclass {c}" for i, c in zip(order, names, strict=True)]
    which = "highest" if highest else "lowest"
    plot = plot_image_grid(x, titles, ctx.out_dir / file_name, value_range=tuple(ctx.data.value_range),
                           title=f"{label}: the {len(order)} with the {which} entropy")  # fmt: skip
    return {
        "split": label,
        "order": f"{which} entropy",
        "indices": [int(i) for i in order],
        "entropy": [float(h[i]) for i in order],
        "classes": names,
        "of": int(h.size),
        "plot": plot.name,
    }


def pictures_section(ctx: EvalContext) -> dict[str, Any] | None:
    """``--plots``: the paper's appendix pictures (A.1 filters, A.2 entropy extremes), or None."""
    asked = tuple(ctx.options.plots or ())
    if not asked:
        return None
    sec: dict[str, Any] = {"asked": list(asked), "notes": []}
    if "filters" in asked:
        if ctx.ensemble is None:
            sec["notes"].append("filters: no sampled networks (an exported file without its source model).")
        else:
            f, info = first_layer_filters(ctx.ensemble)
            info["plot"] = plot_filters(
                f, ctx.out_dir / FILTERS_PLOT,
                title=f"{info['param']} unit {info['filter_index']} of {info['networks']} sampled networks",
            ).name  # fmt: skip
            info["seed"] = ctx.ensemble.seed
            sec["filters"] = info
    if "entropy-images" in asked:
        if ctx.data.task != "classification" or len(ctx.data.input_shape) != 3:
            sec["notes"].append("entropy-images: needs a classifier of [C, H, W] images.")
        else:
            groups = [_entropy_pick(ctx, "test", ctx.data.test, True, "in-distribution test",
                                    "appendix_test_highest_entropy.png", ctx.data.classes)]  # fmt: skip
            for i, (name, split) in enumerate(ctx.ood_sets):
                groups.append(_entropy_pick(ctx, f"ood{i}", split, False, f"OOD: {name}",
                                            f"appendix_ood{i}_lowest_entropy.png", None))  # fmt: skip
            if not ctx.ood_sets:
                sec["notes"].append("entropy-images: no OOD set, so only the in-distribution test images.")
            sec["entropy_images"] = groups
    return sec


def render_pictures(sec: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    f = sec.get("filters")
    if f:
        lines += [
            f"The same first-layer filter ({f['kind']} `{f['param']}`, unit {f['filter_index']}, shape "
            f"{f['shape']}) of {f['networks']} sampled networks (seed {f['seed']}), on one colour scale "
            "(the paper's appendix A.1):",
            "",
            f"![first-layer filter of {f['networks']} sampled networks]({f['plot']})",
            "",
        ]
    for g in sec.get("entropy_images") or []:
        lines += [
            f"{g['split']}: the {len(g['indices'])} of {g['of']:,} inputs with the {g['order']} (the "
            "paper's appendix A.2; titles give the entropy and the class):",
            "",
            f"![{g['split']}, {g['order']}]({g['plot']})",
            "",
        ]
    lines += [f"- {n}" for n in sec.get("notes", [])]
    return lines
