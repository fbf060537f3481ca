"""Fork and exec one daemon, reporting any failure before exec precisely.

The parent precomputes everything (encoded argv and environment, the resolved executable,
supplementary groups, the fd ceiling); the child side of the fork only makes system calls, in
the order of DESIGN.md point 5:

    signal dispositions → SIG_DFL, mask → empty      (Q-D2, Q-D15: no stale master handlers,
                                                      no inherited SIGPIPE=SIG_IGN)
    chdir → stdin /dev/null → stdout/stderr → setsid
    setgid → setgroups → setuid → verify with getres[ug]id/getgroups   (Q-D5: no root groups)
    [daemonize: fork; intermediate exits; grandchild reports its pid, setsid, writes pidfile]
    PR_SET_PDEATHSIG (last: any credential change clears it)
    close fds >= 3 → execve

With ``ns_pid`` (uwsgi-spec §2.10, Q-D7) the child we fork (C1, the one the master tracks) stays
outside as a keeper and the program runs as PID 1 of a new PID namespace (C2):

    C1: ... setsid → PR_SET_PDEATHSIG (the request's) → unshare(CLONE_NEWPID) → fork C2, then
        relay every signal to C2's process group until C2 exits, and exit the way it did.
        A signal C2 (an init) has no handler for would be ignored by the kernel; C1 then
        SIGKILLs it, as the kernel would kill an ordinary process (linux.relay_signal).
    C2: setpgid → unshare(CLONE_NEWNS) → / rprivate → fresh /proc (so ps shows only its tree)
        → setgid/setgroups/setuid → PR_SET_PDEATHSIG(SIGKILL) (dies with C1) → exec.

Failure channel: a close-on-exec pipe. The child writes newline-terminated ASCII records and the
parent reads to EOF (EOF = every writer exec'd or exited):

    PID <n>                 daemonize only: the grandchild's pid, sent before anything can fail
    INIT <n>                ns_pid only: the host pid of the namespace's init (C2)
    ERR <step> <errno>      the step that failed; the writer then _exit(127)s

Nothing else is ever written, so the stream is unambiguous.

Between fork and exec the child never logs, takes no locks and imports nothing. While forking,
the parent blocks every signal (so no Python-level handler of the master can run in the child and
write into the master's wakeup fd before dispositions are reset) and pauses the garbage
collector (so no finalizer runs in the child); both are restored in the parent right after fork.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn

from nsattach.config.model import Identity
from nsattach.errors import SpawnError
from nsattach.system import linux

__all__ = [
    "SpawnRequest",
    "Spawned",
    "spawn",
    "identity_env",
    "daemon_env",
    "CHILD_FAILURE_STATUS",
]

CHILD_FAILURE_STATUS = 127          # exit status of a child that failed before exec
_DEVNULL = b"/dev/null"
_PIDFILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_PIDFILE_MODE = 0o644

# SIGKILL/SIGSTOP cannot be caught; 32/33 are glibc's and absent from valid_signals().
_RESET_SIGNALS: tuple[int, ...] = tuple(
    sorted(int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
)
_ALL_SIGNALS = frozenset(signal.valid_signals())
_NO_SIGNALS: frozenset[int] = frozenset()


@dataclass(frozen=True)
class SpawnRequest:
    """Everything needed to start one process. The caller builds argv and the full environment.

    ``stdout_fd`` may be 1 (keep) or any fd >= 3; ``stderr_fd`` may be 2 (keep), 1 (the child's
    fd 1 after the stdout step, i.e. ``2>&1``) or any fd >= 3.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(hash=False)
    cwd: str | None = None
    identity: Identity = Identity()
    stdin_devnull: bool = True
    pdeathsig: int | None = None
    new_session: bool = True
    daemonize_pidfile: str | None = None
    stdout_fd: int | None = None
    stderr_fd: int | None = None
    ns_pid: bool = False
    cgroup_fd: int | None = None     # an open cgroup.procs: the child moves itself there first

    def __post_init__(self) -> None:
        object.__setattr__(self, "argv", tuple(self.argv))
        if not self.argv or not self.argv[0]:
            raise ValueError("SpawnRequest.argv needs at least a program")
        if self.daemonize_pidfile is not None and self.pdeathsig:
            # The grandchild's parent exits at once; a parent-death signal would kill it on
            # the spot or, set after, mean nothing. A daemonized program outlives us by design.
            raise ValueError("pdeathsig and daemonize_pidfile exclude each other")
        if self.daemonize_pidfile == "":
            raise ValueError("daemonize_pidfile must not be empty")
        if self.ns_pid and self.daemonize_pidfile is not None:
            # the pid the grandchild would report is namespace-local (uWSGI Q-D7)
            raise ValueError("ns_pid and daemonize_pidfile exclude each other")
        if self.stdout_fd is not None and self.stdout_fd != 1 and self.stdout_fd < 3:
            raise ValueError(f"stdout_fd must be 1 or >= 3, not {self.stdout_fd}")
        if self.stderr_fd is not None and self.stderr_fd not in (1, 2) and self.stderr_fd < 3:
            raise ValueError(f"stderr_fd must be 1, 2 or >= 3, not {self.stderr_fd}")


