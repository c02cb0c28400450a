"""A W&B sweep file run locally with Optuna: `python -m jaxcollective.sweep SWEEP.yaml`.

The same sweep files as `wandb sweep` (ours, and those written for the original) run
without a W&B server: `method` maps to Optuna's samplers (bayes: TPE, random, grid),
`parameters` to its distributions, `metric` to the study's objective and direction
(read from each trial's per-epoch rows), `early_terminate: hyperband` to Optuna's
Hyperband pruner, reported once per epoch. Trials run in this process: JAX is imported
once, each dataset loaded once, and a compiled epoch is reused by every trial whose
program is the same (see `train.Trainer`). Every trial appends its results line, so
`python -m jaxcollective.report` reads a local sweep as it reads agent runs. The study
lives in an Optuna storage (SQLite beside the results by default; any RDB URL), which
several processes or machines share; `--study=NAME` resumes one.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .cli import guarded, int_option
from .config import ConfigError

USAGE = """usage: python -m jaxcollective.sweep SWEEP.yaml [--trials=N] [--set KEY=VALUE ...]
         [--study=NAME] [--storage=URL] [--results=PATH] [--parallel=K] [--seed=S]

Run a W&B sweep file locally with Optuna (no W&B server needed).
  --trials=N        trials in the study in all (default 10); running the command again
                    with the same --study adds trials until N are finished or pruned
  --set KEY=VALUE   fix a key for every trial (e.g. --set dataset=digits --set epochs=3)
  --study=NAME      the study's name (default: the sweep file's name); an existing study
                    of that name is resumed
  --storage=URL     an Optuna storage URL (default: sqlite:///<results folder>/sweeps.db);
                    postgresql://... or mysql://... to share a study between machines
  --results=PATH    results file, one line per trial (default runs/results.jsonl)
  --parallel=K      K worker processes on this machine sharing the study (one GPU each
                    when there are several)
  --seed=S          the sampler's seed (default 0)
  --heartbeat=S     seconds between a running trial's heartbeats (default 30); a trial
                    whose process died is failed and retried after 2x this"""

HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "eta", "s"}


# ------------------------------------------------------------- the sweep file
def read_sweep(path: str) -> dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file {path} not found; pass a W&B sweep YAML such as "
                          "sweeps/phase1.yaml")
    try:
        sweep = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("parameters"), dict):
        raise ConfigError(f"{path} has no `parameters:` mapping; is it a W&B sweep file?")
    return sweep


def search_space(parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed values, Optuna distributions) of a sweep's `parameters`; anything that
    cannot be mapped is a one-line error naming the key."""
    import optuna.distributions as d

    fixed, space = {}, {}
    for key, spec in parameters.items():
        if not isinstance(spec, dict):
            raise ConfigError(f"sweep parameter {key!r} must be a mapping (value, values or "
                              "distribution), not {spec!r}")
        dist = spec.get("distribution")
        if "value" in spec:
            fixed[key] = spec["value"]
        elif "values" in spec and dist in (None, "categorical"):
            vals = spec["values"]
            if not isinstance(vals, list) or not vals:
                raise ConfigError(f"sweep parameter {key!r}: `values` must be a non-empty list")
            # Optuna's choices are scalars: lists (widths) travel as their str(), which
            # Config parses as the agent's command line does
            space[key] = d.CategoricalDistribution(
                [v if v is None or isinstance(v, (bool, int, float, str)) else str(v) for v in vals])
        elif dist in ("uniform", "log_uniform_values", "int_uniform", "q_uniform",
                      "q_log_uniform_values"):
            if "min" not in spec or "max" not in spec:
                raise ConfigError(f"sweep parameter {key!r}: {dist} needs min and max")
            lo, hi = spec["min"], spec["max"]
            if dist == "uniform":
                space[key] = d.FloatDistribution(float(lo), float(hi))
            elif dist == "log_uniform_values":
                space[key] = d.FloatDistribution(float(lo), float(hi), log=True)
            elif dist == "int_uniform":
                space[key] = d.IntDistribution(int(lo), int(hi))
            elif dist == "q_uniform":
                space[key] = d.FloatDistribution(float(lo), float(hi), step=float(spec.get("q", 1.0)))
            else:
                raise ConfigError(f"sweep parameter {key!r}: distribution q_log_uniform_values "
                                  "has no Optuna equivalent (a log scale with a step); use "
                                  "log_uniform_values or a values list")
        else:
            raise ConfigError(f"sweep parameter {key!r}: distribution {dist!r} cannot be run "
                              "locally; use value, values, uniform, log_uniform_values, "
                              "int_uniform, q_uniform or categorical")
    return fixed, space


def sampler_of(sweep: dict, space: dict, seed: int):
    import optuna

    method = sweep.get("method", "random")
    if method == "bayes":
        return optuna.samplers.TPESampler(seed=seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "grid":
        bad = [k for k, v in space.items() if not isinstance(v, optuna.distributions.CategoricalDistribution)]
        if bad:
            raise ConfigError(f"method grid needs a values list for every varied key; "
                              f"{bad[0]!r} has a distribution")
        return optuna.samplers.GridSampler({k: list(v.choices) for k, v in space.items()}, seed=seed)
    raise ConfigError(f"sweep method {method!r} cannot be run locally; use bayes, random or grid")


def pruner_of(sweep: dict, epochs: int):
    import optuna

    et = sweep.get("early_terminate")
    if not et:
        return optuna.pruners.NopPruner()
    if not isinstance(et, dict) or et.get("type") != "hyperband":
        raise ConfigError(f"early_terminate {et!r} cannot be run locally; only type: hyperband")
    unknown = sorted(set(et) - HYPERBAND_KEYS)
    if unknown:
        raise ConfigError(f"early_terminate key {unknown[0]!r} cannot be mapped to Optuna's "
                          "Hyperband pruner (min_iter, max_iter, eta, s)")
    eta = int(et.get("eta", 3))
    if "min_iter" in et:
        min_iter = int(et["min_iter"])
    elif "max_iter" in et:  # W&B: min_iter = max_iter / eta^s
        min_iter = max(1, int(et["max_iter"] / eta ** int(et.get("s", 0))))
    else:
        raise ConfigError("early_terminate: hyperband needs min_iter or max_iter")
    max_iter = int(et.get("max_iter", epochs))
    return optuna.pruners.HyperbandPruner(min_resource=min_iter, max_resource=max(max_iter, min_iter),
                                          reduction_factor=eta)


def parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set dataset=digits")
        out[key.strip()] = value.strip()
    return out


# ------------------------------------------------------------------ the study
class Sweep:
    """One sweep file, its fixed keys and overrides, and the objective of its trials."""

    def __init__(self, path: str, overrides: dict[str, str], results: Optional[str]):
        from .config import Config

        self.sweep = read_sweep(path)
        self.fixed, self.space = search_space(self.sweep["parameters"])
        for k in overrides:  # an override fixes a varied key too
            self.space.pop(k, None)
        if "dataset" in overrides:  # the sweep's input_dim / num_classes were its dataset's
            for k in ("input_dim", "num_classes"):
                if k not in overrides and self.fixed.pop(k, None) is not None:
                    print(f"note: --set dataset={overrides['dataset']} drops the sweep's fixed {k}",
                          file=sys.stderr)
        self.fixed.update(overrides)
        if results:
            self.fixed["results"] = results
        metric = self.sweep.get("metric") or {}
        if not metric.get("name"):
            raise ConfigError(f"{path} has no metric.name: the study needs an objective")
        goal = metric.get("goal", "maximize")
        if goal not in ("maximize", "minimize"):
            raise ConfigError(f"metric.goal {goal!r}: expected maximize or minimize")
        self.metric, self.direction = metric["name"], goal
        # every value the file can send must make a valid config, before any trial
        probe = {**self.fixed, **{k: v.choices[0] if hasattr(v, "choices") else v.low
                                  for k, v in self.space.items()}}
        self.base_cfg = Config.from_values(probe)
        self.results = self.base_cfg.results
        self._data: dict[tuple, Any] = {}

    def dataset(self, cfg):
        from .data import load

        key = (cfg.dataset, cfg.synthetic_like, cfg.data_dir, cfg.manual_dir,
               cfg.seed if cfg.dataset == "synthetic" else None)
        if key not in self._data:
            self._data[key] = load(cfg)
        return self._data[key]

    def objective(self, trial, stop) -> float:
        import optuna

        from .api import unused_keys
        from .checkpoint import Checkpointer
        from .config import Config
        from .experiment import train_and_evaluate
        from .main import preflight
        from .signals import StopFlag
        from .writers import MultiWriter, ResultsWriter, Writer

        values = dict(self.fixed)
        values.update({k: suggest(trial, k, dist) for k, dist in self.space.items()})
        cfg = Config.from_values(values)
        resolved = preflight(cfg)
        ds = self.dataset(cfg)
        prune = StopFlag()  # set by the pruner at an epoch boundary; never a signal handler
        prune.status = "pruned"
        metric, seen = self.metric, []

        class Report(Writer):
            def start(self, info):
                trial.set_user_attr("model_params", info["model_params"])

            def log(self, row):
                if metric not in row:
                    raise ConfigError(f"the sweep's metric {metric!r} is not among the logged "
                                      f"metrics; e.g. final/test_accuracy")
                seen.append(float(row[metric]))
                trial.report(seen[-1], row["epoch"])
                if trial.should_prune() or stop.requested:
                    prune.signal = -1

        checkpointer = Checkpointer(cfg)
        meta = checkpointer.peek() if cfg.resume == "auto" else None
        writers = [Report(), ResultsWriter(cfg.results)]
        run = self.wandb_run(cfg, values, trial)
        if run is not None:
            from .writers import WandbWriter
            writers.append(WandbWriter(run))
        try:
            record = train_and_evaluate(
                cfg, MultiWriter(*writers), unused=unused_keys(cfg, set(values)), stop=prune,
                dataset=ds, resolved=resolved, checkpointer=checkpointer, resume_meta=meta,
                extra_info={"sweep_study": trial.study.study_name, "sweep_trial": trial.number,
                            "sweep_worker": os.getpid()})
        except BaseException:
            if run is not None:
                run.finish(exit_code=1)
            raise
        trial.set_user_attr("status", record["status"])
        if stop.requested:  # Ctrl-C / SIGTERM: this trial is not a result
            raise KeyboardInterrupt
        if record["status"] == "pruned":
            raise optuna.TrialPruned()
        if not seen or not math.isfinite(seen[-1]):
            return float("nan")  # diverged: Optuna records the trial as failed
        return seen[-1]

    def wandb_run(self, cfg, values, trial):
        """Each trial its own W&B run, grouped by study, when W&B is there and not disabled."""
        from . import wandb_run

        mode = wandb_run.wandb_mode()
        if not mode:
            return None
        run, _ = wandb_run.start(values, mode, cfg, group=trial.study.study_name,
                                 name=f"{trial.study.study_name}-trial{trial.number}")
        return run


def suggest(trial, key: str, dist):
    import optuna.distributions as d

    if isinstance(dist, d.CategoricalDistribution):
        return trial.suggest_categorical(key, dist.choices)
    if isinstance(dist, d.IntDistribution):
        return trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)


def progress_line(study, total: int) -> str:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = {s: sum(t.state == s for t in trials) for s in TrialState}
    done = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
    best = ""
    try:
        bt = study.best_trial
        best = f", best {bt.value:.4g} (trial {bt.number})"
    except ValueError:
        pass
    return (f"[sweep {study.study_name}] {done}/{total} done ({count[TrialState.PRUNED]} pruned, "
            f"{count[TrialState.FAIL]} failed), {count[TrialState.RUNNING]} running{best}")


@contextlib.contextmanager
def _creation_lock(url: Optional[str]):
    """Processes that start together on one SQLite file create its tables one at a time
    (SQLite has no concurrent schema creation; a server database needs no lock)."""
    if not url or not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock = Path(url[len("sqlite:///"):] + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def storage_of(url: str, heartbeat: int):
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    if not url:
        return optuna.storages.InMemoryStorage()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    # a trial whose process died (no heartbeat for 2 intervals) is failed, then retried
    # with the same parameters: its checkpoint, if any, lets it resume
    return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                      engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})


