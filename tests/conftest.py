"""Shared test fixtures.

Tests marked ``root`` need root (namespaces, uid changes, other users' processes). They FAIL,
never skip, when run without it: a CI that silently skipped them would prove nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from harness import Nsattach, ProcessRegistry


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root: run the suite as root (scripts/test.sh does)", pytrace=False)


@pytest.fixture
def registry():
    """Processes a test started; each killed at teardown if it is still the same process."""
    reg = ProcessRegistry()
    yield reg
    reg.kill_all()


@pytest.fixture
def nsattach(tmp_path, registry):
    """``nsattach(ini_text, start=True, **options)`` -> a started Nsattach, killed at teardown."""
    runs: list[Nsattach] = []

    def make(ini: str, start: bool = True, **kw) -> Nsattach:
        n = Nsattach(tmp_path, registry, ini, **kw)
        runs.append(n)
        return n.start() if start else n

    yield make
    for n in runs:
        n.close()


@pytest.fixture
def master(nsattach):
    """The same factory, under the name the daemon tests use."""
    return nsattach


@pytest.fixture
def public_tmp():
    """A directory other users can traverse (tmp_path's parents are root-only), for daemons
    that drop privileges before writing their pidfile."""
    path = tempfile.mkdtemp(prefix="nsa-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
