"""Parameter-efficiency report from finished runs: `python -m jaxcollective.report`.

Reads run records from a results file (what run.py appends, `runs/results.jsonl` by
default) or from a wandb sweep or project (`--wandb=entity/project[/sweep_id]`), and
writes to `--out` (default `report/`):

  accuracy_vs_params.png   final test accuracy against parameters, a line per model type
  efficiency_by_type.png   final/param_efficiency and final/accuracy_per_log10_params
  scaling.png              per model type, accuracy against size with a fitted trend
  summary.md               tables: per type and size, best config per type, and the
                           collective against each baseline at matched size

Runs that diverged or were stopped early are counted and listed, never averaged in.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

from .cli import bool_option, console_script, guarded, help_text, parse_argv
from .config import (
    BASELINE_ONLY,
    BASELINE_TYPES,
    COLLECTIVE_ONLY,
    FIELDS,
    MODEL_TYPES,
    SHARED_SETTINGS,
    TRAJECTORY_KEYS,
    ConfigError,
    Role,
    keys_of,
)
from .metrics import (
    ACCURACY_PER_LOG10,
    BEST_VAL_ACCURACY,
    FINAL_PREFIX,
    MODEL_PARAMS,
    PARAM_EFFICIENCY,
    TEST_ACCURACY,
    TEST_LOSS,
    VAL_CURVES,
    efficiency_metrics,
)
from .util import describe_error

MATCH_TOLERANCE = 0.05  # a baseline within 5% of the collective's size is "matched"
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


@dataclass
class Run:
    name: str
    model_type: str
    params: int
    test_accuracy: Optional[float]
    status: str
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    dataset: str = "unknown"
    synthetic: bool = False
    val_curve: list = field(default_factory=list)  # val/accuracy after each epoch, if recorded
    stopped_early: bool = False  # ended by early stopping, before its `epochs`
    last_lr: Optional[float] = None  # learning rate of its last epoch (plateau reductions)

    @property
    def size_key(self) -> int:
        """Parameter count to 3 significant digits: runs of one size share a group."""
        return int(float(f"{self.params:.3g}"))


# ------------------------------------------------------------------ loading
def load_results(path: Path) -> list[Run]:
    """Runs of a results file. A damaged line (a run killed mid-write, a line that is not
    a run record) is skipped with a warning naming file and line."""
    if path.is_dir():
        raise ConfigError(
            f"--results={path} is a folder; pass the results file (e.g. runs/results.jsonl)"
        )
    if not path.exists():
        raise ConfigError(
            f"no results file at {path}: run `python run.py ...` first, or pass "
            "--results=PATH or --wandb=ENTITY/PROJECT[/SWEEP_ID]"
        )
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise ConfigError(f"cannot read --results={path}: {err.strerror}") from None
    runs = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        where = f"{path}:{i + 1}"
        try:
            rec = json.loads(line)
            runs.extend(record_to_runs(rec, name=f"{path.name}:{i + 1}"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            why = (
                "not a complete JSON line"
                if isinstance(err, json.JSONDecodeError)
                else "not a run record"
            )
            print(f"warning: skipping {where}: {why}", file=sys.stderr)
    return runs


def record_to_runs(rec: dict[str, Any], name: str) -> list[Run]:
    """One results record as runs: a record of K seeds (`replicas`) is K runs."""
    status = rec.get("status", "finished")
    if rec.get("diverged"):
        status = "diverged"
    params = int(rec.get("model_params") or rec.get(MODEL_PARAMS))
    config = rec.get("config", {})
    where = dict(
        dataset=dataset_of(config, rec),
        synthetic=bool(rec.get("synthetic")) or config.get("dataset") == "synthetic",
        stopped_early=bool(rec.get("stopped_early")),
        last_lr=rec.get("last_lr"),
    )
    replicas = rec.get("replicas") or []
    curves = rec.get(VAL_CURVES) or []
    if len(replicas) > 1:
        runs = []
        for i, r in enumerate(replicas):
            acc = r["test_accuracy"]
            metrics = {
                TEST_ACCURACY: acc,
                TEST_LOSS: r["test_loss"],
                BEST_VAL_ACCURACY: r["best_val_accuracy"],
                MODEL_PARAMS: params,
                **efficiency_metrics(acc, params),
            }
            runs.append(
                Run(
                    f"{name}/seed{r['seed']}",
                    rec["model_type"],
                    params,
                    acc,
                    status,
                    dict(config, seed=r["seed"], num_seeds=1),
                    metrics,
                    **where,
                    val_curve=curves[i] if i < len(curves) else [],
                )
            )
        return runs
    metrics = {
        k: v for k, v in rec.items() if k.startswith(FINAL_PREFIX) and not k.endswith("_std")
    }
    return [
        Run(
            name=rec.get("name", name),
            model_type=rec["model_type"],
            params=params,
            test_accuracy=rec.get(TEST_ACCURACY),
            status=status,
            config=config,
            metrics=metrics,
            **where,
            val_curve=curves[0] if curves else [],
        )
    ]


def dataset_of(config: dict, rec: Optional[dict] = None) -> str:
    """The dataset a run trained on; a synthetic run's name says what it imitates."""
    name = str(config.get("dataset") or (rec or {}).get("dataset") or "unknown")
    if name == "synthetic":
        name = f"synthetic[{config.get('synthetic_like', 'fashion_mnist')}]"
    return name


