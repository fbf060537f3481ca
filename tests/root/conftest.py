"""Fixtures of the privileged tests: a busybox root filesystem per session, a factory of real
nsattach runs, and a check that every test leaves the host as it found it (no process, no
mount, no network namespace, no interface left behind)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import wait_for  # noqa: E402
from rig import build_rootfs, host_links, host_mounts, host_netns  # noqa: E402


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory) -> Path:
    """A busybox root filesystem with /dev nodes, shared by the tests of a session (tests write
    only below its /tmp, each under its own name)."""
    return build_rootfs(tmp_path_factory.mktemp("jail") / "rootfs")


@pytest.fixture(scope="session")
def bare_rootfs(tmp_path_factory) -> Path:
    """The same without any device node: what the private /dev option is for."""
    return build_rootfs(tmp_path_factory.mktemp("bare") / "rootfs", dev_nodes=False)


@pytest.fixture(scope="session")
def netns_dir_ready():
    """``ip netns add`` makes /run/netns a mount point the first time and leaves it: do that
    once before any test compares the host's mount table."""
    subprocess.run(["ip", "netns", "add", "nsa_prime"], check=False, capture_output=True)
    subprocess.run(["ip", "netns", "del", "nsa_prime"], check=False, capture_output=True)


@pytest.fixture(autouse=True)
def host_unchanged(request, registry, netns_dir_ready):
    """After the test: nothing it started runs, and the host's mounts, network namespaces and
    interfaces are what they were (waiting, with a deadline, for the kernel's asynchronous
    netns clean-up)."""
    if not request.node.get_closest_marker("root"):
        yield
        return
    mounts, netns, links = host_mounts(), host_netns(), host_links()
    yield
    try:
        wait_for(lambda: not registry.survivors(), timeout=10, what="every process of the test to end")
        try:
            wait_for(lambda: host_mounts() == mounts, timeout=10, what="the host's mount table to be as before")
        except AssertionError:
            now = host_mounts()
            raise AssertionError(f"host mounts changed: added {sorted(set(now) - set(mounts))}, "
                                 f"removed {sorted(set(mounts) - set(now))}") from None
        wait_for(lambda: host_netns() == netns, timeout=10, what="no network namespace left")
        wait_for(lambda: host_links() == links, timeout=10, what="no network interface left")
    finally:
        registry.kill_all()
        for name in set(host_netns()) - set(netns):
            if name.startswith("nsa_"):
                subprocess.run(["ip", "netns", "del", name], check=False)
        for name in set(host_links()) - set(links):
            if name.startswith("nsa"):
                subprocess.run(["ip", "link", "del", name], check=False)


@pytest.fixture
def netns_name(request):
    """A network namespace made for the test (``nsa_`` prefix), removed afterwards."""
    made: list[str] = []

    def make(suffix: str) -> str:
        name = f"nsa_{suffix}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        made.append(name)
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False)
