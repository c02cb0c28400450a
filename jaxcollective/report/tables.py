"""The report: tables."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Optional

from jaxcollective.config import (
    BASELINE_ONLY,
    COLLECTIVE_ONLY,
    MODEL_TYPES,
    TRAJECTORY_KEYS,
    Role,
    keys_of,
)
from jaxcollective.rerun import rerun_command
from jaxcollective.train.metrics import (
    ACCURACY_PER_LOG10,
    BEST_VAL_ACCURACY,
    PARAM_EFFICIENCY,
    TEST_AT_BEST_VAL,
)

from .load import Run
from .select import (
    Group,
    MATCH_TOLERANCE,
    Selection,
    _DEFAULTS,
    mixed_settings,
    select_best,
    size_class_of,
    size_classes,
)
from .stats import matched_comparisons


# ------------------------------------------------------------------- output
def fmt_params(p: float, precise: bool = False) -> str:
    """2.97M / 850K; `precise` keeps the digits that tell close sizes apart (2.9699M)."""
    if precise:
        return f"{p / 1e6:.4f}M" if p >= 1e6 else f"{p / 1e3:.1f}K"
    return f"{p / 1e6:.2f}M" if p >= 1e6 else f"{p / 1e3:.0f}K"


def _std(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.2f}"


def selection_lines(selections: list[Selection]) -> list[str]:
    """Per size, the model types side by side (the validation-chosen configuration's test
    accuracy over its seeds), then what validation chose and from what."""
    sizes = size_classes(s.group.params for s in selections)
    types = [t for t in MODEL_TYPES if any(s.group.model_type == t for s in selections)]
    lines = [
        "### Selected on validation: test accuracy per size, model types side by side",
        "",
        "Each (model type, size) trained several configurations; the one with the highest "
        "mean best validation accuracy (compared on the seeds all of them have) is shown, "
        "with its test accuracy as mean ± std over its seeds (n). The test set played no "
        "part in the choice.",
        "",
        "| size | " + " | ".join(types) + " |",
        "| --- |" + " ---: |" * len(types),
    ]
    for k, size in enumerate(sizes):
        cells = []
        for t in types:
            s = next(
                (
                    s
                    for s in selections
                    if s.group.model_type == t and size_class_of(s.group.params, sizes) == k
                ),
                None,
            )
            g = s and s.group
            cells.append("–" if g is None else f"{g.mean():.2f} ± {_std(g.std())} ({len(g.runs)})")
        lines.append(f"| ~{fmt_params(size)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model type | params | chosen | compared on seeds | validation (mean best "
        "val. acc. %) of each candidate |",
        "| --- | ---: | --- | --- | --- |",
    ]
    for s in selections:
        chosen = ", ".join(f"{k}={v}" for k, v in s.varied.items()) or "(one configuration)"
        scores = "; ".join(f"{c}: {v:.2f}" for c, v in s.scores.items())
        lines.append(
            f"| {s.group.model_type} | {s.group.params:,.0f} | {chosen} | "
            f"{', '.join(map(str, s.seeds)) or 'all'} | {scores} |"
        )
    return lines + [""]


def write_summary(
    groups: list[Group],
    excluded: list[Run],
    dataset: str,
    folded: int = 0,
    selections: Optional[list[Selection]] = None,
) -> list[str]:
    """The markdown section of one dataset; with `selections`, `groups` are the
    validation-chosen configurations and a side-by-side table leads."""
    good = [r for g in groups for r in g.runs]
    dup = (
        (
            f" {folded} duplicate run{'s' if folded != 1 else ''} folded: the same model type "
            "and resolved config (seed included) as another run, counted once: the "
            "one that trained the most epochs."
        )
        if folded
        else ""
    )
    lines = [
        f"## Dataset: {dataset}",
        "",
        f"{len(good)} finished runs in the tables below; {len(excluded)} excluded "
        "(diverged, stopped early or failed), listed at the end." + dup + " Figures: "
        f"`{dataset}/accuracy_vs_params.png`, "
        + (f"`{dataset}/collective_minus_baselines.png`, " if matched_comparisons(groups) else "")
        + f"`{dataset}/scaling.png`"
        + (f", `{dataset}/val_curves.png`" if any(r.val_curve for r in good) else "")
        + ".",
        "",
    ]
    if selections:
        lines += selection_lines(selections)
    mixed = mixed_settings(good)
    if mixed:
        lines += [
            "**Warning: these runs mix training settings** ("
            + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in mixed.items())
            + "); a difference "
            "between model types may come from them. Filter the results file or pass "
            "--results of one study.",
            "",
        ]
    lines += [
        "### Test accuracy per model type and size",
        "",
        "Every table of this report uses the test accuracy after each run's last epoch "
        "(`final/test_accuracy`: every record has it). Beside it, the test accuracy after "
        "each run's best validation epoch (`final/test_accuracy_at_best_val`), where every "
        "run of the row recorded it (records written before it was added: –).",
        "",
        "| model type | size | runs | test acc. mean (%) | std | at best val. epoch (%) | "
        "params (mean) | param_efficiency (acc./100K) | acc. per log10 params |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in groups:
        lines.append(
            f"| {g.model_type} | {fmt_params(g.size)} | {len(g.runs)} | {g.mean():.2f} | "
            f"{_std(g.std())} | {_at_best(g)} | {g.params:,.0f} | "
            f"{g.mean(PARAM_EFFICIENCY):.3f} | {g.mean(ACCURACY_PER_LOG10):.3f} |"
        )
    lines += convergence_lines(groups)
    lines += [
        "",
        "### Best configuration per model type",
        "",
        "Selected by validation (`final/best_val_accuracy`, the best validation accuracy "
        "over the run's epochs), never by test accuracy; the test accuracy is that run's.",
        "",
        "| model type | best val. acc. (%) | its test acc. (%) | params | run | settings that "
        "differ from the defaults |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    by_type: dict[str, list[Run]] = defaultdict(list)
    for g in groups:
        by_type[g.model_type] += g.runs
    for t, rs in by_type.items():
        best = select_best(rs)
        val = best.metrics.get(BEST_VAL_ACCURACY)
        lines.append(
            f"| {t} | {'–' if val is None else f'{val:.2f}'} | {best.test_accuracy:.2f} | "
            f"{best.params:,} | {best.name} | {_non_defaults(best.config, t)} |"
        )
    lines += [
        "",
        "### The collective against each baseline at matched size",
        "",
        f"Matched: baseline within {MATCH_TOLERANCE:.0%} of the collective's parameters. "
        "Difference = collective minus baseline, test accuracy in points, with a 95% "
        "Welch interval where both sides have 2 or more runs (**uncorrected**: each "
        "interval alone). The verdict reads Welch's p-value after Holm's correction over "
        "all the comparisons of this table, at 5%. Figure: "
        f"`{dataset}/collective_minus_baselines.png`.",
        "",
    ]
    comps = matched_comparisons(groups)
    if comps:
        lines += [
            "| collective size | baseline | baseline size | runs (c / b) | difference | "
            "95% interval (uncorrected) | p (Welch) | p (Holm) | verdict |",
            "| --- | --- | --- | --- | ---: | --- | ---: | ---: | --- |",
        ]
        for c in comps:
            ci = "–" if c["ci"] is None else f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]"
            p = "–" if c["p"] is None else f"{c['p']:.3f}"
            ph = "–" if c["p_holm"] is None else f"{c['p_holm']:.3f}"
            lines.append(
                f"| {fmt_params(c['collective'].params)} | {c['baseline'].model_type} | "
                f"{fmt_params(c['baseline'].params)} | {len(c['collective'].runs)} / "
                f"{len(c['baseline'].runs)} | {c['diff']:+.2f} | {ci} | {p} | {ph} | "
                f"{c['verdict']} |"
            )
    else:
        lines.append("No baseline run matches a collective run's size.")
    lines += rerun_lines(groups)
    lines += ["", f"### Excluded runs ({len(excluded)})", ""]
    if excluded:
        counts = defaultdict(int)
        for r in excluded:
            counts[r.status] += 1
        lines.append(", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ".")
        lines += ["", "| run | model type | params | status |", "| --- | --- | ---: | --- |"]
        lines += [f"| {r.name} | {r.model_type} | {r.params:,} | {r.status} |" for r in excluded]
    else:
        lines.append("None.")
    return lines + [""]


def _at_best(g: Group) -> str:
    """Mean ± std of the test accuracy at the best validation epoch, if every run has it."""
    v = g.values(TEST_AT_BEST_VAL)
    if not v or len(v) < len(g.runs):
        return "–"
    m = sum(v) / len(v)
    sd = (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 if len(v) > 1 else None
    return f"{m:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")


def rerun_lines(groups: list[Group]) -> list[str]:
    """Each table cell's runs and the command that trains each again (run.py
    --from_record); a record of several seeds is one command for all of them."""
    lines = [
        "",
        "### Rerun a cell",
        "",
        "Each (model type, size) above and the command that retrains each of its runs "
        "exactly (its config, seed and data split; add `--results=...` to write elsewhere "
        "than runs/results.jsonl). Paths are from the directory the report was run in.",
        "",
        "| model type | size | seeds | rerun |",
        "| --- | --- | --- | --- |",
    ]
    for g in groups:
        by_source: dict[str, list] = defaultdict(list)
        for r in g.runs:
            if r.source:
                by_source[r.source].append(r.config.get("seed"))
        cmds = "<br>".join(
            f"`{rerun_command(src)}`"
            + (f" (seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else "")
            for src, seeds in by_source.items()
        )
        seeds = sorted(str(r.config.get("seed")) for r in g.runs)
        lines.append(
            f"| {g.model_type} | {fmt_params(g.size)} | {', '.join(seeds)} | {cmds or '–'} |"
        )
    return lines


def best_epoch(curve: list[float]) -> int:
    """The 1-based epoch of a curve's highest value (the first, on ties)."""
    return max(range(len(curve)), key=lambda i: (curve[i], -i)) + 1


