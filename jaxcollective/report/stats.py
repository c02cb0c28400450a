"""The report: stats."""

from __future__ import annotations

import math
from typing import Any, Optional

from jaxcollective.config import BASELINE_TYPES

from .select import Group, MATCH_TOLERANCE


def t_quantile_975(df: float) -> float:
    """Student's t 97.5% quantile (scipy if present, else a close approximation)."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.975, df))
    except ImportError:  # Cornish-Fisher expansion around the normal quantile
        z = 1.959963984540054
        return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def welch_interval(a: list[float], b: list[float]) -> Optional[tuple[float, float]]:
    """95% interval of mean(a) - mean(b) (Welch); None with fewer than 2 runs a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return (ma - mb, ma - mb)
    df = (va + vb) ** 2 / ((va**2 / (len(a) - 1)) + (vb**2 / (len(b) - 1)))
    h = t_quantile_975(df) * se
    return (ma - mb - h, ma - mb + h)


def welch_p(a: list[float], b: list[float]) -> Optional[float]:
    """Two-sided p-value of Welch's t-test of mean(a) = mean(b); None with fewer than 2 runs
    a side, or no spread on either side (the test is undefined: not a certainty)."""
    if len(a) < 2 or len(b) < 2 or (max(a) == min(a) and max(b) == min(b)):
        return None
    from scipy.stats import ttest_ind  # scipy comes with jax

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def holm(ps: list[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjustment of p-values (None stays None and is not counted):
    the k-th smallest of m is multiplied by m - k + 1, then made non-decreasing."""
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])
    out: list[Optional[float]] = [None] * len(ps)
    running = 0.0
    for k, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - k) * ps[i]))
        out[i] = running
    return out


ALPHA = 0.05


def matched_comparisons(groups: list[Group]) -> list[dict[str, Any]]:
    """The collective against each baseline of its size: the difference of the mean test
    accuracies, its 95% Welch interval (uncorrected), Welch's p and Holm's adjustment of
    it over all the comparisons given; the verdict reads the Holm-adjusted p at 5%."""
    rows = []
    for c in (g for g in groups if g.model_type == "collective"):
        for g in groups:
            if (
                g.model_type in BASELINE_TYPES
                and abs(g.params - c.params) / c.params <= MATCH_TOLERANCE
            ):
                rows.append(
                    {
                        "collective": c,
                        "baseline": g,
                        "diff": c.mean() - g.mean(),
                        "ci": welch_interval(c.values(), g.values()),
                        "p": welch_p(c.values(), g.values()),
                    }
                )
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
        if adjusted is None:
            row["verdict"] = (
                "too few runs for an interval" if row["ci"] is None else "no spread: not tested"
            )
        elif adjusted >= ALPHA:
            row["verdict"] = "no clear difference"
        else:
            row["verdict"] = "collective better" if row["diff"] > 0 else "baseline better"
    return rows


def linear_fit(xs: list[float], ys: list[float]) -> Optional[tuple[float, float]]:
    """y = a + b x by least squares; None without two distinct x."""
    if len(set(xs)) < 2:
        return None
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b
