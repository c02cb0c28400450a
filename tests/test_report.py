"""The report, from a results file written by real short runs on digits."""

import json
import math
import re
from types import SimpleNamespace

import pytest

from jaxcollective.config import Config
from jaxcollective.experiment import StopFlag, train_and_evaluate
from jaxcollective.report import main, make_report, load_results, wandb_to_run, welch_interval
from jaxcollective.writers import ResultsWriter


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "results.jsonl"
    w = ResultsWriter(str(path))

    def run(stop=None, **kw):
        cfg = Config.from_dict({"dataset": "digits", "epochs": 2, "batch_size": 64, **kw},
                               preset="debug")
        train_and_evaluate(cfg, w, stop=stop)

    run(model_type="collective", seed=0)
    run(model_type="collective", seed=1)
    run(model_type="shallow", seed=0)
    run(model_type="shallow", seed=1, num_seeds=2)  # one record, two replicas
    run(model_type="deep", seed=0)
    run(model_type="shallow", optimizer="sgd", learning_rate=1e30)  # diverges
    stop = StopFlag()
    stop.signal = 15  # as if SIGTERM arrived during the first epoch
    run(model_type="deep", seed=3, epochs=5, stop=stop)
    return path


def table_rows(text, header):
    section = text.split(header, 1)[1].split("\n## ", 1)[0]
    return [[c.strip() for c in line.strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]


def test_report_files_and_table_equal_the_inputs_aggregates(results, tmp_path):
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["status"] for r in recs].count("diverged") == 1
    assert [r["status"] for r in recs].count("stopped") == 1
    rep = make_report(load_results(results), tmp_path, str(results))
    for name in ("accuracy_vs_params.png", "efficiency_by_type.png", "scaling.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name
    text = (tmp_path / "summary.md").read_text()

    # expected aggregates, computed here from the raw records
    expect = {}
    for r in recs:
        if r["status"] != "finished":
            continue
        accs = ([x["test_accuracy"] for x in r["replicas"]] if len(r["replicas"]) > 1
                else [r["final/test_accuracy"]])
        expect.setdefault(r["model_type"], []).extend(accs)
    rows = table_rows(text, "## Test accuracy per model type and size")
    assert {row[0] for row in rows} == set(expect)
    for row in rows:
        accs = expect[row[0]]
        assert int(row[2]) == len(accs)
        assert float(row[3]) == pytest.approx(sum(accs) / len(accs), abs=0.006)
        if len(accs) > 1:
            m = sum(accs) / len(accs)
            sd = math.sqrt(sum((a - m) ** 2 for a in accs) / (len(accs) - 1))
            assert float(row[4]) == pytest.approx(sd, abs=0.006)
    assert dict((r[0], int(r[2])) for r in rows) == {"collective": 2, "shallow": 3, "deep": 1}

    # diverged and stopped runs are listed, not averaged in
    excluded = table_rows(text, "## Excluded runs")
    assert sorted((r[1], r[3]) for r in excluded) == [("deep", "stopped"), ("shallow", "diverged")]
    assert "1 diverged, 1 stopped." in text
    assert len(rep["excluded"]) == 2

    # the collective is compared with the baselines of its size
    comp = table_rows(text, "## The collective against each baseline at matched size")
    assert {r[1] for r in comp} == {"shallow", "deep"}
    shallow = next(r for r in comp if r[1] == "shallow")
    diff = sum(expect["collective"]) / 2 - sum(expect["shallow"]) / 3
    assert float(shallow[4]) == pytest.approx(diff, abs=0.006)
    assert re.match(r"\[[-+]\d+\.\d\d, [-+]\d+\.\d\d\]", shallow[5])
    assert next(r for r in comp if r[1] == "deep")[5] == "–"  # one deep run: no interval


def test_report_command(results, tmp_path, capsys):
    assert main([f"--results={results}", f"--out={tmp_path / 'out'}"]) == 0
    assert "6 runs in 3 groups, 2 excluded" in capsys.readouterr().out
    assert main([f"--results={tmp_path / 'missing.jsonl'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no results file" in err[0]


def test_welch_interval():
    a, b = [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]
    lo, hi = welch_interval(a, b)
    # difference 1, se = sqrt(1/3 + 1/3), df = 4, t = 2.776
    assert (lo + hi) / 2 == pytest.approx(1.0)
    assert (hi - lo) / 2 == pytest.approx(2.7764 * math.sqrt(2 / 3), rel=1e-3)
    assert welch_interval([1.0], b) is None


def test_wandb_runs_are_read_like_results():
    fake = SimpleNamespace(name="run-a", state="finished",
                           config={"model_type": "deep", "model_params": 1000, "seed": 0},
                           summary={"final/test_accuracy": 90.0, "final/model_params": 1000,
                                    "status": "stopped"})
    run = wandb_to_run(fake)
    assert (run.model_type, run.params, run.test_accuracy, run.status) == ("deep", 1000, 90.0, "stopped")
    crashed = SimpleNamespace(name="b", state="crashed", config={"model_type": "deep", "model_params": 5},
                              summary={})
    assert wandb_to_run(crashed).status == "crashed"
    assert wandb_to_run(SimpleNamespace(name="c", state="finished", config={}, summary={})) is None