@dataclass(frozen=True)
class Spawned:
    """``pid`` is the child we forked. With daemonize it is the intermediate, which has already
    exited and been reaped here, and ``program_pid`` is the grandchild running the program
    (our child again only if we are a child subreaper). Otherwise both are the same.

    With ns_pid, ``pid`` and ``program_pid`` are the keeper (the process to watch and signal:
    it relays signals and exits like the program), and ``ns_init_pid`` is the host pid of the
    program, PID 1 of its namespace."""

    pid: int
    program_pid: int
    ns_init_pid: int | None = None

    @property
    def daemonized(self) -> bool:
        return self.pid != self.program_pid


def identity_env(identity: Identity, base_env: Mapping[str, str]) -> dict[str, str]:
    """``base_env`` with USER/LOGNAME (and HOME when known) of ``identity.user``, if it has one."""
    env = dict(base_env)
    if identity.user is not None:
        env["USER"] = identity.user
        env["LOGNAME"] = identity.user
        if identity.home is not None:
            env["HOME"] = identity.home
    return env


def daemon_env(base: Mapping[str, str], identity: Identity) -> dict[str, str]:
    """The environment for a daemon: no NOTIFY_SOCKET (that socket is the master's, Q-D15),
    and the account variables of ``identity``."""
    env = identity_env(identity, base)
    env.pop("NOTIFY_SOCKET", None)
    return env


# --------------------------------------------------------------------------------------------
# parent side: turn a request into a plan of plain values


@dataclass(frozen=True)
class _ChildPlan:
    path: bytes
    argv: tuple[bytes, ...]
    env: dict[bytes, bytes] = field(hash=False)
    cwd: bytes | None
    stdin_devnull: bool
    stdout_fd: int | None
    stderr_fd: int | None
    new_session: bool
    gid: int | None
    gid3: tuple[int, int, int] | None
    groups: tuple[int, ...] | None
    groups_set: frozenset[int] | None
    uid: int | None
    uid3: tuple[int, int, int] | None
    pidfile: bytes | None
    pdeathsig: int | None
    parent_pid: int
    fd_ceiling: int
    ns_pid: bool = False
    cgroup_fd: int | None = None


class _PrepareError(Exception):
    def __init__(self, step: str, obj: str, message: str, code: int = 0):
        super().__init__(f"{step}({obj}): {message}")
        self.step = step
        self.code = code


