from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from master import Master, ProcessRegistry


@pytest.fixture
def registry():
    reg = ProcessRegistry()
    yield reg
    reg.kill_all()


@pytest.fixture
def master(tmp_path, registry):
    """``master(ini_text, args=...)`` -> a started Master; stopped and cleaned up afterwards."""
    started: list[Master] = []

    def make(ini: str, start: bool = True, **kw) -> Master:
        m = Master(tmp_path, registry, ini, **kw)
        started.append(m)
        return m.start() if start else m

    yield make
    for m in started:
        m.close()


@pytest.fixture
def public_tmp():
    """A directory other users can traverse (tmp_path's parents are root-only), for daemons
    that drop privileges before writing their pidfile."""
    path = tempfile.mkdtemp(prefix="nsa-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
