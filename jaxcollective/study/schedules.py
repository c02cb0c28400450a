"""The studies, declared as data: the collective's widths at each size, and each schedule
(its folder, its defaults, the command that runs it). Everything that runs a study reads
them from here."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional
from pathlib import Path

# the 6-epoch study's grid (also a W&B sweep file: sweeps/study_fashion.yaml links here)
SWEEP = Path(__file__).with_name("study_fashion.yaml")
# The collective's widths at each size (n_total 8, expert_ratio 0.2: 2 experts, 6
# analysts); the parameter counts are on Fashion-MNIST.
SIZES = {
    "0.57M": dict(
        expert_hidden="[128, 64]",
        expert_output=32,  # the debug preset's
        analyst_hidden="[64, 32]",
        analyst_output=16,
    ),  # 567,044
    "1.8M": dict(
        expert_hidden="[352, 176]", expert_output=88, analyst_hidden="[176, 88]", analyst_output=44
    ),  # 1,837,987
    "2.97M": dict(
        expert_hidden="[512, 256]",
        expert_output=128,  # phase1's
        analyst_hidden="[256, 128]",
        analyst_output=64,
    ),  # 2,969,887
    "4.0M": dict(
        expert_hidden="[640, 320]",
        expert_output=160,
        analyst_hidden="[320, 160]",
        analyst_output=80,
    ),  # 4,007,928
    "4.9M": dict(
        expert_hidden="[768, 384]",
        expert_output=160,
        analyst_hidden="[384, 192]",
        analyst_output=80,
    ),  # 4,894,520
    "6.1M": dict(
        expert_hidden="[896, 448]",
        expert_output=192,
        analyst_hidden="[448, 224]",
        analyst_output=96,
    ),  # 6,123,513
    "7.1M": dict(
        expert_hidden="[1024, 512]",
        expert_output=192,
        analyst_hidden="[512, 256]",
        analyst_output=96,
    ),  # 7,138,105
}
SIZE_SETS = {"cpu": ["0.57M", "2.97M"], "full": ["1.8M", "2.97M", "4.0M", "4.9M", "6.1M", "7.1M"]}


# The best shot's search space, drawn from at random (a seeded stream: a rerun draws the
# same candidates). (kind, low, high): "int" uniform on low..high, "uniform", "log"
# (log-uniform), "log0" (0 with probability 1/2, else log-uniform); "flag" (true or false
# with probability 1/2) with the keys it switches on, drawn only when it is on.
SEARCH = {
    "n_total": ("int", 4, 16),
    "expert_ratio": ("uniform", 0.1, 0.5),
    "expert_width_factor": ("log", 0.25, 4.0),  # how the width is shared (design.md)
    "learning_rate": ("log", 3e-4, 1e-2),
    "weight_decay": ("log0", 1e-6, 1e-3),
    "use_expert_diversity": ("flag", ("use_analyst_diversity",)),
    "diversity_lambda": ("log", 1e-3, 1e-1, "use_expert_diversity"),
    "diversity_temperature": ("log", 0.5, 4.0, "use_expert_diversity"),
    "use_drop_models": ("flag", ()),
    "drop_models_expert_rate": ("uniform", 0.05, 0.3, "use_drop_models"),
    "drop_models_analyst_rate": ("uniform", 0.05, 0.3, "use_drop_models"),
}
SEARCH_SEED = 42

# The baselines' own knobs, for the baseline the best collective beat clearly (fairness:
# an equal budget before the claim stands). Their widths follow from the type and the
# budget (deep_resnet: 8 equal widths), so what is free is training: the learning rate,
# weight decay and the dropout after each hidden layer.
BASELINE_SEARCH = {
    "learning_rate": ("log", 3e-4, 1e-2),
    "weight_decay": ("log0", 1e-6, 1e-3),
    "baseline_dropout": ("uniform", 0.0, 0.5),
}


@dataclass(frozen=True)
class Schedule:
    """One study: `folder` holds its records (committed) and its report; its running
    state (the sweep's store, checkpoints, the log) lives in `folder`/.work, out of git."""

    name: str
    command: str  # what runs it, from the repository's root
    folder: str
    epochs: int = 0  # 0: the sweep file's
    halving: bool = False  # learning rate x weight decay by successive halving
    weight_decays: tuple[float, ...] = ()
    check_epochs: int = 0  # the long schedule's convergence check (0: none; default 2 x epochs)
    plateau: int = 0  # the converged schedule's rules (epochs without a new best)
    patience: int = 0
    options: tuple[str, ...] = field(default=())  # the options only this schedule takes
    model_types: tuple[str, ...] = ()  # (): the sweep file's seven
    # > 0: the halving's candidates are this many draws from `search` (else learning rate x
    # weight decay), each collective sized to the size's parameter count (collective_budget)
    candidates: int = 0
    search: Optional[dict] = field(default=None, compare=False)
    # another study's folder whose model types this one lacks join its records in the
    # report (the best shot's collectives against the converged study's baselines)
    compare_with: str = ""


SHORT = Schedule(
    "short",
    "python -m jaxcollective.study",
    folder="docs/study",
)
"""The 6-epoch study: per collective size, the grid of the 7 model types x 3 learning rates
(seed 0), the rate validation chose trained at seeds 1 and 2; no augmentation, Adam
without weight decay, batch 256. ~77 min on 2 CPU cores."""

LONG = Schedule(
    "long",
    "python -m jaxcollective.study --schedule=long",
    folder="docs/study_long",
    epochs=36,
    halving=True,
    weight_decays=(0.0, 0.0001),
    check_epochs=72,
    options=("weight_decays", "check_epochs"),
)
"""As the original trains: augmentation on, 36 epochs, learning rate x weight decay chosen
by successive halving on validation at epochs 4, 12 and 36, then seeds 1 and 2; a 72-epoch
convergence check of each choice at the first size."""

CONVERGED = Schedule(
    "converged",
    "python -m jaxcollective.study --schedule=converged",
    folder="docs/study_converged",
    epochs=300,
    halving=True,
    weight_decays=(0.0, 0.0001),
    plateau=8,
    patience=16,
    options=("weight_decays", "plateau", "patience"),
)
"""The long study with every run trained to its stop: the learning rate x0.1 after 8
epochs without a new best validation accuracy, the run ended after 16 (at most 300
epochs); halving at epochs 4 and 12, the survivor and each seed to its stop. ~8 hours on
2 CPU cores."""

BEST_SHOT = Schedule(
    "best_shot",
    "python -m jaxcollective.study --schedule=best_shot",
    folder="docs/study_best_shot",
    epochs=300,
    halving=True,
    plateau=8,
    patience=16,
    options=("plateau", "patience", "candidates"),
    model_types=("collective",),
    candidates=24,
    search=SEARCH,
    compare_with="docs/study_converged",
)
"""The collective's best shot at the converged study's budgets: per size, 24 collectives
drawn at random from SEARCH (architecture and training knobs), each sized to the size's
parameter count (`collective_budget`: 567,044 and 2,969,887), cut by successive halving on
validation at epochs 4 and 12 (24 -> 8 -> 2), the 2 survivors trained to their stop, the
better one then at seeds 1 and 2 to theirs. The converged study's rules (augmentation,
plateau 8, early stop 16, the same split); its baseline rows are the comparison
(the report reads both folders' records; docs/results.md). ~2 CPU hours on 2 cores."""


BASELINE_SHOT = replace(  # the best shot's rules and budget, for the baselines
    BEST_SHOT,
    name="baseline_shot",
    command="python -m jaxcollective.study --schedule=baseline_shot",
    folder="docs/study_baseline_shot",
    model_types=("deep_resnet", "very_deep_resnet"),
    search=BASELINE_SEARCH,
)
"""Fairness: the baselines the collective beat clearly in the converged and best-shot
studies get the best shot's budget over their own knobs (BASELINE_SEARCH: learning rate,
weight decay, dropout): per size, 24 draws at the converged study's widths, halved on
validation at epochs 4 and 12, the 2 survivors to their stop, the better one at seeds 1
and 2; the converged study's rules. The report puts them beside the converged study's
collective and other baselines (docs/results.md). `--model_types=deep_resnet` runs one.
~1.5 CPU hours per model type on 2 cores."""

SCHEDULES = {s.name: s for s in (SHORT, LONG, CONVERGED, BEST_SHOT, BASELINE_SHOT)}
