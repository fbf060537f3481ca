"""Thin Linux shims: prctl, pidfds, /proc facts, fd closing.

python-prctl is the preferred backend for prctl (it is a declared dependency); when it cannot be
imported (it is sdist-only and needs libcap-dev to build) the same calls go through
``libc.prctl`` with ctypes. Everything here is imported at module load so that functions can be
called between fork and exec, after a pivot_root or after a uid drop without importing anything.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
from collections.abc import Iterable
from typing import NoReturn

try:  # python-prctl
    import prctl as _prctl_mod
except ImportError:  # pragma: no cover - exercised by the ctypes tests instead
    _prctl_mod = None

__all__ = [
    "PR_SET_PDEATHSIG",
    "PR_GET_PDEATHSIG",
    "PR_SET_NAME",
    "PR_GET_NAME",
    "PR_SET_CHILD_SUBREAPER",
    "PR_GET_CHILD_SUBREAPER",
    "set_pdeathsig",
    "get_pdeathsig",
    "set_child_subreaper",
    "is_child_subreaper",
    "set_name",
    "get_name",
    "pidfd_open",
    "pidfd_send_signal",
    "process_start_time",
    "close_fds_from",
    "fd_ceiling",
    "errno_name",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "periodic_timerfd",
    "relay_signal",
    "relay_until_exit",
    "exit_like",
    "CATCHABLE_SIGNALS",
]

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
TASK_COMM_LEN = 16

_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
_libc.prctl.restype = ctypes.c_int


def _libc_prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    res = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def set_pdeathsig(sig: int, *, use_ctypes: bool = False) -> None:
    """Ask the kernel to send ``sig`` to us when our parent thread dies (0 clears it).

    Credential changes (setuid, setgid, ...) clear it again, so call it after any drop.
    """
    if _prctl_mod is not None and not use_ctypes:
        _prctl_mod.set_pdeathsig(int(sig))
    else:
        _libc_prctl(PR_SET_PDEATHSIG, int(sig))


def get_pdeathsig(*, use_ctypes: bool = False) -> int:
    if _prctl_mod is not None and not use_ctypes:
        return int(_prctl_mod.get_pdeathsig())
    out = ctypes.c_int(0)
    _libc_prctl(PR_GET_PDEATHSIG, ctypes.addressof(out))
    return out.value


def set_child_subreaper(enabled: bool = True, *, use_ctypes: bool = False) -> None:
    """Make orphaned descendants re-parent to us (so double-forking daemons stay reapable)."""
    if _prctl_mod is not None and not use_ctypes:
        _prctl_mod.set_child_subreaper(bool(enabled))
    else:
        _libc_prctl(PR_SET_CHILD_SUBREAPER, 1 if enabled else 0)


def is_child_subreaper(*, use_ctypes: bool = False) -> bool:
    if _prctl_mod is not None and not use_ctypes:
        return bool(_prctl_mod.get_child_subreaper())
    out = ctypes.c_int(0)
    _libc_prctl(PR_GET_CHILD_SUBREAPER, ctypes.addressof(out))
    return bool(out.value)


def set_name(name: str, *, use_ctypes: bool = False) -> None:
    """Set this thread's comm (``/proc/self/comm``); the kernel keeps 15 bytes."""
    raw = os.fsencode(name)[: TASK_COMM_LEN - 1]
    if _prctl_mod is not None and not use_ctypes:
        _prctl_mod.set_name(os.fsdecode(raw))
        return
    # The buffer must outlive the call: an inline c_char_p temporary was seen to be freed
    # before prctl read it, leaving the name empty (recipes.md §1).
    buf = ctypes.create_string_buffer(raw, TASK_COMM_LEN)
    _libc_prctl(PR_SET_NAME, ctypes.addressof(buf))
    del buf


def get_name(*, use_ctypes: bool = False) -> str:
    if _prctl_mod is not None and not use_ctypes:
        return str(_prctl_mod.get_name())
    buf = ctypes.create_string_buffer(TASK_COMM_LEN)
    _libc_prctl(PR_GET_NAME, ctypes.addressof(buf))
    return os.fsdecode(buf.value)


