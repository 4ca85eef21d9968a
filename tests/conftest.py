"""Test-suite settings, from the environment.

``NAS_MTL_TEST_THREADS`` (default 1): torch intra-op threads for the whole session (tiny networks run faster
on one thread of a shared 2-core machine). ``NAS_MTL_TEST_THREADS=2 python -m pytest`` checks that no result
depends on the thread count: reductions split over threads sum in another order, so float results differ in
the last bits, and tolerances must come from the dtype and the size of the computation, not from one machine.

``NAS_MTL_TEST_SEED`` (default 0): the data and training seed of the tests that assert a statistical outcome
(they take the ``seed`` fixture). Their docstrings name the seeds and thread counts the outcome was checked
for; re-check with e.g. ``NAS_MTL_TEST_SEED=3 NAS_MTL_TEST_THREADS=2 python -m pytest -k recovers``.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

THREADS_ENV = "NAS_MTL_TEST_THREADS"
SEED_ENV = "NAS_MTL_TEST_SEED"


def _int_from_env(name: str, default: int, minimum: int) -> int:
    """The integer in environment variable ``name`` (``default`` when unset); ValueError below ``minimum``."""
    value = os.environ.get(name, str(default)).strip()
    if not value.isdigit() or int(value) < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


@pytest.fixture(autouse=True, scope="session")
def torch_threads():
    """Every test runs with ``$NAS_MTL_TEST_THREADS`` torch threads; the previous count is restored at the end."""
    before = torch.get_num_threads()
    torch.set_num_threads(_int_from_env(THREADS_ENV, 1, 1))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def seed() -> int:
    """Data and training seed of the statistical tests: ``$NAS_MTL_TEST_SEED`` (default 0)."""
    return _int_from_env(SEED_ENV, 0, 0)


@pytest.fixture(scope="session")
def postgres_url():
    """The URL (with its password) of a PostgreSQL server started for this session on 127.0.0.1, stopped after;
    skipped, saying what is missing, where the server binaries or the driver are not installed."""
    from postgres import Server, server_binaries

    bin_dir = server_binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL server not installed (Debian: apt-get install postgresql; .ci/run does it)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip('psycopg (PostgreSQL driver) not installed: pip install -e ".[postgres]"')
    root = Path(tempfile.mkdtemp(prefix="nas-mtl-pg-"))  # not under pytest's root-only folder: the server's user
    server = Server(root, bin_dir)  # (postgres, when the tests run as root) must reach it
    try:
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def finished_faults_study(tmp_path_factory):
    """A finished tiny study (``test_faults.STUDY``): rows, curves, a search result, an affinity cache, training
    checkpoints. Shared by the fault tests, which each work on a copy (the ``study`` fixtures there)."""
    from test_faults import STUDY

    from nas_mtl.cli import main

    root = tmp_path_factory.mktemp("faults")
    (root / "study.toml").write_text(STUDY)
    assert main(["study", str(root / "study.toml"), "--out", str(root / "run"), "--no-progress"]) == 0
    return root


@pytest.fixture
def study(finished_faults_study, tmp_path):
    """A copy of :func:`finished_faults_study` to damage: (its study file, its run folder)."""
    shutil.copytree(finished_faults_study, tmp_path, dirs_exist_ok=True)
    return tmp_path / "study.toml", tmp_path / "run"


SMALL_DATA = ["--data-arg", "n_train=64", "--data-arg", "n_val=32", "--data-arg", "n_test=32", "--data-arg", "size=16"]
"""``nas-mtl`` options for tiny multidigits (the fault tests' training runs)."""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A finished `nas-mtl train` run on tiny multidigits (its folder) and the argv that made it; copy it before
    changing it."""
    from test_faults import _train_argv

    from nas_mtl.cli import main

    out = tmp_path_factory.mktemp("trained") / "run"
    argv = [*_train_argv(out), *SMALL_DATA]
    assert main(argv) == 0
    return out, argv
