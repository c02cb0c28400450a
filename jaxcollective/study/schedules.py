"""The studies, declared as data: the collective's widths at each size, and each schedule
(its folder, its defaults, the command that runs it). Everything that runs a study reads
them from here."""

from __future__ import annotations

from dataclasses import dataclass, field
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

SCHEDULES = {s.name: s for s in (SHORT, LONG, CONVERGED)}