def _resolve_groups(identity: Identity) -> tuple[int, ...] | None:
    """The supplementary groups the child must end with, or None to leave them as they are.

    Explicit ``groups`` win. Otherwise, whenever a uid or gid changes, the master's groups are
    never kept (Q-D5): initgroups semantics (the user's groups plus the gid) when the user name
    is known, else just the gid. A uid-only change keeps the master's gid and uses it as "the gid".
    """
    if identity.groups is not None:
        return tuple(identity.groups)
    if not identity.changes_anything:
        return None
    gid = identity.gid if identity.gid is not None else os.getegid()
    if identity.user is not None:
        try:
            return tuple(os.getgrouplist(identity.user, gid))
        except OSError as e:
            raise _PrepareError(
                "getgrouplist", f'"{identity.user}", {gid}', _describe_errno(e.errno or 0)
            ) from e
    return (gid,)


def _resolve_executable(name: str, env: Mapping[str, str]) -> str:
    """argv[0] as a path for execve: kept if it holds a '/', else searched in env's PATH."""
    if "/" in name:
        return name
    found = shutil.which(name, path=env.get("PATH", os.defpath))
    if found is None:
        raise _PrepareError("execve", f'"{name}"',
                            f"not found in PATH {env.get('PATH', os.defpath)!r} [ENOENT]",
                            errno.ENOENT)
    return found


def _encode_env(env: Mapping[str, str]) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for key, value in env.items():
        k = os.fsencode(key)
        v = os.fsencode(value)
        if not k or b"=" in k or b"\0" in k or b"\0" in v:
            raise _PrepareError("environment", repr(key), "invalid variable name or value")
        out[k] = v
    return out


def _prepare(req: SpawnRequest) -> _ChildPlan:
    ident = req.identity
    path = _resolve_executable(req.argv[0], req.env)
    for arg in req.argv:
        if "\0" in arg:
            raise _PrepareError("execve", repr(req.argv[0]), "NUL byte in an argument")
    groups = _resolve_groups(ident)
    return _ChildPlan(
        path=os.fsencode(path),
        argv=tuple(os.fsencode(a) for a in req.argv),
        env=_encode_env(req.env),
        cwd=None if req.cwd is None else os.fsencode(req.cwd),
        stdin_devnull=req.stdin_devnull,
        stdout_fd=req.stdout_fd,
        stderr_fd=req.stderr_fd,
        new_session=req.new_session,
        gid=ident.gid,
        gid3=None if ident.gid is None else (ident.gid,) * 3,
        groups=groups,
        groups_set=None if groups is None else frozenset(groups),
        uid=ident.uid,
        uid3=None if ident.uid is None else (ident.uid,) * 3,
        pidfile=None if req.daemonize_pidfile is None else os.fsencode(req.daemonize_pidfile),
        pdeathsig=None if not req.pdeathsig else int(req.pdeathsig),
        parent_pid=os.getpid(),
        fd_ceiling=linux.fd_ceiling(),
        ns_pid=req.ns_pid,
        cgroup_fd=req.cgroup_fd,
    )


# --------------------------------------------------------------------------------------------
# child side: system calls only, always ends in execve or os._exit


def _report(errw: int, step: str, code: int) -> None:
    try:
        os.write(errw, b"ERR %s %d\n" % (step.encode("ascii"), code))
    except BaseException:
        pass


def _onto(fd: int, target: int) -> None:
    if fd == target:
        os.set_inheritable(fd, True)     # dup2(fd, fd) would leave FD_CLOEXEC as it was
    else:
        os.dup2(fd, target)              # inheritable by default