def run_study(path: str, trials: int, overrides: dict[str, str], *, study_name: Optional[str],
              storage: Optional[str], results: Optional[str], seed: int, heartbeat: int) -> int:
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from .main import enable_compilation_cache
    from .signals import StopFlag

    sw = Sweep(path, overrides, results)
    sampler = sampler_of(sw.sweep, sw.space, seed)
    pruner = pruner_of(sw.sweep, sw.base_cfg.epochs)
    enable_compilation_cache()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name or Path(path).stem
    with _creation_lock(storage):
        study = optuna.create_study(study_name=name, storage=storage_of(storage, heartbeat),
                                    sampler=sampler, pruner=pruner, direction=sw.direction,
                                    load_if_exists=True)
    print(progress_line(study, trials), file=sys.stderr, flush=True)
    done_states = (TrialState.COMPLETE, TrialState.PRUNED)
    with StopFlag() as stop:
        try:
            study.optimize(lambda t: sw.objective(t, stop), n_trials=trials,
                           callbacks=[MaxTrialsCallback(trials, states=done_states),
                                      lambda s, t: print(progress_line(s, trials), file=sys.stderr,
                                                         flush=True)],
                           catch=(ConfigError,))
        except KeyboardInterrupt:
            print(f"[sweep {name}] stopped; run the same command again to resume the study",
                  file=sys.stderr)
            return 0
    print(progress_line(study, trials), file=sys.stderr, flush=True)
    return 0


