"""Promises of the docs held at the level of the code that keeps them, where a real
setting (a store without a lock: MySQL) is not at hand."""

import pytest

optuna = pytest.importorskip("optuna")

from jaxcollective.sweep import claims as sweep  # noqa: E402
from jaxcollective.sweep import store  # noqa: E402


def test_a_store_without_a_lock_fails_a_trial_claimed_beyond_total_as_surplus(
    tmp_path, monkeypatch
):
    """docs/sweeps.md, "Many machines": other servers (MySQL) have no lock; there a trial
    claimed beyond N in a race is failed at once as `surplus`, unrun (sweep.claim; its
    check counts the active trials numbered before the claimed one)."""
    # as on MySQL: study_lock takes no lock (its branch for such servers), has_lock says so
    monkeypatch.setattr(sweep, "study_lock", lambda url: store.study_lock(None))
    monkeypatch.setattr(sweep, "has_lock", lambda url: False)
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="u", storage=url, direction="maximize")
    total = 3
    study.tell(study.ask(), 1.0)  # trial 0 finished
    # within total: the claim is the trial
    mine = sweep.claim(study, total, url)
    assert mine is not None and mine.number == 1
    assert study.trials[1].state.name == "RUNNING"
    # a race: between this worker's count (2 of 3 active) and its ask, another machine
    # claims trial 2, so this worker's trial 3 is the study's fourth active trial
    ask, others = study.ask, []

    def racing_ask(*a, **k):
        study.ask = ask  # the other machine's claim, as it would be made there
        others.append(sweep.claim(study, total, url))
        return ask(*a, **k)

    study.ask = racing_ask
    assert sweep.claim(study, total, url) is None
    (other,) = others
    assert other is not None and other.number == 2  # within total: its trial
    trials = study.trials
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING", "RUNNING", "FAIL"]
    assert trials[3].user_attrs["status"] == "surplus" and not trials[3].params  # unrun
    assert "status" not in trials[2].user_attrs
    # the study full, a claim finds nothing and adds no trial
    assert sweep.claim(study, total, url) is None and len(study.trials) == 4