def _child(p: _ChildPlan, errw: int) -> NoReturn:
    step = "signals"
    try:
        # All signals arrive blocked (the parent blocked them around fork); reset the
        # dispositions first, then open the mask, so no master handler can ever run here.
        try:
            signal.set_wakeup_fd(-1)
        except ValueError:
            pass
        for sig in _RESET_SIGNALS:
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, _NO_SIGNALS)

        if p.cgroup_fd is not None:
            # before anything can fork: every descendant is born inside the daemon's cgroup
            step = "cgroup"
            os.write(p.cgroup_fd, b"0")

        if p.cwd is not None:
            step = "chdir"
            os.chdir(p.cwd)
        if p.stdin_devnull:
            step = "open-devnull"
            fd = os.open(_DEVNULL, os.O_RDWR)
            step = "dup2-stdin"
            _onto(fd, 0)
            if fd != 0:
                os.close(fd)
        if p.stdout_fd is not None:
            step = "dup2-stdout"
            _onto(p.stdout_fd, 1)
        if p.stderr_fd is not None:
            step = "dup2-stderr"
            _onto(p.stderr_fd, 2)
        if p.new_session:
            step = "setsid"
            os.setsid()

        alive_r = -1
        if p.ns_pid:
            step = "ns_pid"
            alive_r = _enter_pid_namespace(p, errw)     # returns in C2 only

        if p.gid is not None:
            step = "setgid"
            os.setgid(p.gid)
        if p.groups is not None:
            step = "setgroups"
            os.setgroups(p.groups)
        if p.uid is not None:
            step = "setuid"
            os.setuid(p.uid)
        # Verify the kernel's view: a drop that silently did not take must not exec.
        if p.gid3 is not None and os.getresgid() != p.gid3:
            _report(errw, "verify-gid", 1)
            os._exit(CHILD_FAILURE_STATUS)
        if p.groups_set is not None and frozenset(os.getgroups()) != p.groups_set:
            _report(errw, "verify-groups", 1)
            os._exit(CHILD_FAILURE_STATUS)
        if p.uid3 is not None and os.getresuid() != p.uid3:
            _report(errw, "verify-uid", 1)
            os._exit(CHILD_FAILURE_STATUS)

        if p.pidfile is not None:
            step = "fork"
            if os.fork() != 0:
                os._exit(0)             # the intermediate: the parent reaps it at once
            # grandchild: say who we are before anything else can fail
            step = "report-pid"
            me = os.getpid()
            os.write(errw, b"PID %d\n" % me)
            if p.new_session:
                step = "setsid"         # lead a session of our own, pgid == our pid
                os.setsid()
            step = "open-pidfile"       # with the dropped credentials, relative to the cwd
            pfd = os.open(p.pidfile, _PIDFILE_FLAGS, _PIDFILE_MODE)
            step = "write-pidfile"
            data = b"%d\n" % me
            if os.write(pfd, data) != len(data):
                _report(errw, step, errno.ENOSPC)   # a short write of a few bytes
                os._exit(CHILD_FAILURE_STATUS)
            os.close(pfd)

        if p.ns_pid:
            step = "pdeathsig"          # C2 dies with its keeper, whatever the request says
            linux.set_pdeathsig(signal.SIGKILL)
            # getppid() is 0 in the new namespace: the keeper's death shows as EOF on this pipe
            try:
                if os.read(alive_r, 1) == b"":
                    os.kill(os.getpid(), signal.SIGKILL)
            except BlockingIOError:
                pass
        elif p.pdeathsig is not None:
            step = "pdeathsig"          # last: setuid/setgid would have cleared it
            linux.set_pdeathsig(p.pdeathsig)
            if os.getppid() != p.parent_pid:
                # The parent died before prctl took effect: act as the kernel would have.
                os.kill(os.getpid(), p.pdeathsig)

        step = "close-fds"
        os.closerange(3, errw)
        os.closerange(errw + 1, p.fd_ceiling)

        step = "execve"
        os.execve(p.path, p.argv, p.env)
    except BaseException as e:
        code = e.errno if isinstance(e, OSError) and e.errno else 0
        _report(errw, step, code)
    finally:
        os._exit(CHILD_FAILURE_STATUS)