def pidfd_open(pid: int) -> int:
    """A pidfd for ``pid`` (close-on-exec). Raises ProcessLookupError if it is gone."""
    return os.pidfd_open(pid)


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """Signal the exact process behind ``pidfd``; a recycled pid is never hit."""
    signal.pidfd_send_signal(pidfd, sig)


def _read_stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm sits in parentheses and may itself hold spaces and ')' ("(a) b)"): the last ')' ends it.
    close = data.rfind(b")")
    if close < 0:
        return None
    return data[close + 1 :].split()      # [0] is field 3 (state)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: start time after boot, in clock ticks; None if no such pid."""
    fields = _read_stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[22 - 3])


def process_ppid(pid: int) -> int | None:
    """Field 4 of /proc/PID/stat (the parent pid); None if no such pid."""
    fields = _read_stat_fields(pid)
    if fields is None or len(fields) < 2:
        return None
    return int(fields[4 - 3])


def process_state(pid: int) -> str | None:
    """Field 3 of /proc/PID/stat ('R', 'S', 'Z', ...); None if no such pid."""
    fields = _read_stat_fields(pid)
    if not fields:
        return None
    return fields[0].decode("ascii", "replace")


def fd_ceiling() -> int:
    """One past the highest fd number this process may hold (the hard RLIMIT_NOFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = max(soft, hard if hard != resource.RLIM_INFINITY else soft, 3)
    return min(ceiling, 0x7FFFFFFF)


def close_fds_from(lowfd: int, keep: Iterable[int] = (), ceiling: int | None = None) -> None:
    """Close every fd >= ``lowfd`` except those in ``keep``.

    os.closerange uses close_range(2) where the kernel has it (one syscall however many fds).
    Pass ``ceiling`` (from fd_ceiling(), computed before a fork) to avoid a getrlimit call.
    Safe between fork and exec: no allocation beyond a tiny sorted list.
    """
    hi = fd_ceiling() if ceiling is None else ceiling
    start = lowfd
    for fd in sorted(keep):
        if fd < start:
            continue
        if fd > start:
            os.closerange(start, fd)
        start = fd + 1
    if start < hi:
        os.closerange(start, hi)


def errno_name(code: int) -> str:
    """'ENOENT' for 2; 'errno 999' for codes without a symbolic name."""
    return errno.errorcode.get(code, f"errno {code}")


# --------------------------------------------------------------------------------------------
# Namespaces, mounts, pivot_root (ctypes: Python 3.11 has no os.unshare/os.setns)
#
# Every function here raises OSError with the errno the kernel gave, and imports nothing when
# called, so it is safe between fork and exec and after a pivot_root.

CLONE_FS = 0x00000200
CLONE_FILES = 0x00000400
CLONE_PARENT = 0x00008000
CLONE_NEWNS = 0x00020000
CLONE_SYSVSEM = 0x00040000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_IO = 0x80000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21

MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long

# pivot_root has no glibc header; the symbol exists in glibc >= 2.x on Linux, the syscall
# number is the fallback (x86_64: 155, aarch64: 41).
_PIVOT_ROOT_SYSCALL = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41}.get(os.uname().machine)


def _check(res: int) -> int:
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


def _path(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    return os.fsencode(value)


def unshare(flags: int) -> None:
    """unshare(2). CLONE_NEWPID only affects the children forked afterwards."""
    if hasattr(os, "unshare"):     # Python >= 3.12
        os.unshare(flags)
        return
    _check(_libc.unshare(flags))


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace behind ``fd`` (a /proc/PID/ns/* or /run/netns/* fd, or a pidfd)."""
    if hasattr(os, "setns"):       # Python >= 3.12
        os.setns(fd, nstype)
        return
    _check(_libc.setns(fd, nstype))


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2). The byte strings live in locals until the call returns (recipes.md §1 pitfall)."""
    src, tgt, fs, dat = _path(source), _path(target), _path(fstype), _path(data)
    _check(_libc.mount(src, tgt, fs, flags, dat))


def umount2(target: str, flags: int = 0) -> None:
    tgt = _path(target)
    _check(_libc.umount2(tgt, flags))


def pivot_root(new_root: str, put_old: str) -> None:
    new, old = _path(new_root), _path(put_old)
    fn = getattr(_libc, "pivot_root", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        _check(fn(new, old))
        return
    if _PIVOT_ROOT_SYSCALL is None:
        raise OSError(errno.ENOSYS, "pivot_root: unknown syscall number on this architecture")
    _check(_libc.syscall(_PIVOT_ROOT_SYSCALL, new, old))


# --------------------------------------------------------------------------------------------
# timerfd (Python 3.11 has no os.timerfd_create): a periodic wake-up a selector can watch

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]


def periodic_timerfd(interval_s: float) -> int:
    """A non-blocking, close-on-exec timerfd that becomes readable every ``interval_s`` seconds
    (read 8 bytes to acknowledge)."""
    fd = _check(_libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC))
    sec = int(interval_s)
    nsec = int((interval_s - sec) * 1e9)
    spec = _Itimerspec(_Timespec(sec, nsec), _Timespec(sec, nsec))
    try:
        _check(_libc.timerfd_settime(fd, 0, ctypes.byref(spec), None))
    except OSError:
        os.close(fd)
        raise
    return fd


# --------------------------------------------------------------------------------------------
# A process that only waits for one child and relays signals to it (the ns_pid keeper, the
# outer half of ``unshare = pid``). Signals are taken synchronously with sigwaitinfo: no
# Python handler ever runs, so the code is safe in a forked copy of the master.

CATCHABLE_SIGNALS: frozenset[int] = frozenset(
    int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)
)
# Signals whose default action ends a process (the rest stop, continue or are ignored).
_DEFAULT_NOT_FATAL = frozenset(int(s) for s in (
    signal.SIGCHLD, signal.SIGCONT, signal.SIGURG, signal.SIGWINCH,
    signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU,
))


def _signal_masks(pid: int) -> tuple[int, int] | None:
    """(caught, ignored) signal bit masks of ``pid`` from /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            data = f.read()
    except OSError:
        return None
    caught = ignored = None
    for line in data.split(b"\n"):
        if line.startswith(b"SigCgt:"):
            caught = int(line.split()[1], 16)
        elif line.startswith(b"SigIgn:"):
            ignored = int(line.split()[1], 16)
    if caught is None or ignored is None:
        return None
    return caught, ignored


