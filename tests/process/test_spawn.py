"""spawn() and the Linux shims against real processes.

Every wait has a deadline and polls a condition; nothing sleeps "to let it happen". Every
process a test starts is killed (through a pidfd, so a recycled pid is never hit) and reaped
in the ``procs`` fixture.
"""

from __future__ import annotations

import gc
import os
import pwd
import select
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator

import psutil
import pytest

from nsattach.config.model import Identity
from nsattach.core.shellcmd import shell_argv
from nsattach.errors import SpawnError
from nsattach.system import linux
from nsattach.system.spawn import (
    CHILD_FAILURE_STATUS,
    SpawnRequest,
    Spawned,
    daemon_env,
    identity_env,
    spawn,
)

DEADLINE_S = 5.0
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C"}
SLEEP = shutil.which("sleep") or "/bin/sleep"


# ------------------------------------------------------------------------------------ helpers


def wait_until(pred: Callable[[], object], timeout: float = DEADLINE_S, what: str = "") -> object:
    end = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}")
        time.sleep(0.005)


def wait_pidfd(pidfd: int, timeout: float = DEADLINE_S) -> bool:
    """True once the process behind pidfd has exited (zombie or reaped)."""
    ready, _, _ = select.select([pidfd], [], [], timeout)
    return bool(ready)


def waitpid_deadline(pid: int, timeout: float = DEADLINE_S) -> int:
    end = time.monotonic() + timeout
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return status
        if time.monotonic() > end:
            raise AssertionError(f"child {pid} did not exit within {timeout}s")
        time.sleep(0.005)


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def status_fields(pid: int) -> dict[str, str]:
    out = {}
    for line in read_text(f"/proc/{pid}/status").splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def comm(pid: int) -> str:
    try:
        return read_text(f"/proc/{pid}/comm").strip()
    except FileNotFoundError:
        return ""


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        raw = f.read()
    return dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)


def open_fds(pid: int | str) -> set[int]:
    """Open fds of ``pid``; for ourselves, without the one listdir uses to list them."""
    base = f"/proc/{pid}/fd"
    fds = set()
    for name in os.listdir(base):
        try:
            target = os.readlink(f"{base}/{name}")
        except FileNotFoundError:       # the listing's own fd, closed by now
            continue
        if target != f"/proc/{os.getpid()}/fd":
            fds.add(int(name))
    return fds


class Procs:
    """Tracks processes by pidfd; kills and reaps (or waits out) all of them at teardown."""

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}

    def add(self, pid: int) -> int:
        if pid not in self.fds:
            self.fds[pid] = linux.pidfd_open(pid)
        return pid

    def add_spawned(self, s: Spawned) -> Spawned:
        self.add(s.program_pid)
        return s

    def cleanup(self) -> None:
        for pid, fd in self.fds.items():
            try:
                linux.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                waitpid_deadline(pid)
            except ChildProcessError:
                assert wait_pidfd(fd), f"pid {pid} survived SIGKILL"
            os.close(fd)
        self.fds.clear()


@pytest.fixture(scope="module", autouse=True)
def subreaper() -> Iterator[None]:
    """Orphans (daemonized programs, children of killed helpers) come back to us to be reaped,
    as they do to the nsattach master. Without it they go to PID 1, which on some test VMs never
    reaps, and every orphan would stay a zombie."""
    was = linux.is_child_subreaper()
    linux.set_child_subreaper(True)
    try:
        yield
    finally:
        linux.set_child_subreaper(was)


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture
def nobody() -> Identity:
    pw = pwd.getpwnam("nobody")
    return Identity(uid=pw.pw_uid, gid=pw.pw_gid, user=pw.pw_name, home=pw.pw_dir)


def run(procs: Procs, **kw) -> Spawned:
    kw.setdefault("env", ENV)
    return procs.add_spawned(spawn(SpawnRequest(**kw)))


# ------------------------------------------------------------------------------- exec and pid