def load_wandb(path: str) -> list[Run]:
    """Runs of a wandb project, or of one sweep (entity/project/sweep_id)."""
    parts = path.strip("/").split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ConfigError(
            f"invalid --wandb={path!r}: expected ENTITY/PROJECT or ENTITY/PROJECT/SWEEP_ID"
        )
    try:
        import wandb
    except ImportError:
        raise ConfigError("--wandb needs the wandb package: `pip install wandb`") from None
    try:
        api = wandb.Api(timeout=20)
        source = api.sweep("/".join(parts)).runs if len(parts) == 3 else api.runs("/".join(parts))
        runs = [run for run in map(wandb_to_run, source) if run is not None]
    except Exception as err:  # noqa: BLE001 - wandb raises many kinds (auth, network, 404)
        raise ConfigError(
            f"cannot read {path!r} from W&B ({describe_error(err, 200)}); "
            "check `wandb login`, the network and the path, or use --results"
        ) from None
    return runs


def wandb_to_run(r) -> Optional[Run]:
    """One wandb run (public API object) as a Run; None for runs of other programs."""
    config, summary = dict(r.config), dict(r.summary)
    if "model_type" not in config:
        return None
    params = summary.get(MODEL_PARAMS) or config.get("model_params")
    if params is None:  # crashed before the model was built
        return Run(
            r.name, config["model_type"], 0, None, "failed", config, dataset=dataset_of(config)
        )
    status = summary.get("status")
    if status is None:  # no final record: the process died
        status = {"finished": "finished", "running": "running"}.get(r.state, r.state)
    if summary.get("diverged"):
        status = "diverged"
    metrics = {k: v for k, v in summary.items() if k.startswith(FINAL_PREFIX)}
    return Run(
        r.name,
        config["model_type"],
        int(params),
        summary.get(TEST_ACCURACY),
        status,
        config,
        metrics,
        dataset=dataset_of(config),
        synthetic=bool(config.get("synthetic")) or config.get("dataset") == "synthetic",
        stopped_early=bool(summary.get("stopped_early")),
        last_lr=summary.get("last_lr"),
    )


# -------------------------------------------------------------- aggregation
@dataclass
class Group:
    model_type: str
    size: int
    runs: list[Run]

    def values(self, key: str = TEST_ACCURACY) -> list[float]:
        return [float(r.metrics[key]) for r in self.runs if r.metrics.get(key) is not None]

    @property
    def params(self) -> float:
        return sum(r.params for r in self.runs) / len(self.runs)

    def mean(self, key: str = TEST_ACCURACY) -> float:
        v = self.values(key)
        return sum(v) / len(v) if v else float("nan")  # a record without this metric

    def std(self, key: str = TEST_ACCURACY) -> Optional[float]:
        v = self.values(key)
        if len(v) < 2:
            return None
        m = sum(v) / len(v)
        return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


