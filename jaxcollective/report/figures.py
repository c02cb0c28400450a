"""The report: figures."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from jaxcollective.config import MODEL_TYPES

from .load import Run
from .select import Group, size_class_of, size_classes
from .stats import linear_fit, matched_comparisons
from .tables import fmt_params, mean_curve


COLORS = {
    "collective": "#d62728",
    "shallow": "#1f77b4",
    "balanced": "#2ca02c",
    "deep": "#9467bd",
    "very_deep": "#8c564b",
    "deep_resnet": "#e377c2",
    "very_deep_resnet": "#17becf",
}
MARKERS = {
    "collective": "*",
    "shallow": "o",
    "balanced": "s",
    "deep": "^",
    "very_deep": "v",
    "deep_resnet": "D",
    "very_deep_resnet": "P",
}


def plot_val_curves(groups: list[Group], types: list[str], out: Path, title: str) -> None:
    """Per size, the mean validation curve over the runs of each type (runs that record
    their curves; one that stopped early holds its last value, `mean_curve`)."""
    import matplotlib.pyplot as plt

    # a panel per matched size: a collective and the baselines sized to it share one
    sizes = size_classes(g.size for g in groups if any(r.val_curve for r in g.runs))
    if not sizes:
        return
    fig, axes = plt.subplots(
        1,
        len(sizes),
        figsize=(5.2 * len(sizes), 4),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, size in zip(axes[0], sizes):
        for g in groups:
            curves = [r.val_curve for r in g.runs if r.val_curve]
            if not curves or sizes[size_class_of(g.size, sizes)] != size:
                continue
            mean = mean_curve(curves)
            n = len(mean)
            ax.plot(
                range(1, n + 1),
                mean,
                color=COLORS[g.model_type],
                label=f"{g.model_type} ({len(curves)})",
                marker=MARKERS[g.model_type],
                markevery=max(1, n // 8),
                markersize=4,
            )
        ax.set_title(f"{fmt_params(size)} parameters", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel("validation accuracy (%)")
    axes[0, -1].legend(fontsize=8, loc="lower right")
    fig.suptitle(
        textwrap.fill(
            "Validation accuracy per epoch, mean over seeds (runs)" + title,
            width=int(5.2 * len(sizes) * 9),
        )
    )
    fig.savefig(out / "val_curves.png", dpi=130)
    plt.close(fig)


NARROW = 1.5  # sizes spanning less than this factor are drawn on a linear axis


def _size_axis(ax, params: list[float]) -> None:
    """A readable parameter axis whatever the spread: log for a wide range, linear for
    sizes within a few percent; a tick at each size, labelled as 2.97M / 850K."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    lo, hi = min(params), max(params)
    precise = hi / lo < NARROW
    if precise:
        pad = max((hi - lo) * 0.15, hi * 0.002)
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel("parameters")
        ticks = sorted(set(params))
        ticks = ticks if len(ticks) <= 4 else [lo, (lo + hi) / 2, hi]
    else:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.15, hi * 1.15)
        ax.set_xlabel("parameters (log scale)")
        ticks = size_classes(params)
    # after set_xscale, which installs its own locators and formatters
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: fmt_params(x, precise=precise)))
    if len(ticks) > 4:
        ax.tick_params(axis="x", labelrotation=30)