def test_shell_command_pid_is_the_program(procs: Procs) -> None:
    s = run(procs, argv=shell_argv("/bin/sh", "sleep 30"))
    assert s.pid == s.program_pid
    wait_until(lambda: comm(s.pid) == "sleep", what="sh to exec sleep")
    assert read_text(f"/proc/{s.pid}/cmdline").split("\0")[:2] == ["sleep", "30"]


def test_redirected_command_is_execed_not_forked(procs: Procs) -> None:
    s = run(procs, argv=shell_argv("/bin/sh", "sleep 30 > /dev/null"))
    wait_until(lambda: comm(s.pid) == "sleep", what="sh to exec sleep")
    assert os.readlink(f"/proc/{s.pid}/fd/1") == "/dev/null"


def test_leading_assignment_reaches_the_execed_program(procs: Procs) -> None:
    # dash honours "A=1 exec cmd": the assignment is exported to the program
    argv = shell_argv("/bin/sh", "NSATTACH_T=42 sleep 30")
    assert argv[2] == "NSATTACH_T=42 exec sleep 30"
    s = run(procs, argv=argv)
    wait_until(lambda: comm(s.pid) == "sleep", what="sh to exec sleep")
    assert environ_of(s.pid)["NSATTACH_T"] == "42"


def test_without_exec_dash_forks_and_the_pid_stays_sh(procs: Procs) -> None:
    # why shell_argv exists: plain "sh -c 'sleep 30 > /dev/null'" keeps a sh between us and sleep
    s = run(procs, argv=("/bin/sh", "-c", "sleep 30 > /dev/null"))
    children = f"/proc/{s.pid}/task/{s.pid}/children"
    kid = int(wait_until(lambda: read_text(children).split(), what="sh's child")[0])
    procs.add(kid)
    assert comm(s.pid) == "sh"
    wait_until(lambda: comm(kid) == "sleep", what="the forked sleep")


def test_argv0_is_searched_in_the_given_path(procs: Procs) -> None:
    s = run(procs, argv=("sleep", "30"))
    assert comm(s.pid) == "sleep"


# -------------------------------------------------------------------------- session, signals


def test_new_session_makes_the_child_a_group_and_session_leader(procs: Procs) -> None:
    s = run(procs, argv=(SLEEP, "30"))
    assert os.getpgid(s.pid) == s.pid
    assert os.getsid(s.pid) == s.pid


def test_without_new_session_the_child_stays_in_our_group(procs: Procs) -> None:
    s = run(procs, argv=(SLEEP, "30"), new_session=False)
    assert os.getpgid(s.pid) == os.getpgid(0)
    assert os.getsid(s.pid) == os.getsid(0)


def test_signal_dispositions_and_mask_are_reset(procs: Procs) -> None:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGPIPE, signal.SIGUSR1, signal.SIGHUP)}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, lambda *_: None)
        s = run(procs, argv=(SLEEP, "30"))
        # the parent's own mask is back as it was (SIGUSR2 still blocked)
        assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == old_mask | {signal.SIGUSR2}
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    st = status_fields(s.pid)
    assert int(st["SigIgn"], 16) == 0
    assert int(st["SigBlk"], 16) == 0
    assert int(st["SigCgt"], 16) == 0


def test_parent_state_is_restored_after_spawn(procs: Procs) -> None:
    before_fds = open_fds("self")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    assert gc.isenabled()
    run(procs, argv=(SLEEP, "30"))
    with pytest.raises(SpawnError):
        spawn(SpawnRequest(argv=(SLEEP, "30"), env=ENV, cwd="/nonexistent-nsattach"))
    assert open_fds("self") - set(procs.fds.values()) == before_fds     # minus the test pidfds
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask
    assert gc.isenabled()


# ----------------------------------------------------------------------------------- fds


def test_stdin_is_dev_null_by_default(procs: Procs) -> None:
    s = run(procs, argv=(SLEEP, "30"))
    assert os.readlink(f"/proc/{s.pid}/fd/0") == "/dev/null"


