"""A real master supervising real processes: each daemon kind's start, death and respawn,
stop, reload, and the effect of every attach-daemon2 key seen from the daemon's side."""

from __future__ import annotations

import os
import pwd
import signal
import time

import psutil
import pytest

from harness import alive, read_pidfile, wait_for

pytestmark = pytest.mark.root


def status_ids(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def environ(pid: int) -> dict[str, str]:
    data = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
    return dict(item.decode().split("=", 1) for item in data if b"=" in item)


# --- dumb daemons ---------------------------------------------------------------------------

def test_dumb_daemon_tracks_the_program_and_respawns_at_once(master):
    m = master("""
        [uwsgi]
        attach-daemon = sleep 1000
    """)
    pid = m.spawned_pid("sleep")
    wait_for(lambda: psutil.Process(pid).name() == "sleep", what="the program, not an sh wrapper")
    assert psutil.Process(pid).ppid() == m.pid
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid
    os.kill(pid, signal.SIGKILL)
    new = m.spawned_pid("sleep", count=2)
    assert new != pid and alive(new)
    assert "respawning" in m.log()


def test_leftovers_of_a_dead_daemon_are_stopped_before_the_respawn(master, registry):
    # `&` keeps sh as the tracked process; its background sleep must not survive it
    m = master("""
        [uwsgi]
        attach-daemon = sleep 1001 & sleep 1002
    """)
    sh = m.spawned_pid("sleep")
    wait_for(lambda: len([p for p in psutil.Process(sh).children() if p.name() == "sleep"]) == 2, what="two sleeps")
    orphans = [p.pid for p in psutil.Process(sh).children()]
    for p in orphans:
        registry.add(p)
    os.kill(sh, signal.SIGKILL)
    m.spawned_pid("sleep", count=2)
    assert not any(alive(p) for p in orphans)
    assert "left behind" in m.log()


def test_control_daemon_death_stops_the_instance_non_zero(master):
    m = master("""
        [uwsgi]
        attach-control-daemon = sh -c 'sleep 0.3; exit 3'
        attach-daemon = sleep 1000
    """)
    other = m.spawned_pid("sleep")
    assert m.wait_exit() == 1
    assert "control daemon" in m.log() and "exited with code 3" in m.log()
    assert not alive(other)


def test_crash_loop_is_throttled_with_growing_delays(master):
    m = master("""
        [uwsgi]
        attach-daemon2 = cmd=false,name=crasher,max_throttle=2
    """)
    m.wait_log(r'throttling "false" for 1 seconds')
    m.wait_log(r'throttling "false" for 2 seconds', timeout=8)
    spawns = m.log().count("[crasher] pid")
    assert spawns >= 3


def test_spawn_failure_is_logged_with_step_and_errno(master):
    m = master("""
        [uwsgi]
        attach-daemon2 = cmd=true,chdir=/no/such/dir,name=nodir
    """)
    m.wait_log(r'unable to spawn "true": chdir\("/no/such/dir"\): No such file or directory')


# --- stop ----------------------------------------------------------------------------------------

def test_stop_is_parallel_and_exits_zero(master):
    m = master("\n[uwsgi]\n" + "".join(f"attach-daemon = sleep {1000 + i}\n" for i in range(20)))
    pids = [m.spawned_pid(f"sleep{'' if i == 0 else f'-{i + 1}'}") for i in range(20)]
    start = time.monotonic()
    m.signal(signal.SIGTERM)
    assert m.wait_exit() == 0
    assert time.monotonic() - start < 2.0
    assert not any(alive(p) for p in pids)
    assert "goodbye to nsattach." in m.log()


def test_stubborn_daemons_are_killed_after_the_mercy(master):
    m = master("""
        [uwsgi]
        reload-mercy = 1
        attach-daemon = trap '' TERM; exec sleep 1000
        attach-daemon = trap '' TERM; exec sleep 1001
    """)
    pids = [m.spawned_pid("trap"), m.spawned_pid("trap-2")]
    wait_for(lambda: all(psutil.Process(p).name() == "sleep" for p in pids), what="sleep exec'd")
    start = time.monotonic()
    m.signal(signal.SIGINT)
    assert m.wait_exit() == 0
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 2.0, elapsed
    assert m.log().count("did not die in time") == 2
    assert not any(alive(p) for p in pids)


# --- smart daemons -----------------------------------------------------------------------------

def test_smart_daemon_survives_stop_and_is_adopted_not_duplicated(master, tmp_path, registry):
    pidfile = tmp_path / "d.pid"
    ini = f"""
        [uwsgi]
        smart-attach-daemon = {pidfile} sleep 1000 & echo $! > {pidfile}
    """
    m = master(ini)
    m.wait_log(r"found changed pid")
    pid = read_pidfile(pidfile)
    registry.add(pid)
    assert alive(pid)
    assert m.stop() == 0
    assert alive(pid)                       # smart daemons survive the master
    m2 = master(ini)
    m2.wait_log(rf"found valid/active pidfile .* \(pid: {pid}\)")
    assert "spawning" not in m2.log()
    os.kill(pid, signal.SIGKILL)            # death seen through the pidfd: respawned at once
    new = wait_for(lambda: (p := read_pidfile(pidfile)) != pid and p and alive(p) and p, what="new pid")
    registry.add(new)
    assert m2.stop() == 0


def test_smart2_master_writes_the_pidfile_and_daemon_survives(master, tmp_path, registry):
    pidfile = tmp_path / "s2.pid"
    m = master(f"""
        [uwsgi]
        smart-attach-daemon2 = {pidfile} sleep 1000
    """)
    pid = m.spawned_pid("sleep")
    registry.add(pid)
    assert read_pidfile(pidfile) == pid
    wait_for(lambda: psutil.Process(pid).name() == "sleep", what="sleep exec'd")
    assert m.stop() == 0
    assert alive(pid)


def test_smart_daemon_that_never_writes_its_pidfile_is_reported(master, tmp_path):
    m = master(f"""
        [uwsgi]
        smart-attach-daemon = {tmp_path}/never.pid,1 sleep 1000
    """)
    m.wait_log(r"did not daemonize", timeout=5)
    m.children()


def test_pidfile_naming_pid_1_or_ourselves_is_never_adopted(master, tmp_path, registry):
    pidfile = tmp_path / "bad.pid"
    pidfile.write_text("1\n")
    m = master(f"""
        [uwsgi]
        smart-attach-daemon2 = {pidfile} sleep 1000
    """)
    pid = m.spawned_pid("sleep")
    registry.add(pid)
    assert "pid 1 is init" in m.log()
    assert read_pidfile(pidfile) == pid


# --- attach-daemon2 keys, observed from the daemon -------------------------------------------

def test_uid_gid_groups_and_account_environment(master):
    nobody = pwd.getpwnam("nobody")
    m = master("""
        [uwsgi]
        attach-daemon2 = cmd=sleep 1000,uid=nobody,name=n
    """)
    pid = m.spawned_pid("n")
    st = status_ids(pid)
    assert st["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert st["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert "0" not in st["Groups"].split()
    env = environ(pid)
    assert env["USER"] == env["LOGNAME"] == "nobody" and env["HOME"] == nobody.pw_dir


def test_chdir_env_stdin_and_no_notify_socket(master, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    stdin = tmp_path / "stdin.txt"
    stdin.write_text("input\n")
    m = master(stdin=stdin, ini=f"""
        [uwsgi]
        env = GREETING=hello
        attach-daemon2 = cmd=sleep 1000,chdir={work},name=a
        attach-daemon2 = cmd=sleep 1001,stdin=1,name=b
    """)
    os.environ["NOTIFY_SOCKET"] = "/run/never-inherited"
    try:
        a = m.spawned_pid("a")
        b = m.spawned_pid("b")
    finally:
        os.environ.pop("NOTIFY_SOCKET")
    assert os.readlink(f"/proc/{a}/cwd") == str(work)
    assert environ(a)["GREETING"] == "hello"
    assert "NOTIFY_SOCKET" not in environ(a)
    assert os.readlink(f"/proc/{a}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{b}/fd/0") == str(stdin)         # stdin kept
    assert status_ids(a)["SigIgn"] == "0000000000000000"         # no inherited SIGPIPE ignore


def test_stopsignal_reaches_the_daemon(master, tmp_path):
    marker = tmp_path / "got"
    m = master(f"""
        [uwsgi]
        attach-daemon2 = cmd=trap 'echo USR1 > {marker}; exit 0' USR1; while :; do sleep 0.05; done,stopsignal=USR1,name=t
    """)
    m.spawned_pid("t")
    wait_for(lambda: "sleep" in [p.name() for p in m.children()], what="the loop")
    assert m.stop() == 0
    assert marker.read_text().strip() == "USR1"


def test_touch_restarts_the_daemon(master, tmp_path):
    touch = tmp_path / "restart-me"
    touch.write_text("")
    m = master(f"""
        [uwsgi]
        attach-daemon2 = cmd=sleep 1000,touch={touch},name=t
    """)
    first = m.spawned_pid("t")
    time.sleep(0.01)
    os.utime(touch, (time.time() + 5, time.time() + 5))
    second = m.spawned_pid("t", count=2)
    assert second != first and not alive(first)
    assert "has been touched" in m.log()


# --- reload ------------------------------------------------------------------------------------

def test_reload_restarts_dumb_keeps_smart_adds_and_removes(master, tmp_path, registry):
    smart_pid = tmp_path / "smart.pid"
    m = master(f"""
        [uwsgi]
        attach-daemon2 = cmd=sleep 1000,name=keep
        attach-daemon2 = cmd=sleep 1001,name=gone
        smart-attach-daemon2 = {smart_pid} sleep 1002
    """)
    keep = m.spawned_pid("keep")
    gone = m.spawned_pid("gone")
    smart = m.spawned_pid("sleep")
    registry.add(smart)
    m.config.write_text(f"""
[uwsgi]
attach-daemon2 = cmd=sleep 1000,name=keep
attach-daemon2 = cmd=sleep 1003,name=new
smart-attach-daemon2 = {smart_pid} sleep 1002
""")
    m.signal(signal.SIGHUP)
    new_keep = m.spawned_pid("keep", count=2)
    new = m.spawned_pid("new")
    assert new_keep != keep and alive(new_keep) and alive(new)
    wait_for(lambda: not alive(gone), what="removed daemon stopped")
    assert alive(smart) and read_pidfile(smart_pid) == smart
    assert m.log().count("[sleep] pid") == 1                     # the smart daemon was not respawned


def test_reload_with_a_broken_config_keeps_running(master):
    m = master("""
        [uwsgi]
        attach-daemon = sleep 1000
    """)
    pid = m.spawned_pid("sleep")
    m.config.write_text("[uwsgi]\nattach-daemon = sleep 1000\nattach-deamon = typo\n")
    m.signal(signal.SIGHUP)
    m.wait_log(r"reload aborted")
    assert "ns.ini:3: attach-deamon: unknown option" in m.log()
    assert alive(pid)
    assert m.stop() == 0


def test_touch_reload_and_master_pidfile_with_vacuum(master, tmp_path):
    touch = tmp_path / "reload"
    touch.write_text("")
    pidfile = tmp_path / "master.pid"
    m = master(f"""
        [uwsgi]
        pidfile = {pidfile}
        vacuum = true
        touch-reload = {touch}
        attach-daemon = sleep 1000
    """)
    first = m.spawned_pid("sleep")
    assert read_pidfile(pidfile) == m.pid
    os.utime(touch, (time.time() + 5, time.time() + 5))
    m.spawned_pid("sleep", count=2)
    assert not alive(first)
    assert m.stop() == 0
    assert not pidfile.exists()


# --- real services ----------------------------------------------------------------------------

def test_memcached_dumb_and_smart(master, public_tmp, registry):
    from pathlib import Path

    piddir = Path(public_tmp) / "pids"
    piddir.mkdir()
    os.chown(piddir, pwd.getpwnam("nobody").pw_uid, -1)    # memcached writes it after dropping to nobody
    pidfile = piddir / "mc.pid"
    m = master(f"""
        [uwsgi]
        attach-daemon = memcached -u nobody -l 127.0.0.1 -p 21311 -U 0 -m 8
        smart-attach-daemon = {pidfile} memcached -d -u nobody -l 127.0.0.1 -p 21312 -U 0 -m 8 -P {pidfile}
    """)
    dumb = m.spawned_pid("memcached")
    wait_for(lambda: psutil.Process(dumb).name() == "memcached", what="memcached exec'd")
    m.wait_log(r"found changed pid")
    smart = read_pidfile(pidfile)
    registry.add(smart)
    import socket

    def answers(port):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"version\r\n")
                return s.recv(64).startswith(b"VERSION")
        except OSError:
            return False

    wait_for(lambda: answers(21311) and answers(21312), what="memcached answers")
    os.kill(dumb, signal.SIGKILL)
    m.spawned_pid("memcached", count=2)
    wait_for(lambda: answers(21311), what="respawned memcached answers")
    assert m.stop() == 0
    assert alive(smart) and answers(21312)


def test_reloadsignal_reaches_the_daemon_on_reload(master, tmp_path):
    marker = tmp_path / "got"
    m = master(f"""
        [uwsgi]
        attach-daemon2 = cmd=trap 'echo USR2 >> {marker}; exit 0' USR2; while :; do sleep 0.05; done,reloadsignal=USR2,name=t
    """)
    m.spawned_pid("t")
    wait_for(lambda: "sleep" in [p.name() for p in m.children()], what="the loop")
    m.signal(signal.SIGHUP)
    m.spawned_pid("t", count=2)
    assert marker.read_text().split() == ["USR2"]


def test_notifypid_smart_daemon_gets_its_stop_signal_once_and_survives(master, tmp_path, registry):
    marker = tmp_path / "got"
    pidfile = tmp_path / "n.pid"
    m = master(f"""
        [uwsgi]
        attach-daemon2 = cmd=trap 'echo USR1 >> {marker}' USR1; while :; do sleep 0.05; done,pidfile={pidfile},daemonize=1,notifypid=1,stopsignal=USR1,name=n
    """)
    pid = m.spawned_pid("n")
    registry.add(pid)
    wait_for(lambda: read_pidfile(pidfile) == pid, what="pidfile")
    assert m.stop() == 0
    wait_for(lambda: marker.exists() and marker.read_text().split() == ["USR1"], what="USR1 delivered")
    assert alive(pid)


def test_reload_restarts_a_changed_daemon_with_its_new_command(master):
    m = master("""
        [uwsgi]
        attach-daemon2 = cmd=sleep 1000,name=w
    """)
    old = m.spawned_pid("w")
    m.config.write_text("[uwsgi]\nattach-daemon2 = cmd=sleep 2000,name=w\n")
    m.signal(signal.SIGHUP)
    new = m.spawned_pid("w", count=2)
    # the shell execs the program a moment after spawn() returns
    wait_for(lambda: psutil.Process(new).cmdline() == ["sleep", "2000"], what="sleep 2000 exec'd")
    assert not alive(old)


def test_logto_receives_the_master_log_and_daemon_output(master, tmp_path):
    logfile = tmp_path / "all.log"
    m = master(f"""
        [uwsgi]
        logto = {logfile}
        attach-daemon = echo hello-from-daemon; exec sleep 1000
    """)
    wait_for(lambda: logfile.exists() and "hello-from-daemon" in logfile.read_text(), what="daemon output in logto")
    assert "spawning" in logfile.read_text()
    m.children()
    assert m.stop() == 0
    assert "goodbye to nsattach." in logfile.read_text()


def test_dumb_daemons_die_with_a_killed_master_smart_ones_do_not(master, tmp_path, registry):
    pidfile = tmp_path / "s.pid"
    m = master(f"""
        [uwsgi]
        attach-daemon = sleep 1000
        smart-attach-daemon2 = {pidfile} sleep 1001
    """)
    dumb = m.spawned_pid("sleep")
    smart = m.spawned_pid("sleep-2")
    registry.add(smart)
    m.signal(signal.SIGKILL)
    m.wait_exit()
    wait_for(lambda: not alive(dumb), what="pdeathsig kills the dumb daemon")
    assert alive(smart)
