"""Privileges as the kernel sees them: the master's uid/gid drop (names, numbers, 0), per-daemon
accounts inside a jail (resolved in the jail's own /etc), ns_pid daemons as PID 1 of their
own namespace, and ``unshare`` without a jail (PID namespace included, Q-N10)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from nsattach.system.spawn import SpawnRequest, spawn
from harness import alive, ns_pids, status_fields, wait_for
from rig import environ, ns_inode

pytestmark = pytest.mark.root


def ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    st = status_fields(pid)
    return ([int(x) for x in st["Uid"].split()], [int(x) for x in st["Gid"].split()],
            sorted(int(x) for x in st["Groups"].split()))


def test_master_drops_to_names_and_daemons_follow(nsattach, tmp_path):
    n = nsattach("""
        [uwsgi]
        control-socket = off
        uid = nobody
        gid = nogroup
        exec-as-root = echo AS-ROOT uid=$(id -u)
        exec-as-user = echo AS-USER uid=$(id -u) gid=$(id -g)
        attach-daemon = sleep 1000
    """)
    pid = n.daemon_pid("sleep")
    log = n.log()
    assert "AS-ROOT uid=0" in log and "AS-USER uid=65534 gid=65534" in log
    assert "setgid() to 65534" in log and "setuid() to 65534" in log
    assert ids(n.pid) == ([65534] * 4, [65534] * 4, [65534])        # the kernel's view of the master
    assert ids(pid) == ([65534] * 4, [65534] * 4, [65534])
    assert n.stop() == 0


def test_master_uid_and_gid_zero_are_numbers(nsattach):
    n = nsattach("""
        [uwsgi]
        control-socket = off
        uid = 0
        gid = 0
        attach-daemon = sleep 1000
    """)
    n.daemon_pid("sleep")
    log = n.log()
    assert "setgid() to 0" in log and "setuid() to 0" in log            # uWSGI: user "0" not found (Q-M2)
    assert ids(n.pid)[0] == [0] * 4 and ids(n.pid)[2] == [0]
    assert n.stop() == 0


def test_daemon_accounts_come_from_the_jail(nsattach, rootfs):
    # nsauser exists only in the jail's /etc/passwd, with a supplementary group there
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        attach-daemon2 = cmd=sleep 1000,name=user,uid=nsauser
        attach-daemon2 = cmd=sleep 1001,name=numeric,uid=4243,gid=4343
    """)
    jail = n.jail_pid()
    user = n.host_pid_of(n.daemon_pid("user"), jail)
    numeric = n.host_pid_of(n.daemon_pid("numeric"), jail)
    assert ids(user) == ([4242] * 4, [4242] * 4, [4242, 4343])
    env = environ(user)
    assert (env["HOME"], env["USER"], env["LOGNAME"]) == ("/home/nsauser", "nsauser", "nsauser")
    assert ids(numeric) == ([4243] * 4, [4343] * 4, [4343])
    assert n.stop() == 0