def test_stdin_is_inherited_when_asked(procs: Procs) -> None:
    r, w = os.pipe()
    saved0 = os.dup(0)
    try:
        os.dup2(r, 0)
        s = run(procs, argv=(SLEEP, "30"), stdin_devnull=False)
    finally:
        os.dup2(saved0, 0)
        os.close(saved0)
    try:
        assert os.readlink(f"/proc/{s.pid}/fd/0") == os.readlink(f"/proc/self/fd/{r}")
    finally:
        os.close(r)
        os.close(w)


def test_stdout_and_stderr_fds(procs: Procs, tmp_path) -> None:
    out = tmp_path / "out.log"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        s = run(procs, argv=("/bin/sh", "-c", "echo to-out; echo to-err >&2"),
                stdout_fd=fd, stderr_fd=1)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(waitpid_deadline(s.pid)) == 0
    assert out.read_text().split() == ["to-out", "to-err"]


def test_fds_above_2_are_closed(procs: Procs) -> None:
    leak = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leak, True)
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        s = run(procs, argv=(SLEEP, "30"))
        assert open_fds(s.pid) == {0, 1, 2}
    finally:
        for fd in (leak, r, w):
            os.close(fd)


# -------------------------------------------------------------------------- credentials (root)


@pytest.mark.root
def test_uid_gid_and_groups_are_dropped(procs: Procs, nobody: Identity) -> None:
    saved = os.getgroups()
    os.setgroups([0, 4, 27])        # root with supplementary groups that must not leak (Q-D5)
    try:
        s = run(procs, argv=(SLEEP, "30"), identity=nobody)
    finally:
        os.setgroups(saved)
    st = status_fields(s.pid)
    assert st["Uid"].split() == [str(nobody.uid)] * 4
    assert st["Gid"].split() == [str(nobody.gid)] * 4
    want = sorted(os.getgrouplist("nobody", nobody.gid))
    assert sorted(int(g) for g in st["Groups"].split()) == want
    assert 0 not in want


@pytest.mark.root
def test_explicit_groups_win(procs: Procs, nobody: Identity) -> None:
    ident = Identity(uid=nobody.uid, gid=nobody.gid, user="nobody", groups=(nobody.gid, 4))
    s = run(procs, argv=(SLEEP, "30"), identity=ident)
    assert sorted(int(g) for g in status_fields(s.pid)["Groups"].split()) == sorted({nobody.gid, 4})


@pytest.mark.root
def test_gid_only_without_user_sets_just_that_group(procs: Procs) -> None:
    saved = os.getgroups()
    os.setgroups([0, 4, 27])
    try:
        s = run(procs, argv=(SLEEP, "30"), identity=Identity(gid=65534))
    finally:
        os.setgroups(saved)
    st = status_fields(s.pid)
    assert st["Gid"].split() == ["65534"] * 4
    assert st["Groups"].split() == ["65534"]
    assert st["Uid"].split() == ["0"] * 4


def _spawn_in_helper(req: SpawnRequest) -> tuple[int, int]:
    """Fork a helper that spawns ``req`` and then waits; return (helper pid, program pid)."""
    r, w = os.pipe()
    helper = os.fork()
    if helper == 0:
        try:
            os.close(r)
            s = spawn(req)
            os.write(w, b"%d\n" % s.program_pid)
            while True:
                signal.pause()
        finally:
            os._exit(1)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], DEADLINE_S)
        assert ready, "helper did not report"
        data = os.read(r, 64)
    finally:
        os.close(r)
    assert data.strip().isdigit(), f"helper failed: {data!r}"
    return helper, int(data)


