"""Hook phases in uWSGI's order, each once per start; the built-in actions; fatal failures that
leave nothing running (the autouse fixture checks processes, mounts and network afterwards)."""

from __future__ import annotations

import os
import re
import signal
import stat

import pytest

from harness import wait_for
from rig import environ

pytestmark = pytest.mark.root

PHASES_IN_ORDER = ["asap", "pre-jail", "post-jail", "in-jail", "as root", "as user", "master-start"]


def test_every_phase_once_in_order_with_a_jail(nsattach, rootfs, tmp_path):
    mnt = f"/tmp/{tmp_path.name}-mnt"
    (rootfs / mnt.lstrip("/")).mkdir()
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}:nsahooks
        ; config order is not run order: within a phase the hook- chain runs before mount-,
        ; umount- and exec-, whatever the lines' order
        exec-as-root = echo EXEC-AS-ROOT
        hook-as-user-atexit = print:MARK atexit
        hook-master-start = print:MARK master-start
        exec-as-user = echo MARK as-user uid=$(id -u)
        mount-as-root = tmpfs none {mnt}
        umount-as-root = {mnt}
        hook-as-root = print:MARK as-root
        hook-in-jail = print:MARK in-jail
        exec-in-jail = echo MARK in-jail-exec host=$(hostname) pid=$$
        exec-post-jail = echo MARK post-jail jail=$UWSGI_JAIL_PID nsattach=$NSATTACH_JAIL_PID
        hook-pre-jail = print:MARK pre-jail
        hook-asap = print:MARK asap
        attach-daemon = sleep 1000
    """)
    jail = n.jail_pid()
    n.wait_log("MARK master-start")
    assert n.stop() == 0
    log = n.log()
    marks = re.findall(r"^(?:.* - )?MARK (\S+)", log, re.M)
    assert marks == ["asap", "pre-jail", "post-jail", "in-jail", "in-jail-exec", "as-root", "as-user",
                     "master-start", "atexit"]
    for phase in PHASES_IN_ORDER:
        assert len(re.findall(rf"\({re.escape(phase)}\)\.\.\.", log)) >= (0 if phase == "as user" else 1), phase
    assert f"MARK post-jail jail={jail} nsattach={jail}" in log
    assert "MARK in-jail-exec host=nsahooks pid=2" in log          # inside: the jail's hostname, small pids
    assert "MARK as-user uid=0" in log
    assert 'running "echo MARK as-user uid=$(id -u)" (as uid: 0 gid: 0) ...' in log
    # as-root: hook chain, then mount, umount, exec
    order = [log.index(s) for s in ('running "print:MARK as-root" (as root)',
                                    f'mounting "tmpfs none {mnt}" (as root)',
                                    f'un-mounting "{mnt}" (as root)',
                                    'running "echo EXEC-AS-ROOT" (as root)')]
    assert order == sorted(order)
    assert log.count("(as root)...") == 4                 # each once (uWSGI: up to 4 times, Q-M1)
    assert log.index("MARK master-start") > log.index("spawning")


def test_every_phase_without_a_jail(nsattach, tmp_path):
    n = nsattach("""
        [uwsgi]
        control-socket = off
        hook-asap = print:MARK asap
        hook-pre-jail = print:MARK pre-jail
        hook-in-jail = print:MARK in-jail
        hook-as-root = print:MARK as-root
        hook-as-user = print:MARK as-user
        hook-master-start = print:MARK master-start
        exec-as-user-atexit = echo MARK atexit
        attach-daemon = sleep 1000
    """)
    n.wait_log("MARK master-start")
    assert n.stop() == 0
    marks = re.findall(r"^(?:.* - )?MARK (\S+)", n.log(), re.M)
    assert marks == ["asap", "pre-jail", "in-jail", "as-root", "as-user", "master-start", "atexit"]


FATAL = [
    ("asap", "exec-asap = false"),
    ("pre-jail", "exec-pre-jail = false"),
    ("post-jail", "exec-post-jail = false"),
    ("in-jail", "hook-in-jail = exec:false"),
    ("as root", "mount-as-root = tmpfs none /no/such/place"),
    ("as user", "exec-as-user = kill -9 $$"),          # killed by a signal is a failure (Q-H2)
    ("master-start", "hook-master-start = exec:false"),
]


@pytest.mark.parametrize("phase,line", FATAL, ids=[p for p, _ in FATAL])
def test_a_fatal_hook_in_each_phase_leaves_nothing_running(nsattach, rootfs, phase, line):
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        namespace = {rootfs}
        {line}
        attach-daemon = sleep 1000
    """)
    status = n.wait_exit()
    log = n.log()
    assert status == 1, log
    if phase == "master-start":
        assert "master-start hook failed: stopping the instance" in log
        assert "stopping daemon" in log
    else:
        assert "FATAL hook failed" in log
        assert "spawning" not in log                          # nothing spawned (Q-M4)
    if phase == "as user":
        assert "was killed by signal 9 (SIGKILL)" in log