def main(argv: list[str]) -> int:
    def _main():
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        path, sets, opts = argv[0], [], {}
        i = 1
        while i < len(argv):
            tok = argv[i]
            name, eq, value = tok.lstrip("-").partition("=")
            if not tok.startswith("--"):
                raise ConfigError(f"unexpected argument {tok!r}; see --help")
            if not eq:
                if i + 1 >= len(argv):
                    raise ConfigError(f"--{name} needs a value: --{name}=VALUE")
                value, i = argv[i + 1], i + 1
            if name == "set":
                sets.append(value)
            elif name in ("trials", "study", "storage", "results", "parallel", "seed", "heartbeat"):
                opts[name] = value
            else:
                raise ConfigError(f"unknown option --{name}; see --help")
            i += 1
        trials = int_option(opts, "trials", 10, minimum=1)
        parallel = int_option(opts, "parallel", 1, minimum=1)
        seed = int_option(opts, "seed", 0, minimum=0)
        heartbeat = int_option(opts, "heartbeat", 30, minimum=1)
        overrides = parse_sets(sets)
        sw = Sweep(path, overrides, opts.get("results"))  # every error before any trial
        storage = opts.get("storage") or \
            f"sqlite:///{Path(sw.results).expanduser().resolve().parent / 'sweeps.db'}"
        Path(sw.results).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        if parallel > 1:
            return run_workers(argv, parallel, storage)
        return run_study(path, trials, overrides, study_name=opts.get("study"), storage=storage,
                         results=opts.get("results"), seed=seed, heartbeat=heartbeat)
    return guarded(_main)


def run_workers(argv: list[str], k: int, storage: str) -> int:
    """K processes of this command sharing one study (each with its own sampler seed;
    one GPU each when there are several)."""
    gpus = _gpu_count()
    base = [a for a in argv if not a.startswith(("--parallel", "--storage", "--seed"))]
    procs = []
    for i in range(k):
        env = dict(os.environ)
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        procs.append(subprocess.Popen([sys.executable, "-m", "jaxcollective.sweep", *base,
                                       f"--storage={storage}", f"--seed={i}"], env=env))
        time.sleep(1.0)  # let the first create the study
    return max(p.wait() for p in procs)


def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
        return len([line for line in out.stdout.splitlines() if line.startswith("GPU")])
    except (OSError, subprocess.SubprocessError):
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
