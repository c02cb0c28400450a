"""The long and converged studies' own tables, added to the report's summary: the
candidates at each rung, where each run stopped, what the convergence check changed."""

from __future__ import annotations

import json
from pathlib import Path

from jaxcollective.train.metrics import BEST_VAL_ACCURACY, TEST_ACCURACY

from jaxcollective.config import MODEL_TYPES

from .records import COPY, read_records
from .schedules import SEARCH_SEED


def write_halving_table(halving: Path, results: Path, out: Path, plan) -> None:
    """The candidates of every (model type, size), their best validation accuracy at each
    rung they reached, and the choice."""
    recs = [r for r in read_records(halving) if r.get("status") in ("finished", "diverged")]
    cols = list(dict.fromkeys(k for c in plan.candidates for k in c))

    drawn = cols != ["learning_rate", "weight_decay"]

    def key(r: dict) -> tuple:  # size (the budget, else the count), type, the columns' values
        c = r["config"]
        # a drawn candidate's switched-off knobs keep their defaults: shown as not set
        shown = {k: c.get(k) for k in cols}
        if drawn:
            shown = {k: v for k, v in shown.items() if _switched_on(k, c)}
        return (
            c.get("collective_budget") or r["model_params"],
            r["model_type"],
            json.dumps(shown, sort_keys=True),
        )

    chosen = {key(r) for r in read_records(results) if COPY in r}
    rows: dict[tuple, dict] = {}
    params: dict[tuple, int] = {}
    for r in recs:
        c = r["config"]
        k = key(r)
        params[k] = r["model_params"]
        # a run to the stop under an earlier, lower cap is the last rung's (it stopped before
        # that cap, or was trained again to this one: the longer run counts, as the report's)
        rung = (
            c["epochs"] if not plan.stopping or c["epochs"] in plan.rungs[:-1] else plan.rungs[-1]
        )
        cells = rows.setdefault(k, {})
        if cells.get(rung, (-1, ""))[0] < r.get("epochs_completed", 0):
            cells[rung] = (
                r.get("epochs_completed", 0),
                "diverged" if r["status"] == "diverged" else f"{r[BEST_VAL_ACCURACY]:.2f}",
            )
    head = " | ".join(
        f"to the stop (at most {e})" if plan.stopping and e == plan.rungs[-1] else f"epoch {e}"
        for e in plan.rungs
    )
    what = (
        f"{len(plan.candidates)} configurations drawn at random from the schedule's search "
        f"space (stream seed {SEARCH_SEED})"
        if drawn
        else "learning rate x weight decay"
    )
    lines = [
        "## Successive halving: the candidates and the choice",
        "",
        f"Per model type and size, every candidate ({what}, seed 0) "
        f"trains to epoch {plan.rungs[0]}; the best third by best validation accuracy is "
        f"extended to the next rung ({', '.join(map(str, plan.rungs))}); the last rung's "
        "best is chosen and trained with more seeds. Best validation accuracy (%) at each "
        "rung a candidate reached (a key a candidate does not set keeps its default: –):",
        "",
        f"| model type | params | {' | '.join(_COLUMN.get(k, k) for k in cols)} | {head} "
        "| chosen |",
        "| --- | ---: | " + " | ".join("---:" for _ in cols + list(plan.rungs)) + " | --- |",
    ]
    order = {t: i for i, t in enumerate(MODEL_TYPES)}
    first = {}  # each row's first record: the table keeps the records' order within a size
    for i, r in enumerate(recs):
        first.setdefault(key(r), i)
    for k in sorted(rows, key=lambda k: (k[0] > 1e6, order.get(k[1], 9), k[0], first[k])):
        shown = json.loads(k[2])
        values = " | ".join(_cell(shown.get(c, "–")) for c in cols)
        cells = " | ".join(rows[k].get(e, (0, "–"))[1] for e in plan.rungs)
        lines.append(
            f"| {k[1]} | {params[k]:,} | {values} | {cells} | {'**yes**' if k in chosen else ''} |"
        )
    out.write_text("\n".join(lines) + "\n")


# short headers for the drawn candidates' keys
_COLUMN = {
    "learning_rate": "learning rate",
    "weight_decay": "weight decay",
    "expert_ratio": "expert ratio",
    "expert_width_factor": "expert width factor",
    "use_expert_diversity": "diversity",
    "use_analyst_diversity": "(analysts)",
    "diversity_lambda": "div. weight",
    "diversity_temperature": "div. temp.",
    "use_drop_models": "member dropout",
    "drop_models_expert_rate": "expert rate",
    "drop_models_analyst_rate": "analyst rate",
    "baseline_dropout": "dropout",
}


def _switched_on(key: str, cfg: dict) -> bool:
    """Whether a drawn key is in use: a key SEARCH draws only under a switch needs it on."""
    from .schedules import SEARCH

    spec = SEARCH.get(key, ())
    return not (len(spec) > 3 and not cfg.get(spec[3]))


def _cell(v) -> str:
    return "yes" if v is True else "no" if v is False else str(v)


