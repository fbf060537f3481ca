"""No signal to a stranger: what a pidfile may make nsattach adopt (and later signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from harness import alive, wait_for
from nsattach.system import pidfile

pytestmark = pytest.mark.root


@pytest.fixture
def stranger():
    """An unrelated root process (not a descendant of the process under test's master)."""
    proc = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


NOT_OUR_MASTER = 4194304    # a master pid no test process descends from


def write(path, text: str, age_s: float = 0.0):
    path.write_text(text)
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return str(path)


def test_garbage_empty_huge_and_symlinked_pidfiles_are_refused(tmp_path):
    assert pidfile.read_pid(write(tmp_path / "g", "12ab\n")).reason.startswith("does not hold a pid")
    assert pidfile.read_pid(write(tmp_path / "e", "")).reason == "empty"
    assert pidfile.read_pid(write(tmp_path / "z", "0\n")).reason == "0 is not a valid pid"
    assert pidfile.read_pid(write(tmp_path / "h", "1" * 5000)).reason == "too large to hold a pid"
    assert pidfile.read_pid(write(tmp_path / "b", "99999999999\n")).pid is None
    (tmp_path / "l").symlink_to(write(tmp_path / "target", f"{os.getpid()}\n"))
    assert "symbolic link" in pidfile.read_pid(str(tmp_path / "l")).reason
    assert pidfile.read_pid(str(tmp_path)).reason == "not a regular file"
    assert pidfile.read_pid(str(tmp_path / "missing")).reason == "missing"
    assert pidfile.read_pid(write(tmp_path / "ok", " 42 \n")).pid == 42


def test_pid_1_and_ourselves_are_refused(tmp_path):
    path = write(tmp_path / "p", "1\n")
    assert "init" in pidfile.plausible(1, path)
    assert "nsattach itself" in pidfile.plausible(os.getpid(), path)


def test_a_recycled_pid_is_refused(tmp_path, stranger):
    # the pidfile was written before the process named in it started: the pid was reused
    path = write(tmp_path / "p", f"{stranger.pid}\n", age_s=60)
    assert "recycled" in pidfile.plausible(stranger.pid, path)


def test_a_dead_pid_and_a_zombie_are_refused(tmp_path):
    proc = subprocess.Popen(["true"])
    wait_for(lambda: open(f"/proc/{proc.pid}/stat").read().split(") ")[1][0] == "Z", what="zombie")
    path = write(tmp_path / "p", f"{proc.pid}\n")
    assert "not running" in pidfile.plausible(proc.pid, path)
    proc.wait()
    assert "not running" in pidfile.plausible(proc.pid, path)


def test_a_process_of_another_user_named_by_a_writable_pidfile_is_refused(public_tmp):
    victim = subprocess.Popen(["sleep", "1000"], user="nobody", start_new_session=True)
    try:
        os.chmod(public_tmp, 0o1777)              # like /tmp: anyone may write pidfiles here
        path = os.path.join(public_tmp, "p.pid")
        with open(path, "w") as f:
            f.write(f"{victim.pid}\n")
        reason = pidfile.plausible(victim.pid, path, master_pid=NOT_OUR_MASTER)   # root wrote it, nobody runs it
        assert reason is not None and "runs as uid" in reason
        assert pidfile.plausible(victim.pid, path, daemon_uid=65534, master_pid=NOT_OUR_MASTER) is None
        os.chown(path, 65534, 65534)                             # nobody wrote it about its own process
        assert pidfile.plausible(victim.pid, path, master_pid=NOT_OUR_MASTER) is None
        os.chown(path, 0, 0)
        assert pidfile.plausible(victim.pid, path) is None       # a descendant of ours: fine
    finally:
        victim.kill()
        victim.wait()


def test_an_unrelated_root_process_named_by_a_users_pidfile_is_refused(public_tmp, stranger):
    os.chmod(public_tmp, 0o1777)
    path = os.path.join(public_tmp, "p.pid")
    with open(path, "w") as f:
        f.write(f"{stranger.pid}\n")
    os.chown(path, 65534, 65534)          # a user planted it, naming a root process
    assert "runs as uid 0" in pidfile.plausible(stranger.pid, path, master_pid=NOT_OUR_MASTER)


def test_master_never_adopts_or_signals_a_stale_pidfile_target(master, tmp_path, stranger, registry):
    # uWSGI adopts such a process and sends it SIGTERM on stop
    stale = write(tmp_path / "d.pid", f"{stranger.pid}\n", age_s=3600)
    m = master(f"""
        [uwsgi]
        smart-attach-daemon2 = {stale} sleep 1000
    """)
    pid = m.spawned_pid("sleep")
    registry.add(pid)
    assert "recycled pid" in m.log() and "not adopting it" in m.log()
    assert m.stop() == 0
    assert alive(stranger.pid)
    assert stranger.poll() is None
    os.kill(pid, signal.SIGKILL)
