"""How fast a study's store hands out trials: W concurrent workers claim trials through
`jaxcollective.sweep.claim` (lock, stale-trial check, count, ask) and tell each at once,
on SQLite (one file) and on a PostgreSQL server, until N trials are done.

    python docs/store_bench.py --trials=400 --workers=8 --postgres=postgresql://u:p@host/db

Without --postgres it starts a throwaway server itself where PostgreSQL's binaries are
installed (tests/pg.py, as the tests do). Prints one JSON line per store: claims per
second, the mean time a claim takes, and the trials each worker got.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def work(url: str, total: int, out) -> None:
    import optuna

    from jaxcollective.sweep.store import study_lock
    from jaxcollective.sweep.claims import claim, storage_of

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with study_lock(url):
        study = optuna.create_study(
            study_name="bench", storage=storage_of(url, 30), load_if_exists=True
        )
    got, waited = 0, 0.0
    while True:
        t = time.perf_counter()
        trial = claim(study, total, url)
        waited += time.perf_counter() - t
        if trial is None:
            break
        trial.suggest_float("x", 0, 1)
        study.tell(trial, 0.0)
        got += 1
    out.put((got, waited))


def bench(url: str, total: int, workers: int) -> dict:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    # the store's tables first, so that the timing is of claims
    p = ctx.Process(target=work, args=(url, 0, out))
    p.start()
    p.join()
    out.get()
    start = time.perf_counter()
    procs = [ctx.Process(target=work, args=(url, total, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    wall = time.perf_counter() - start
    got = [g for g, _ in results]
    assert sum(got) == total, got
    return {
        "store": url.split(":", 1)[0],
        "workers": workers,
        "trials": total,
        "wall_s": round(wall, 2),
        "claims_per_s": round(total / wall, 1),
        "mean_claim_ms": round(1000 * sum(w for _, w in results) / total, 1),
        "trials_per_worker": sorted(got),
    }


def main(argv: list[str]) -> int:
    from jaxcollective.cli import guarded, int_option, parse_argv

    def _main():
        _, opts = parse_argv(
            argv,
            {
                "trials": "trials in all (default 400)",
                "workers": "concurrent workers (default 8)",
                "postgres": "a PostgreSQL URL (default: a throwaway server)",
            },
            config_keys=False,
        )
        total = int_option(opts, "trials", 400, minimum=1)
        workers = int_option(opts, "workers", 8, minimum=1)
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(bench(f"sqlite:///{tmp}/bench.db", total, workers)), flush=True)
        server = None
        url = opts.get("postgres")
        if url is None:
            from pg import PgServer, pg_bindir

            if pg_bindir() is None:
                print("no PostgreSQL here: pass --postgres=URL", file=sys.stderr)
                return 0
            server = PgServer()
            url = server.url()
        try:
            print(json.dumps(bench(url, total, workers)), flush=True)
        finally:
            if server is not None:
                server.remove()
        return 0

    return guarded(_main)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