def relay_signal(child: int, sig: int, *, group: bool = False, emulate_init: bool = False) -> None:
    """Send ``sig`` to ``child`` (its process group when ``group`` and it leads one).

    With ``emulate_init``: ``child`` is the init of a PID namespace, which the kernel shields
    from every signal it has no handler for. When ``sig`` would have ended an ordinary
    process (default action, not ignored, not caught), act as the kernel would for one and
    SIGKILL it: a daemon run with ns_pid then stops on its stop signal like any other.
    """
    try:
        if group:
            try:
                os.killpg(child, sig)
            except ProcessLookupError:
                os.kill(child, sig)
        else:
            os.kill(child, sig)
    except ProcessLookupError:
        return
    if emulate_init and sig not in _DEFAULT_NOT_FATAL:
        masks = _signal_masks(child)
        if masks is not None:
            bit = 1 << (sig - 1)
            caught, ignored = masks
            if not (caught & bit) and not (ignored & bit):
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def relay_until_exit(child: int, forward: Iterable[int], *, group: bool = False,
                     emulate_init: bool = False) -> int:
    """Wait for our child ``child``, relaying every signal of ``forward``; return its wait status.

    The caller must have blocked every signal in ``forward`` and SIGCHLD *before* forking
    ``child``, so that none is lost or acted upon in between.
    """
    waitset = set(int(s) for s in forward) | {int(signal.SIGCHLD)}
    while True:
        try:
            pid, status = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            return 0
        if pid == child:
            return status
        info = signal.sigwaitinfo(waitset)
        if info.si_signo != signal.SIGCHLD:
            relay_signal(child, info.si_signo, group=group, emulate_init=emulate_init)


def exit_like(status: int) -> NoReturn:
    """End this process the way a child with wait status ``status`` ended."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))   # never dump our own core for it
        except (OSError, ValueError):
            pass
        if sig in CATCHABLE_SIGNALS:
            try:
                signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
            except (OSError, ValueError):
                pass
        try:
            os.kill(os.getpid(), sig)
        except OSError:
            pass
        os._exit(128 + sig)
    if os.WIFEXITED(status):
        os._exit(os.WEXITSTATUS(status))
    os._exit(1)


def reap_children():
    """Yield (pid, wait status) for every child that has exited, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status
