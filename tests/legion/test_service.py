"""LegionService over real loopback UDP: several services (nodes) in one process, driven by a
tiny selectors loop (legion_loop.py), converge on one Lord, hand over on death and on crash,
and run their actions as real processes."""

from __future__ import annotations

import dataclasses
import os

import pytest

from legion_loop import MiniLoop, free_udp_ports
from nsattach.config.model import LegionActionPlan, LegionNodePlan, LegionPlan, LegionSettings
from nsattach.errors import LegionError, Origin
from nsattach.legion.node import LegionService, LegionSocket

O = Origin("test.ini", 1)
SETTINGS = LegionSettings(freq=1, tolerance=3)


def make_plan(port: int, valor: int, peers: list[int], *, actions=(), quorum=0, secret="secret",
              cipher="aes-128-cbc") -> LegionPlan:
    return LegionPlan(name="test", address=f"127.0.0.1:{port}", valor=valor, cipher=cipher, secret=secret,
                      iv=None, multicast=False, origin=O, quorum=quorum, actions=tuple(actions),
                      nodes=tuple(LegionNodePlan(f"127.0.0.1:{p}", O) for p in peers))


def act(event: str, arg: str, action: str = "cmd") -> LegionActionPlan:
    return LegionActionPlan(event, action, arg, O)


@pytest.fixture
def loop():
    lp = MiniLoop()
    services: list[LegionService] = []
    lp.services = services
    yield lp
    for svc in services:
        svc.reload_stop()           # closes sockets; a no-op for stopped services
    lp.close()


def start_node(loop, name, plan, settings=SETTINGS, **kw) -> LegionService:
    host = loop.host(name)
    svc = LegionService([plan], settings, host, hostname=name, pid=os.getpid(), **kw)
    host.service = svc
    loop.services.append(svc)
    svc.start()
    return svc


def lords(services) -> list[str]:
    return [s.hostname for s in services if s.running and s.is_lord("test")]


def settled_on(services, winner: LegionService) -> bool:
    """Exactly ``winner`` is Lord and every running node agrees with every other."""
    live = [s for s in services if s.running]
    if lords(live) != [winner.hostname]:
        return False
    st = [s.status()["test"] for s in live]
    return all(x["agreed"] and x["votes"] == len(live) and x["candidate"]["uuid"] == st[0]["candidate"]["uuid"]
               for x in st)


def test_three_nodes_converge_on_the_highest_valor(loop, tmp_path):
    ports = free_udp_ports(3)
    marker = tmp_path / "lord"
    svcs = [start_node(loop, f"node{v}", make_plan(p, v, ports, actions=[
        act("lord", f'echo "$NSATTACH_LEGION $NSATTACH_LEGION_EVENT" > {marker}.{v}'),
        act("lord", "lord hook done", action="log")]))
        for p, v in zip(ports, (10, 30, 20))]
    assert loop.run_until(lambda: settled_on(svcs, svcs[1]), 8), [s.status() for s in svcs]
    assert (tmp_path / "lord.30").read_text() == "test lord\n"
    assert not (tmp_path / "lord.10").exists() and not (tmp_path / "lord.20").exists()
    host = svcs[1].host
    texts = [t for _, t in host.logs]
    i = texts.index("[uwsgi-legion] attempting to become the Lord of the Legion test")
    assert texts[i + 1] == f"[uwsgi-legion] (phase: lord legion: test) calling cmd:echo \"$NSATTACH_LEGION $NSATTACH_LEGION_EVENT\" > {marker}.30"
    assert texts.index("lord hook done") < texts.index("[uwsgi-legion] i am now the Lord of the Legion test")
    assert host.lord == {"test": True}
    members = {m["name"] for m in svcs[0].status()["test"]["members"]}
    assert members == {"node20", "node30"}


def test_graceful_stop_hands_over_at_once_and_crash_after_tolerance(loop):
    ports = free_udp_ports(3)
    svcs = [start_node(loop, f"node{v}", make_plan(p, v, ports, actions=[act("node-left", "true")]))
            for p, v in zip(ports, (10, 20, 30))]
    assert loop.run_until(lambda: settled_on(svcs, svcs[2]), 8)
    svcs[2].stop()                                   # dead announcement
    assert not svcs[2].running
    assert loop.run_until(lambda: lords(svcs) == ["node20"], 2.5)       # well below tolerance (3 s)
    assert svcs[0].host.logged("announced its death to Legion test")
    assert any(event == "node-left" for _, event, _, _ in svcs[0].host.actions)      # Q-L6
    assert loop.run_until(lambda: settled_on(svcs, svcs[1]), 3)

    # crash node20: its socket disappears without a word
    crashed = svcs[1]
    crashed.running = False
    for lg in crashed.legions.values():
        crashed.host.remove_reader(lg.sock.fileno())
        lg.sock.close()
        lg.sock = None
    crashed.host.stop_timer()
    loop.run_for(2.0)
    assert lords(svcs) == []                          # node10 still trusts node20 (tolerance 3 s)
    assert loop.run_until(lambda: lords(svcs) == ["node10"], 3)
    assert svcs[0].host.logged("node: node20 valor: 20 uuid:")
    assert svcs[0].host.logged("left Legion test")


