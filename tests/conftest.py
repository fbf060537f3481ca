"""Shared test fixtures.

Tests marked ``root`` need root (namespaces, uid changes, other users' processes). They FAIL,
never skip, when run without it: a CI that silently skipped them would prove nothing.
"""

from __future__ import annotations

import os

import pytest


def pytest_runtest_setup(item):
    if item.get_closest_marker("root") and os.geteuid() != 0:
        pytest.fail("this test needs root: run the suite as root (scripts/test.sh does)", pytrace=False)
