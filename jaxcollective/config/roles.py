"""What a config key does to a run (its `Role`) and `_key`, the one declaration of a
config field with its help, group, role and why."""

from __future__ import annotations

import enum
from dataclasses import field


class Role(str, enum.Enum):
    """What a config key does to a run (docs/design.md, "Config keys and their roles").
    Declared once, on the key's field; every list that must know it derives from it."""

    PROGRAM = "program"  # shapes the compiled program: another value compiles anew
    VALUE = "value"  # reaches the compiled program as data (optimizer state, RNG
    #                          keys, index arrays): trials that differ only in these share
    #                          one compiled program and may be members of one population
    LENGTH = "length"  # how long the run is: a longer run extends a shorter one
    DATA = "data"  # where the data are read from (the data are checked by content)
    OUTPUT = "output"  # what is written where: results, logging, checkpoints
    DEVICE = "device"  # where the program runs (not what it computes)
    CHECK = "check"  # the original's keys that must agree with the dataset, then
    #                          change nothing
    NO_EFFECT = "no-effect"  # accepted for the original's configs; changes nothing here


def _key(
    default,
    help,
    group,
    role: Role,
    why: str,
    *,
    trajectory: bool = True,
    program_part=None,
    setting: bool = False,
    step_value: bool = False,
    since: str = "",
):
    """A config field and its declaration: `help` for --help, `group` for its section,
    `role` and `why` (the role's reason; for NO_EFFECT the one word a run records).
    `trajectory=False`: the metrics do not depend on it although it shapes the program.
    `program_part(value)`: the part of a VALUE key that shapes the program.
    `setting=True`: a training setting that runs compared in one report section share.
    `step_value=True`: a VALUE key the train step reads from its replica's row of
    train.ReplicaData (a number of the loss or the model), not a constant it compiles in.
    `since`: the version that added the key; at its default it stays out of the run's
    trajectory, so runs and checkpoints from before it keep their fingerprint."""
    assert not step_value or role is Role.VALUE
    meta = {
        "help": help,
        "group": group,
        "role": role,
        "why": why,
        "trajectory": trajectory,
        "program_part": program_part,
        "setting": setting,
        "step_value": step_value,
        "since": since,
    }
    return field(default=tuple(default) if isinstance(default, list) else default, metadata=meta)


P, V = Role.PROGRAM, Role.VALUE
_ARCH = "an architecture key"
_STEP_VALUE = "reaches the step as data (its replica's row), not compiled in"
