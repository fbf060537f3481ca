"""Three nsattach masters in a legion, each in its own network namespace on a private
10.x bridge: one lord runs the legion daemon; it moves when the lord dies; a partitioned
node steps down; bad packets change nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from harness import ProcessRegistry, wait_for

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

FREQ, TOLERANCE = 1, 3
VALORS = (10, 20, 30)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture
def network():
    """nsa_hub holds a bridge; nsa_n1..3 each have eth0 = 10.77.0.(i+1) on it."""
    made = []
    try:
        ip("netns", "add", "nsa_hub")
        made.append("nsa_hub")
        ip("-n", "nsa_hub", "link", "add", "br0", "type", "bridge")
        ip("-n", "nsa_hub", "link", "set", "br0", "up")
        for i in range(3):
            ns = f"nsa_n{i + 1}"
            ip("netns", "add", ns)
            made.append(ns)
            ip("-n", "nsa_hub", "link", "add", f"h{i + 1}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", "nsa_hub", "link", "set", f"h{i + 1}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"10.77.0.{i + 2}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield [f"nsa_n{i + 1}" for i in range(3)]
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


class Node:
    def __init__(self, tmp, index: int, registry: ProcessRegistry):
        self.index = index
        self.ns = f"nsa_n{index + 1}"
        self.tag = f"20000{index}"                # the legion daemon is `sleep 20000<index>`
        self.config = tmp / f"node{index}.ini"
        self.log_path = tmp / f"node{index}.log"
        nodes = "".join(f"legion-node = cluster 10.77.0.{j + 2}:7000\n" for j in range(3) if j != index)
        self.config.write_text(
            "[uwsgi]\n"
            f"control-socket = {tmp}/ctl{index}.sock\n"
            f"legion = cluster 10.77.0.{index + 2}:7000 {VALORS[index]} aes-128-cbc:s3cret\n"
            f"{nodes}"
            "legion-quorum = cluster 2\n"
            f"legion-freq = {FREQ}\nlegion-tolerance = {TOLERANCE}\n"
            f"legion-attach-daemon = cluster sleep {self.tag}\n")
        self.registry = registry
        self.proc = None

    def start(self):
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, "-m", "nsattach", "-c",
                                      str(self.config)], stdout=self.log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.registry.add(self.proc.pid)
        return self

    def daemons(self) -> list[int]:
        found = []
        for p in psutil.process_iter(["cmdline", "status"]):
            if p.info["cmdline"] == ["sleep", self.tag] and p.info["status"] != psutil.STATUS_ZOMBIE:
                self.registry.add(p.pid)
                found.append(p.pid)
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc:
            self.log_file.close()


@pytest.fixture
def cluster(network, tmp_path):
    registry = ProcessRegistry()
    nodes = [Node(tmp_path, i, registry) for i in range(3)]
    try:
        yield nodes
    finally:
        for n in nodes:
            n.stop()
        registry.kill_all()


def running(nodes) -> list[int]:
    """Indexes of the nodes whose legion daemon runs."""
    return [n.index for n in nodes if n.daemons()]


def settle(nodes, expected: int, timeout: float) -> None:
    """Exactly one legion daemon, on node ``expected``, for two consecutive looks."""
    def one_on_expected():
        return running(nodes) == [expected]

    try:
        wait_for(one_on_expected, timeout=timeout, interval=0.1, what=f"the legion daemon on node {expected} only")
    except AssertionError:
        raise AssertionError("\n\n".join(f"node {n.index}:\n{n.log()[-3000:]}" for n in nodes)) from None


def test_one_lord_failover_partition_and_bad_packets(cluster):
    for n in cluster:
        n.start()
    # the highest valor leads; nobody else runs the daemon
    settle(cluster, 2, timeout=15)
    assert "i am now the Lord of the Legion cluster" in cluster[2].log()
    env = open(f"/proc/{cluster[2].daemons()[0]}/environ", "rb").read()
    assert b"NSATTACH_LEGION=cluster" in env and b"NSATTACH_LEGION_LORD_SINCE=" in env

    # garbage, truncated and wrongly keyed packets: ignored, the lord stays the lord
    sender = (
        "import socket,os;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "for d in (b'x', b'\\x6d\\x10\\x00\\x00'+os.urandom(16), b'\\x6d\\x00\\x01\\x00'+os.urandom(256), os.urandom(900)):\n"
        "    s.sendto(d, ('10.77.0.4', 7000))\n")
    subprocess.run(["ip", "netns", "exec", "nsa_n1", sys.executable, "-c", sender], check=True, timeout=20)
    assert cluster[2].proc.poll() is None
    assert running(cluster) == [2]

    # the lord's master dies: its daemon dies with it and the next valor takes over in time
    killed = time.monotonic()
    os.kill(cluster[2].proc.pid, signal.SIGKILL)
    cluster[2].proc.wait(10)
    settle(cluster, 1, timeout=TOLERANCE + 2 * FREQ + 4)
    assert time.monotonic() - killed <= TOLERANCE + 2 * FREQ + 4

    # it comes back and, having the highest valor, leads again
    cluster[2].start()
    settle(cluster, 2, timeout=TOLERANCE + 4 * FREQ + 4)

    # the lord is cut off: alone it has no quorum (2) and steps down at once; the other two
    # elect the next valor: never two daemons at once for longer than a hand-over
    ip("-n", "nsa_n3", "link", "set", "eth0", "down")
    settle(cluster, 1, timeout=TOLERANCE + 2 * FREQ + 4)
    assert "without a quorum" in cluster[2].log() or "no quorum" in cluster[2].log()

    # healed: exactly one lord again, the highest valor
    ip("-n", "nsa_n3", "link", "set", "eth0", "up")
    settle(cluster, 2, timeout=TOLERANCE + 2 * FREQ + 6)
