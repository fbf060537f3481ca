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
