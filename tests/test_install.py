"""`pip install .` gives a package whose commands run from any folder."""

import pytest
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # end-to-end, in subprocesses


def test_the_installed_package_runs_from_any_folder(tmp_path):
    site = tmp_path / "site"
    # offline: the build backend comes from this environment, nothing is downloaded
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    scripts = {
        e.split("=")[0].strip()
        for e in (site / "jaxcollective-0.3.0.dist-info" / "entry_points.txt")
        .read_text()
        .splitlines()
        if "=" in e
    }
    assert scripts == {
        "jaxcollective-run",
        "jaxcollective-sweep",
        "jaxcollective-report",
        "jaxcollective-bench",
        "jaxcollective-study",
    }
    assert (site / "jaxcollective" / "study" / "study_fashion.yaml").is_file()  # package data
    env = dict(os.environ, PYTHONPATH=str(site))
    for module in (
        "jaxcollective.report",
        "jaxcollective.sweep",
        "jaxcollective.main",
        "jaxcollective.study",
    ):
        q = subprocess.run(
            [sys.executable, "-m", module, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )
        assert q.returncode == 0 and q.stdout.startswith("usage:"), (module, q.stderr[-1000:])
    q = subprocess.run(
        [sys.executable, "-c", "import jaxcollective; print(jaxcollective.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert q.stdout.strip().startswith(str(site))