def test_jailed_master_drops_to_a_jail_user(nsattach, rootfs, tmp_path):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        uid = nsauser
        exec-as-user = echo AS-USER $(id -u):$(id -g):$(id -G)
        attach-daemon = sleep 1000
    """)
    jail = n.jail_pid()
    n.daemon_pid("sleep")
    assert ids(jail) == ([4242] * 4, [4242] * 4, [4242, 4343])
    assert "AS-USER 4242:4242:4242 4343" in n.log()
    assert status_fields(jail)["NSpid"].split()[-1] == "1"
    # the uid drop cleared PR_SET_PDEATHSIG: it was armed again, so the jail still dies with the monitor
    os.kill(n.pid, signal.SIGKILL)
    wait_for(lambda: not alive(jail), what="the jailed master to die with the monitor")


def test_identity_the_master_cannot_assume_is_a_check_error(tmp_path):
    ini = tmp_path / "ns.ini"
    ini.write_text("[uwsgi]\nuid = nobody\nattach-daemon2 = cmd=sleep 1,uid=www-data\n"
                   "attach-daemon2 = cmd=sleep 2,uid=nobody\n")
    r = subprocess.run([sys.executable, "-m", "nsattach", "check", "-c", str(ini)], capture_output=True, text=True)
    assert r.returncode == 100
    assert "can then no longer switch to uid=33(www-data)" in r.stderr
    assert "sleep 2" not in r.stderr          # the master's own account is fine: it runs as the master


def test_ns_pid_spawn_is_pid1_of_its_own_tree(tmp_path):
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        child = spawn(SpawnRequest(
            argv=("/bin/sh", "-c", "echo self=$$ parent=$PPID; ls /proc | grep -c '^[0-9]'; "
                                   "trap 'echo TERM; exit 7' TERM; sleep 1000 & wait"),
            env=dict(os.environ), ns_pid=True, pdeathsig=signal.SIGKILL, stdout_fd=fd, stderr_fd=1))
    finally:
        os.close(fd)
    try:
        assert child.ns_init_pid is not None and child.ns_init_pid != child.pid
        assert ns_pids(child.ns_init_pid)[1:] == [1]
        assert ns_inode(child.ns_init_pid, "pid") != ns_inode("self", "pid")
        assert ns_inode(child.pid, "pid") == ns_inode("self", "pid")       # the keeper stays outside
        wait_for(lambda: "TERM" not in out.read_text() and out.read_text().count("\n") >= 2, what="output")
        os.killpg(child.pid, signal.SIGTERM)          # what the master does: the keeper relays it
        _, status = os.waitpid(child.pid, 0)
        assert os.waitstatus_to_exitcode(status) == 7
        text = out.read_text().split()
        assert text[0] == "self=1" and text[1] == "parent=0"
        assert int(text[2]) <= 3                      # its own /proc: only its own tree
        assert "TERM" in text
    finally:
        for pid in (child.pid, child.ns_init_pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_ns_pid_default_action_init_stops_on_term():
    child = spawn(SpawnRequest(argv=("/bin/sleep", "1000"), env=dict(os.environ), ns_pid=True,
                               pdeathsig=signal.SIGKILL))
    wait_for(lambda: psutil.Process(child.ns_init_pid).name() == "sleep", what="exec")
    start = time.monotonic()
    os.killpg(child.pid, signal.SIGTERM)     # PID 1 without a handler: the kernel would ignore it
    _, status = os.waitpid(child.pid, 0)
    assert time.monotonic() - start < 2
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert not alive(child.ns_init_pid)


def test_ns_pid_daemon_under_the_master(nsattach, tmp_path):
    public = Path(tempfile.mkdtemp(prefix="nsa-nspid-"))
    os.chmod(public, 0o777)                      # the daemon writes as nobody
    out = public / "ps"
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        attach-daemon2 = cmd=ps -o pid\\,comm > {out}; trap 'exit 0' TERM; sleep 1000 & wait,name=nspid,ns_pid=1,uid=nobody,gid=nogroup
    """)
    keeper = n.daemon_pid("nspid")                  # the master logs and tracks host pids
    n.descendants()
    init = [p.pid for p in psutil.Process(keeper).children()][0]
    assert ns_pids(init)[1:] == [1]
    assert ids(init)[0] == [65534] * 4
    wait_for(lambda: out.exists() and out.read_text().count("\n") >= 3, what="ps output")
    pids = [int(line.split()[0]) for line in out.read_text().splitlines()[1:]]
    assert pids[0] == 1 and max(pids) < 10
    assert n.stop() == 0
    assert not alive(keeper) and not alive(init)
    shutil.rmtree(public, ignore_errors=True)


def test_unshare_pid_mount_uts_ipc_net_without_a_jail(nsattach, tmp_path):
    out = tmp_path / "ps"
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        pidfile = {tmp_path}/pid
        unshare = pid,mount,uts,ipc,net
        hook-post-jail = hostname:nsauns
        hook-master-start = exec:ps -o pid,comm > {out}
        attach-daemon = sleep 1000
    """)
    n.daemon_pid("sleep")
    master = [p.pid for p in psutil.Process(n.pid).children()][0]
    n.registry.add_tree(master)
    assert ns_pids(master)[1:] == [1]                     # the forked master is PID 1 (Q-N10)
    for kind in ("pid", "mnt", "uts", "ipc", "net"):
        assert ns_inode(master, kind) != ns_inode("self", kind), kind
    assert int((tmp_path / "pid").read_text()) == n.pid    # the pidfile names the process outside
    uts = subprocess.run(["nsenter", "-t", str(master), "-u", "hostname"], capture_output=True, text=True)
    assert uts.stdout.strip() == "nsauns"
    lo = subprocess.run(["nsenter", "-t", str(master), "-n", "ip", "-o", "link", "show", "lo"],
                        capture_output=True, text=True)
    assert "UP" in lo.stdout.split("<")[1].split(">")[0]
    wait_for(lambda: out.exists() and out.read_text().count("\n") >= 2, what="ps output")
    pids = [int(line.split()[0]) for line in out.read_text().splitlines()[1:]]
    assert pids[0] == 1 and max(pids) < 20                # a fresh /proc for the new PID namespace
    n.signal(signal.SIGTERM)                              # relayed to the master inside
    assert n.wait_exit() == 0
    assert "goodbye to nsattach." in n.log()