def test_restart_gets_a_new_uuid_and_peers_see_leave_and_join(loop):
    ports = free_udp_ports(2)
    a = start_node(loop, "a", make_plan(ports[0], 10, ports))
    b = start_node(loop, "b", make_plan(ports[1], 20, ports))
    assert loop.run_until(lambda: settled_on([a, b], b), 6)
    old_uuid = b.status()["test"]["uuid"]
    b.reload_stop()
    b.start()
    new_uuid = b.status()["test"]["uuid"]
    assert new_uuid != old_uuid
    assert loop.run_until(lambda: settled_on([a, b], b), 6)
    assert a.host.logged(f"uuid: {old_uuid} announced its death to Legion test")
    assert a.host.logged(f"uuid: {new_uuid} joined Legion test")


def test_failing_lord_hook_with_death_on_lord_error_hands_over(loop):
    ports = free_udp_ports(2)
    settings = dataclasses.replace(SETTINGS, death_on_lord_error=30)
    low = start_node(loop, "low", make_plan(ports[0], 10, ports), settings)
    high = start_node(loop, "high", make_plan(ports[1], 20, ports, actions=[act("lord", "exit 3"),
                                                                           act("lord", "touch /nonexistent/never")]),
                      settings)
    assert loop.run_until(lambda: lords([low, high]) == ["low"], 8)
    assert high.host.logged("[uwsgi-legion] ERROR, lord hook returned: 3")
    assert high.host.logged('[uwsgi-legion] suspending myself from Legion "test" for 30 seconds')
    assert [arg for _, ev, arg, _ in high.host.actions if ev == "lord"] == ["exit 3"]     # stopped at the error
    assert high.status()["test"]["suspended"]


def test_spawn_failure_counts_as_an_error(loop):
    port = free_udp_ports(1)[0]
    host = loop.host("solo")
    host.fail_spawn = True
    svc = LegionService([make_plan(port, 10, [], actions=[act("lord", "x")])], SETTINGS, host, hostname="solo", pid=1)
    host.service = svc
    loop.services.append(svc)
    svc.start()
    assert loop.run_until(lambda: svc.is_lord("test"), 4)       # errors are ignored without death-on-lord-error
    assert host.logged("[uwsgi-legion] ERROR, lord hook returned: -1")


def test_wrong_secret_is_dropped_and_logged_once(loop):
    ports = free_udp_ports(2)
    a = start_node(loop, "a", make_plan(ports[0], 10, ports))
    b = start_node(loop, "b", make_plan(ports[1], 20, ports, secret="other"))
    loop.run_for(1.1)                       # both announced at start and once more on schedule
    dropped = [t for _, t in a.host.logs if "dropped datagram" in t]
    assert len(dropped) == 1 and "EVP_DecryptFinal_ex" in dropped[0]
    assert a.status()["test"]["members"] == []


def test_bind_failure_is_a_legion_error_and_binds_nothing(loop):
    port = free_udp_ports(1)[0]
    good = make_plan(port, 10, [])
    bad = dataclasses.replace(good, name="bad", address="192.0.2.1:9")      # not a local address
    host = loop.host("x")
    svc = LegionService([good, bad], SETTINGS, host, hostname="x", pid=1)
    with pytest.raises(LegionError, match="unable to activate legion bad"):
        svc.start()
    assert not svc.running and not loop.selector.get_map()
    LegionSocket(good, SETTINGS).close()        # the first socket was released


@pytest.mark.parametrize("address, bound", [(":{port}", "0.0.0.0"), ("127.0.0.1:{port}", "127.0.0.1"),
                                            ("255.255.255.255:{port}", "255.255.255.255")])
