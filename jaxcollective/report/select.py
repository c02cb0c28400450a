"""The report: select."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from jaxcollective.config import (
    BASELINE_ONLY,
    COLLECTIVE_ONLY,
    FIELDS,
    MODEL_TYPES,
    SHARED_SETTINGS,
    TRAJECTORY_KEYS,
)
from jaxcollective.train.metrics import BEST_VAL_ACCURACY, TEST_ACCURACY

from .load import Run


MATCH_TOLERANCE = 0.05  # a baseline within 5% of the collective's size is "matched"


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


_DEFAULTS: Optional[dict] = None