@dataclass
class Selection:
    """Which configuration of a (model type, size) group validation chose."""

    group: Group  # the chosen configuration's runs (its seeds)
    candidates: int  # configurations compared
    varied: dict[str, Any]  # the chosen values of the keys that differ between them
    scores: dict[str, float]  # configuration label -> mean best validation accuracy
    seeds: list[int]  # the seeds every configuration has, on which they were compared


def config_key(r: Run) -> str:
    """A run's experiment without its seed: its seeds are runs of one configuration."""
    dataset, model_type, params, config = json.loads(experiment_key(r))
    config.pop("seed", None)
    return json.dumps([dataset, model_type, params, config], sort_keys=True)


def select_on_validation(g: Group) -> Selection:
    """The configuration of `g` with the highest mean best validation accuracy, compared
    on the seeds that every configuration has (so seeds added later to the chosen one
    cannot change the choice); the test set is never looked at. The chosen group keeps
    all of that configuration's seeds."""
    configs: dict[str, list[Run]] = defaultdict(list)
    for r in g.runs:
        configs[config_key(r)].append(r)
    seed_sets = [{r.config.get("seed") for r in rs} for rs in configs.values()]
    common = set.intersection(*seed_sets)

    def score(rs: list[Run]) -> float:
        vals = [
            r.metrics.get(BEST_VAL_ACCURACY)
            for r in rs
            if not common or r.config.get("seed") in common
        ]
        vals = [float(v) for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else float("-inf")

    keys = sorted(
        k
        for k in TRAJECTORY_KEYS
        if k != "seed"
        and len({json.dumps(rs[0].config.get(k, _default(k))) for rs in configs.values()}) > 1
    )
    label = lambda rs: ", ".join(f"{k}={rs[0].config.get(k, _default(k))}" for k in keys) or "-"  # noqa: E731
    chosen = max(configs.values(), key=score)  # ties: the first configuration seen
    return Selection(
        Group(g.model_type, g.size, chosen),
        len(configs),
        {k: chosen[0].config.get(k, _default(k)) for k in keys},
        {label(rs): score(rs) for rs in configs.values()},
        sorted(s for s in common if s is not None),
    )


def split_runs(runs: Iterable[Run]) -> tuple[list[Run], list[Run]]:
    """(finished runs with a test accuracy, the rest: diverged, stopped, failed, ...). A
    stopped run's record that a later record of the same experiment supersedes (the run
    resumed from its checkpoint, or its sweep trial retried, to the end) is neither: it is
    the same run, part-way, so an interrupted study reports as an uninterrupted one."""
    runs = list(runs)
    ended = {experiment_key(r) for r in runs if r.status != "stopped"}
    good, excluded = [], []
    for r in runs:
        if r.status == "stopped" and experiment_key(r) in ended:
            continue
        (good if r.status == "finished" and r.test_accuracy is not None else excluded).append(r)
    return good, excluded


def experiment_key(r: Run) -> str:
    """What makes two runs the same experiment: dataset, model type and the resolved
    config's keys that decide what it computes (the keys declared program or value that
    the model type reads, seed included; docs/design.md, "Config keys and their roles")."""
    ignored = BASELINE_ONLY if r.model_type == "collective" else COLLECTIVE_ONLY
    keys = sorted(k for k in TRAJECTORY_KEYS if k not in ignored)
    config = {k: r.config.get(k, _default(k)) for k in keys}
    return json.dumps([r.dataset, r.model_type, r.params, config], sort_keys=True, default=str)


def _default(key: str):
    d = FIELDS[key].default
    return list(d) if isinstance(d, tuple) else d


def fold_duplicates(runs: list[Run]) -> tuple[list[Run], int]:
    """Finished runs that are the same experiment (a small categorical space sampled
    twice, a trial retried after it finished, a run trained again to a higher cap) count
    once: the one that trained the most epochs (one trajectory, the others its prefixes),
    the first of those; it keeps the place of the first."""
    where: dict[str, int] = {}
    kept: list[Run] = []
    for r in runs:
        key = experiment_key(r)
        if key not in where:
            where[key] = len(kept)
            kept.append(r)
        elif len(r.val_curve) > len(kept[where[key]].val_curve):
            kept[where[key]] = r
    return kept, len(runs) - len(kept)


def size_classes(params: Iterable[float]) -> list[float]:
    """The distinct sizes among `params`: sizes within MATCH_TOLERANCE of the smallest of
    a class are one class, named by its mean (a collective and its matched baselines)."""
    classes: list[list[float]] = []
    for p in sorted(params):
        if classes and p <= classes[-1][0] * (1 + MATCH_TOLERANCE):
            classes[-1].append(p)
        else:
            classes.append([p])
    return [sum(c) / len(c) for c in classes]


def size_class_of(p: float, classes: list[float]) -> int:
    return min(range(len(classes)), key=lambda k: abs(math.log(p / classes[k])))


def group_runs(runs: Iterable[Run]) -> list[Group]:
    groups: dict[tuple[str, int], list[Run]] = defaultdict(list)
    for r in runs:
        groups[(r.model_type, r.size_key)].append(r)
    order = {t: i for i, t in enumerate(MODEL_TYPES)}
    return [
        Group(t, s, rs)
        for (t, s), rs in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0][1]))
    ]


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