def mean_curve(curves: list[list[float]]) -> list[float]:
    """The mean of curves per epoch; a run that ended early (early stopping) holds its
    last value after it (its model no longer changes), so runs of several lengths are
    averaged over the longest."""
    n = max(len(c) for c in curves)
    return [sum(c[min(i, len(c) - 1)] for c in curves) / len(curves) for i in range(n)]


def convergence_lines(groups: list[Group]) -> list[str]:
    """Where the runs record their validation curves: per type and size, the epoch of the
    best validation accuracy (mean and range over the runs) against the epochs trained,
    and the mean curve's gain over its last quarter: has training stopped improving?"""
    rows = []
    for g in groups:
        curves = [r.val_curve for r in g.runs if r.val_curve]
        if not curves:
            continue
        lengths = sorted({len(c) for c in curves})
        best = [best_epoch(c) for c in curves]
        mean = mean_curve(curves)
        n = len(mean)
        quarter = max(1, n // 4)
        # a curve of one epoch has no last quarter to compare with what came before it
        gain = f"{max(mean) - max(mean[: n - quarter]):+.2f}" if n > 1 else "–"
        epochs = f"{lengths[0]}" if len(lengths) == 1 else f"{lengths[0]}-{lengths[-1]}"
        rows.append(
            f"| {g.model_type} | {fmt_params(g.size)} | {epochs} | "
            f"{sum(best) / len(best):.1f} ({min(best)}-{max(best)}) | {gain} |"
        )
    if not rows:
        return []
    return [
        "",
        "### Convergence: the epoch of the best validation accuracy",
        "",
        "Per run, the epoch whose validation accuracy is the run's best (mean and range over "
        "the runs), and how much the best of the mean validation curve rose in the last "
        "quarter of the epochs (0 or near it: training had stopped improving). Runs that "
        "stopped early hold their last value in the mean after their stop.",
        "",
        "| model type | size | epochs | best epoch: mean (range) | gain in the last quarter (points) |",
        "| --- | --- | ---: | ---: | ---: |",
        *rows,
    ]


def _non_defaults(config: dict, model_type: str) -> str:
    """The keys that decide what the run computed (declared program or value, and read by
    its model type: docs/design.md, "Config keys and their roles") whose value differs
    from the resolved default's; not the model type and dataset, which the row and the
    section name, and use_mixed_precision, which is dtype's other name. The run's length
    counts; output, logging and location keys are no settings."""
    ignored = (BASELINE_ONLY if model_type == "collective" else COLLECTIVE_ONLY) | {
        "model_type",
        "dataset",
        "use_mixed_precision",
    }
    settings = TRAJECTORY_KEYS | set(keys_of(Role.LENGTH))
    out = []
    for k, v in config.items():
        if k in settings and k not in ignored and v != _resolved_default(k):
            out.append(f"{k}={v}")
    return ", ".join(out) or "defaults"


def _resolved_default(key: str):
    """A key's value in the default config as a run records it (use_mixed_precision: the
    default dtype's false, not None)."""
    global _DEFAULTS
    if _DEFAULTS is None:
        from jaxcollective.config import Config

        _DEFAULTS = json.loads(json.dumps(Config.from_dict({}).to_dict(), default=list))
    return _DEFAULTS.get(key)
