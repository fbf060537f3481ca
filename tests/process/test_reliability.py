"""Nothing lost, nothing doubled, under repetition and load."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from harness import alive, read_pidfile, wait_for

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


@pytest.mark.timeout(300)
def test_200_crash_looping_daemons_keep_the_master_flat_and_responsive(master, tmp_path):
    n = 200
    body = "".join(f"attach-daemon2 = cmd=false,name=c{i}\n" for i in range(n))
    m = master(f"[uwsgi]\ncontrol-socket = {tmp_path}/ctl.sock\n" + body)
    m.wait_log(r"\[c199\] pid")
    master_proc = psutil.Process(m.pid)

    def sample():
        began = time.monotonic()
        r = m.ctl("status", "--json", timeout=30)
        answer_s = time.monotonic() - began
        assert r.returncode == 0
        assert len(json.loads(r.stdout)["daemons"]) == n
        return master_proc.num_fds(), master_proc.memory_info().rss, answer_s

    def pace_until(when: float) -> None:
        """A soak test samples on a schedule: wait for the clock, nothing else."""
        wait_for(lambda: time.monotonic() >= when, timeout=when - time.monotonic() + 5, interval=0.5,
                 what="the next sample time")

    # a first look once the loop is in full swing, then every 10 s for two more minutes
    start = time.monotonic()
    pace_until(start + 30)
    fds_early, rss_early, _ = sample()
    samples = []
    for k in range(1, 13):
        pace_until(start + 30 + 10 * k)
        samples.append(sample())
    fds_late, rss_late, _ = samples[-1]
    assert max(s[2] for s in samples) < 5.0, samples        # status keeps answering promptly
    assert fds_late <= fds_early + 10, (fds_early, fds_late)
    assert rss_late <= rss_early + 8 * 1024 * 1024, (rss_early, rss_late)
    spawns = m.log().count("[c7] pid")
    # throttled: quick deaths wait 0, 1, 2, ... s, so 150 s allow about 18 spawns, not thousands
    assert 5 <= spawns <= 20, spawns
    assert m.stop() == 0


def test_clean_stop_leaves_no_descendant_even_one_that_left_the_session(master):
    # `setsid` puts the background sleep in a session of its own: out of reach of the
    # daemon's process group and session, not of its cgroup
    m = master("""
        [uwsgi]
        attach-daemon = setsid sleep 1000031 & exec sleep 1000032
    """)
    m.spawned_pid("setsid")
    escaped = wait_for(lambda: processes_with_args("sleep", "1000031"), what="the escaped sleep")
    m.registry.add(escaped[0])          # cleaned up even if nsattach fails to
    assert os.getsid(escaped[0]) != os.getsid(processes_with_args("sleep", "1000032")[0])
    assert m.stop() == 0
    assert not processes_with_args("sleep", "1000031") and not processes_with_args("sleep", "1000032")


def test_leftovers_of_a_killed_master_are_stopped_by_the_next_one(master, registry):
    ini = """
        [uwsgi]
        attach-daemon = setsid sleep 1000041 & exec sleep 1000042
    """
    m = master(ini)
    m.spawned_pid("setsid")
    escaped = wait_for(lambda: processes_with_args("sleep", "1000041"), what="the escaped sleep")
    registry.add(escaped[0])
    m.signal(signal.SIGKILL)
    m.wait_exit()
    wait_for(lambda: not processes_with_args("sleep", "1000042"), what="pdeathsig kills the daemon itself")
    assert processes_with_args("sleep", "1000041") == escaped      # its escaped child survived
    m2 = master(ini)
    m2.wait_log("left in the cgroup of daemon setsid by an earlier nsattach")
    m2.spawned_pid("setsid")
    assert not alive(escaped[0])


def test_a_fork_storm_is_stopped_within_the_mercy(master):
    m = master("""
        [uwsgi]
        reload-mercy = 1
        attach-daemon = trap '' TERM; while :; do sleep 1000051 & sleep 0.01; done
    """)
    m.spawned_pid("trap")
    wait_for(lambda: len(processes_with_args("sleep", "1000051")) > 50, what="a crowd of forks")
    began = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit() == 0
    assert time.monotonic() - began < 1 + 1.5
    assert wait_for(lambda: not processes_with_args("sleep", "1000051"), timeout=5, what="no fork left")


def test_a_second_master_on_the_same_config_refuses_even_without_control_socket(master):
    ini = """
        [uwsgi]
        control-socket = off
        attach-daemon = sleep 1000061
    """
    m = master(ini)
    pid = m.spawned_pid("sleep")
    m2 = master(ini)
    assert m2.wait_exit() == 1
    assert "another nsattach runs this configuration" in m2.log()
    assert alive(pid)


def test_a_stuck_hook_cannot_hold_up_a_stop(master):
    # a master-start hook that never ends, then an atexit hook that never ends either
    m = master("""
        [uwsgi]
        reload-mercy = 1
        attach-daemon = sleep 1000071
        hook-master-start = exec:sleep 1000072
        exec-as-user-atexit = sleep 1000073
    """)
    m.spawned_pid("sleep")
    for pid in wait_for(lambda: processes_with_args("sleep", "1000072"), what="the stuck master-start hook"):
        m.registry.add(pid)
    began = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit() == 0
    assert time.monotonic() - began < 1 + 1 + 0.5          # mercy + 1 s, and a little for start-up noise
    assert not processes_with_args("sleep", "1000072") and not processes_with_args("sleep", "1000073")
    assert "killed: a stop was requested" in m.log() and "killed: the stop deadline passed" in m.log()


def test_a_second_sigint_kills_everything_at_once(master):
    m = master("""
        [uwsgi]
        reload-mercy = 30
        attach-daemon = trap '' TERM INT; exec sleep 1000081
        attach-daemon = trap '' TERM INT; exec sleep 1000082
    """)
    pids = [m.spawned_pid("trap"), m.spawned_pid("trap-2")]
    wait_for(lambda: all(psutil.Process(p).name() == "sleep" for p in pids), what="sleeps exec'd")
    m.signal(signal.SIGINT)
    m.wait_log("stopping daemon")
    began = time.monotonic()
    m.signal(signal.SIGINT)
    assert m.wait_exit(timeout=10) == 0
    assert time.monotonic() - began < 3, "the second SIGINT did not cut the 30 s mercy short"
    assert not any(alive(p) for p in pids)
    assert "received again: killing every daemon now" in m.log()
