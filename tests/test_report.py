"""The report, from a results file written by real short runs on digits."""

import json
import math
import re
from types import SimpleNamespace

import pytest

from presets import debug_config
from shared import made_once
from jaxcollective.train.loop import StopFlag, train_and_evaluate
from jaxcollective.report.command import main, make_report
from jaxcollective.report.load import load_results, wandb_to_run
from jaxcollective.report.stats import welch_interval
from jaxcollective.train.writers import ResultsWriter


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    def make(folder):
        w = ResultsWriter(str(folder / "results.jsonl"))

        def run(stop=None, **kw):
            cfg = debug_config({"dataset": "digits", "epochs": 2, "batch_size": 64, **kw})
            train_and_evaluate(cfg, w, stop=stop)

        run(model_type="collective", seed=0)
        run(model_type="collective", seed=1)
        run(model_type="shallow", seed=0)
        run(model_type="shallow", seed=1, num_seeds=2)  # one record, two replicas
        run(model_type="deep", seed=0)
        run(model_type="shallow", learning_rate=1e30)  # diverges (the program of seed 0)
        stop = StopFlag()
        stop.signal = 15  # as if SIGTERM arrived during the first epoch
        run(model_type="deep", seed=3, epochs=5, stop=stop)

    return made_once(tmp_path_factory, "report_results", make) / "results.jsonl"


def table_rows(text, header):
    section = text.split(header, 1)[1].split("\n#", 1)[0]
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and "---" not in line
    ][1:]