def test_exit_hook_honours_any_code(nsattach):
    n = nsattach("""
        [uwsgi]
        control-socket = off
        hook-asap = exit:3
        attach-daemon = sleep 1000
    """)
    assert n.wait_exit() == 3                    # uWSGI exits 0 for one-digit codes (Q-H1)
    assert "spawning" not in n.log()


def test_builtin_actions(nsattach, tmp_path):
    d = tmp_path / "actions"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "ready").write_text("")
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        hook-asap = mkdir:{d}
        hook-asap = cd:{d}
        hook-asap = write:w.txt one
        hook-asap = writen:wn.txt two
        hook-asap = append:wn.txt three
        hook-asap = appendn:wn.txt
        hook-asap = create:empty
        hook-asap = create:gone
        hook-asap = unlink:gone
        hook-asap = chmod:w.txt 2640
        hook-asap = mkdir:{d}/sticky
        hook-asap = sticky:{d}/sticky
        hook-asap = chown2:w.txt 65534 65534
        hook-asap = chown:wn.txt nobody nogroup
        hook-asap = putenv:NSA_HOOK_VAR=from-a-hook
        hook-asap = !write:{d}/private s3cr3t-value
        hook-asap = writefifo:{fifo} nobody listens
        hook-asap = wait_for_file:{tmp_path}/ready
        hook-asap = wait_for_dir:{d}
        hook-asap = safeexec:exit 7
        hook-asap = log:done with asap
        attach-daemon2 = cmd=sleep 1000,name=env
    """)
    pid = n.daemon_pid("env")
    assert (d / "w.txt").read_text() == "one"
    assert (d / "wn.txt").read_text() == "two\nthree\n"
    assert (d / "empty").read_text() == "" and not (d / "gone").exists()
    st = os.stat(d / "w.txt")
    assert stat.S_IMODE(st.st_mode) == 0o2640                        # all four digits (uWSGI drops one)
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    st = os.stat(d / "wn.txt")
    assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert os.stat(d / "sticky").st_mode & stat.S_ISVTX
    assert environ(pid)["NSA_HOOK_VAR"] == "from-a-hook"
    log = n.log()
    assert "running --- PRIVATE HOOK --- (asap)..." in log and "s3cr3t" not in log
    assert (d / "private").read_text() == "s3cr3t-value"
    assert "done with asap" in log and "(safeexec: ignored)" in log
    assert n.stop() == 0


def test_hook_touch(nsattach, tmp_path):
    trigger = tmp_path / "trigger"
    out = tmp_path / "touched"
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        hook-touch = {trigger} appendn:{out} touched
        attach-daemon = sleep 1000
    """)
    n.daemon_pid("sleep")
    trigger.write_text("x")
    wait_for(lambda: out.exists() and out.read_text() == "touched\n", what="the touch hook")
    assert n.stop() == 0


def test_umount_recursive_and_flags(nsattach, tmp_path):
    top = tmp_path / "top"
    top.mkdir()
    n = nsattach(f"""
        [uwsgi]
        control-socket = off
        unshare = mount
        hook-as-root = mount:tmpfs none {top}
        hook-as-root = mkdir:{top}/sub
        hook-as-root = mount:tmpfs none {top}/sub nosuid,nodev
        hook-as-root = exec:grep -c " {top}" /proc/self/mountinfo
        hook-as-root = umount:{top} recursive
        hook-as-root = exec:! grep " {top}" /proc/self/mountinfo
        attach-daemon = sleep 1000
    """)
    n.daemon_pid("sleep")
    assert n.stop() == 0
    assert "\n2\n" in n.log()


def test_stop_signal_during_a_hook(nsattach, tmp_path):
    n = nsattach("""
        [uwsgi]
        control-socket = off
        exec-as-root = sleep 5
        attach-daemon = sleep 1000
    """)
    n.wait_log(r'running "sleep 5" \(as root\)')
    n.signal(signal.SIGTERM)
    assert n.wait_exit() == 0
    assert "spawning" not in n.log()
