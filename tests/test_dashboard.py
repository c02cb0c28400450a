"""optuna-dashboard on a local study as it is stored: its HTTP API shows the trials, their
user attributes and the per-epoch values, from a short real sweep on digits."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytest.importorskip("optuna_dashboard")
# noqa: E402
from jaxcollective.sweep.runner import main as sweep_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # end-to-end, in subprocesses
ATTRS = {"model_type", "model_params", "status", "results", "test_accuracy"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    """The study's storage URL: an SQLite file, or a throwaway PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'sweeps.db'}"
        return
    from pg import PgServer, pg_bindir

    pytest.importorskip("psycopg")
    if pg_bindir() is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs it)")
    server = PgServer()
    try:
        yield server.url()
    finally:
        server.remove()


def test_the_dashboard_shows_trials_attributes_and_curves(tmp_path, storage):
    spec = {
        "method": "random",
        "metric": {"name": "final/test_accuracy", "goal": "maximize"},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "max_iter": 3, "eta": 3},
        "parameters": {
            "model_type": {"value": "shallow"},
            "dataset": {"value": "digits"},
            "target_params": {"value": 30000},
            "batch_size": {"value": 64},
            "epochs": {"value": 3},
            "checkpoint_dir": {"value": str(tmp_path / "ck")},
            "learning_rate": {"values": [0.003, 1e-7]},
            "seed": {"values": [0, 1, 2]},
        },
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = storage
    assert (
        sweep_main(
            [
                str(path),
                "--trials=4",
                "--study=dash",
                f"--storage={url}",
                f"--results={tmp_path / 'r.jsonl'}",
            ]
        )
        == 0
    )
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "optuna-dashboard"),
            url,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                studies = get(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, server.stdout.read()
                time.sleep(0.2)
        (study,) = [s for s in studies if s["study_name"] == "dash"]
        detail = get(f"{base}/api/studies/{study['study_id']}")
        assert detail.get("objective_names") == ["final/test_accuracy"]  # not "Objective 0"
        trials = detail["trials"]
        assert len(trials) == 4
        lines = (tmp_path / "r.jsonl").read_text().splitlines()
        for t in trials:
            attrs = {a["key"]: a["value"] for a in t["user_attrs"]}
            assert ATTRS <= set(attrs), attrs
            assert attrs["model_type"] == "shallow" and int(attrs["model_params"]) > 0
            assert attrs["status"] == t["state"].lower().replace("complete", "finished")
            line = json.loads(lines[int(attrs["results"].rsplit(":", 1)[1]) - 1])
            assert line["sweep_trial"] == t["number"] and line["status"] == attrs["status"]
            # the sweep's metric every epoch: the intermediate values are the curve
            steps = [v["step"] for v in t["intermediate_values"]]
            assert steps == list(range(1, line["epochs_completed"] + 1))
            assert t["intermediate_values"][-1]["value"] == pytest.approx(
                line["final/test_accuracy"]
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