def matched_comparisons(groups: list[Group]) -> list[dict[str, Any]]:
    rows = []
    for c in (g for g in groups if g.model_type == "collective"):
        for g in groups:
            if (
                g.model_type in BASELINE_TYPES
                and abs(g.params - c.params) / c.params <= MATCH_TOLERANCE
            ):
                diff = c.mean() - g.mean()
                ci = welch_interval(c.values(), g.values())
                if ci is None:
                    verdict = "too few runs for an interval"
                elif ci[0] > 0:
                    verdict = "collective better"
                elif ci[1] < 0:
                    verdict = "baseline better"
                else:
                    verdict = "no clear difference"
                rows.append(
                    {"collective": c, "baseline": g, "diff": diff, "ci": ci, "verdict": verdict}
                )
    return rows


# ------------------------------------------------------------------- output
def fmt_params(p: float, precise: bool = False) -> str:
    """2.97M / 850K; `precise` keeps the digits that tell close sizes apart (2.9699M)."""
    if precise:
        return f"{p / 1e6:.4f}M" if p >= 1e6 else f"{p / 1e3:.1f}K"
    return f"{p / 1e6:.2f}M" if p >= 1e6 else f"{p / 1e3:.0f}K"


def _std(x: Optional[float]) -> str:
    return "–" if x is None else f"{x:.2f}"


def mixed_settings(runs: Iterable[Run]) -> dict[str, list]:
    """Training settings that differ between the runs of one comparison. The epochs of a
    run that stopped early are not a setting it trained under: any number at or above its
    stop trains the same run (its cap can differ from others')."""
    out = {}
    for k in SHARED_SETTINGS:
        vals = {
            json.dumps(r.config.get(k, FIELDS[k].default))
            for r in runs
            if not (k == "epochs" and r.stopped_early)
        }
        if len(vals) > 1:
            out[k] = sorted(json.loads(v) for v in vals)
    return out


def select_best(runs: list[Run]) -> Run:
    """The run a user would pick without looking at the test set: the highest best
    validation accuracy (final/best_val_accuracy); ties go to the earlier run."""
    return max(runs, key=lambda r: r.metrics.get(BEST_VAL_ACCURACY, float("-inf")))


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
        f"`{dataset}/accuracy_vs_params.png`, `{dataset}/efficiency_by_type.png`, "
        f"`{dataset}/scaling.png`"
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
        "| model type | size | runs | test acc. mean (%) | std | params (mean) "
        "| param_efficiency (acc./100K) | acc. per log10 params |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in groups:
        lines.append(
            f"| {g.model_type} | {fmt_params(g.size)} | {len(g.runs)} | {g.mean():.2f} | "
            f"{_std(g.std())} | {g.params:,.0f} | {g.mean(PARAM_EFFICIENCY):.3f} | "
            f"{g.mean(ACCURACY_PER_LOG10):.3f} |"
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
        "Welch interval where both sides have 2 or more runs.",
        "",
    ]
    comps = matched_comparisons(groups)
    if comps:
        lines += [
            "| collective size | baseline | baseline size | runs (c / b) | difference | 95% interval | verdict |",
            "| --- | --- | --- | --- | ---: | --- | --- |",
        ]
        for c in comps:
            ci = "–" if c["ci"] is None else f"[{c['ci'][0]:+.2f}, {c['ci'][1]:+.2f}]"
            lines.append(
                f"| {fmt_params(c['collective'].params)} | {c['baseline'].model_type} | "
                f"{fmt_params(c['baseline'].params)} | {len(c['collective'].runs)} / "
                f"{len(c['baseline'].runs)} | {c['diff']:+.2f} | {ci} | {c['verdict']} |"
            )
    else:
        lines.append("No baseline run matches a collective run's size.")
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
        from .config import Config

        _DEFAULTS = json.loads(json.dumps(Config.from_dict({}).to_dict(), default=list))
    return _DEFAULTS.get(key)