def test_socket_bind_rules(address, bound):
    """Bind only (nothing is sent): ':port' is every address, the broadcast address is bound as is."""
    import socket as socket_module

    port = free_udp_ports(1)[0]
    plan = dataclasses.replace(make_plan(port, 10, [port]), address=address.format(port=port), multicast=True)
    sock = LegionSocket(plan, SETTINGS)
    try:
        assert sock.sock.getsockname() == (bound, port)
        assert sock.sock.getsockopt(socket_module.SOL_SOCKET, socket_module.SO_BROADCAST) == 1
        assert sock.sock.getblocking() is False
        # legion-mcast: the legion address itself is a destination, then every legion-node
        assert sock.destinations == [(bound, port), ("127.0.0.1", port)]
        assert sock.recv() == []
    finally:
        sock.close()


MULTICAST_SCRIPT = r'''
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
subprocess.run("ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo",
               shell=True, check=True)
from legion_loop import MiniLoop
from nsattach.config.model import LegionPlan, LegionSettings
from nsattach.errors import Origin
from nsattach.legion.node import LegionService

port, tmp, with_uwsgi = int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
group = f"239.255.77.1:{port}"
loop = MiniLoop()
services = []
for name, valor in (("mc-a", 10), ("mc-b", 20)):
    plan = LegionPlan(name="test", address=group, valor=valor, cipher="aes-128-cbc", secret="secret", iv=None,
                      multicast=True, origin=Origin("t", 1))
    host = loop.host(name)
    svc = LegionService([plan], LegionSettings(freq=1, tolerance=3), host, hostname=name, pid=os.getpid())
    host.service = svc
    svc.start()
    services.append(svc)
uwsgi = None
if with_uwsgi:
    ini = os.path.join(tmp, "mc.ini")
    with open(ini, "w") as f:
        f.write(f"[uwsgi]\nmaster = true\nlegion-mcast = test {group} 30 aes-128-cbc:secret\n"
                "legion-freq = 1\nlegion-tolerance = 3\n")
    log = open(os.path.join(tmp, "mc-uwsgi.log"), "wb")
    uwsgi = subprocess.Popen(["/usr/bin/uwsgi", "--ini", ini], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
want = 3 if with_uwsgi else 2
def settled():
    st = [s.status()["test"] for s in services]
    return all(x["agreed"] and x["votes"] == want for x in st) and len({x["candidate"]["uuid"] for x in st}) == 1
ok = loop.run_until(settled, 10)
result = {"ok": ok, "status": [s.status()["test"] for s in services], "lords": [s.is_lord("test") for s in services],
          "logs": [s.host.logs for s in services]}
for s in services:
    s.stop()
if uwsgi is not None:
    uwsgi.send_signal(2)
    try:
        uwsgi.wait(10)
    except subprocess.TimeoutExpired:
        uwsgi.kill()
        uwsgi.wait(5)
loop.close()
print(json.dumps(result))
'''


@pytest.mark.root
def test_multicast_legion_in_a_private_netns(tmp_path):
    """legion-mcast (group join, loopback of our own packets) inside a throw-away network
    namespace, so no IGMP or multicast ever leaves the test; with a uWSGI peer when installed."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    with_uwsgi = os.access("/usr/bin/uwsgi", os.X_OK)
    unshare = shutil.which("unshare")
    assert unshare, "util-linux unshare is needed"
    script = tmp_path / "mc.py"
    script.write_text(MULTICAST_SCRIPT)
    here = str(Path(__file__).parent)
    proc = subprocess.run([unshare, "--net", sys.executable, str(script), here, "25655", str(tmp_path),
                           "1" if with_uwsgi else "0"], capture_output=True, text=True, timeout=40)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"], result
    logs = result["logs"][0]
    assert ["info", "[uwsgi-mcast] joining multicast group: 239.255.77.1:25655"] in logs
    if with_uwsgi:
        assert result["lords"] == [False, False]
        assert all(st["candidate"]["valor"] == 30 for st in result["status"])
        assert "uWSGI" in (tmp_path / "mc-uwsgi.log").read_text(errors="replace")
    else:
        assert result["lords"] == [False, True]


def test_send_failures_are_logged_once_per_destination_and_recovery_too(loop):
    ports = free_udp_ports(2)
    svc = start_node(loop, "lonely", make_plan(ports[0], 10, ports))
    lg = svc.legions["test"]
    real_send = lg.sock.send
    broken = {"on": True}

    def send(data):
        failures = real_send(data)
        if broken["on"]:
            failures.append((("127.0.0.1", ports[1]), OSError(101, "Network is unreachable")))
        return failures

    lg.sock.send = send
    assert loop.run_until(lambda: False, 3.5) is False        # three or four announcements go out
    texts = [t for _, t in svc.host.logs]
    assert sum("sendto(): Network is unreachable" in t for t in texts) == 1
    broken["on"] = False
    assert loop.run_until(lambda: any("works again" in t for _, t in svc.host.logs), 3)