@pytest.mark.root
@pytest.mark.parametrize("pdeathsig", [signal.SIGKILL, None])
def test_pdeathsig_survives_the_uid_drop(procs: Procs, nobody: Identity, pdeathsig) -> None:
    req = SpawnRequest(argv=(SLEEP, "30"), env=ENV, identity=nobody, pdeathsig=pdeathsig)
    helper, program = _spawn_in_helper(req)
    procs.add(helper)
    procs.add(program)
    assert linux.process_ppid(program) == helper
    assert status_fields(program)["Uid"].split()[0] == str(nobody.uid)
    os.kill(helper, signal.SIGKILL)
    waitpid_deadline(helper)
    if pdeathsig is None:
        # the control: without it the program outlives its parent
        assert not wait_pidfd(procs.fds[program], timeout=0.2)
    else:
        assert wait_pidfd(procs.fds[program]), "program outlived its parent despite pdeathsig"


@pytest.mark.root
def test_daemon_env(procs: Procs, nobody: Identity) -> None:
    base = dict(ENV, NOTIFY_SOCKET="/run/systemd/notify", HOME="/root", USER="root")
    s = run(procs, argv=(SLEEP, "30"), identity=nobody, env=daemon_env(base, nobody))
    env = environ_of(s.pid)
    assert "NOTIFY_SOCKET" not in env
    assert env["HOME"] == nobody.home
    assert env["USER"] == env["LOGNAME"] == "nobody"
    assert env["PATH"] == ENV["PATH"]


def test_identity_env_helpers() -> None:
    base = {"HOME": "/root", "USER": "root", "NOTIFY_SOCKET": "x"}
    assert identity_env(Identity(uid=5), base) == base
    assert identity_env(Identity(uid=5, user="u"), base) == {
        "HOME": "/root", "USER": "u", "LOGNAME": "u", "NOTIFY_SOCKET": "x"}
    assert daemon_env(base, Identity(uid=5, user="u", home="/h")) == {
        "HOME": "/h", "USER": "u", "LOGNAME": "u"}
    assert base["NOTIFY_SOCKET"] == "x"          # the caller's mapping is not touched


# ----------------------------------------------------------------------------------- daemonize


def test_daemonize_writes_pidfile_and_reaps_the_intermediate(procs: Procs, tmp_path) -> None:
    pidfile = tmp_path / "d.pid"
    s = run(procs, argv=(SLEEP, "30"), daemonize_pidfile=str(pidfile))
    assert s.daemonized and s.program_pid != s.pid
    assert pidfile.read_text() == f"{s.program_pid}\n"
    assert (pidfile.stat().st_mode & 0o777) == 0o644 & ~_umask()
    with pytest.raises(ChildProcessError):
        os.waitpid(s.pid, os.WNOHANG)            # the intermediate is gone, not a zombie of ours
    assert comm(s.program_pid) == "sleep"
    assert os.getsid(s.program_pid) == s.program_pid
    assert os.getpgid(s.program_pid) == s.program_pid


def test_daemonize_relative_pidfile_and_subreaper(procs: Procs, tmp_path) -> None:
    assert linux.is_child_subreaper()
    s = run(procs, argv=(SLEEP, "30"), cwd=str(tmp_path), daemonize_pidfile="rel.pid")
    assert (tmp_path / "rel.pid").read_text() == f"{s.program_pid}\n"
    # as a subreaper the double-forked program is our child: we can reap it
    assert linux.process_ppid(s.program_pid) == os.getpid()
    os.kill(s.program_pid, signal.SIGTERM)
    status = waitpid_deadline(s.program_pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def _umask() -> int:
    # read from /proc: os.umask() would have to change it to read it
    return int(status_fields(os.getpid())["Umask"], 8)


# ------------------------------------------------------------------------------------ failures


def _assert_reaped(err: SpawnError) -> None:
    for pid in (err.pid, err.program_pid):
        if pid is not None:
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def test_missing_cwd_is_reported_precisely() -> None:
    with pytest.raises(SpawnError) as info:
        spawn(SpawnRequest(argv=(SLEEP, "30"), env=ENV, cwd="/nonexistent-nsattach/dir"))
    msg = str(info.value)
    assert msg.startswith('chdir("/nonexistent-nsattach/dir"): ')
    assert "No such file or directory" in msg and "ENOENT" in msg
    assert info.value.step == "chdir" and info.value.errno == 2
    _assert_reaped(info.value)


def test_missing_executable_is_reported_by_execve() -> None:
    with pytest.raises(SpawnError) as info:
        spawn(SpawnRequest(argv=("/nonexistent-nsattach/prog", "x"), env=ENV))
    msg = str(info.value)
    assert msg.startswith('execve("/nonexistent-nsattach/prog"): ')
    assert "ENOENT" in msg and info.value.step == "execve"
    _assert_reaped(info.value)


def test_non_executable_file_is_reported_by_execve(tmp_path) -> None:
    prog = tmp_path / "prog"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o644)
    with pytest.raises(SpawnError, match=r"execve\(.*prog\"\): Permission denied \[EACCES\]"):
        spawn(SpawnRequest(argv=(str(prog),), env=ENV))