_DEFAULTS: Optional[dict] = None


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


def plot_efficiency(groups: list[Group], types: list[str], out: Path, title: str) -> None:
    """A bar per (type, size) with its runs on top; sizes are kept apart because
    per-parameter efficiency falls ~10x per 10x size."""
    import matplotlib.pyplot as plt

    sizes = size_classes(g.params for g in groups)
    shades = plt.get_cmap("Greys")(
        [0.35 + 0.5 * k / max(1, len(sizes) - 1) for k in range(len(sizes))]
    )
    width = 0.8 / len(sizes)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    legend = {}
    for ax, key, label in (
        (axes[0], PARAM_EFFICIENCY, "test accuracy (%) per 100K parameters"),
        (axes[1], ACCURACY_PER_LOG10, "test accuracy (%) / log10(params + 1)"),
    ):
        for i, t in enumerate(types):
            for g in (g for g in groups if g.model_type == t):
                k = size_class_of(g.params, sizes)
                x = i - 0.4 + width * (k + 0.5)
                vals = g.values(key)
                if not vals:  # records without this metric
                    continue
                bar = ax.bar(
                    x,
                    sum(vals) / len(vals),
                    width * 0.9,
                    color=shades[k],
                    edgecolor="black",
                    linewidth=0.5,
                )
                legend.setdefault(k, bar)
                ax.scatter(
                    [x] * len(vals), vals, color=COLORS[t], marker=MARKERS[t], s=22, zorder=3
                )
        ax.set_xticks(range(len(types)), types, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.set_title(key)
        ax.set_ylim(bottom=0)  # bars are read by their length
        ax.grid(True, axis="y", alpha=0.3)
    # every size in the legend, whichever model types have it
    handles = [legend[k] for k in sorted(legend)]
    labels = [f"~{fmt_params(sizes[k])} params" for k in sorted(legend)]
    fig.legend(
        handles,
        labels,
        title="size (bars: mean, dots: runs)",
        fontsize=8,
        loc="outside lower center",
        ncol=max(1, len(sizes)),
    )
    fig.suptitle("Parameter efficiency by model type and size" + title)
    fig.savefig(out / "efficiency_by_type.png", dpi=130)
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
    plot_efficiency(groups, types, out, title)
    plot_scaling(good, types, out, title)
    plot_val_curves(groups, types, out, title)


def linear_fit(xs: list[float], ys: list[float]) -> Optional[tuple[float, float]]:
    """y = a + b x by least squares; None without two distinct x."""
    if len(set(xs)) < 2:
        return None
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def make_report(
    runs: list[Run],
    out: Path,
    source: str,
    dataset: Optional[str] = None,
    include_synthetic: bool = False,
    select: bool = False,
) -> dict[str, Any]:
    """summary.md with a section per dataset, and each dataset's figures in out/<dataset>/.
    Synthetic runs are left out unless asked for; `dataset` keeps one dataset only. With
    `select`, each (model type, size) shows only the configuration validation chose
    (select_on_validation), in the tables and the figures."""
    skipped_synthetic = 0 if include_synthetic else sum(r.synthetic for r in runs)
    runs = [r for r in runs if include_synthetic or not r.synthetic]
    if dataset is not None:
        present = sorted({r.dataset for r in runs})
        if dataset not in present:
            raise ConfigError(
                f"no runs on dataset {dataset!r} in {source}; it has: "
                f"{', '.join(present) or 'none'}"
            )
        runs = [r for r in runs if r.dataset == dataset]
    by_dataset: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_dataset[r.dataset].append(r)
    sections, per_dataset = [], {}
    for name in sorted(by_dataset):
        good, excluded = split_runs(by_dataset[name])
        good, folded = fold_duplicates(good)
        groups = group_runs(good)
        selections = None
        if select and groups:
            selections = [select_on_validation(g) for g in groups]
            groups = [s.group for s in selections]
            good = [r for g in groups for r in g.runs]
        per_dataset[name] = {
            "groups": groups,
            "excluded": excluded,
            "folded": folded,
            "selections": selections,
        }
        sections += write_summary(groups, excluded, name, folded, selections)
        if good:
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            plot_all(groups, good, folder, f" ({name})")
    excluded = sum(len(d["excluded"]) for d in per_dataset.values())
    if not excluded and not any(d["groups"] for d in per_dataset.values()):
        raise ConfigError(
            f"no finished runs in {source} ({excluded} excluded: diverged, "
            f"stopped or failed; {skipped_synthetic} synthetic left out, "
            "--include_synthetic keeps them); nothing to report"
        )
    head = [
        "# Parameter-efficiency report",
        "",
        f"Source: `{source}`. One section per dataset "
        f"({', '.join(sorted(by_dataset))}); runs of different datasets are never compared.",
    ]
    if skipped_synthetic:
        head.append(
            f"{skipped_synthetic} runs on synthetic data left out (--include_synthetic keeps them)."
        )
    text = "\n".join(head + [""] + sections)
    (out / "summary.md").write_text(text)
    return {
        "datasets": per_dataset,
        "summary": text,
        "groups": [g for d in per_dataset.values() for g in d["groups"]],
        "excluded": [r for d in per_dataset.values() for r in d["excluded"]],
    }


OPTIONS = {
    "results": "results file written by run.py or the sweep (default runs/results.jsonl)",
    "wandb": "ENTITY/PROJECT[/SWEEP_ID]: read runs through wandb's public API instead "
    "(needs `wandb login`)",
    "out": "output folder (default report/): summary.md, DIR/<dataset>/*.png",
    "dataset": "report this dataset only (default: every dataset, a section each)",
    "include_synthetic": "keep runs on synthetic data (left out by default)",
    "select": "none (default: every run of a model type and size is averaged) or validation: "
    "per model type and size, only the configuration with the best mean validation "
    "accuracy, its seeds averaged (a study that tried several learning rates)",
    "help": "show this message",
}
SUMMARY = "Figures and tables of parameter efficiency from finished runs, per dataset."


def main(argv: list[str]) -> int:
    def _main():
        _, opts = parse_argv(argv, OPTIONS, flags=("help", "include_synthetic"), config_keys=False)
        if "help" in opts:
            print(
                help_text(
                    "python -m jaxcollective.report",
                    SUMMARY,
                    OPTIONS,
                    config_keys=False,
                    args="[--results=PATH | --wandb=ENTITY/PROJECT[/SWEEP_ID]] [--option=value ...]",
                )
            )
            return 0
        out = Path(opts.get("out", "report"))
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out={out} is a file; pass a folder for the report")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create --out={out}: {err.strerror}") from None
        if "wandb" in opts:
            runs, source = load_wandb(opts["wandb"]), f"wandb:{opts['wandb']}"
        else:
            path = Path(opts.get("results", "runs/results.jsonl"))
            runs, source = load_results(path), str(path)
        synth = bool_option(opts, "include_synthetic")
        select = opts.get("select", "none")
        if select not in ("none", "validation"):
            raise ConfigError(f"--select={select}: expected none or validation")
        rep = make_report(runs, out, source, opts.get("dataset"), synth, select == "validation")
        for name, d in rep["datasets"].items():
            print(
                f"{name}: {sum(len(g.runs) for g in d['groups'])} runs in {len(d['groups'])} "
                f"groups, {len(d['excluded'])} excluded"
            )
        if not rep["groups"]:  # only stopped, pruned or diverged runs: listed, nothing compared
            print(
                "note: no finished runs yet, so no tables or figures; summary.md lists the "
                "excluded runs",
                file=sys.stderr,
            )
        print(
            f"wrote {out}/summary.md"
            + (f" and the figures in {out}/<dataset>/" if rep["groups"] else "")
        )
        return 0

    return guarded(_main)


console = console_script(main)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
