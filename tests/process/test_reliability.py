"""Nothing lost, nothing doubled, under repetition and load."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from master import alive, read_pidfile, wait_for

pytestmark = pytest.mark.root


def processes_with_args(*args: str) -> list[int]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if p.info["cmdline"] == list(args) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p.pid)
    return found


def test_smart_daemon_is_never_started_twice_over_50_master_kills(master, tmp_path, registry):
    pidfile = tmp_path / "one.pid"
    ini = f"""
        [uwsgi]
        control-socket = off
        smart-attach-daemon2 = {pidfile} sleep 1000017
    """
    first = None
    for round_ in range(50):
        m = master(ini)
        if round_ == 0:
            first = m.spawned_pid("sleep")
        else:
            m.wait_log(rf"found valid/active pidfile .* \(pid: {first}\)")
        m.signal(signal.SIGKILL)
        m.wait_exit()
        m.close()
    assert processes_with_args("sleep", "1000017") == [first]
    assert read_pidfile(pidfile) == first


def test_a_burst_of_100_reloads_ends_in_one_consistent_state(master, tmp_path):
    m = master(f"""
        [uwsgi]
        control-socket = {tmp_path}/ctl.sock
        attach-daemon = sleep 1000021
        attach-daemon = sleep 1000022
        smart-attach-daemon2 = {tmp_path}/s.pid sleep 1000023
    """)
    m.spawned_pid("sleep")
    m.spawned_pid("sleep-2")
    smart = m.spawned_pid("sleep-3")
    for _ in range(100):
        m.signal(signal.SIGHUP)
    m.wait_log("reload done")

    def settled():
        r = m.ctl("status", "--json")
        if r.returncode != 0:
            return None
        rows = json.loads(r.stdout)["daemons"]
        if all(d["state"] == "running" for d in rows):
            return rows
        return None

    rows = wait_for(settled, timeout=20, what="every daemon running again")
    for args in (("sleep", "1000021"), ("sleep", "1000022"), ("sleep", "1000023")):
        assert len(processes_with_args(*args)) == 1, args
    pids = {d["name"]: d["pid"] for d in rows}
    assert pids["sleep-3"] == smart
    assert processes_with_args("sleep", "1000021") == [pids["sleep"]]
    assert m.stop() == 0
    assert not processes_with_args("sleep", "1000021") and not processes_with_args("sleep", "1000022")
    os.kill(smart, signal.SIGKILL)


def test_1000_daemons_start_answer_status_and_stop(master, tmp_path):
    n = 1000
    body = "".join(f"attach-daemon2 = cmd=sleep {2000000 + i},name=d{i}\n" for i in range(n))
    m = master(f"[uwsgi]\ncontrol-socket = {tmp_path}/ctl.sock\n" + body)
    m.wait_log(r"\[d999\] pid", timeout=60)

    def all_running():
        r = m.ctl("status", "--json", timeout=30)
        rows = json.loads(r.stdout)["daemons"] if r.returncode == 0 else []
        return len(rows) == n and all(d["state"] == "running" for d in rows) and rows

    rows = wait_for(all_running, timeout=60, interval=0.5, what="1000 daemons running")
    pids = [d["pid"] for d in rows]
    assert len(set(pids)) == n and all(alive(p) for p in pids[:: 97])
    began = time.monotonic()
    assert m.ctl("status").returncode == 0
    status_s = time.monotonic() - began
    assert status_s < 10, status_s           # a generous ceiling: it is ~0.2 s here
    assert m.stop(timeout=60) == 0
    assert not any(alive(p) for p in pids)