def write_stop_table(results: Path, out: Path, plan) -> None:
    """The converged schedule's stops: per (model type, size), each seed's run of the
    chosen configuration, the epoch early stopping ended it (or the cap, not converged),
    its best validation epoch and its last learning rate."""
    from jaxcollective.report.tables import best_epoch, fmt_params
    from jaxcollective.report.select import fold_duplicates
    from jaxcollective.report.load import load_results

    runs, _ = fold_duplicates([r for r in load_results(results) if r.status == "finished"])
    cap, p = plan.rungs[-1], plan.stopping
    lines = [
        "## Early stopping: where each run of the choice ended",
        "",
        f"Each run's learning rate is multiplied by 0.1 after {p['lr_plateau_patience']} "
        "epochs in a row without a new best validation accuracy, and the run ends after "
        f"{p['early_stopping_patience']} such epochs (at most {cap}). Per seed: the epoch "
        "it stopped at, the epoch of its best validation accuracy, and the learning rate "
        "of its last epoch. A run that reached the cap without stopping is marked: "
        "not converged by this rule.",
        "",
        "| model type | params | learning rate | weight decay | stopped at (per seed) | "
        "best epoch (per seed) | last learning rate | converged |",
        "| --- | ---: | ---: | ---: | --- | --- | --- | --- |",
    ]
    groups: dict[tuple, list] = {}
    for r in runs:  # a seed trained again to a higher cap: its longer run, as the report
        c = r.config
        groups.setdefault(
            (r.model_type, r.params, c["learning_rate"], c["weight_decay"]), []
        ).append(r)
    order = {t: i for i, t in enumerate(MODEL_TYPES)}
    for key in sorted(groups, key=lambda k: (k[1] > 1e6, order.get(k[0], 9))):
        seeds = sorted(groups[key], key=lambda r: r.config["seed"])
        stopped = [len(r.val_curve) for r in seeds]
        best = [best_epoch(r.val_curve) for r in seeds]
        last = sorted(
            {f"{r.last_lr if r.last_lr is not None else float('nan'):.1e}" for r in seeds}
        )
        done = all(r.stopped_early for r in seeds)
        t, params, lr, wd = key
        lines.append(
            f"| {t} | {fmt_params(params)} | {lr} | {wd} | "
            f"{', '.join(map(str, stopped))} | {', '.join(map(str, best))} | "
            f"{', '.join(last)} | {'yes' if done else '**no** (reached the cap)'} |"
        )
    out.write_text("\n".join(lines) + "\n")


def write_check_table(results: Path, check: Path, out: Path, epochs: int, longer: int) -> None:
    """The convergence check: per model type, its choice's seed-0 run of the study (`epochs`)
    beside the same configuration trained `longer` epochs: best validation accuracy and its
    epoch, test accuracy, and the order of the types by test accuracy in each."""
    from jaxcollective.report.tables import best_epoch, fmt_params

    def curve(r):
        return r["val_accuracy_curves"][0]

    long_runs = [r for r in read_records(check) if r.get("status") == "finished"]
    short = {(r["model_type"], r["model_params"]): r for r in read_records(results) if COPY in r}
    pairs = [
        (short[r["model_type"], r["model_params"]], r)
        for r in long_runs
        if (r["model_type"], r["model_params"]) in short
    ]
    if not pairs:
        return

    def rank(recs):
        return {
            r["model_type"]: i + 1
            for i, r in enumerate(sorted(recs, key=lambda r: -r[TEST_ACCURACY]))
        }

    r_short, r_long = rank([a for a, _ in pairs]), rank([b for _, b in pairs])
    lines = [
        f"## Convergence check: the choices trained {longer} epochs",
        "",
        f"At {fmt_params(pairs[0][1]['model_params'])} parameters (the baselines matched to "
        f"the collective), each model type's chosen configuration, seed 0, trained {longer} epochs "
        f"from scratch beside its {epochs}-epoch run of the study. Best validation accuracy "
        "(%) and its epoch, test accuracy (%) at the run's end, and the rank by test "
        f"accuracy; curves in `check/<dataset>/val_curves.png`.",
        "",
        f"| model type | learning rate | weight decay | best val. {epochs} ep. (epoch) | "
        f"best val. {longer} ep. (epoch) | gain | test {epochs} ep. (rank) | "
        f"test {longer} ep. (rank) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a, b in pairs:
        t, c = b["model_type"], b["config"]
        va, vb = a[BEST_VAL_ACCURACY], b[BEST_VAL_ACCURACY]
        lines.append(
            f"| {t} | {c['learning_rate']} | {c['weight_decay']} | {va:.2f} "
            f"({best_epoch(curve(a))}) | {vb:.2f} ({best_epoch(curve(b))}) | "
            f"{vb - va:+.2f} | {a[TEST_ACCURACY]:.2f} ({r_short[t]}) | "
            f"{b[TEST_ACCURACY]:.2f} ({r_long[t]}) |"
        )
    out.write_text("\n".join(lines) + "\n")
