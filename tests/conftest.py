import os
import shutil
import tempfile

# Keep the persistent XLA cache of test runs out of the user's home, and share it between
# pytest-xdist's workers and the subprocesses the tests start: many start the same
# programs (tracing is still done by each process; compiling is done once). The workers
# inherit the controller's environment, so all use the folder made here; it is this
# run's and is removed when the run ends (pytest_sessionfinish), unless the caller named
# one.
_OWN_CACHE = "JAXCOLLECTIVE_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAXCOLLECTIVE_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxcollective-xla-")
# Every program is worth keeping here (the default threshold leaves out those that
# compile in under 0.5 s, and the tests start many processes that compile them again).
os.environ.setdefault("JAXCOLLECTIVE_CACHE_MIN_S", "0")
os.environ.setdefault("WANDB_MODE", "disabled")
# The tests compile hundreds of small programs (and their subprocesses inherit this): at
# these sizes XLA's backend optimisations cost more compile time than they save in run
# time, and XLA:CPU's fusion emitters take 2 to 3 times as long to compile a training
# step as its older loop emitters (measured: the debug collective's step 4.8 s -> 1.8 s,
# running as fast). Every comparison in the tests is between programs compiled the same way.
# And one thread per program: the tests run 4 workers and their subprocesses on 2 cores,
# where Eigen's thread pool costs more than it gains on these small programs (measured:
# 6 of the longest tests in 3 workers, 130 s -> 118 s).
for flag, value in (
    ("xla_backend_optimization_level", "0"),
    ("xla_cpu_use_fusion_emitters", "false"),
    ("xla_cpu_multi_thread_eigen", "false"),
):
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{flag}={value}".strip()

# The tests in this process use the same cache as the subprocesses and the other workers.
from jaxcollective.train.loop import enable_compilation_cache  # noqa: E402

enable_compilation_cache()


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests (marked slow, the longest of them marked longest too) first, so
    that pytest-xdist (one test at a time to the next free worker, pyproject.toml) starts
    the longest work first and the run ends with short tests. Expensive fixtures are made
    once per run (shared.made_once)."""
    items.sort(
        key=lambda item: (
            item.get_closest_marker("longest") is None,
            item.get_closest_marker("slow") is None,
        )
    )


def pytest_sessionfinish(session):
    """The run's XLA cache goes with the run: the controller's session (or a run without
    xdist) ends after every test and every worker."""
    if _OWN_CACHE and not hasattr(session.config, "workerinput"):
        shutil.rmtree(os.environ["JAXCOLLECTIVE_CACHE_DIR"], ignore_errors=True)