def plot_accuracy_vs_params(groups: list[Group], types: list[str], out: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    params = [g.params for g in groups]
    narrow = max(params) / min(params) < NARROW
    fig, ax = plt.subplots(figsize=(9, 5.5), layout="constrained")
    for i, t in enumerate(types):
        gs = [g for g in groups if g.model_type == t]
        ys, err = [g.mean() for g in gs], [g.std() or 0.0 for g in gs]
        if narrow:  # one size (or nearly): a column per model type, its size in the label
            xs = [i + 0.08 * (k - (len(gs) - 1) / 2) for k in range(len(gs))]
            label = f"{t} ({', '.join(fmt_params(g.params, precise=True) for g in gs)})"
        else:  # types side by side around each size, so error bars do not hide each other
            xs = [g.params * 10 ** (0.006 * (i - (len(types) - 1) / 2)) for g in gs]
            label = t
        ax.errorbar(
            xs,
            ys,
            yerr=err if any(err) else None,
            color=COLORS[t],
            marker=MARKERS[t],
            markersize=10 if t == "collective" else 7,
            capsize=4,
            label=label,
            linewidth=0 if narrow else 1.5,
            elinewidth=1.5,
        )
    if narrow:
        ax.set_xticks(range(len(types)), types, rotation=20, ha="right")
        ax.set_xlim(-0.6, len(types) - 0.4)
        ax.set_xlabel(f"model type (all within {NARROW:g}x of one size)")
    else:
        _size_axis(ax, params)
    ax.set_ylabel("final test accuracy (%), mean ± std over runs")
    ax.set_title("Test accuracy against model size" + title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="model type", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(out / "accuracy_vs_params.png", dpi=130)
    plt.close(fig)


def plot_differences(groups: list[Group], out: Path, title: str) -> None:
    """The answer as a forest plot: per size, the collective's mean test accuracy minus
    each baseline's, with its 95% Welch interval (uncorrected; the summary's table gives
    the Holm-corrected verdicts). Left of 0: the baseline is better."""
    import matplotlib.pyplot as plt

    comps = matched_comparisons(groups)
    if not comps:
        return
    sizes = size_classes(c["collective"].params for c in comps)
    fig, axes = plt.subplots(
        1, len(sizes), figsize=(5 * len(sizes), 0.5 * 7 + 1.5), sharex=True, squeeze=False
    )
    for k, ax in enumerate(axes[0]):
        rows = [c for c in comps if size_class_of(c["collective"].params, sizes) == k]
        rows.sort(key=lambda c: MODEL_TYPES.index(c["baseline"].model_type))
        for y, c in enumerate(rows):
            t = c["baseline"].model_type
            if c["ci"] is not None:
                ax.plot(c["ci"], [y, y], color=COLORS[t], lw=2)
            ax.plot([c["diff"]], [y], marker=MARKERS[t], color=COLORS[t], ms=8)
            ax.annotate(
                c["verdict"] if c["p_holm"] is not None else "",
                (c["diff"], y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=7,
            )
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(rows)), [c["baseline"].model_type for c in rows])
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.invert_yaxis()
        ax.set_title(f"~{fmt_params(sizes[k])} params")
        ax.set_xlabel("collective minus baseline, test accuracy (points)")
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(
        "The collective against each baseline of its size: difference of means, 95% "
        "interval (uncorrected)" + title,
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / "collective_minus_baselines.png", dpi=130)
    plt.close(fig)


def plot_scaling(good: list[Run], types: list[str], out: Path, title: str) -> None:
    """Per type, accuracy against log size with a least-squares trend."""
    import matplotlib.pyplot as plt

    n = len(types)
    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(3.6 * cols, 3.2 * rows),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    for ax, t in zip(axes.flat, types):
        rs = [r for r in good if r.model_type == t]
        xs = [math.log10(r.params) for r in rs]
        ys = [r.test_accuracy for r in rs]
        ax.scatter([r.params for r in rs], ys, color=COLORS[t], marker=MARKERS[t], s=24)
        fit = linear_fit(xs, ys) if max(xs) - min(xs) >= math.log10(NARROW) else None
        if fit is not None:
            a, b = fit
            lo, hi = min(xs), max(xs)
            ax.plot([10**lo, 10**hi], [a + b * lo, a + b * hi], color="black", linewidth=1)
            trend = f"{b:+.2f} points per 10x params"
        else:
            trend = "one size: no trend"
        _size_axis(ax, [r.params for r in rs])
        ax.set_title(f"{t}\n{trend}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    # wrapped to the figure's width (~9 characters per inch at the default size): one or
    # two model types make a narrow figure that would cut a one-line title
    fig.suptitle(
        textwrap.fill(
            "Scaling with size, per model type (line: least-squares trend in log size)" + title,
            width=int(3.6 * cols * 9),
        )
    )
    fig.savefig(out / "scaling.png", dpi=130)
    plt.close(fig)


def plot_all(groups: list[Group], good: list[Run], out: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")

    types = [t for t in MODEL_TYPES if any(g.model_type == t for g in groups)]
    plot_accuracy_vs_params(groups, types, out, title)
    plot_differences(groups, out, title)
    plot_scaling(good, types, out, title)
    plot_val_curves(groups, types, out, title)