def test_program_not_in_path_fails_before_fork() -> None:
    with pytest.raises(SpawnError, match=r'execve\("no-such-prog-nsattach"\): not found in PATH'):
        spawn(SpawnRequest(argv=("no-such-prog-nsattach",), env=ENV))


def test_bad_pidfile_directory_is_reported_by_the_grandchild(tmp_path) -> None:
    pidfile = tmp_path / "missing" / "d.pid"
    with pytest.raises(SpawnError) as info:
        spawn(SpawnRequest(argv=(SLEEP, "30"), env=ENV, daemonize_pidfile=str(pidfile)))
    assert str(info.value).startswith(f'open-pidfile("{pidfile}"): No such file or directory')
    assert info.value.program_pid is not None and info.value.program_pid != info.value.pid
    _assert_reaped(info.value)


def test_bad_pidfile_when_not_a_subreaper(tmp_path) -> None:
    # A helper that is no subreaper spawns: spawn() cannot reap the failed grandchild (it went
    # to the nearest subreaper, us) and must still raise cleanly.
    r, w = os.pipe()
    helper = os.fork()
    if helper == 0:
        try:
            os.close(r)
            try:
                spawn(SpawnRequest(argv=(SLEEP, "30"), env=ENV,
                                   daemonize_pidfile=str(tmp_path / "missing" / "d.pid")))
                os.write(w, b"no error")
            except SpawnError as e:
                os.write(w, b"%s %d" % (e.step.encode(), e.program_pid))
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert os.waitstatus_to_exitcode(waitpid_deadline(helper)) == 0
        step, pid = os.read(r, 100).split()
    finally:
        os.close(r)
    assert step == b"open-pidfile"
    assert linux.process_ppid(int(pid)) == os.getpid()     # left for the subreaper
    assert os.waitstatus_to_exitcode(waitpid_deadline(int(pid))) == CHILD_FAILURE_STATUS


@pytest.mark.root
def test_pidfile_is_written_with_the_dropped_credentials(tmp_path, nobody: Identity) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with pytest.raises(SpawnError, match=r"open-pidfile\(.*\): Permission denied \[EACCES\]"):
        spawn(SpawnRequest(argv=(SLEEP, "30"), env=ENV, identity=nobody,
                           daemonize_pidfile=str(private / "d.pid")))


def test_fork_failure_becomes_spawn_error(monkeypatch) -> None:
    before_fds = open_fds("self")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())

    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    with pytest.raises(SpawnError, match=r"fork\(\): Resource temporarily unavailable \[EAGAIN\]"):
        spawn(SpawnRequest(argv=(SLEEP, "30"), env=ENV))
    monkeypatch.undo()
    assert open_fds("self") == before_fds
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask
    assert gc.isenabled()


