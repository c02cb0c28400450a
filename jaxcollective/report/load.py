"""The report: load."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from jaxcollective.config import ConfigError
from jaxcollective.train.metrics import (
    BEST_VAL_ACCURACY,
    FINAL_PREFIX,
    MODEL_PARAMS,
    TEST_ACCURACY,
    TEST_AT_BEST_VAL,
    TEST_LOSS,
    VAL_CURVES,
    efficiency_metrics,
)
from jaxcollective.util import describe_error


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
    source: str = ""  # FILE:LINE of its record (run.py --from_record reruns it)

    @property
    def size_key(self) -> int:
        """Parameter count to 3 significant digits: runs of one size share a group."""
        return int(float(f"{self.params:.3g}"))


# ------------------------------------------------------------------ loading
def load_results(path: Path, named_by_path: bool = False) -> list[Run]:
    """Runs of a results file, or of several (a comma list: one study's collectives beside
    another's baselines). A damaged line (a run killed mid-write, a line that is not a run
    record) is skipped with a warning naming file and line."""
    parts = [p.strip() for p in str(path).split(",") if p.strip()]
    if len(parts) == 1:
        path = Path(parts[0])
    if len(parts) > 1:  # runs named by their file's path: two files may share a name
        return [r for p in parts for r in load_results(Path(p.strip()), named_by_path=True)]
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
            runs.extend(
                record_to_runs(
                    rec, name=where if named_by_path else f"{path.name}:{i + 1}", source=where
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            why = (
                "not a complete JSON line"
                if isinstance(err, json.JSONDecodeError)
                else "not a run record"
            )
            print(f"warning: skipping {where}: {why}", file=sys.stderr)
    return runs


def record_to_runs(rec: dict[str, Any], name: str, source: str = "") -> list[Run]:
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
        source=source,
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
                TEST_AT_BEST_VAL: r.get("test_accuracy_at_best_val"),
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
