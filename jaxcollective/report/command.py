"""The report: command."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from jaxcollective.cli import bool_option, console_script, guarded, help_text, parse_argv
from jaxcollective.config import ConfigError

from .load import Run, load_results, load_wandb
from .select import fold_duplicates, group_runs, select_on_validation, split_runs
from .tables import write_summary
from .figures import plot_all


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


def joined(runs: list[Run], source: str, path: str) -> tuple[list[Run], str]:
    """`runs` and the runs of another results file in the cells (dataset, model type,
    size) that `runs` lacks: the best shot's collectives against the converged study's
    baselines, or a baseline's search against the converged study's collective and its
    other cells. Both files' runs are named by their file's path (`load_results`)."""

    def cell(r: Run) -> tuple:
        return r.dataset, r.model_type, r.size_key

    have = {cell(r) for r in runs}
    theirs = [r for r in load_results(Path(path), named_by_path=True) if cell(r) not in have]
    if not theirs:
        raise ConfigError(
            f"--join={path} has no (dataset, model type, size) that --results lacks; "
            "pass a file with other model types or sizes"
        )
    kinds = ", ".join(sorted({r.model_type for r in theirs}))
    return runs + theirs, f"{source}; from {path}: {kinds}"


OPTIONS = {
    "results": "results file written by run.py or the sweep (default runs/results.jsonl)",
    "join": "another results file whose runs join --results' in the cells (dataset, model "
    "type, size) --results lacks (a searched collective against another study's baselines, "
    "or the reverse)",
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
                    args="[--results=PATH | --wandb=ENTITY/PROJECT[/SWEEP_ID]] [--join=PATH] "
                    "[--option=value ...]",
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
            runs, source = load_results(path, named_by_path="join" in opts), str(path)
        if "join" in opts:
            runs, source = joined(runs, source, opts["join"])
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