def _enter_pid_namespace(p: _ChildPlan, errw: int) -> int:
    """ns_pid, in C1: fork C2 into a new PID namespace; only C2 returns (the read end of a
    pipe whose EOF means C1 died). C1 stays here as the keeper and never returns."""
    if p.pdeathsig is not None:
        linux.set_pdeathsig(p.pdeathsig)      # C1 changes no credentials: set it now
        if os.getppid() != p.parent_pid:
            os.kill(os.getpid(), p.pdeathsig)
    step = "unshare-pid"
    try:
        linux.unshare(linux.CLONE_NEWPID)
        step = "pipe"
        alive_r, alive_w = os.pipe()
        # Block everything before the fork: C1 takes its signals with sigwaitinfo, and C2 must
        # not act on one before its own set-up is done.
        signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        step = "fork-ns"
        c2 = os.fork()
    except OSError as e:
        _report(errw, step, e.errno or 0)
        os._exit(CHILD_FAILURE_STATUS)
    if c2 != 0:
        _keep_ns_init(p, errw, c2, alive_w)
    os.close(alive_w)
    step = "setpgid"
    try:
        os.setpgid(0, 0)                # C1 relays to this group; the master's killpg(C1) stops at C1
        step = "unshare-mount"
        linux.unshare(linux.CLONE_NEWNS)
        step = "mount-private"          # never propagate our /proc back to the master's mounts
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        step = "mount-proc"
        linux.mount("proc", "/proc", "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
        os.set_blocking(alive_r, False)
        signal.pthread_sigmask(signal.SIG_SETMASK, _NO_SIGNALS)
    except OSError as e:
        _report(errw, step, e.errno or 0)
        os._exit(CHILD_FAILURE_STATUS)
    return alive_r


def _keep_ns_init(p: _ChildPlan, errw: int, c2: int, alive_w: int) -> NoReturn:
    """C1 after the fork: report C2's host pid, then relay signals until C2 is gone."""
    try:
        os.write(errw, b"INIT %d\n" % c2)
    except OSError:
        pass
    # Keep only stdio and the pipe C2 watches: C1 never execs, so close-on-exec fds of the
    # master (its epoll, sockets, pidfds) would otherwise stay open in it. errw goes too, so
    # the master reads EOF as soon as C2 has exec'd.
    linux.close_fds_from(3, keep=(alive_w,), ceiling=p.fd_ceiling)
    status = linux.relay_until_exit(c2, linux.CATCHABLE_SIGNALS - {signal.SIGCHLD}, group=True,
                                    emulate_init=True)
    linux.exit_like(status)


# --------------------------------------------------------------------------------------------
# parent side: fork, then read the verdict


def _describe_errno(code: int) -> str:
    if not code:
        return "failed"
    return f"{os.strerror(code)} [{linux.errno_name(code)}]"


def _step_object(step: str, req: SpawnRequest, p: _ChildPlan) -> str:
    ident = req.identity
    if step == "cgroup":
        return "cgroup.procs"
    if step == "chdir":
        return f'"{req.cwd}"'
    if step == "open-devnull":
        return '"/dev/null", O_RDWR'
    if step == "dup2-stdin":
        return "/dev/null, 0"
    if step == "dup2-stdout":
        return f"{req.stdout_fd}, 1"
    if step == "dup2-stderr":
        return f"{req.stderr_fd}, 2"
    if step == "setgid":
        return str(ident.gid)
    if step == "setgroups":
        return str(list(p.groups or ()))
    if step == "setuid":
        return str(ident.uid) + (f" {ident.user}" if ident.user else "")
    if step in ("open-pidfile", "write-pidfile"):
        return f'"{req.daemonize_pidfile}"'
    if step == "pdeathsig":
        return "SIGKILL" if req.ns_pid else str(req.pdeathsig)
    if step in ("unshare-pid", "unshare-mount"):
        return "CLONE_NEWPID" if step == "unshare-pid" else "CLONE_NEWNS"
    if step == "mount-private":
        return '"/", MS_REC|MS_PRIVATE'
    if step == "mount-proc":
        return '"proc", "/proc"'
    if step == "setpgid":
        return "0, 0"
    if step == "execve":
        return f'"{os.fsdecode(p.path)}"'
    return ""


def _failure_message(step: str, code: int, req: SpawnRequest, p: _ChildPlan) -> str:
    obj = _step_object(step, req, p)
    if step == "verify-gid":
        return f"setgid({req.identity.gid}) did not take: getresgid() differs"
    if step == "verify-groups":
        return f"setgroups({list(p.groups or ())}) did not take: getgroups() differs"
    if step == "verify-uid":
        return f"setuid({req.identity.uid}) did not take: getresuid() differs"
    if code == 0:
        return f"{step}({obj}): failed before exec (no errno; an internal error in the child)"
    return f"{step}({obj}): {_describe_errno(code)}"


def _read_to_eof(fd: int) -> bytes:
    chunks = []
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _parse_records(data: bytes) -> tuple[int | None, tuple[str, int] | None, int | None]:
    program_pid: int | None = None
    init_pid: int | None = None
    failure: tuple[str, int] | None = None
    for line in data.split(b"\n"):
        if not line:
            continue
        parts = line.split(b" ")
        if parts[0] == b"PID" and len(parts) == 2 and parts[1].isdigit():
            program_pid = int(parts[1])
        elif parts[0] == b"INIT" and len(parts) == 2 and parts[1].isdigit():
            init_pid = int(parts[1])
        elif parts[0] == b"ERR" and len(parts) == 3 and parts[2].isdigit():
            if failure is None:
                failure = (parts[1].decode("ascii", "replace"), int(parts[2]))
        else:
            raise _spawn_error(f"spawn: garbled report from the child: {line[:80]!r}",
                               step="protocol", code=0)
    return program_pid, failure, init_pid


def _reap(pid: int) -> int | None:
    """Wait for our child ``pid``; None when it is not (or no longer) our child."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _spawn_error(message: str, *, step: str, code: int, pid: int | None = None,
                 program_pid: int | None = None) -> SpawnError:
    err = SpawnError(message)
    err.step = step                 # type: ignore[attr-defined]
    err.errno = code                # type: ignore[attr-defined]
    err.pid = pid                   # type: ignore[attr-defined]
    err.program_pid = program_pid   # type: ignore[attr-defined]
    return err


def spawn(req: SpawnRequest) -> Spawned:
    """Fork and exec ``req``; return once the program runs (exec succeeded).

    Raises SpawnError (with attributes ``step``, ``errno``, ``pid``) when the fork fails or the
    child fails before exec; the failed child is then already reaped, as is the intermediate of
    a daemonize. A program that dies right after exec is not an error here: the caller sees its
    exit like any other.
    """
    try:
        p = _prepare(req)
    except _PrepareError as e:
        raise _spawn_error(str(e), step=e.step, code=e.code) from None

    r, w = os.pipe()                # both O_CLOEXEC: a successful exec closes the child's end
    try:
        if w < 3:                   # never let the report fd collide with 0/1/2
            w2 = fcntl.fcntl(w, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(w)
            w = w2
        gc_enabled = gc.isenabled()
        gc.disable()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                _child(p, w)        # never returns
        except OSError as e:
            raise _spawn_error(f"fork(): {_describe_errno(e.errno or 0)}",
                               step="fork", code=e.errno or 0) from None
        finally:
            # Only the parent gets here (the child always leaves through os._exit).
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            if gc_enabled:
                gc.enable()
        os.close(w)
        w = -1
        data = _read_to_eof(r)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)

    try:
        program_pid, failure, init_pid = _parse_records(data)
    except SpawnError:
        _reap(pid)                  # cannot happen with this child code; never leave a zombie
        raise

    if p.pidfile is not None:
        status = _reap(pid)         # the intermediate exits right after its fork
        if failure is None and program_pid is None:
            raise _spawn_error(
                f"daemonize: the intermediate child ended with status {status} "
                "before the program reported its pid",
                step="fork", code=0, pid=pid)
    elif failure is not None:
        _reap(pid)

    if failure is not None:
        step, code = failure
        if program_pid is not None:
            _reap(program_pid)      # ours only if we are a child subreaper
        raise _spawn_error(_failure_message(step, code, req, p), step=step, code=code,
                           pid=pid, program_pid=program_pid)

    return Spawned(pid=pid, program_pid=program_pid if program_pid is not None else pid,
                   ns_init_pid=init_pid)