@pytest.mark.slow
def test_report_files_and_table_equal_the_inputs_aggregates(results, tmp_path):
    recs = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["status"] for r in recs].count("diverged") == 1
    assert [r["status"] for r in recs].count("stopped") == 1
    rep = make_report(load_results(results), tmp_path, str(results))
    for name in ("accuracy_vs_params.png", "collective_minus_baselines.png", "scaling.png"):
        data = (tmp_path / "digits" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name
    text = (tmp_path / "summary.md").read_text()

    # expected aggregates, computed here from the raw records
    expect = {}
    for r in recs:
        if r["status"] != "finished":
            continue
        accs = (
            [x["test_accuracy"] for x in r["replicas"]]
            if len(r["replicas"]) > 1
            else [r["final/test_accuracy"]]
        )
        expect.setdefault(r["model_type"], []).extend(accs)
    rows = table_rows(text, "### Test accuracy per model type and size")
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
    excluded = table_rows(text, "### Excluded runs")
    assert sorted((r[1], r[3]) for r in excluded) == [("deep", "stopped"), ("shallow", "diverged")]
    assert "1 diverged, 1 stopped." in text
    assert len(rep["excluded"]) == 2

    # the collective is compared with the baselines of its size
    comp = table_rows(text, "### The collective against each baseline at matched size")
    assert {r[1] for r in comp} == {"shallow", "deep"}
    shallow = next(r for r in comp if r[1] == "shallow")
    diff = sum(expect["collective"]) / 2 - sum(expect["shallow"]) / 3
    assert float(shallow[4]) == pytest.approx(diff, abs=0.006)
    assert re.match(r"\[[-+]\d+\.\d\d, [-+]\d+\.\d\d\]", shallow[5])
    assert next(r for r in comp if r[1] == "deep")[5] == "–"  # one deep run: no interval


@pytest.mark.slow
def test_report_command(results, tmp_path, capsys):
    assert main([f"--results={results}", f"--out={tmp_path / 'out'}"]) == 0
    assert "digits: 6 runs in 3 groups, 2 excluded" in capsys.readouterr().out
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
    fake = SimpleNamespace(
        name="run-a",
        state="finished",
        config={"model_type": "deep", "model_params": 1000, "seed": 0},
        summary={"final/test_accuracy": 90.0, "final/model_params": 1000, "status": "stopped"},
    )
    run = wandb_to_run(fake)
    assert (run.model_type, run.params, run.test_accuracy, run.status) == (
        "deep",
        1000,
        90.0,
        "stopped",
    )
    crashed = SimpleNamespace(
        name="b", state="crashed", config={"model_type": "deep", "model_params": 5}, summary={}
    )
    assert wandb_to_run(crashed).status == "crashed"
    assert wandb_to_run(SimpleNamespace(name="c", state="finished", config={}, summary={})) is None


def test_report_reads_a_sweep_or_a_project_through_wandbs_api(tmp_path, monkeypatch, capsys):
    """--wandb=E/P/S reads the sweep's runs, --wandb=E/P the project's, with wandb's
    public API (a stand-in here: no network); an API error is one line and exit 2."""
    wandb = pytest.importorskip("wandb")

    def wrun(name, model_type, acc):
        return SimpleNamespace(
            name=name,
            state="finished",
            config={"model_type": model_type, "dataset": "mnist", "seed": 0},
            summary={"final/test_accuracy": acc, "final/model_params": 1000, "status": "finished"},
        )

    asked = []

    class Api:
        def __init__(self, timeout=None):
            pass

        def sweep(self, path):
            asked.append(("sweep", path))
            return SimpleNamespace(runs=[wrun("a", "collective", 91.0), wrun("b", "deep", 89.0)])

        def runs(self, path):
            asked.append(("runs", path))
            if path == "e/gone":
                raise ValueError("project e/gone not found")
            return [wrun("c", "shallow", 88.0)]

    monkeypatch.setattr(wandb, "Api", Api)
    assert main(["--wandb=e/p/s1", f"--out={tmp_path / 'a'}"]) == 0
    text = (tmp_path / "a" / "summary.md").read_text()
    assert "wandb:e/p/s1" in text
    assert sorted(r[0] for r in table_rows(text, "### Test accuracy")) == ["collective", "deep"]
    assert main(["--wandb=e/p", f"--out={tmp_path / 'b'}"]) == 0
    assert [
        r[0] for r in table_rows((tmp_path / "b" / "summary.md").read_text(), "### Test accuracy")
    ] == ["shallow"]
    assert asked == [("sweep", "e/p/s1"), ("runs", "e/p")]
    capsys.readouterr()
    assert main(["--wandb=e/gone", f"--out={tmp_path / 'c'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read 'e/gone' from W&B" in err[0], err


def rec(model_type, acc, val, params=1_000_000, dataset="mnist", **cfg):
    return {
        "model_type": model_type,
        "model_params": params,
        "status": "finished",
        "final/test_accuracy": acc,
        "final/best_val_accuracy": val,
        "final/model_params": params,
        "final/param_efficiency": acc / (params / 1e5),
        "final/accuracy_per_log10_params": acc / math.log10(params + 1),
        "dataset": dataset,
        "synthetic": dataset == "synthetic",
        "config": {"model_type": model_type, "dataset": dataset, **cfg},
    }


def write_lines(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def test_datasets_are_reported_apart_and_synthetic_left_out(tmp_path, capsys):
    recs = [
        rec("collective", 90.0, 91.0, dataset="mnist"),
        rec("shallow", 89.0, 90.0, dataset="mnist"),
        rec("collective", 80.0, 81.0, dataset="fashion_mnist"),
        rec("shallow", 10.0, 11.0, dataset="synthetic"),
    ]
    path = write_lines(tmp_path / "r.jsonl", recs)
    rep = make_report(load_results(path), tmp_path / "out", str(path))
    assert set(rep["datasets"]) == {"mnist", "fashion_mnist"}
    text = rep["summary"]
    mnist = text.split("## Dataset: mnist", 1)[1]
    assert [r[3] for r in table_rows(mnist, "### Test accuracy")] == ["90.00", "89.00"]
    fashion = text.split("## Dataset: fashion_mnist", 1)[1].split("## Dataset:", 1)[0]
    assert [r[0] for r in table_rows(fashion, "### Test accuracy")] == ["collective"]
    assert "1 runs on synthetic data left out" in text
    assert (tmp_path / "out" / "mnist" / "accuracy_vs_params.png").exists()
    assert not (tmp_path / "out" / "synthetic[fashion_mnist]").exists()
    rep = make_report(load_results(path), tmp_path / "o2", str(path), include_synthetic=True)
    assert "synthetic[fashion_mnist]" in rep["datasets"]
    assert main([f"--results={path}", f"--out={tmp_path / 'o3'}", "--dataset=cifar10"]) == 2
    assert "no runs on dataset 'cifar10'" in capsys.readouterr().err
    # the same two choices from the command line
    out = tmp_path / "o4"
    assert main([f"--results={path}", f"--out={out}", "--dataset=mnist"]) == 0
    text = (out / "summary.md").read_text()
    assert "## Dataset: mnist" in text and "## Dataset: fashion_mnist" not in text
    assert not (out / "fashion_mnist").exists()
    out = tmp_path / "o5"
    assert main([f"--results={path}", f"--out={out}", "--include_synthetic=true"]) == 0
    assert "## Dataset: synthetic[fashion_mnist]" in (out / "summary.md").read_text()


def test_best_configuration_is_chosen_on_validation_not_test(tmp_path):
    recs = [
        rec("shallow", 95.0, 80.0, learning_rate=0.1),  # best test, poor validation
        rec("shallow", 90.0, 92.0, learning_rate=0.002),
    ]
    path = write_lines(tmp_path / "r.jsonl", recs)
    text = make_report(load_results(path), tmp_path / "out", str(path))["summary"]
    (row,) = table_rows(text, "### Best configuration per model type")
    assert row[1:3] == ["92.00", "90.00"] and "learning_rate=0.002" in row[5]


def test_mixed_training_settings_are_called_out(tmp_path):
    recs = [
        rec("collective", 90.0, 91.0, epochs=20),
        rec("shallow", 89.0, 90.0, epochs=200, use_augmentation=True),
    ]
    path = write_lines(tmp_path / "r.jsonl", recs)
    text = make_report(load_results(path), tmp_path / "out", str(path))["summary"]
    assert "mix training settings** (epochs: 20, 200; use_augmentation: False, True)" in text
    same = write_lines(tmp_path / "s.jsonl", [rec("collective", 90.0, 91.0, epochs=20)])
    assert (
        "mix training" not in make_report(load_results(same), tmp_path / "o", str(same))["summary"]
    )
    # caps of runs that stopped early before them: the same runs under either cap
    capped = [
        rec("collective", 90.0, 91.0, epochs=150, early_stopping_patience=16),
        rec("shallow", 89.0, 90.0, epochs=300, early_stopping_patience=16),
        rec("deep", 88.0, 89.0, epochs=300, early_stopping_patience=16),
    ]
    capped[0]["stopped_early"] = capped[1]["stopped_early"] = True
    both = write_lines(tmp_path / "c.jsonl", capped)
    assert (
        "mix training" not in make_report(load_results(both), tmp_path / "c", str(both))["summary"]
    )
    capped[0]["stopped_early"] = False  # reached its cap of 150: trained under another
    both = write_lines(tmp_path / "c.jsonl", capped)
    assert (
        "mix training settings** (epochs: 150, 300)"
        in make_report(load_results(both), tmp_path / "c2", str(both))["summary"]
    )


@pytest.mark.parametrize("params", [[2_970_000, 2_970_500, 2_971_200], [2_970_000, 29_700_000]])
def test_size_axis_is_readable_for_close_and_wide_sizes(params):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxcollective.report.figures import _size_axis

    fig, ax = plt.subplots()
    ax.plot(params, [1] * len(params))
    _size_axis(ax, params)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert ax.get_xscale() == ("log" if max(params) / min(params) > 2 else "linear")
    assert 2 <= len(labels) <= 8 and len(set(labels)) == len(labels), labels
    plt.close(fig)


def test_damaged_input_is_skipped_or_one_line(tmp_path, capsys):
    good = [rec("collective", 90.0, 91.0), rec("shallow", 89.0, 90.0)]
    path = write_lines(tmp_path / "r.jsonl", good, tail='{}\n[]\n{"model_type": "deep", "model_par')
    runs = load_results(path)
    assert [r.model_type for r in runs] == ["collective", "shallow"]
    err = capsys.readouterr().err
    assert f"{path}:3: not a run record" in err and f"{path}:5: not a complete JSON line" in err
    assert main([f"--results={path}", f"--out={path}"]) == 2  # --out is a file
    assert "is a file" in capsys.readouterr().err
    assert main([f"--results={tmp_path}", f"--out={tmp_path / 'o'}"]) == 2  # a folder
    assert "is a folder" in capsys.readouterr().err


def test_the_scaling_figure_of_one_model_type_keeps_its_title_inside(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxcollective.report.load import Run

    from jaxcollective.report.figures import plot_scaling

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    runs = [Run(f"r{i}", "shallow", 1000 * (i + 1), 90.0 + i, "finished") for i in range(2)]
    plot_scaling(runs, ["shallow"], tmp_path, " (fashion_mnist)")
    (fig,) = figures
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    width, height = fig.canvas.get_width_height()
    assert 0 <= box.x0 and box.x1 <= width and box.y1 <= height


def test_the_best_configuration_lists_settings_not_output_keys():
    from jaxcollective.report.tables import _non_defaults

    config = {
        "dataset": "digits",
        "learning_rate": 0.01,
        "epochs": 6,
        "dtype": "float32",
        "use_mixed_precision": False,
        "checkpoint_dir": "/tmp/ck",
        "results": "r.jsonl",
        "progress": False,
        "expert_output": 32,
        "target_params": 5000,
    }
    assert _non_defaults(config, "collective") == "learning_rate=0.01, epochs=6, expert_output=32"
    assert _non_defaults(config, "shallow") == "learning_rate=0.01, epochs=6, target_params=5000"
    assert (
        _non_defaults({"dtype": "bfloat16", "use_mixed_precision": True}, "deep")
        == "dtype=bfloat16"
    )


def test_val_curves_share_a_panel_per_matched_size():
    from jaxcollective.report.select import size_class_of, size_classes

    # the study's baselines sit within 0.4% of their collective: one panel per collective
    sizes = [564874, 565834, 567044, 566348, 2969887, 2965786, 2974050]
    panels = size_classes(sizes)
    assert len(panels) == 2 and [size_class_of(p, panels) for p in sizes] == [0, 0, 0, 0, 1, 1, 1]
    assert size_classes([100_000, 200_000]) == [100_000, 200_000] and size_classes([]) == []


def test_runs_stopped_early_hold_their_last_value_in_the_mean_curve():
    from jaxcollective.report.select import Group
    from jaxcollective.report.load import Run
    from jaxcollective.report.tables import convergence_lines, mean_curve

    # seed 0 stopped after 4 epochs, seed 1 ran 8: the mean covers 8 epochs, seed 0 held
    a, b = [70, 80, 82, 81], [60, 70, 75, 78, 80, 84, 83, 83]
    assert mean_curve([a, b]) == [65, 75, 78.5, 79.5, 80.5, 82.5, 82, 82]
    runs = [Run(f"r{i}", "deep", 1000, 80.0, "finished", val_curve=c) for i, c in enumerate((a, b))]
    row = convergence_lines([Group("deep", 1000, runs)])[-1]
    # epochs 4-8; best epochs 3 and 6 (mean 4.5); the mean's best (82.5, epoch 6) against
    # its best before the last quarter (epochs 1-6: 82.5): no gain
    assert row == "| deep | 1K | 4-8 | 4.5 (3-6) | +0.00 |"


def _one_epoch(r):
    r = json.loads(json.dumps(r))
    r["epochs_completed"] = r["config"]["epochs"] = 1
    r["val_accuracy_curves"] = [c[:1] for c in r.get("val_accuracy_curves", [])]
    return r


def _older(r):
    """A record as files written before validation curves and stops were recorded."""
    return {
        k: v
        for k, v in r.items()
        if k not in ("val_accuracy_curves", "last_lr", "stopped_early", "best_epoch")
    }


# what runs write that the report must read: (records from the fixture's, finished runs)
EDGES = {
    "runs of one epoch": (lambda rs: [_one_epoch(r) for r in rs], 6),
    "a single run": (lambda rs: [r for r in rs if r["status"] == "finished"][:1], 1),
    "one model type": (lambda rs: [r for r in rs if r["model_type"] == "collective"], 2),
    "one size, one seed per type": (
        lambda rs: [
            r
            for r in rs
            if r["config"]["seed"] == 0 and r["status"] == "finished" and r.get("num_seeds", 1) == 1
        ],
        3,
    ),
    "only stopped or pruned runs": (
        lambda rs: [{**r, "status": s} for r, s in zip(rs, ["stopped", "pruned"] * 4)],
        0,
    ),
    "records without validation curves": (lambda rs: [_older(r) for r in rs], 6),
    "old and new records mixed": (
        lambda rs: [_older(r) if i % 2 else r for i, r in enumerate(rs)],
        6,
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("edge", list(EDGES))
def test_the_report_reads_anything_the_runs_write(results, tmp_path, capsys, edge):
    make, finished = EDGES[edge]
    recs = make([json.loads(line) for line in results.read_text().splitlines()])
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main([f"--results={path}", f"--out={tmp_path / 'out'}"]) == 0, capsys.readouterr().err
    text = (tmp_path / "out" / "summary.md").read_text()
    rows = table_rows(text, "### Test accuracy per model type and size")
    assert sum(int(row[2]) for row in rows) == finished
    assert len(table_rows(text, "### Excluded runs")) == sum(  # a run per replica
        len(r.get("replicas") or [0]) for r in recs if r["status"] != "finished"
    )
    if not finished:
        assert "no finished runs yet" in capsys.readouterr().err
    if edge == "runs of one epoch":  # best epoch 1, no last quarter to gain in
        conv = table_rows(text, "### Convergence")
        assert conv and all(
            row[2] == "1" and row[3] == "1.0 (1-1)" and row[4] == "–" for row in conv
        ), conv
    if "without" in edge:
        assert "### Convergence" not in text


def test_holm_adjusts_the_k_th_smallest_p_by_m_minus_k_plus_1_and_keeps_the_order():
    from jaxcollective.report.stats import holm, welch_p

    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == [1.0, 1.0]
    a, b = [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]
    # Welch's t = 1 / sqrt(2/3) on 4 degrees of freedom
    assert welch_p(a, b) == pytest.approx(0.2878, abs=1e-4)
    assert welch_p([1.0], b) is None
    assert welch_p([90.0, 90.0], [80.0, 80.0]) is None  # no spread: no test, not p = 0


def test_join_adds_the_model_types_results_lacks_from_another_file(tmp_path, capsys):
    """--join: a searched collective's records against another study's baselines; that
    study's own collectives stay out, and a file with nothing to add is one line."""
    mine = write_lines(
        tmp_path / "mine.jsonl", [rec("collective", 80.0, 81.0, seed=s) for s in (0, 1)]
    )
    theirs = [rec("collective", 99.0, 99.0, seed=s) for s in (0, 1)]
    theirs += [rec("shallow", 70.0 + s, 71.0, seed=s) for s in (0, 1)]
    other = write_lines(tmp_path / "other.jsonl", theirs)
    out = tmp_path / "out"
    assert main([f"--results={mine}", f"--join={other}", f"--out={out}"]) == 0
    text = (out / "summary.md").read_text()
    rows = {r[0]: r for r in table_rows(text, "### Test accuracy")}
    assert set(rows) == {"collective", "shallow"}
    assert rows["collective"][3] == "80.00" and rows["shallow"][3] == "70.50"
    assert f"{other}: shallow" in text.split("\n")[2]
    capsys.readouterr()
    assert main([f"--results={other}", f"--join={mine}", f"--out={out}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--join" in err and "that --results lacks" in err and "\n" not in err
    # by cell: a model type --results has at another size joins
    big = write_lines(tmp_path / "big.jsonl", [rec("collective", 85.0, 86.0, params=3_000_000)])
    assert main([f"--results={mine}", f"--join={big}", f"--out={tmp_path / 'o4'}"]) == 0
    rows = table_rows((tmp_path / "o4" / "summary.md").read_text(), "### Test accuracy")
    assert [(r[0], r[3]) for r in rows] == [("collective", "80.00"), ("collective", "85.00")]