def test_request_validation() -> None:
    with pytest.raises(ValueError):
        SpawnRequest(argv=(), env={})
    with pytest.raises(ValueError):
        SpawnRequest(argv=(SLEEP,), env={}, pdeathsig=signal.SIGKILL, daemonize_pidfile="/x")
    with pytest.raises(ValueError):
        SpawnRequest(argv=(SLEEP,), env={}, stdout_fd=0)
    with pytest.raises(SpawnError, match="environment"):
        spawn(SpawnRequest(argv=(SLEEP,), env={"A=B": "x"}))


def test_failed_child_exit_status_constant() -> None:
    assert CHILD_FAILURE_STATUS == 127


# ---------------------------------------------------------------------------------- linux shims


def test_process_start_time_with_awkward_comm(procs: Procs, tmp_path) -> None:
    odd = tmp_path / "a) b (c"
    shutil.copy(SLEEP, odd)
    s = run(procs, argv=(str(odd), "30"))
    assert comm(s.pid) == "a) b (c"
    ticks = linux.process_start_time(s.pid)
    assert isinstance(ticks, int)
    created = psutil.boot_time() + ticks / os.sysconf("SC_CLK_TCK")
    assert abs(created - psutil.Process(s.pid).create_time()) < 1.0
    assert linux.process_ppid(s.pid) == os.getpid()
    assert linux.process_state(s.pid) in ("S", "R")


def test_process_start_time_of_a_gone_pid() -> None:
    s = spawn(SpawnRequest(argv=("/bin/true",), env=ENV))
    waitpid_deadline(s.pid)
    assert linux.process_start_time(s.pid) is None
    assert linux.process_ppid(s.pid) is None and linux.process_state(s.pid) is None


def test_pidfd_signal_reaches_the_process(procs: Procs) -> None:
    s = run(procs, argv=(SLEEP, "30"))
    fd = linux.pidfd_open(s.pid)
    try:
        linux.pidfd_send_signal(fd, signal.SIGTERM)
        assert wait_pidfd(fd)
    finally:
        os.close(fd)
    status = waitpid_deadline(s.pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


@pytest.mark.parametrize("use_ctypes", [False, True])
def test_set_name(use_ctypes: bool) -> None:
    path = f"/proc/self/task/{threading.get_native_id()}/comm"
    old = read_text(path).strip()
    try:
        linux.set_name("nsattach-name-too-long", use_ctypes=use_ctypes)
        assert read_text(path).strip() == "nsattach-name-t"
        assert linux.get_name(use_ctypes=use_ctypes) == "nsattach-name-t"
    finally:
        linux.set_name(old)


@pytest.mark.parametrize("use_ctypes", [False, True])
def test_pdeathsig_and_subreaper_flags(use_ctypes: bool) -> None:
    try:
        linux.set_pdeathsig(signal.SIGUSR1, use_ctypes=use_ctypes)
        assert linux.get_pdeathsig(use_ctypes=not use_ctypes) == signal.SIGUSR1
        linux.set_child_subreaper(True, use_ctypes=use_ctypes)
        assert linux.is_child_subreaper(use_ctypes=not use_ctypes)
    finally:
        linux.set_pdeathsig(0)
        linux.set_child_subreaper(False)
    assert linux.get_pdeathsig() == 0 and not linux.is_child_subreaper()


def test_close_fds_from_keeps_what_it_is_told() -> None:
    r, w = os.pipe()
    extra = [os.open("/dev/null", os.O_RDONLY) for _ in range(4)]
    keep = extra[1]
    pid = os.fork()
    if pid == 0:
        try:
            linux.close_fds_from(3, keep=(w, keep))
            left = sorted(int(n) for n in os.listdir("/proc/self/fd"))
            os.write(w, (" ".join(map(str, left))).encode())
        finally:
            os._exit(0)
    for fd in extra:
        os.close(fd)
    os.close(w)
    waitpid_deadline(pid)
    left = [int(n) for n in os.read(r, 4096).split()]
    os.close(r)
    # 0-2, the two kept fds, and the one fd listdir itself had open while listing
    assert {0, 1, 2, w, keep} <= set(left)
    assert len(set(left) - {0, 1, 2, w, keep}) <= 1
